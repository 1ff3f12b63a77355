#include <cblas.h>
/* Declared by OpenBLAS; not part of the reference CBLAS header on every system. */
void openblas_set_num_threads(int num_threads);
