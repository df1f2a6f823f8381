/* status.c - thread-local error messages and trails behind status.h. */
#include "util/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char error_message[1024];
static _Thread_local char error_trail[512];

ddt_status ddt_error(ddt_status code, const char *format, ...) {
    /* Formatted aside first: callers may pass ddt_error_message() itself as an argument
     * ("%s: %s", what, ddt_error_message()), and vsnprintf into its own source is undefined. */
    char message[sizeof error_message];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    memcpy(error_message, message, sizeof error_message);
    error_trail[0] = '\0';
    return code;
}

const char *ddt_error_message(void) {
    return error_message;
}

const char *ddt_error_trail(void) {
    return error_trail;
}

void ddt_error_trace(const char *file, int line) {
    size_t used = strlen(error_trail);
    if (used + 2 >= sizeof error_trail) return;
    snprintf(error_trail + used, sizeof error_trail - used, "%s%s:%d", used ? " <- " : "", file,
             line);
}

void ddt_error_clear(void) {
    error_message[0] = '\0';
    error_trail[0] = '\0';
}

const char *ddt_status_name(ddt_status code) {
    switch (code) {
    case DDT_OK: return "ok";
    case DDT_ERR_USAGE: return "usage error";
    case DDT_ERR_IO: return "i/o error";
    case DDT_ERR_FORMAT: return "format error";
    case DDT_ERR_DATA: return "data error";
    case DDT_ERR_MEMORY: return "memory error";
    case DDT_ERR_COMM: return "communication error";
    case DDT_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}

int ddt_status_exit_code(ddt_status code) {
    if (code == DDT_OK) return 0;
    if (code == DDT_ERR_USAGE) return 2;
    return 1;
}
