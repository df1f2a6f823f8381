/* io_exit.c - whether the process may end through exit() (see io_exit.h): the one module of
 * src/io that can leave it unsafe is the HDF5 layer, which knows whether a close failed. */
#include "io/io_exit.h"

#include "io/hdf5_lock.h"

bool io_exit_must_be_immediate(void) {
    return hdf5_shut_down_unsafe();
}
