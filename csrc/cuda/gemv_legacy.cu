/* gemv_legacy.cu: y = W x for Q4_1, Q5_0 and Q5_1 weights (layout: weight_upload.cu, pl_cuda.h), the types the
 * K-quant mixes fall back to for rows that are not whole 256-weight super-blocks, against Q8_0 activations
 * (quantize_q8_0.cu), one token or up to 8 per pass over the weights. Per 32-weight block the CPU's
 * arithmetic (types_kquants.c): an exact integer dot (Q5_0: of q - 16; Q4_1 / Q5_1: of the unsigned q, and
 * the exact sum of the activations' quants), then the same float operations, unfused:
 *   Q5_0: (float)isum * (d * d8)      Q4_1 / Q5_1: (float)isum * (d * d8) + (float)sum8 * (m * d8)
 * summed in fp32 in another order than the CPU's. One warp per row, a block per lane per step. */
#include "cuda_common.cuh"

#define ROWS_PER_CTA 4

static __device__ __forceinline__ unsigned word_of(uint4 v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
/* bits 0..3 of b to bit 4 of bytes 0..3 */
static __device__ __forceinline__ unsigned spread4(unsigned b) {
    return ((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25);
}

/* HAS_M: Q4_1 / Q5_1 (a min m), HAS_QH: Q5_0 / Q5_1 (fifth bits). wq: nibbles (16 bytes a block), wh: fifth
 * bits, wd / wm: fp16 d / m, all [row][block]; activations as gemv_quant.cu's */
template <int HAS_M, int HAS_QH, int T>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_legacy_kernel(const uint4 *__restrict__ wq, const uint32_t *__restrict__ wh, const uint16_t *__restrict__ wd,
                   const uint16_t *__restrict__ wm, const int8_t *__restrict__ aq, const float *__restrict__ ad,
                   float *__restrict__ y, int ldy, int nr, int nb) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return;
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    for (int b0 = 0; b0 < nb; b0 += 32) {
        const int b = b0 + lane;
        if (b >= nb) break; /* no collectives below: lanes may leave */
        const size_t g = (size_t)row * nb + b;
        const uint4 qs = __ldg(wq + g);
        const unsigned qh = HAS_QH ? __ldg(wh + g) : 0u;
        const float d = pl_h2f(__ldg(wd + g)), m = HAS_M ? pl_h2f(__ldg(wm + g)) : 0.0f;
        uint4 a0[T], a1[T];
        float da[T];
#pragma unroll
        for (int t = 0; t < T; t++) {
            const uint4 *act = (const uint4 *)(aq + ((size_t)t * nb + b) * PL_CUDA_QK);
            a0[t] = __ldg(act);
            a1[t] = __ldg(act + 1);
            da[t] = __ldg(ad + (size_t)t * nb + b);
        }
        unsigned lo[4], hi[4]; /* weights 4i..4i+3 and 16 + 4i.. as bytes (Q5_0: q - 16, signed) */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const unsigned w = word_of(qs, i);
            lo[i] = w & 0x0F0F0F0Fu;
            hi[i] = (w >> 4) & 0x0F0F0F0Fu;
            if (HAS_QH) {
                lo[i] |= spread4((qh >> (4 * i)) & 0xFu);
                hi[i] |= spread4((qh >> (16 + 4 * i)) & 0xFu);
            }
            if (!HAS_M) {
                lo[i] = __vsub4(lo[i], 0x10101010u);
                hi[i] = __vsub4(hi[i], 0x10101010u);
            }
        }
#pragma unroll
        for (int t = 0; t < T; t++) {
            int isum = 0, sum8 = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                isum = __dp4a((int)lo[i], (int)word_of(a0[t], i), isum);
                isum = __dp4a((int)hi[i], (int)word_of(a1[t], i), isum);
                if (HAS_M) {
                    sum8 = __dp4a(0x01010101, (int)word_of(a0[t], i), sum8);
                    sum8 = __dp4a(0x01010101, (int)word_of(a1[t], i), sum8);
                }
            }
            float term = pl_fmul((float)isum, pl_fmul(d, da[t]));
            if (HAS_M) term = pl_fadd(term, pl_fmul((float)sum8, pl_fmul(m, da[t])));
            acc[t] += term;
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) {
        const float r = pl_warp_sum(acc[t]);
        if (lane == 0) y[(size_t)t * ldy + row] = r;
    }
}

template <int T>
static void launch_t(int type, unsigned grid, cudaStream_t st, const uint4 *wq, const uint32_t *wh, const uint16_t *wd,
                     const uint16_t *wm, const int8_t *aq, const float *ad, float *y, int ldy, int nr, int nb) {
    if (type == PL_CUDA_Q4_1)
        PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, gemv_legacy_kernel<1, 0, T>)(wq, wh, wd, wm, aq, ad, y, ldy, nr, nb);
    else if (type == PL_CUDA_Q5_0)
        PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, gemv_legacy_kernel<0, 1, T>)(wq, wh, wd, wm, aq, ad, y, ldy, nr, nb);
    else
        PL_LAUNCH(grid, 32 * ROWS_PER_CTA, 0, st, gemv_legacy_kernel<1, 1, T>)(wq, wh, wd, wm, aq, ad, y, ldy, nr, nb);
}

int pl_cuda_matmul_legacy_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                 char *err) {
    const int nr = (int)w->ne1, nb = (int)(w->ne0 / PL_CUDA_QK);
    const size_t nblocks = (size_t)nr * nb;
    const int has_qh = w->type != PL_CUDA_Q4_1;
    const uint4 *wq = (const uint4 *)w->data;
    const uint32_t *wh = (const uint32_t *)((const uint8_t *)w->data + nblocks * 16);
    const uint16_t *wd = (const uint16_t *)(wh + (has_qh ? nblocks : 0)), *wm = wd + nblocks;
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)(aq + (size_t)nt * w->ne0); /* pl_cuda.h's Q8_0 layout, nt rows */
    const unsigned grid = (unsigned)((nr + ROWS_PER_CTA - 1) / ROWS_PER_CTA);
    for (int t0 = 0; t0 < nt;) {
        const int left = nt - t0;
        const int T = pl_tokens_this_pass(left);
        const int8_t *aqt = aq + (size_t)t0 * w->ne0;
        const float *adt = ad + (size_t)t0 * nb;
        float *yt = y + (size_t)t0 * ldy;
        switch (T) {
        case 1: launch_t<1>(w->type, grid, st, wq, wh, wd, wm, aqt, adt, yt, ldy, nr, nb); break;
        case 2: launch_t<2>(w->type, grid, st, wq, wh, wd, wm, aqt, adt, yt, ldy, nr, nb); break;
        case 3: launch_t<3>(w->type, grid, st, wq, wh, wd, wm, aqt, adt, yt, ldy, nr, nb); break;
        case 4: launch_t<4>(w->type, grid, st, wq, wh, wd, wm, aqt, adt, yt, ldy, nr, nb); break;
        default: launch_t<8>(w->type, grid, st, wq, wh, wd, wm, aqt, adt, yt, ldy, nr, nb); break;
        }
        if (PL_CUDA_LAUNCHED(w->type == PL_CUDA_Q4_1 ? "Q4_1 matmul" : w->type == PL_CUDA_Q5_0 ? "Q5_0 matmul" : "Q5_1 matmul"))
            return -1;
        t0 += T;
    }
    return 0;
}
