/* gemv_quant.cu: decode's y = W x for Q4_0 and Q8_0 weights (layout: weight_upload.cu) against Q8_0
 * activations (quantize_q8_0.cu), the CPU's arithmetic per block: an exact integer dot of the quants
 * (dp4a), times the product of the two scales, summed in fp32; only the order of that sum differs.
 * One warp per row; a lane takes 16-byte chunks of the row's quants (a whole Q4_0 block, half a Q8_0
 * block), so a warp's loads are 512 consecutive bytes; each lane issues U chunks' loads (weights,
 * activations, scales) before it uses any, to keep several loads in flight. */
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

/* QB: quant bytes per block (16: Q4_0, 32: Q8_0) */
template <int QB>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_quant_kernel(const uint8_t *__restrict__ wq, const uint16_t *__restrict__ wd, const int8_t *__restrict__ aq,
                  const float *__restrict__ ad, float *__restrict__ y, int nr, int nb) {
    constexpr int CPB = QB / 16; /* chunks per block */
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return; /* the whole warp */
    const int nchunks = nb * CPB;
    const uint4 *wrow = (const uint4 *)(wq + (size_t)row * nb * QB);
    const uint16_t *drow = wd + (size_t)row * nb;
    const uint4 *act = (const uint4 *)aq;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float acc = 0.0f;
    for (int c0 = 0; c0 < nchunks; c0 += 32 * U) {
        uint4 w[U], a0[U], a1[U];
        float ds[U];
#pragma unroll
        for (int u = 0; u < U; u++) { /* every load first */
            const int c = c0 + 32 * u + lane;
            const bool in = c < nchunks;
            const int b = c / CPB;
            w[u] = in ? __ldg(wrow + c) : zero;
            if (CPB == 1) { /* Q4_0: the block's 32 activations */
                a0[u] = in ? __ldg(act + 2 * c) : zero;
                a1[u] = in ? __ldg(act + 2 * c + 1) : zero;
            } else { /* Q8_0: this half's 16 */
                a0[u] = in ? __ldg(act + c) : zero;
            }
            ds[u] = in && (CPB == 1 || (lane & 1) == 0) ? pl_h2f(__ldg(drow + b)) * __ldg(ad + b) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            int isum;
            if (CPB == 1) {
                isum = dot4_q4(w[u].x, a0[u].x, a1[u].x, 0);
                isum = dot4_q4(w[u].y, a0[u].y, a1[u].y, isum);
                isum = dot4_q4(w[u].z, a0[u].z, a1[u].z, isum);
                isum = dot4_q4(w[u].w, a0[u].w, a1[u].w, isum);
            } else { /* the block's exact integer sum: this half's plus the neighbour lane's */
                isum = dot16_q8(w[u], a0[u]);
                isum += __shfl_xor_sync(0xffffffffu, isum, 1);
            }
            acc += (float)isum * ds[u]; /* ds is 0 where the chunk is past the row or the odd half */
        }
    }
    acc = pl_warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

int pl_cuda_gemv_quant_launch(const pl_cuda_weight *w, const void *act, float *y, char *err) {
    const int nr = (int)w->ne1, nb = (int)(w->ne0 / PL_CUDA_QK);
    const int qb = w->type == PL_CUDA_Q4_0 ? 16 : 32;
    const uint8_t *wq = (const uint8_t *)w->data;
    const uint16_t *wd = (const uint16_t *)(wq + (size_t)nr * nb * qb);
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)((const char *)act + w->ne0);
    const unsigned grid = (unsigned)((nr + ROWS_PER_CTA - 1) / ROWS_PER_CTA);
    if (qb == 16) PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, 0, gemv_quant_kernel<16>)(wq, wd, aq, ad, y, nr, nb);
    else PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, 0, gemv_quant_kernel<32>)(wq, wd, aq, ad, y, nr, nb);
    return PL_CUDA_LAUNCHED(qb == 16 ? "Q4_0 gemv" : "Q8_0 gemv");
}
