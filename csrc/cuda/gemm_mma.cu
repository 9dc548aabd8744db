/* gemm_mma.cu: y = W x for Q4_0 / Q8_0 weights and many tokens at once (prefill, large batches) on the
 * tensor cores: mma.sync m16n8k32 with int8 inputs and int32 sums (pl_mma_s8_m16n8k32, cuda_common.cuh),
 * one Q8_0 block (32 values) per k step, so each (row, token) gets the block's exact integer dot, which is
 * then scaled by the weight's and the activation's block scales and added in fp32: the arithmetic of the
 * CPU and of the GEMV kernels (gemv_quant.cu), only the order of the fp32 sum differs.
 * A block of 4 warps computes 64 weight rows x 64 tokens; a warp 16 rows x 64 tokens (8 mma tiles of 8
 * tokens). Fragments are loaded straight from global memory (the 64 tokens' activations of a k step are
 * shared by the 4 warps through L1) in the PTX ISA's register layout for m16n8k32: lane = 4 g + i;
 * A: rows g and g + 8, bytes 4i..4i+3 and 16+4i..16+4i+3 of the block; B: token g of the tile, the same
 * bytes; C: rows g / g + 8, tokens 2i and 2i + 1. Q4_0 nibbles are unpacked to int8 (q - 8) in registers:
 * byte j of a Q4_0 block holds values j (low nibble) and j + 16 (high). */
#include "cuda_common.cuh"

#define MMA_ROWS 64   /* weight rows per block (4 warps x 16) */
#define MMA_TOKENS 64 /* tokens per block (8 tiles of 8) */
#define NT (MMA_TOKENS / 8)

/* 4 Q4_0 bytes -> their 4 low nibbles and their 4 high nibbles as int8 (q - 8), packed */
static __device__ __forceinline__ void unpack_q4(unsigned w, unsigned *lo, unsigned *hi) {
    *lo = __vsub4(w & 0x0F0F0F0Fu, 0x08080808u);
    *hi = __vsub4((w >> 4) & 0x0F0F0F0Fu, 0x08080808u);
}

/* QB: quant bytes per block (16 Q4_0, 32 Q8_0) */
template <int QB>
__global__ void __launch_bounds__(128)
gemm_mma_kernel(const uint8_t *__restrict__ wq, const uint16_t *__restrict__ wd, const int8_t *__restrict__ aq,
                const float *__restrict__ ad, float *__restrict__ y, int ldy, int nr, int nb, int nt) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, i = lane & 3;
    const int r0 = blockIdx.x * MMA_ROWS + warp * 16;
    const int t0 = blockIdx.y * MMA_TOKENS;
    if (r0 >= nr) return; /* the whole warp */
    const int ne0 = nb * 32;
    /* this lane's two weight rows and its token of each tile, clamped into the matrix (loads only) */
    const int ra = min(r0 + g, nr - 1), rb = min(r0 + g + 8, nr - 1);
    int tok[NT];
#pragma unroll
    for (int n = 0; n < NT; n++) tok[n] = min(t0 + 8 * n + g, nt - 1);
    float acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int b = 0; b < nb; b++) {
        unsigned a[4];
        if (QB == 32) {
            const uint8_t *pa = wq + ((size_t)ra * nb + b) * 32 + 4 * i, *pb = wq + ((size_t)rb * nb + b) * 32 + 4 * i;
            a[0] = __ldg((const unsigned *)pa);
            a[1] = __ldg((const unsigned *)pb);
            a[2] = __ldg((const unsigned *)(pa + 16));
            a[3] = __ldg((const unsigned *)(pb + 16));
        } else {
            const unsigned wa = __ldg((const unsigned *)(wq + ((size_t)ra * nb + b) * 16 + 4 * i));
            const unsigned wb = __ldg((const unsigned *)(wq + ((size_t)rb * nb + b) * 16 + 4 * i));
            unpack_q4(wa, &a[0], &a[2]);
            unpack_q4(wb, &a[1], &a[3]);
        }
        const float dwa = pl_h2f(__ldg(wd + (size_t)ra * nb + b)), dwb = pl_h2f(__ldg(wd + (size_t)rb * nb + b));
#pragma unroll
        for (int n = 0; n < NT; n++) {
            const int8_t *pt = aq + (size_t)tok[n] * ne0 + (size_t)b * 32 + 4 * i;
            unsigned bf[2];
            bf[0] = __ldg((const unsigned *)pt);
            bf[1] = __ldg((const unsigned *)(pt + 16));
            int c[4] = {0, 0, 0, 0};
            pl_mma_s8_m16n8k32(c, a, bf);
            /* C: rows g (c0, c1) and g + 8 (c2, c3), tokens 2i and 2i + 1 of the tile: their scales */
            const int tc0 = min(t0 + 8 * n + 2 * i, nt - 1), tc1 = min(t0 + 8 * n + 2 * i + 1, nt - 1);
            const float da0 = __ldg(ad + (size_t)tc0 * nb + b), da1 = __ldg(ad + (size_t)tc1 * nb + b);
            acc[n][0] += (float)c[0] * (dwa * da0);
            acc[n][1] += (float)c[1] * (dwa * da1);
            acc[n][2] += (float)c[2] * (dwb * da0);
            acc[n][3] += (float)c[3] * (dwb * da1);
        }
    }
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const int tc0 = t0 + 8 * n + 2 * i, tc1 = tc0 + 1;
        if (r0 + g < nr) {
            if (tc0 < nt) y[(size_t)tc0 * ldy + r0 + g] = acc[n][0];
            if (tc1 < nt) y[(size_t)tc1 * ldy + r0 + g] = acc[n][1];
        }
        if (r0 + g + 8 < nr) {
            if (tc0 < nt) y[(size_t)tc0 * ldy + r0 + g + 8] = acc[n][2];
            if (tc1 < nt) y[(size_t)tc1 * ldy + r0 + g + 8] = acc[n][3];
        }
    }
}

int pl_cuda_gemm_mma_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                            char *err) {
    const int nr = (int)w->ne1, nb = (int)(w->ne0 / PL_CUDA_QK);
    const int qb = w->type == PL_CUDA_Q4_0 ? 16 : 32;
    const uint8_t *wq;
    const uint16_t *wd;
    pl_cuda_weight_parts(w, &wq, &wd);
    const int8_t *aq = (const int8_t *)act;
    const float *ad = (const float *)((const char *)act + (size_t)nt * w->ne0);
    const dim3 grid((unsigned)((nr + MMA_ROWS - 1) / MMA_ROWS), (unsigned)((nt + MMA_TOKENS - 1) / MMA_TOKENS));
    if (qb == 16) PL_LAUNCH(grid, 128, 0, st, gemm_mma_kernel<16>)(wq, wd, aq, ad, y, ldy, nr, nb, nt);
    else PL_LAUNCH(grid, 128, 0, st, gemm_mma_kernel<32>)(wq, wd, aq, ad, y, ldy, nr, nb, nt);
    return PL_CUDA_LAUNCHED(qb == 16 ? "Q4_0 tensor-core matmul" : "Q8_0 tensor-core matmul");
}
