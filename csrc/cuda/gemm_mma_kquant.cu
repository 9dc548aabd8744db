/* gemm_mma_kquant.cu: y = W x for Q4_K / Q5_K / Q6_K weights (layout: pl_cuda.h) and many tokens at once
 * (prefill) on the tensor cores, against Q8_K activations (quantize_q8_k.cu). mma.sync m16n8k32 (int8 in,
 * int32 out: pl_mma_s8_m16n8k32, cuda_common.cuh) gives each (row, token) the exact integer dot of one
 * 32-weight sub-block (Q4_K / Q5_K) or of one 16-weight group (Q6_K: the k step's other group zeroed in A,
 * a second mma for it), which is multiplied by its scale and summed in int32 (isum); Q4_K / Q5_K's imin (the
 * mins times the activations' 16-sums) comes from two more mma per tile (the sums split into int8 halves).
 * Per super-block then the CPU's (types_kquants.c) and
 * the GEMV's (gemv_kquant.cu) float operations, unfused:
 *   Q4_K / Q5_K: acc += (a.d * d) * (float)isum - (a.d * dmin) * (float)imin     Q6_K: acc += (a.d * d) * (float)isum
 * super-blocks in order, as the CPU's scalar loop: so the result is the CPU's bit for bit (the GEMV's differs
 * by its fp32 summation order).
 * Tiles as gemm_mma.cu: 4 warps take 64 rows x 64 tokens, a warp 16 rows x 8 tiles of 8 tokens; fragments
 * come straight from global memory (a k step's activations are shared by the 4 warps through L1) in the
 * PTX layout (lane = 4 g + i; A: rows g, g + 8; B: token g of a tile; C: rows g, g + 8, tokens 2i, 2i + 1),
 * with k permuted inside each 32-weight run (a dot does not depend on the order; A and B use the same):
 * lane i holds weights 8i..8i+7 of the run as fragment columns 4i..4i+3 (a[0], a[1], b[0]) and
 * 16+4i..16+4i+3 (a[2], a[3], b[1]), so a row's or a token's 32 bytes are one 8-byte load per lane. A Q6_K
 * run's first group (weights 0..15) is then lanes 0, 1's, its second lanes 2, 3's. Values are unpacked to
 * int8 in registers: Q4_K / Q5_K 0..31 (the mins apart), Q6_K q - 32. */
#include "model_internal.cuh"

#define MMA_ROWS 64   /* weight rows per block (4 warps x 16) */
#define MMA_TOKENS 64 /* tokens per block (8 tiles of 8) */
#define NT (MMA_TOKENS / 8)

/* the C fragments' integer sums of a super-block, scaled into acc, and y written: what both kernels share */
struct kq_tile {
    int lane, g, i, r0, t0, ra, rb;
    int tok[NT]; /* this lane's B token of each tile (clamped into the batch: loads only) */
};

static __device__ __forceinline__ kq_tile kq_tile_of(int nr, int nt) {
    kq_tile t;
    t.lane = threadIdx.x & 31;
    t.g = t.lane >> 2;
    t.i = t.lane & 3;
    t.r0 = blockIdx.x * MMA_ROWS + (threadIdx.x >> 5) * 16;
    t.t0 = blockIdx.y * MMA_TOKENS;
    t.ra = min(t.r0 + t.g, nr - 1); /* this lane's two weight rows, clamped likewise */
    t.rb = min(t.r0 + t.g + 8, nr - 1);
#pragma unroll
    for (int n = 0; n < NT; n++) t.tok[n] = min(t.t0 + 8 * n + t.g, nt - 1);
    return t;
}

/* the token of C element e (0: 2i, 1: 2i + 1) of tile n, clamped */
static __device__ __forceinline__ int kq_ctok(const kq_tile &t, int n, int e, int nt) {
    return min(t.t0 + 8 * n + 2 * t.i + e, nt - 1);
}

static __device__ __forceinline__ void kq_store(const kq_tile &t, const float (*acc)[4], float *y, int ldy, int nr,
                                                int nt) {
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const int tc0 = t.t0 + 8 * n + 2 * t.i, tc1 = tc0 + 1;
        if (t.r0 + t.g < nr) {
            if (tc0 < nt) y[(size_t)tc0 * ldy + t.r0 + t.g] = acc[n][0];
            if (tc1 < nt) y[(size_t)tc1 * ldy + t.r0 + t.g] = acc[n][1];
        }
        if (t.r0 + t.g + 8 < nr) {
            if (tc0 < nt) y[(size_t)tc0 * ldy + t.r0 + t.g + 8] = acc[n][2];
            if (tc1 < nt) y[(size_t)tc1 * ldy + t.r0 + t.g + 8] = acc[n][3];
        }
    }
}

/* Q4_K (QH 0, 144-byte super-blocks: d, dmin, scales, qs) and Q5_K (QH 1, 176: d, dmin, scales, qh, qs).
 * Activation row t: quants at aq + t * nb * 256, d at ad + t * nb, 16-sums at bs + t * nb * 16 */
template <int QH>
__global__ void __launch_bounds__(128)
gemm_mma_q45_k_kernel(const uint8_t *__restrict__ wq, const int8_t *__restrict__ aq, const float *__restrict__ ad,
                      const int16_t *__restrict__ bs, float *__restrict__ y, int ldy, int nr, int nb, int nt) {
    constexpr int BYTES = QH ? 176 : 144, QS = QH ? 48 : 16;
    const kq_tile t = kq_tile_of(nr, nt);
    if (t.r0 >= nr) return; /* the whole warp */
    const int ne0 = nb * PL_CUDA_QK_K, i = t.i;
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int sb = 0; sb < nb; sb++) {
        const uint8_t *ba = wq + ((size_t)t.ra * nb + sb) * BYTES, *bb = wq + ((size_t)t.rb * nb + sb) * BYTES;
        const uint4 ha = __ldg((const uint4 *)ba), hb = __ldg((const uint4 *)bb);
        /* Q5_K: the fifth bits of weights 8i..8i+7 of every sub-block (bit j of byte l: sub-block j, weight l) */
        const uint2 qha = QH ? __ldg((const uint2 *)(ba + 16 + 8 * i)) : make_uint2(0, 0);
        const uint2 qhb = QH ? __ldg((const uint2 *)(bb + 16 + 8 * i)) : make_uint2(0, 0);
        int isum[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) isum[n][0] = isum[n][1] = isum[n][2] = isum[n][3] = 0;
#pragma unroll 1
        for (int c = 0; c < 4; c++) { /* qs bytes 32c..32c+31: sub-block 2c (low nibbles) and 2c + 1 (high) */
            const uint2 wa = __ldg((const uint2 *)(ba + QS + 32 * c + 8 * i));
            const uint2 wb = __ldg((const uint2 *)(bb + QS + 32 * c + 8 * i));
            const unsigned w[4] = {wa.x, wb.x, wa.y, wb.y}, h[4] = {qha.x, qhb.x, qha.y, qhb.y};
            unsigned alo[4], ahi[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                alo[r] = w[r] & 0x0F0F0F0Fu;
                ahi[r] = (w[r] >> 4) & 0x0F0F0F0Fu;
                if (QH) {
                    alo[r] |= ((h[r] >> (2 * c)) & 0x01010101u) << 4;
                    ahi[r] |= ((h[r] >> (2 * c + 1)) & 0x01010101u) << 4;
                }
            }
            int sa0, sa1, sb0, sb1, unused;
            pl_kq_scale_min(ha, 2 * c, &sa0, &unused);
            pl_kq_scale_min(ha, 2 * c + 1, &sa1, &unused);
            pl_kq_scale_min(hb, 2 * c, &sb0, &unused);
            pl_kq_scale_min(hb, 2 * c + 1, &sb1, &unused);
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int8_t *pt = aq + (size_t)t.tok[n] * ne0 + (size_t)sb * PL_CUDA_QK_K + 64 * c + 8 * i;
                const uint2 xlo = __ldg((const uint2 *)pt), xhi = __ldg((const uint2 *)(pt + 32));
                const unsigned blo[2] = {xlo.x, xlo.y}, bhi[2] = {xhi.x, xhi.y};
                int dlo[4] = {0, 0, 0, 0}, dhi[4] = {0, 0, 0, 0};
                pl_mma_s8_m16n8k32(dlo, alo, blo);
                pl_mma_s8_m16n8k32(dhi, ahi, bhi);
                isum[n][0] += sa0 * dlo[0] + sa1 * dhi[0];
                isum[n][1] += sa0 * dlo[1] + sa1 * dhi[1];
                isum[n][2] += sb0 * dlo[2] + sb1 * dhi[2];
                isum[n][3] += sb0 * dlo[3] + sb1 * dhi[3];
            }
        }
        /* imin on the tensor cores as well: imin = sum_j m_j S_j, S_j the sub-block's two 16-sums added (-4096..
         * 4064) = 64 hi_j + lo_j (hi = S_j >> 6: -64..63, lo = S_j & 63: both int8), so imin = 64 C_hi + C_lo,
         * two mma with A = the 8 mins in columns 0..7 and B = the token's hi or lo in rows 0..7 (lanes 0, 1:
         * 4i..4i+3; lanes 2, 3 zero, branch-free so that the warp stays converged) */
        const unsigned keep = i < 2 ? 0xFFFFFFFFu : 0u;
        unsigned am[4] = {0u, 0u, 0u, 0u};
        int unused;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int m;
            pl_kq_scale_min(ha, 4 * (i & 1) + e, &unused, &m);
            am[0] |= (unsigned)m << (8 * e);
            pl_kq_scale_min(hb, 4 * (i & 1) + e, &unused, &m);
            am[1] |= (unsigned)m << (8 * e);
        }
        am[0] &= keep;
        am[1] &= keep;
        const float da = pl_h2f((uint16_t)(ha.x & 0xFFFFu)), dmina = pl_h2f((uint16_t)(ha.x >> 16));
        const float db = pl_h2f((uint16_t)(hb.x & 0xFFFFu)), dminb = pl_h2f((uint16_t)(hb.x >> 16));
#pragma unroll
        for (int n = 0; n < NT; n++) {
            /* token g's sums of sub-blocks 4 (i & 1) .. + 3 as 4 words (4-byte aligned: they follow nt * nb fp32 d's) */
            const unsigned *sw = (const unsigned *)(bs + ((size_t)t.tok[n] * nb + sb) * 16) + 4 * (i & 1);
            unsigned bh[2] = {0u, 0u}, bl[2] = {0u, 0u};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const unsigned v = __ldg(sw + e);
                const int sj = (int)(int16_t)(v & 0xFFFFu) + (int)(int16_t)(v >> 16);
                bh[0] |= (unsigned)((sj >> 6) & 0xFF) << (8 * e);
                bl[0] |= (unsigned)(sj & 63) << (8 * e);
            }
            bh[0] &= keep;
            bl[0] &= keep;
            int ch[4] = {0, 0, 0, 0}, cl[4] = {0, 0, 0, 0};
            pl_mma_s8_m16n8k32(ch, am, bh);
            pl_mma_s8_m16n8k32(cl, am, bl);
#pragma unroll
            for (int e = 0; e < 2; e++) { /* C elements e (row g) and 2 + e (row g + 8): token 2i + e */
                const float xd = __ldg(ad + (size_t)kq_ctok(t, n, e, nt) * nb + sb);
                const int imina = 64 * ch[e] + cl[e], iminb = 64 * ch[2 + e] + cl[2 + e];
                acc[n][e] +=
                    pl_fsub(pl_fmul(pl_fmul(xd, da), (float)isum[n][e]), pl_fmul(pl_fmul(xd, dmina), (float)imina));
                acc[n][2 + e] +=
                    pl_fsub(pl_fmul(pl_fmul(xd, db), (float)isum[n][2 + e]), pl_fmul(pl_fmul(xd, dminb), (float)iminb));
            }
        }
    }
    kq_store(t, acc, y, ldy, nr, nt);
}

/* Q6_K: ql, qh and int8 scales at wq + (row * nb + sb) * 208 (ql 128, qh 64, scales 16), fp16 d at wd.
 * Weight 128 h + 32 k + l (h 0..1, k 0..3, l 0..31) is group 8 h + 2 k + l / 16 */
__global__ void __launch_bounds__(128)
gemm_mma_q6_k_kernel(const uint8_t *__restrict__ wq, const uint16_t *__restrict__ wd, const int8_t *__restrict__ aq,
                     const float *__restrict__ ad, float *__restrict__ y, int ldy, int nr, int nb, int nt) {
    const kq_tile t = kq_tile_of(nr, nt);
    if (t.r0 >= nr) return; /* the whole warp */
    const int ne0 = nb * PL_CUDA_QK_K, i = t.i;
    const bool first = i < 2; /* this lane's weights 8i..8i+7 of a run are in its first group */
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int sb = 0; sb < nb; sb++) {
        const uint8_t *ba = wq + ((size_t)t.ra * nb + sb) * 208, *bb = wq + ((size_t)t.rb * nb + sb) * 208;
        const uint4 sca = __ldg((const uint4 *)(ba + 192)), scb = __ldg((const uint4 *)(bb + 192));
        int isum[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) isum[n][0] = isum[n][1] = isum[n][2] = isum[n][3] = 0;
#pragma unroll 1
        for (int hk = 0; hk < 8; hk++) { /* the run of weights 32 hk .. 32 hk + 31 */
            const int h = hk >> 2, k = hk & 3;
            /* ql: k = 0, 2 low / high nibbles of ql[64h + l], k = 1, 3 of ql[64h + 32 + l];
             * qh[32h + l]: bits 2k, 2k + 1 */
            const int lo = 64 * h + 32 * (k & 1) + 8 * i, hi = 128 + 32 * h + 8 * i;
            const uint2 la = __ldg((const uint2 *)(ba + lo)), lb = __ldg((const uint2 *)(bb + lo));
            const uint2 qa = __ldg((const uint2 *)(ba + hi)), qb = __ldg((const uint2 *)(bb + hi));
            const unsigned l4[4] = {la.x, lb.x, la.y, lb.y}, h2[4] = {qa.x, qb.x, qa.y, qb.y};
            unsigned a1[4], a2[4]; /* A with only the first group's weights, with only the second's */
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const unsigned q =
                    ((l4[r] >> (4 * (k >> 1))) & 0x0F0F0F0Fu) | (((h2[r] >> (2 * k)) & 0x03030303u) << 4);
                const unsigned v = __vsub4(q, 0x20202020u);
                a1[r] = first ? v : 0u;
                a2[r] = first ? 0u : v;
            }
            const int ga = 8 * h + 2 * k; /* the run's first group */
            const int sa1 = (int)(int8_t)pl_byte_of(sca, ga), sa2 = (int)(int8_t)pl_byte_of(sca, ga + 1);
            const int sb1 = (int)(int8_t)pl_byte_of(scb, ga), sb2 = (int)(int8_t)pl_byte_of(scb, ga + 1);
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const int8_t *pt = aq + (size_t)t.tok[n] * ne0 + (size_t)sb * PL_CUDA_QK_K + 32 * hk + 8 * i;
                const uint2 x = __ldg((const uint2 *)pt);
                const unsigned b[2] = {x.x, x.y};
                int d1[4] = {0, 0, 0, 0}, d2[4] = {0, 0, 0, 0};
                pl_mma_s8_m16n8k32(d1, a1, b);
                pl_mma_s8_m16n8k32(d2, a2, b);
                isum[n][0] += sa1 * d1[0] + sa2 * d2[0];
                isum[n][1] += sa1 * d1[1] + sa2 * d2[1];
                isum[n][2] += sb1 * d1[2] + sb2 * d2[2];
                isum[n][3] += sb1 * d1[3] + sb2 * d2[3];
            }
        }
        const float da = pl_h2f(__ldg(wd + (size_t)t.ra * nb + sb)), db = pl_h2f(__ldg(wd + (size_t)t.rb * nb + sb));
#pragma unroll
        for (int n = 0; n < NT; n++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float xd = __ldg(ad + (size_t)kq_ctok(t, n, e, nt) * nb + sb);
                acc[n][e] += pl_fmul(pl_fmul(xd, da), (float)isum[n][e]);
                acc[n][2 + e] += pl_fmul(pl_fmul(xd, db), (float)isum[n][2 + e]);
            }
        }
    }
    kq_store(t, acc, y, ldy, nr, nt);
}

int pl_cuda_gemm_mma_kquant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                   char *err) {
    const int nr = (int)w->ne1, nb = (int)(w->ne0 / PL_CUDA_QK_K);
    const uint8_t *wq;
    const uint16_t *wd; /* Q6_K's d's after its 208-byte parts (NULL for Q4_K / Q5_K) */
    pl_cuda_weight_parts(w, &wq, &wd);
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)(aq + (size_t)nt * w->ne0); /* pl_cuda.h's layout, nt rows */
    const int16_t *bs = (const int16_t *)(ad + (size_t)nt * nb);
    const dim3 grid((unsigned)((nr + MMA_ROWS - 1) / MMA_ROWS), (unsigned)((nt + MMA_TOKENS - 1) / MMA_TOKENS));
    if (w->type == PL_CUDA_Q4_K) {
        PL_LAUNCH(grid, 128, 0, st, gemm_mma_q45_k_kernel<0>)(wq, aq, ad, bs, y, ldy, nr, nb, nt);
        return PL_CUDA_LAUNCHED("Q4_K tensor-core matmul");
    }
    if (w->type == PL_CUDA_Q5_K) {
        PL_LAUNCH(grid, 128, 0, st, gemm_mma_q45_k_kernel<1>)(wq, aq, ad, bs, y, ldy, nr, nb, nt);
        return PL_CUDA_LAUNCHED("Q5_K tensor-core matmul");
    }
    PL_LAUNCH(grid, 128, 0, st, gemm_mma_q6_k_kernel)(wq, wd, aq, ad, y, ldy, nr, nb, nt);
    return PL_CUDA_LAUNCHED("Q6_K tensor-core matmul");
}
