/* gemv_float16.cu: decode's y = W x for F16 and BF16 weights against fp32 activations, as the CPU's
 * f16 / bf16 vec_dot: each weight widened to fp32 exactly, products summed in fp32 (in another order).
 * One warp per row. Rows of a multiple of 8 elements are read as 16-byte chunks (8 weights, 2 float4 of
 * x), U chunks' loads issued per lane before any is used; other rows (odd lengths: their starts are not
 * 16-byte aligned) one 2-byte weight per lane per step, still consecutive across the warp. */
#include "cuda_common.cuh"

#define ROWS_PER_CTA 4
#define U 4

template <bool BF>
static __device__ __forceinline__ float widen(uint16_t h) {
    return BF ? pl_bf2f(h) : pl_h2f(h);
}
/* the 8 weights of a chunk (two per 32-bit word, the lower element in the low half) times 8 of x */
template <bool BF>
static __device__ __forceinline__ float dot8(uint4 w, float4 x0, float4 x1, float acc) {
    acc += widen<BF>((uint16_t)(w.x & 0xFFFF)) * x0.x;
    acc += widen<BF>((uint16_t)(w.x >> 16)) * x0.y;
    acc += widen<BF>((uint16_t)(w.y & 0xFFFF)) * x0.z;
    acc += widen<BF>((uint16_t)(w.y >> 16)) * x0.w;
    acc += widen<BF>((uint16_t)(w.z & 0xFFFF)) * x1.x;
    acc += widen<BF>((uint16_t)(w.z >> 16)) * x1.y;
    acc += widen<BF>((uint16_t)(w.w & 0xFFFF)) * x1.z;
    acc += widen<BF>((uint16_t)(w.w >> 16)) * x1.w;
    return acc;
}

template <bool BF, bool VEC>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_float16_kernel(const uint16_t *__restrict__ wt, const float *__restrict__ x, float *__restrict__ y, int nr, int n) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return; /* the whole warp */
    const uint16_t *wrow = wt + (size_t)row * n;
    float acc = 0.0f;
    if (VEC) {
        const int nchunks = n / 8;
        const uint4 *w4 = (const uint4 *)wrow;
        const float4 *x4 = (const float4 *)x;
        for (int c0 = 0; c0 < nchunks; c0 += 32 * U) {
            uint4 w[U];
            float4 x0[U], x1[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int c = c0 + 32 * u + lane;
                const bool in = c < nchunks;
                w[u] = in ? __ldg(w4 + c) : make_uint4(0, 0, 0, 0);
                x0[u] = in ? __ldg(x4 + 2 * c) : make_float4(0, 0, 0, 0);
                x1[u] = in ? __ldg(x4 + 2 * c + 1) : make_float4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < U; u++) acc = dot8<BF>(w[u], x0[u], x1[u], acc);
        }
    } else {
        for (int i = lane; i < n; i += 32) acc += widen<BF>(__ldg(wrow + i)) * __ldg(x + i);
    }
    acc = pl_warp_sum(acc);
    if (lane == 0) y[row] = acc;
}

int pl_cuda_gemv_float16_launch(const pl_cuda_weight *w, const float *x, float *y, char *err) {
    const int nr = (int)w->ne1, n = (int)w->ne0;
    const uint16_t *wt = (const uint16_t *)w->data;
    const unsigned grid = (unsigned)((nr + ROWS_PER_CTA - 1) / ROWS_PER_CTA);
    const bool bf = w->type == PL_CUDA_BF16, vec = n % 8 == 0;
    const int threads = 32 * ROWS_PER_CTA;
    if (bf && vec) PL_LAUNCH(grid, threads, 0, 0, gemv_float16_kernel<true, true>)(wt, x, y, nr, n);
    else if (bf) PL_LAUNCH(grid, threads, 0, 0, gemv_float16_kernel<true, false>)(wt, x, y, nr, n);
    else if (vec) PL_LAUNCH(grid, threads, 0, 0, gemv_float16_kernel<false, true>)(wt, x, y, nr, n);
    else PL_LAUNCH(grid, threads, 0, 0, gemv_float16_kernel<false, false>)(wt, x, y, nr, n);
    return PL_CUDA_LAUNCHED(bf ? "BF16 gemv" : "F16 gemv");
}
