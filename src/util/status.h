/* status.h - how every library function in ddtrain reports failure.
 *
 * Library code under src/ never exits and never prints errors itself. A function that can
 * fail returns a ddt_status; on failure it first records a human-readable message with
 * ddt_error(), which the caller (ultimately the driver) reads with ddt_error_message().
 * Messages are thread-local, so the reader thread's errors do not clobber the main thread's.
 * DDT_CHECK propagates a failure upward and adds "file:line" to a trail shown in debug logs.
 *
 * Usage:
 *     ddt_status load(const char *path) {
 *         FILE *f = fopen(path, "rb");
 *         if (!f) return ddt_error(DDT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
 *         DDT_CHECK(parse(f));
 *         ...
 *     }
 */
#ifndef DDT_UTIL_STATUS_H
#define DDT_UTIL_STATUS_H

typedef enum ddt_status {
    DDT_OK = 0,
    DDT_ERR_USAGE,    /* bad option or value given by the user (exit code 2) */
    DDT_ERR_IO,       /* missing, unreadable or unwritable file */
    DDT_ERR_FORMAT,   /* file readable but not what ddtrain expects (not HDF5, wrong shape) */
    DDT_ERR_DATA,     /* values that cannot be trained on (labels out of range, NaN/Inf) */
    DDT_ERR_MEMORY,   /* allocation failed or a memory budget would be exceeded */
    DDT_ERR_COMM,     /* communication failed or ranks disagree */
    DDT_ERR_INTERNAL, /* a bug in ddtrain */
} ddt_status;

/* Records a printf-style message for the calling thread and returns `code` unchanged. The
 * arguments may include ddt_error_message() (to add context to an earlier message). */
ddt_status ddt_error(ddt_status code, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/* The calling thread's last message ("" if none). Valid until the next ddt_error() call. */
const char *ddt_error_message(void);

/* Chain of file:line locations the last error passed through (for DDTRAIN_DEBUG=1 logs). */
const char *ddt_error_trail(void);

/* Appends "file:line" to the trail; used by DDT_CHECK. */
void ddt_error_trace(const char *file, int line);

/* Forgets the calling thread's message and trail. */
void ddt_error_clear(void);

/* Short name of a status code ("io error", "usage error", ...). */
const char *ddt_status_name(ddt_status code);

/* Process exit code for a status: 0 for DDT_OK, 2 for usage errors, 1 otherwise. */
int ddt_status_exit_code(ddt_status code);

#define DDT_CHECK(expr)                                                                            \
    do {                                                                                           \
        ddt_status ddt_check_status_ = (expr);                                                     \
        if (ddt_check_status_ != DDT_OK) {                                                         \
            ddt_error_trace(__FILE__, __LINE__);                                                   \
            return ddt_check_status_;                                                              \
        }                                                                                          \
    } while (0)

/* For functions that clean up: stores the status in `status_var` and jumps to `label`. */
#define DDT_CHECK_GOTO(expr, status_var, label)                                                    \
    do {                                                                                           \
        (status_var) = (expr);                                                                     \
        if ((status_var) != DDT_OK) {                                                              \
            ddt_error_trace(__FILE__, __LINE__);                                                   \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#endif
