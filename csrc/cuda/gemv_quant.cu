/* gemv_quant.cu: y = W x for Q4_0 and Q8_0 weights (layout: weight_upload.cu), for one token (decode) or
 * up to 8 per pass over the weights (small batches, prefill), against Q8_0 activations (quantize_q8_0.cu),
 * the CPU's arithmetic per block: an exact integer dot of the quants
 * (dp4a), times the product of the two scales, summed in fp32; only the order of that sum differs.
 * One warp per row; a lane takes 16-byte chunks of the row's quants (a whole Q4_0 block, half a Q8_0
 * block), so a warp's loads are 512 consecutive bytes; each lane issues U chunks' loads (weights,
 * activations, scales) before it uses any, to keep several loads in flight. Decode also launches q / k / v
 * as one grid (gemv_quant_group_kernel) and gate / up with SwiGLU as one (gemv_quant_swiglu_kernel): the
 * same row dots, fewer launches per step. */
#include <string.h>

#include "cuda_common.cuh"

#define ROWS_PER_CTA 4 /* warps per block of 128 threads */
#define U 4            /* chunks in flight per lane */

static __device__ __forceinline__ int dot16_q8(uint4 w, uint4 a) {
    int s = __dp4a((int)w.x, (int)a.x, 0);
    s = __dp4a((int)w.y, (int)a.y, s);
    s = __dp4a((int)w.z, (int)a.z, s);
    return __dp4a((int)w.w, (int)a.w, s);
}
/* 4 Q4_0 weight bytes: low nibbles (q - 8) against lo, high nibbles (q - 8) against hi */
static __device__ __forceinline__ int dot4_q4(unsigned w, unsigned lo, unsigned hi, int s) {
    s = __dp4a((int)__vsub4(w & 0x0F0F0F0Fu, 0x08080808u), (int)lo, s);
    return __dp4a((int)__vsub4((w >> 4) & 0x0F0F0F0Fu, 0x08080808u), (int)hi, s);
}

/* row `row` of a Q4_0 / Q8_0 weight (quants wq, fp16 scales wd, nb blocks a row) times T activation rows
 * (aq + t * nb * 32 quants, ad + t * nb scales): each lane's share into acc[t], then summed over the warp
 * (every lane gets the T dots). QB: quant bytes per block (16: Q4_0, 32: Q8_0). Every lane of the warp
 * calls it together. */
template <int QB, int T>
static __device__ __forceinline__ void row_dots(const uint8_t *__restrict__ wq, const uint16_t *__restrict__ wd, int row,
                                                int nb, const int8_t *__restrict__ aq, const float *__restrict__ ad,
                                                float acc[T]) {
    constexpr int CPB = QB / 16; /* chunks per block */
    constexpr int UU = T == 1 ? U : 2; /* fewer chunks in flight when each carries T tokens' activations */
    const int lane = threadIdx.x & 31;
    const int nchunks = nb * CPB;
    const uint4 *wrow = (const uint4 *)(wq + (size_t)row * nb * QB);
    const uint16_t *drow = wd + (size_t)row * nb;
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    for (int c0 = 0; c0 < nchunks; c0 += 32 * UU) {
        uint4 w[UU], a0[UU][T], a1[UU][T];
        float dw[UU], da[UU][T];
#pragma unroll
        for (int u = 0; u < UU; u++) { /* every load first */
            const int c = c0 + 32 * u + lane;
            const bool in = c < nchunks;
            const int b = c / CPB;
            w[u] = in ? __ldg(wrow + c) : zero;
            dw[u] = in && (CPB == 1 || (lane & 1) == 0) ? pl_h2f(__ldg(drow + b)) : 0.0f;
#pragma unroll
            for (int t = 0; t < T; t++) {
                const uint4 *act = (const uint4 *)(aq + (size_t)t * nb * PL_CUDA_QK);
                if (CPB == 1) { /* Q4_0: the block's 32 activations */
                    a0[u][t] = in ? __ldg(act + 2 * c) : zero;
                    a1[u][t] = in ? __ldg(act + 2 * c + 1) : zero;
                } else { /* Q8_0: this half's 16 */
                    a0[u][t] = in ? __ldg(act + c) : zero;
                }
                da[u][t] = in ? __ldg(ad + (size_t)t * nb + b) : 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < UU; u++) {
#pragma unroll
            for (int t = 0; t < T; t++) {
                int isum;
                if (CPB == 1) {
                    isum = dot4_q4(w[u].x, a0[u][t].x, a1[u][t].x, 0);
                    isum = dot4_q4(w[u].y, a0[u][t].y, a1[u][t].y, isum);
                    isum = dot4_q4(w[u].z, a0[u][t].z, a1[u][t].z, isum);
                    isum = dot4_q4(w[u].w, a0[u][t].w, a1[u][t].w, isum);
                } else { /* the block's exact integer sum: this half's plus the neighbour lane's */
                    isum = dot16_q8(w[u], a0[u][t]);
                    isum += __shfl_xor_sync(0xffffffffu, isum, 1);
                }
                /* the CPU's block term: the exact integer dot times (weight scale x activation scale);
                 * dw is 0 where the chunk is past the row or the odd half */
                acc[t] += (float)isum * (dw[u] * da[u][t]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = pl_warp_sum(acc[t]);
}

/* y[t * ldy + row] = row . activation row t: one warp per row */
template <int QB, int T>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_quant_kernel(const uint8_t *__restrict__ wq, const uint16_t *__restrict__ wd, const int8_t *__restrict__ aq,
                  const float *__restrict__ ad, float *__restrict__ y, int ldy, int nr, int nb) {
    const int row = blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return; /* the whole warp */
    float acc[T];
    row_dots<QB, T>(wq, wd, row, nb, aq, ad, acc);
    if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int t = 0; t < T; t++) y[(size_t)t * ldy + row] = acc[t];
}

/* up to 3 weights of one type and width reading the same activations (q / k / v), in one launch: the
 * blocks take the first weight's rows, then the second's, ...; each row as gemv_quant_kernel */
#define GROUP_MAX 3
typedef struct {
    const uint8_t *wq[GROUP_MAX];
    const uint16_t *wd[GROUP_MAX];
    float *y[GROUP_MAX];
    int ldy[GROUP_MAX], nr[GROUP_MAX], first_block[GROUP_MAX + 1];
    int n;
} gemv_group;

template <int QB, int T>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_quant_group_kernel(const gemv_group g, const int8_t *__restrict__ aq, const float *__restrict__ ad, int nb) {
    int i = 0;
    while (i + 1 < g.n && (int)blockIdx.x >= g.first_block[i + 1]) i++;
    const int row = ((int)blockIdx.x - g.first_block[i]) * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= g.nr[i]) return; /* the whole warp */
    float acc[T];
    row_dots<QB, T>(g.wq[i], g.wd[i], row, nb, aq, ad, acc);
    if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int t = 0; t < T; t++) g.y[i][(size_t)t * g.ldy[i] + row] = acc[t];
}

/* the FFN's gate and up rows and SwiGLU in one launch: y[t * ldy + row] = silu(gate . x_t) * (up . x_t),
 * each dot as gemv_quant_kernel's and the product as layer_kernels.cu's swiglu_kernel (the same bits) */
template <int QB, int T>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_quant_swiglu_kernel(const uint8_t *__restrict__ gq, const uint16_t *__restrict__ gd, const uint8_t *__restrict__ uq,
                         const uint16_t *__restrict__ ud, const int8_t *__restrict__ aq, const float *__restrict__ ad,
                         float *__restrict__ y, int ldy, int nr, int nb) {
    const int row = blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return; /* the whole warp */
    float g[T], u[T];
    row_dots<QB, T>(gq, gd, row, nb, aq, ad, g);
    row_dots<QB, T>(uq, ud, row, nb, aq, ad, u);
    if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int t = 0; t < T; t++) y[(size_t)t * ldy + row] = g[t] / (1.0f + expf(-g[t])) * u[t];
}

/* a launch per T (the kernels are instantiated for T = 1, 2, 3, 4, 8: pl_tokens_this_pass) */
#define LAUNCH_T(T, grid, st, kernel, QB, ...)                                                          \
    switch (T) {                                                                                       \
    case 1: PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, kernel<QB, 1>)(__VA_ARGS__); break;              \
    case 2: PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, kernel<QB, 2>)(__VA_ARGS__); break;              \
    case 3: PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, kernel<QB, 3>)(__VA_ARGS__); break;              \
    case 4: PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, kernel<QB, 4>)(__VA_ARGS__); break;              \
    default: PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, kernel<QB, 8>)(__VA_ARGS__); break;             \
    }

/* a Q4_0 / Q8_0 weight's parts (weight_upload.cu's layout: all quants, then all fp16 scales) */
static void quant_parts(const pl_cuda_weight *w, const uint8_t **wq, const uint16_t **wd) {
    const size_t nb = (size_t)(w->ne0 / PL_CUDA_QK), qb = w->type == PL_CUDA_Q4_0 ? 16 : 32;
    *wq = (const uint8_t *)w->data;
    *wd = (const uint16_t *)(*wq + (size_t)w->ne1 * nb * qb);
}

static unsigned grid_rows(int64_t nr) { return (unsigned)((nr + ROWS_PER_CTA - 1) / ROWS_PER_CTA); }

int pl_cuda_matmul_quant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                char *err) {
    const int nr = (int)w->ne1, nb = (int)(w->ne0 / PL_CUDA_QK);
    const uint8_t *wq;
    const uint16_t *wd;
    quant_parts(w, &wq, &wd);
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)((const char *)act + (size_t)nt * w->ne0); /* pl_cuda.h's layout, nt rows */
    for (int t0 = 0; t0 < nt;) {
        const int T = pl_tokens_this_pass(nt - t0);
        const int8_t *aqt = aq + (size_t)t0 * w->ne0;
        const float *adt = ad + (size_t)t0 * nb;
        float *yt = y + (size_t)t0 * ldy;
        if (w->type == PL_CUDA_Q4_0) LAUNCH_T(T, grid_rows(nr), st, gemv_quant_kernel, 16, wq, wd, aqt, adt, yt, ldy, nr, nb)
        else LAUNCH_T(T, grid_rows(nr), st, gemv_quant_kernel, 32, wq, wd, aqt, adt, yt, ldy, nr, nb)
        if (PL_CUDA_LAUNCHED(w->type == PL_CUDA_Q4_0 ? "Q4_0 matmul" : "Q8_0 matmul")) return -1;
        t0 += T;
    }
    return 0;
}

int pl_cuda_gemv_group_ok(const pl_cuda_weight *const *ws, int n) {
    if (n < 1 || n > GROUP_MAX || (ws[0]->type != PL_CUDA_Q4_0 && ws[0]->type != PL_CUDA_Q8_0)) return 0;
    for (int i = 1; i < n; i++)
        if (ws[i]->type != ws[0]->type || ws[i]->ne0 != ws[0]->ne0) return 0;
    return 1;
}

int pl_cuda_gemv_group_launch(const pl_cuda_weight *const *ws, float *const *ys, const int *ldy, int n, const void *act,
                              int nt, cudaStream_t st, char *err) {
    if (!pl_cuda_gemv_group_ok(ws, n)) return PL_CUDA_ERR("grouped matmul: weights of different types or widths");
    const int64_t ne0 = ws[0]->ne0;
    const int nb = (int)(ne0 / PL_CUDA_QK);
    gemv_group g;
    memset(&g, 0, sizeof g);
    g.n = n;
    unsigned blocks = 0;
    for (int i = 0; i < n; i++) {
        quant_parts(ws[i], &g.wq[i], &g.wd[i]);
        g.nr[i] = (int)ws[i]->ne1;
        g.first_block[i] = (int)blocks;
        blocks += grid_rows(ws[i]->ne1);
    }
    g.first_block[n] = (int)blocks;
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)((const char *)act + (size_t)nt * ne0);
    for (int t0 = 0; t0 < nt;) {
        const int T = pl_tokens_this_pass(nt - t0);
        gemv_group gt = g;
        for (int i = 0; i < n; i++) {
            gt.y[i] = ys[i] + (size_t)t0 * ldy[i];
            gt.ldy[i] = ldy[i];
        }
        const int8_t *aqt = aq + (size_t)t0 * ne0;
        const float *adt = ad + (size_t)t0 * nb;
        if (ws[0]->type == PL_CUDA_Q4_0) LAUNCH_T(T, blocks, st, gemv_quant_group_kernel, 16, gt, aqt, adt, nb)
        else LAUNCH_T(T, blocks, st, gemv_quant_group_kernel, 32, gt, aqt, adt, nb)
        if (PL_CUDA_LAUNCHED("grouped Q4_0 / Q8_0 matmul")) return -1;
        t0 += T;
    }
    return 0;
}

int pl_cuda_gemv_swiglu_launch(const pl_cuda_weight *gate, const pl_cuda_weight *up, const void *act, int nt, float *y,
                               int ldy, cudaStream_t st, char *err) {
    const pl_cuda_weight *ws[2] = {gate, up};
    if (!pl_cuda_gemv_group_ok(ws, 2) || gate->ne1 != up->ne1)
        return PL_CUDA_ERR("gate / up matmul: weights of different types or shapes");
    const int nr = (int)gate->ne1, nb = (int)(gate->ne0 / PL_CUDA_QK);
    const uint8_t *gq, *uq;
    const uint16_t *gd, *ud;
    quant_parts(gate, &gq, &gd);
    quant_parts(up, &uq, &ud);
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)((const char *)act + (size_t)nt * gate->ne0);
    for (int t0 = 0; t0 < nt;) {
        const int T = pl_tokens_this_pass(nt - t0);
        const int8_t *aqt = aq + (size_t)t0 * gate->ne0;
        const float *adt = ad + (size_t)t0 * nb;
        float *yt = y + (size_t)t0 * ldy;
        if (gate->type == PL_CUDA_Q4_0)
            LAUNCH_T(T, grid_rows(nr), st, gemv_quant_swiglu_kernel, 16, gq, gd, uq, ud, aqt, adt, yt, ldy, nr, nb)
        else LAUNCH_T(T, grid_rows(nr), st, gemv_quant_swiglu_kernel, 32, gq, gd, uq, ud, aqt, adt, yt, ldy, nr, nb)
        if (PL_CUDA_LAUNCHED("gate / up matmul with SwiGLU")) return -1;
        t0 += T;
    }
    return 0;
}
