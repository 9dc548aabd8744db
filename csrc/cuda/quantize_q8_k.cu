/* quantize_q8_k.cu: activations (fp32, on the device) to Q8_K, the form Q4_K / Q5_K / Q6_K weights are
 * multiplied with, with the arithmetic of the CPU's scalar q8_k_from_float (types_kquants.c) so the
 * blocks are bit for bit the same: d = max|x| / 127 (fp32), q = roundf(x * (1 / d)), and the exact sum of
 * each 16 quants. One warp per 256-value super-block, 8 values a lane. Output layout (pl_cuda.h): n int8
 * quants, then n/256 fp32 d's, then n/16 int16 sums. */
#include "cuda_common.cuh"

__global__ void quantize_q8_k_kernel(const float *__restrict__ x, int64_t n, int8_t *__restrict__ q,
                                     float *__restrict__ d, int16_t *__restrict__ bsums) {
    const int lane = threadIdx.x & 31;
    const int64_t sb = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    if (sb >= n / PL_CUDA_QK_K) return; /* the whole warp */
    const int64_t i0 = sb * PL_CUDA_QK_K + 8 * lane;
    const float4 v0 = *(const float4 *)(x + i0), v1 = *(const float4 *)(x + i0 + 4);
    const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    int s = 0;
    unsigned packed[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int qi = (int)roundf(v[j] * id);
        s += qi;
        packed[j / 4] |= (unsigned)(qi & 0xFF) << (8 * (j % 4));
    }
    *(uint2 *)(q + i0) = make_uint2(packed[0], packed[1]);
    s += __shfl_xor_sync(0xffffffffu, s, 1); /* a 16-quant group is two lanes */
    if ((lane & 1) == 0) bsums[sb * 16 + lane / 2] = (int16_t)s;
    if (lane == 0) d[sb] = dd;
}

int pl_cuda_quantize_q8_k(const float *x, int64_t n, void *q, char *err) {
    if (pl_cuda_act_bytes(PL_CUDA_Q4_K, n) == 0)
        return PL_CUDA_ERR("Q8_K activations: n must be a positive multiple of 256 below 2^31, got %lld", (long long)n);
    if (!x || !q) return PL_CUDA_ERR("Q8_K activations: NULL pointer");
    if ((uintptr_t)x % 16 || (uintptr_t)q % 16)
        return PL_CUDA_ERR("Q8_K activations: the input and the output must be 16-byte aligned");
    return pl_cuda_quantize_q8_k_on(x, n, q, 0, err);
}

/* n: any multiple of 256 (nt rows of ne0 values back to back: the layout of nt rows is that of one row of n) */
int pl_cuda_quantize_q8_k_on(const float *x, int64_t n, void *q, cudaStream_t st, char *err) {
    const int threads = 256; /* 8 super-blocks a block */
    const int64_t nsb = n / PL_CUDA_QK_K, grid = (nsb + 7) / 8;
    int8_t *qq = (int8_t *)q;
    float *d = (float *)(qq + n);
    int16_t *bs = (int16_t *)(d + nsb);
    PL_LAUNCH((unsigned)grid, threads, 0, st, quantize_q8_k_kernel)(x, n, qq, d, bs);
    return PL_CUDA_LAUNCHED("Q8_K activations: quantize_q8_k_kernel");
}
