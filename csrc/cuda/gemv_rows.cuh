/* gemv_rows.cuh: the GEMV kernels of the integer-dot weight types (Q4_0 / Q8_0: gemv_quant.cu; Q4_K / Q5_K /
 * Q6_K: gemv_kquant.cu) written once over a "rows" type R that holds one type's row dot:
 *     R::QK                 values per activation scale (32: Q8_0 activations, 256: Q8_K)
 *     R::dots<T>(wq, wd, row, nb, a, acc)   row `row` of the weight (quants wq, scales wd, nb blocks of QK
 *                           values a row) times T activation rows of a; every lane of the warp calls it and
 *                           every lane gets the T sums
 * One warp per row, PL_GEMV_ROWS_PER_CTA rows a block. A launch takes a group of up to 3 weights of one type and
 * width reading the same activations (q / k / v: the blocks take the first weight's rows, then the
 * second's, ...), or, with SWIGLU, a gate and an up weight: y = silu(gate . x) * (up . x), the product as
 * layer_kernels.cu's swiglu_kernel computes it (the same bits). T tokens per pass over the weights
 * (pl_tokens_this_pass: kernels for T = 1, 2, 3, 4, 8). */
#ifndef PYLLM_CUDA_GEMV_ROWS_CUH
#define PYLLM_CUDA_GEMV_ROWS_CUH

#include "cuda_common.cuh"


/* T activation rows of one pass in pl_cuda.h's layout: row t's quants at q + t * nb * QK, its scales at
 * d + t * nb, (Q8_K) its 16-sums at bs + t * nb * 16 */
typedef struct {
    const int8_t *q;
    const float *d;
    const int16_t *bs;
} pl_act_rows;

template <class R, int T, bool SWIGLU>
__global__ void __launch_bounds__(32 * PL_GEMV_ROWS_PER_CTA)
pl_gemv_rows_kernel(const pl_gemv_group g, const pl_act_rows a, int nb) {
    /* this block's weight, its fields picked with constant indices (a runtime index into the parameter
     * struct would copy it to local memory) */
    const uint8_t *wq = g.wq[0];
    const uint16_t *wd = g.wd[0];
    float *y = g.y[0];
    int ldy = g.ldy[0], nr = g.nr[0], first = 0;
    if (!SWIGLU) {
#pragma unroll
        for (int k = 1; k < PL_GEMV_GROUP_MAX; k++)
            if (k < g.n && (int)blockIdx.x >= g.first_block[k]) {
                wq = g.wq[k];
                wd = g.wd[k];
                y = g.y[k];
                ldy = g.ldy[k];
                nr = g.nr[k];
                first = g.first_block[k];
            }
    }
    const int row = ((int)blockIdx.x - first) * PL_GEMV_ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return; /* the whole warp */
    float acc[T];
    R::template dots<T>(wq, wd, row, nb, a, acc);
    if (SWIGLU) {
        float u[T];
        R::template dots<T>(g.wq[1], g.wd[1], row, nb, a, u);
#pragma unroll
        for (int t = 0; t < T; t++) acc[t] = acc[t] / (1.0f + expf(-acc[t])) * u[t];
    }
    if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int t = 0; t < T; t++) y[(size_t)t * ldy + row] = acc[t];
}

template <class R, bool SWIGLU>
static void pl_gemv_rows_pass(int T, unsigned grid, cudaStream_t st, const pl_gemv_group &g, const pl_act_rows &a, int nb) {
    switch (T) {
    case 1: PL_LAUNCH(grid, 32 * PL_GEMV_ROWS_PER_CTA, 0, st, pl_gemv_rows_kernel<R, 1, SWIGLU>)(g, a, nb); break;
    case 2: PL_LAUNCH(grid, 32 * PL_GEMV_ROWS_PER_CTA, 0, st, pl_gemv_rows_kernel<R, 2, SWIGLU>)(g, a, nb); break;
    case 3: PL_LAUNCH(grid, 32 * PL_GEMV_ROWS_PER_CTA, 0, st, pl_gemv_rows_kernel<R, 3, SWIGLU>)(g, a, nb); break;
    case 4: PL_LAUNCH(grid, 32 * PL_GEMV_ROWS_PER_CTA, 0, st, pl_gemv_rows_kernel<R, 4, SWIGLU>)(g, a, nb); break;
    default: PL_LAUNCH(grid, 32 * PL_GEMV_ROWS_PER_CTA, 0, st, pl_gemv_rows_kernel<R, 8, SWIGLU>)(g, a, nb); break;
    }
}

/* the group's matmuls (or, with swiglu, its gate / up product) for nt activation rows in act, on st */
template <class R>
static int pl_gemv_rows_launch(const pl_gemv_group *g0, const void *act, int nt, int swiglu, cudaStream_t st, char *err,
                               const char *what) {
    const int64_t ne0 = g0->ne0;
    const int nb = (int)(ne0 / R::QK);
    const int8_t *q = (const int8_t *)act;
    const float *d = (const float *)(q + (size_t)nt * ne0);
    const int16_t *bs = R::QK == PL_CUDA_QK_K ? (const int16_t *)(d + (size_t)nt * nb) : NULL;
    const unsigned grid = (unsigned)g0->first_block[swiglu ? 1 : g0->n];
    for (int t0 = 0; t0 < nt;) {
        const int T = pl_tokens_this_pass(nt - t0);
        pl_gemv_group g = *g0;
        for (int i = 0; i < g.n; i++) g.y[i] = g0->y[i] + (size_t)t0 * g0->ldy[i];
        const pl_act_rows a = {q + (size_t)t0 * ne0, d + (size_t)t0 * nb, bs ? bs + (size_t)t0 * (ne0 / 16) : NULL};
        if (swiglu) pl_gemv_rows_pass<R, true>(T, grid, st, g, a, nb);
        else pl_gemv_rows_pass<R, false>(T, grid, st, g, a, nb);
        if (PL_CUDA_LAUNCHED(what)) return -1;
        t0 += T;
    }
    return 0;
}

#endif
