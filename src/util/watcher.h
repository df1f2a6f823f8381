/* watcher.h - starting a watcher: a detached thread that only watches the others (for a stall,
 * a deadline) and takes no signals, so that SIGTERM, SIGINT and the crash signals are handled
 * by the threads that do the work. The thread owns nothing it was given beyond `argument`,
 * which stays the caller's.
 *
 * Usage:
 *     static void *watch(void *unused) { for (;;) { sleep(1); ... } }
 *     if (!watcher_start(watch, NULL)) ... run without the watcher ...
 */
#ifndef DDT_UTIL_WATCHER_H
#define DDT_UTIL_WATCHER_H

#include <stdbool.h>

/* Starts `body(argument)` on a detached thread with every signal blocked. False if the thread
 * could not be created (the caller's signal mask is unchanged either way). */
bool watcher_start(void *(*body)(void *), void *argument);

#endif
