/* blas_setup.h - making sure OpenBLAS runs its fast kernel on CPUs it does not recognise.
 *
 * OpenBLAS picks its kernel when the library loads, from the CPU model. On CPUs newer than
 * the OpenBLAS build (for example Emerald Rapids with OpenBLAS 0.3.21) it falls back to a
 * generic SSE3 kernel about 5x slower. The kernel can only be chosen through the environment
 * variable OPENBLAS_CORETYPE before the library loads, so blas_setup_kernel() -- called first
 * thing in main(), before MPI_Init -- compares the loaded kernel with what the CPU supports
 * and, if the kernel is older, sets OPENBLAS_CORETYPE and re-executes ddtrain once. That
 * includes an OPENBLAS_CORETYPE already set in the environment to a weaker kernel (machine
 * images do this): ddtrain replaces it and says so at start-up. DDTRAIN_BLAS_FIX=0 keeps
 * whatever OpenBLAS would use.
 */
#ifndef DDT_DRIVER_BLAS_SETUP_H
#define DDT_DRIVER_BLAS_SETUP_H

/* May not return (re-exec). */
void blas_setup_kernel(char **argv);

/* Sets the BLAS thread count for this rank. */
void blas_set_threads(int threads);

/* "OpenBLAS 0.3.21, kernel SkylakeX (chosen by ddtrain: the CPU was not recognised)" */
const char *blas_describe(void);

#endif
