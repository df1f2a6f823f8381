/* io_exit.h - whether the process may end through exit() once the io modules are done.
 *
 * HDF5 1.10 keeps a file whose close failed (its final flush hit a full disk) in its tables,
 * and its clean-up at exit then crashes on it. Writers reserve their space first, so this
 * should not happen; if it does anyway, io_exit_must_be_immediate() is true and the program
 * ends with _exit() after its message (the file is a temporary that was deleted).
 */
#ifndef DDT_IO_IO_EXIT_H
#define DDT_IO_IO_EXIT_H

#include <stdbool.h>

bool io_exit_must_be_immediate(void);

#endif
