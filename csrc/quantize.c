/* quantize.c: converts float32 rows to any weight type with all threads (used when quantizing
 * a checkpoint while loading it and by tools/quantize.py). Rows are independent, so the result
 * is the same for any thread count. */
#include "pyllm.h"

int pl_quantize_rows(int type, const float *src, void *dst, int64_t rows, int64_t n, int n_threads) {
    if (!pl_type_valid(type)) return -1;
    const size_t rb = pl_type_row_bytes((pl_type)type, n);
    if (rb == 0 || rows < 0) return -1;
    const pl_from_float_fn conv = pl_kernels_active()->types[type].from_float;
#pragma omp parallel for schedule(static) num_threads(n_threads > 0 ? n_threads : 1)
    for (int64_t r = 0; r < rows; r++) conv(src + r * n, (char *)dst + (size_t)r * rb, n);
    return 0;
}
