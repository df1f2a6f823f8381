/* read_guard.h - which file this process is reading through HDF5 at this moment, so that a
 * crash or an endless loop inside HDF5 can be reported naming the file.
 *
 * HDF5 trusts much of what it reads. On some damaged files HDF5 1.10.8 (Debian 12's) crashes
 * (SIGSEGV in H5Dread -> H5VM_memcpyvv on a bit-flipped dataset header; in the global heap
 * while reading a variable-length string attribute), and on others HDF5 1.10.8, 1.14.6 and
 * 2.0.0 alike loop forever (in the global heap). ddtrain's readers of user files (datasets,
 * model files, checkpoints) mark every read with the file's name while they hold the HDF5
 * lock (hdf5_lock_mark_reading). The driver's crash guard (driver/crash_guard.h) asks here,
 * from a signal handler or a watchdog thread, whether and what the process was reading, and
 * ends the rank with a message instead of a crash or a hang. The library itself never exits.
 *
 * Usage (in a SIGSEGV handler):
 *     read_guard_state state = read_guard_current();
 *     if (state.path && state.this_thread) ... report state.path, _exit(1) ...
 */
#ifndef DDT_IO_READ_GUARD_H
#define DDT_IO_READ_GUARD_H

#include <stdbool.h>

typedef struct read_guard_state {
    const char *path; /* the file being read; NULL when no read is in progress */
    double started;   /* read_guard_now() when the current read step began */
    bool this_thread; /* the calling thread is the one reading */
} read_guard_state;

/* Async-signal-safe: reads a few words, takes no lock. The path may be torn if another
 * thread starts a new read at that very moment (a garbled name, never a crash). */
read_guard_state read_guard_current(void);

/* Seconds on the clock read_guard_state.started uses (CLOCK_MONOTONIC); async-signal-safe. */
double read_guard_now(void);

#endif
