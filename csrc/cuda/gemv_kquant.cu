/* gemv_kquant.cu: y = W x for Q4_K, Q5_K and Q6_K weights (layout: weight_upload.cu, pl_cuda.h) against
 * Q8_K activations (quantize_q8_k.cu), for one token or up to 8 per pass over the weights. Per 256-weight
 * super-block the CPU's arithmetic (types_kquants.c): exact integer sums (each sub-block's dot times its
 * 6-bit / int8 scale, summed; for Q4_K / Q5_K the mins times the activations' 16-sums), then the same
 * float operations in the same order, never fused:
 *   Q4_K / Q5_K: (a.d * d) * (float)isum - (a.d * dmin) * (float)imin      Q6_K: (a.d * d) * (float)isum
 * Only the fp32 sum of those terms over a row's super-blocks is in another order (lanes, then a warp tree).
 * One warp per row; 8 lanes per super-block (4 super-blocks a pass): a Q4_K / Q5_K lane takes 16 bytes of
 * quants (16 weights of two sub-blocks, low and high nibbles), a Q6_K lane 8 bytes of each of its two ql
 * runs and its qh run (32 weights of four 16-weight groups). The 8 lanes' integer sums are combined with
 * shuffles (exact) and the group's first lane adds the super-block's term. The kernels (one weight, a
 * group of weights, gate / up with SwiGLU) are gemv_rows.cuh's over these row dots. */
#include "gemv_rows.cuh"

static __device__ __forceinline__ int group_isum(int v) { /* the sum over the 8 lanes of a super-block */
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v + __shfl_xor_sync(0xffffffffu, v, 4);
}

/* row `row` of a Q4_K (QH 0, 144-byte super-blocks) or Q5_K (QH 1, 176) weight times T activation rows (row t at
 * aq + t * nb * 256 quants, ad + t * nb, bs + t * nb * 16): every lane gets the T sums */
template <int QH, int T>
static __device__ __forceinline__ void q45_k_row_dots(const uint8_t *__restrict__ wq, int row, int nb,
                                                      const int8_t *__restrict__ aq, const float *__restrict__ ad,
                                                      const int16_t *__restrict__ bs, float acc[T]) {
    constexpr int BYTES = QH ? 176 : 144, QS = QH ? 48 : 16;
    const int lane = threadIdx.x & 31, s = lane & 7, c = s >> 1, h = s & 1;
    const uint8_t *wrow = wq + (size_t)row * nb * BYTES;
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    for (int sb0 = 0; sb0 < nb; sb0 += 4) {
        const int sb = sb0 + (lane >> 3);
        const bool in = sb < nb;
        const uint8_t *blk = wrow + (size_t)sb * BYTES;
        const uint4 hd = in ? __ldg((const uint4 *)blk) : zero;
        const uint4 qs = in ? __ldg((const uint4 *)(blk + QS + 32 * c + 16 * h)) : zero;
        const uint4 qh = QH && in ? __ldg((const uint4 *)(blk + 16 + 16 * h)) : zero;
        uint4 alo[T] = {}, ahi[T] = {};
        float da[T] = {};
        int b0[T] = {}, b1[T] = {};
#pragma unroll
        for (int t = 0; t < T; t++) { /* every load first */
            const int8_t *a = aq + ((size_t)t * nb + sb) * PL_CUDA_QK_K + 64 * c + 16 * h;
            const int16_t *b = bs + ((size_t)t * nb + sb) * 16;
            alo[t] = in ? __ldg((const uint4 *)a) : zero;
            ahi[t] = in ? __ldg((const uint4 *)(a + 32)) : zero;
            da[t] = in ? __ldg(ad + (size_t)t * nb + sb) : 0.0f;
            b0[t] = in ? __ldg(b + 4 * c + h) : 0;     /* sub-block 2c: groups 4c, 4c + 1 (this lane: + h) */
            b1[t] = in ? __ldg(b + 4 * c + 2 + h) : 0; /* sub-block 2c + 1 */
        }
        int sc0, m0, sc1, m1;
        pl_kq_scale_min(hd, 2 * c, &sc0, &m0);
        pl_kq_scale_min(hd, 2 * c + 1, &sc1, &m1);
        unsigned wlo[4], whi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const unsigned q = pl_word_of(qs, i);
            wlo[i] = q & 0x0F0F0F0Fu;
            whi[i] = (q >> 4) & 0x0F0F0F0Fu;
            if (QH) { /* the fifth bit of sub-block j's weight l: bit j of qh byte l */
                wlo[i] |= ((pl_word_of(qh, i) >> (2 * c)) & 0x01010101u) << 4;
                whi[i] |= ((pl_word_of(qh, i) >> (2 * c + 1)) & 0x01010101u) << 4;
            }
        }
        const float d = pl_h2f((uint16_t)(hd.x & 0xFFFFu)), dmin = pl_h2f((uint16_t)(hd.x >> 16));
#pragma unroll
        for (int t = 0; t < T; t++) {
            int dlo = 0, dhi = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                dlo = __dp4a((int)wlo[i], (int)pl_word_of(alo[t], i), dlo);
                dhi = __dp4a((int)whi[i], (int)pl_word_of(ahi[t], i), dhi);
            }
            const int isum = group_isum(sc0 * dlo + sc1 * dhi);
            const int imin = group_isum(m0 * b0[t] + m1 * b1[t]);
            if (in && s == 0)
                acc[t] += pl_fsub(pl_fmul(pl_fmul(da[t], d), (float)isum), pl_fmul(pl_fmul(da[t], dmin), (float)imin));
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = pl_warp_sum(acc[t]);
}

/* row `row` of a Q6_K weight (quants and scales at wq + (row * nb + sb) * 208: ql 128, qh 64, int8 scales 16;
 * d at wd) times T activation rows as q45_k_row_dots' */
template <int T>
static __device__ __forceinline__ void q6_k_row_dots(const uint8_t *__restrict__ wq, const uint16_t *__restrict__ wd,
                                                     int row, int nb, const int8_t *__restrict__ aq,
                                                     const float *__restrict__ ad, float acc[T]) {
    const int lane = threadIdx.x & 31, s = lane & 7, hh = s >> 2, p = s & 3; /* half hh, l = 8p .. 8p + 7 */
    const uint8_t *wrow = wq + (size_t)row * nb * 208;
    const uint2 zero = make_uint2(0, 0);
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    for (int sb0 = 0; sb0 < nb; sb0 += 4) {
        const int sb = sb0 + (lane >> 3);
        const bool in = sb < nb;
        const uint8_t *blk = wrow + (size_t)sb * 208;
        const uint2 qa = in ? __ldg((const uint2 *)(blk + 64 * hh + 8 * p)) : zero;      /* ql[l] */
        const uint2 qb = in ? __ldg((const uint2 *)(blk + 64 * hh + 32 + 8 * p)) : zero; /* ql[l + 32] */
        const uint2 qh = in ? __ldg((const uint2 *)(blk + 128 + 32 * hh + 8 * p)) : zero;
        const uint2 scw = in ? __ldg((const uint2 *)(blk + 192 + 8 * hh)) : zero;         /* this half's 8 scales */
        const float d = in ? pl_h2f(__ldg(wd + (size_t)row * nb + sb)) : 0.0f;
        uint2 a[T][4] = {};
        float da[T] = {};
#pragma unroll
        for (int t = 0; t < T; t++) {
            const int8_t *at = aq + ((size_t)t * nb + sb) * PL_CUDA_QK_K + 128 * hh + 8 * p;
#pragma unroll
            for (int k = 0; k < 4; k++) a[t][k] = in ? __ldg((const uint2 *)(at + 32 * k)) : zero;
            da[t] = in ? __ldg(ad + (size_t)t * nb + sb) : 0.0f;
        }
        /* the signed values (q - 32) of weights 32k + l as bytes, k = 0..3, two words of 4 l's each */
        unsigned q[4][2];
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const unsigned la = i ? qa.y : qa.x, lb = i ? qb.y : qb.x, hb = i ? qh.y : qh.x;
            q[0][i] = __vsub4((la & 0x0F0F0F0Fu) | ((hb << 4) & 0x30303030u), 0x20202020u);
            q[1][i] = __vsub4((lb & 0x0F0F0F0Fu) | ((hb << 2) & 0x30303030u), 0x20202020u);
            q[2][i] = __vsub4(((la >> 4) & 0x0F0F0F0Fu) | (hb & 0x30303030u), 0x20202020u);
            q[3][i] = __vsub4(((lb >> 4) & 0x0F0F0F0Fu) | ((hb >> 2) & 0x30303030u), 0x20202020u);
        }
        int sc[4]; /* scale of group 8 hh + 2k + p / 2 */
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int g = 2 * k + (p >> 1);
            sc[k] = (int)(int8_t)(((g < 4 ? scw.x : scw.y) >> (8 * (g & 3))) & 0xFFu);
        }
#pragma unroll
        for (int t = 0; t < T; t++) {
            int part = 0;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int dot = __dp4a((int)q[k][1], (int)a[t][k].y, __dp4a((int)q[k][0], (int)a[t][k].x, 0));
                part += sc[k] * dot;
            }
            const int isum = group_isum(part);
            if (in && s == 0) acc[t] += pl_fmul(pl_fmul(da[t], d), (float)isum);
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = pl_warp_sum(acc[t]);
}

/* the rows types of gemv_rows.cuh */
template <int QH>
struct RowsQ45K {
    static constexpr int QK = PL_CUDA_QK_K;
    template <int T>
    static __device__ __forceinline__ void dots(const uint8_t *wq, const uint16_t *wd, int row, int nb, const pl_act_rows a,
                                                float acc[T]) {
        (void)wd;
        q45_k_row_dots<QH, T>(wq, row, nb, a.q, a.d, a.bs, acc);
    }
};
struct RowsQ6K {
    static constexpr int QK = PL_CUDA_QK_K;
    template <int T>
    static __device__ __forceinline__ void dots(const uint8_t *wq, const uint16_t *wd, int row, int nb, const pl_act_rows a,
                                                float acc[T]) {
        q6_k_row_dots<T>(wq, wd, row, nb, a.q, a.d, acc);
    }
};

int pl_cuda_gemv_rows_q8_k(const pl_gemv_group *g, const void *act, int nt, int swiglu, cudaStream_t st, char *err) {
    if (g->type == PL_CUDA_Q4_K) return pl_gemv_rows_launch<RowsQ45K<0>>(g, act, nt, swiglu, st, err, "Q4_K matmul");
    if (g->type == PL_CUDA_Q5_K) return pl_gemv_rows_launch<RowsQ45K<1>>(g, act, nt, swiglu, st, err, "Q5_K matmul");
    return pl_gemv_rows_launch<RowsQ6K>(g, act, nt, swiglu, st, err, "Q6_K matmul");
}
