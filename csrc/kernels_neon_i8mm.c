/* kernels_neon_i8mm.c: kernels_neon.c built as the "neon-i8mm" table (sdot plus FEAT_I8MM's usdot),
 * compiled with -march=armv8.2-a+dotprod+i8mm; cpu_dispatch.c uses it only when the CPU reports both. */
#define PL_NEON_LEVEL 2
#include "kernels_neon.c"
