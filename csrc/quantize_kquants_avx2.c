/* quantize_kquants_avx2.c: quantize_kquants.c's search compiled with AVX2 (CMakeLists.txt gives this
 * file -mavx2): pl_kq_quantize_row_avx2, used while a SIMD kernel table is active. Same source, same
 * bytes as the scalar build. */
#define KQ_SIMD_BUILD 1
#define KQ_ROW pl_kq_quantize_row_avx2
#include "quantize_kquants.c"
