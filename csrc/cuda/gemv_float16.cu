/* gemv_float16.cu: y = W x for F16, BF16 and F32 weights against fp32 activations, for one token (decode)
 * or up to 8 per pass over the weights, as the CPU's f16 / bf16 / f32 vec_dot: each weight widened to
 * fp32 exactly, products summed in fp32 (in another order). One warp per row. Rows whose length is a
 * multiple of the 16-byte chunk (8 16-bit or 4 fp32 weights) are read in chunks, U chunks' loads issued
 * per lane before any is used; other rows (their starts are not 16-byte aligned) one weight per lane per
 * step, still consecutive across the warp. */
#include "cuda_common.cuh"

#define ROWS_PER_CTA 4
#define U 4

/* KIND: 0 fp32, 1 fp16, 2 bf16 weights */
template <int KIND>
static __device__ __forceinline__ float widen(uint16_t h) {
    return KIND == 2 ? pl_bf2f(h) : pl_h2f(h);
}
/* the 8 16-bit weights of a chunk (two per 32-bit word, the lower element in the low half) times 8 of x */
template <int KIND>
static __device__ __forceinline__ float dot8(uint4 w, float4 x0, float4 x1, float acc) {
    acc += widen<KIND>((uint16_t)(w.x & 0xFFFF)) * x0.x;
    acc += widen<KIND>((uint16_t)(w.x >> 16)) * x0.y;
    acc += widen<KIND>((uint16_t)(w.y & 0xFFFF)) * x0.z;
    acc += widen<KIND>((uint16_t)(w.y >> 16)) * x0.w;
    acc += widen<KIND>((uint16_t)(w.z & 0xFFFF)) * x1.x;
    acc += widen<KIND>((uint16_t)(w.z >> 16)) * x1.y;
    acc += widen<KIND>((uint16_t)(w.w & 0xFFFF)) * x1.z;
    acc += widen<KIND>((uint16_t)(w.w >> 16)) * x1.w;
    return acc;
}
/* the 4 fp32 weights of a chunk times 4 of x */
static __device__ __forceinline__ float dot4f(uint4 w, float4 x0, float acc) {
    acc += __uint_as_float(w.x) * x0.x;
    acc += __uint_as_float(w.y) * x0.y;
    acc += __uint_as_float(w.z) * x0.z;
    acc += __uint_as_float(w.w) * x0.w;
    return acc;
}

/* T tokens: x rows at x + t * ldx, y[t * ldy + row] */
template <int KIND, bool VEC, int T>
__global__ void __launch_bounds__(32 * ROWS_PER_CTA)
gemv_float_kernel(const void *__restrict__ wt, const float *__restrict__ x, int ldx, float *__restrict__ y, int ldy,
                  int nr, int n) {
    constexpr int EPC = KIND == 0 ? 4 : 8; /* elements per 16-byte chunk */
    constexpr int UU = T == 1 ? U : 2;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * ROWS_PER_CTA + (threadIdx.x >> 5);
    if (row >= nr) return; /* the whole warp */
    float acc[T];
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.0f;
    if (VEC) {
        const int nchunks = n / EPC;
        const uint4 *w4 = (const uint4 *)((const char *)wt + (size_t)row * n * (KIND == 0 ? 4 : 2));
        for (int c0 = 0; c0 < nchunks; c0 += 32 * UU) {
            uint4 w[UU];
            float4 x0[UU][T], x1[UU][T];
#pragma unroll
            for (int u = 0; u < UU; u++) {
                const int c = c0 + 32 * u + lane;
                const bool in = c < nchunks;
                w[u] = in ? __ldg(w4 + c) : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int t = 0; t < T; t++) {
                    const float4 *x4 = (const float4 *)(x + (size_t)t * ldx);
                    if (KIND == 0) {
                        x0[u][t] = in ? __ldg(x4 + c) : make_float4(0, 0, 0, 0);
                    } else {
                        x0[u][t] = in ? __ldg(x4 + 2 * c) : make_float4(0, 0, 0, 0);
                        x1[u][t] = in ? __ldg(x4 + 2 * c + 1) : make_float4(0, 0, 0, 0);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < UU; u++)
#pragma unroll
                for (int t = 0; t < T; t++)
                    acc[t] = KIND == 0 ? dot4f(w[u], x0[u][t], acc[t]) : dot8<KIND>(w[u], x0[u][t], x1[u][t], acc[t]);
        }
    } else {
        for (int i = lane; i < n; i += 32) {
            float wi;
            if (KIND == 0) wi = __ldg((const float *)wt + (size_t)row * n + i);
            else wi = widen<KIND>(__ldg((const uint16_t *)wt + (size_t)row * n + i));
#pragma unroll
            for (int t = 0; t < T; t++) acc[t] += wi * __ldg(x + (size_t)t * ldx + i);
        }
    }
#pragma unroll
    for (int t = 0; t < T; t++) {
        const float s = pl_warp_sum(acc[t]);
        if (lane == 0) y[(size_t)t * ldy + row] = s;
    }
}

template <int KIND, bool VEC>
static void launch_t(unsigned grid, cudaStream_t st, int T, const void *wt, const float *x, int ldx, float *y, int ldy,
                     int nr, int n) {
    const int th = 32 * ROWS_PER_CTA;
    switch (T) {
    case 1: PL_LAUNCH(grid, th, 0, st, gemv_float_kernel<KIND, VEC, 1>)(wt, x, ldx, y, ldy, nr, n); break;
    case 2: PL_LAUNCH(grid, th, 0, st, gemv_float_kernel<KIND, VEC, 2>)(wt, x, ldx, y, ldy, nr, n); break;
    case 3: PL_LAUNCH(grid, th, 0, st, gemv_float_kernel<KIND, VEC, 3>)(wt, x, ldx, y, ldy, nr, n); break;
    case 4: PL_LAUNCH(grid, th, 0, st, gemv_float_kernel<KIND, VEC, 4>)(wt, x, ldx, y, ldy, nr, n); break;
    default: PL_LAUNCH(grid, th, 0, st, gemv_float_kernel<KIND, VEC, 8>)(wt, x, ldx, y, ldy, nr, n); break;
    }
}

template <int KIND>
static void launch_kind(unsigned grid, cudaStream_t st, int T, bool vec, const void *wt, const float *x, int ldx,
                        float *y, int ldy, int nr, int n) {
    if (vec) launch_t<KIND, true>(grid, st, T, wt, x, ldx, y, ldy, nr, n);
    else launch_t<KIND, false>(grid, st, T, wt, x, ldx, y, ldy, nr, n);
}

int pl_cuda_matmul_float_launch(const pl_cuda_weight *w, const float *x, int nt, int ldx, float *y, int ldy,
                                cudaStream_t st, char *err) {
    const int nr = (int)w->ne1, n = (int)w->ne0;
    const int kind = w->type == PL_CUDA_F32 ? 0 : w->type == PL_CUDA_F16 ? 1 : 2;
    /* 16-byte chunks need every row start and every x row aligned to 16 bytes */
    const bool vec = n % (kind == 0 ? 4 : 8) == 0 && ldx % 4 == 0 && (uintptr_t)x % 16 == 0;
    const unsigned grid = (unsigned)((nr + ROWS_PER_CTA - 1) / ROWS_PER_CTA);
    for (int t0 = 0; t0 < nt;) {
        const int left = nt - t0;
        const int T = pl_tokens_this_pass(left);
        const float *xt = x + (size_t)t0 * ldx;
        float *yt = y + (size_t)t0 * ldy;
        if (kind == 0) launch_kind<0>(grid, st, T, vec, w->data, xt, ldx, yt, ldy, nr, n);
        else if (kind == 1) launch_kind<1>(grid, st, T, vec, w->data, xt, ldx, yt, ldy, nr, n);
        else launch_kind<2>(grid, st, T, vec, w->data, xt, ldx, yt, ldy, nr, n);
        if (PL_CUDA_LAUNCHED(kind == 0 ? "F32 matmul" : kind == 1 ? "F16 matmul" : "BF16 matmul")) return -1;
        t0 += T;
    }
    return 0;
}
