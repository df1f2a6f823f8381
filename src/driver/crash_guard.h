/* crash_guard.h - a crash or an endless loop inside HDF5, on a damaged file, ends the rank
 * with a message naming the file instead of a core dump or a hang.
 *
 * HDF5 1.10.8 crashes on some damaged files (SIGSEGV in H5Dread -> H5VM_memcpyvv on a
 * bit-flipped dataset header; h5dump may crash too), and 1.10.8 to 2.0.0 loop forever on
 * others (see io/read_guard.h). The guard has two parts:
 *   - handlers for SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT: if the faulting thread was
 *     reading a file through HDF5 (read_guard_current()), they print
 *     "ddtrain: error (rank R of N on HOST): HDF5 crashed (SIGSEGV) while reading FILE: ..."
 *     and _exit(1); otherwise they restore the default action, so a crash anywhere else still
 *     dumps core as before;
 *   - a watchdog thread that ends the rank the same way when one HDF5 read step has lasted
 *     longer than `stall_seconds` (--comm-timeout: no rank waits longer than that for another
 *     anyway). Time in which the process did not run (stopped by SIGSTOP, then continued)
 *     does not count, so a rank continued after a stop does not blame the file it was
 *     reading.
 * A rank that exits non-zero makes mpirun end the others; under srun, the others end when
 * their next collective times out (--comm-timeout) naming the lost rank.
 *
 * Usage (main, once, after the options are known):
 *     crash_guard_install(&j, opts.comm_timeout);
 */
#ifndef DDT_DRIVER_CRASH_GUARD_H
#define DDT_DRIVER_CRASH_GUARD_H

#include "driver/job.h"

/* Installs the handlers (with an alternate signal stack for the calling thread) and, unless
 * stall_seconds is 0 (no limit), starts the watchdog thread (detached; it lives as long as the
 * process). Once per process. */
void crash_guard_install(const job *j, double stall_seconds);

#endif
