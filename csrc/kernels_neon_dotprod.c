/* kernels_neon_dotprod.c: kernels_neon.c built as the "neon-dotprod" table (Armv8.2 sdot), compiled
 * with -march=armv8.2-a+dotprod; cpu_dispatch.c uses it only when the CPU reports dot products. */
#define PL_NEON_LEVEL 1
#include "kernels_neon.c"
