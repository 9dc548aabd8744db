/* gemv_quant.cu: y = W x for Q4_0 and Q8_0 weights (layout: weight_upload.cu), for one token (decode) or
 * up to 8 per pass over the weights (small batches, prefill), against Q8_0 activations (quantize_q8_0.cu),
 * the CPU's arithmetic per block: an exact integer dot of the quants
 * (dp4a), times the product of the two scales, summed in fp32; only the order of that sum differs.
 * One warp per row; a lane takes 16-byte chunks of the row's quants (a whole Q4_0 block, half a Q8_0
 * block), so a warp's loads are 512 consecutive bytes; each lane issues U chunks' loads (weights,
 * activations, scales) before it uses any, to keep several loads in flight. The kernels (one weight, a
 * group of weights, gate / up with SwiGLU) are gemv_rows.cuh's over these row dots. */
#include "gemv_rows.cuh"

#define U 4 /* chunks in flight per lane */

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

/* the rows types of gemv_rows.cuh: QB quant bytes per block (16: Q4_0, 32: Q8_0) */
template <int QB>
struct RowsQ {
    static constexpr int QK = PL_CUDA_QK;
    template <int T>
    static __device__ __forceinline__ void dots(const uint8_t *wq, const uint16_t *wd, int row, int nb, const pl_act_rows a,
                                                float acc[T]) {
        row_dots<QB, T>(wq, wd, row, nb, a.q, a.d, acc);
    }
};

int pl_cuda_gemv_rows_q8_0(const pl_gemv_group *g, const void *act, int nt, int swiglu, cudaStream_t st, char *err) {
    if (g->type == PL_CUDA_Q4_0) return pl_gemv_rows_launch<RowsQ<16>>(g, act, nt, swiglu, st, err, "Q4_0 matmul");
    return pl_gemv_rows_launch<RowsQ<32>>(g, act, nt, swiglu, st, err, "Q8_0 matmul");
}
