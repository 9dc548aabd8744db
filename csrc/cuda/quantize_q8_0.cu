/* quantize_q8_0.cu: activations (fp32, on the device) to Q8_0, the form Q4_0 / Q8_0 weights are
 * multiplied with, with the arithmetic of the CPU's scalar q8_0_from_float (types_scalar.c) so the rows
 * are bit for bit the same: d = max|x| / 127, stored as fp16; q = roundf(x * (1 / d)) with the fp32 d.
 * One warp per 32-value block (pl_q8_0_warp_block, cuda_common.cuh). Output layout (pl_cuda.h): n int8
 * quants, then n/32 fp32 scales (the fp16 d's value). */
#include "cuda_common.cuh"

__global__ void quantize_q8_0_kernel(const float *__restrict__ x, int64_t n, int8_t *__restrict__ q,
                                     float *__restrict__ d) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= n) return; /* whole warps: n is a multiple of 32, blockDim of 32 */
    pl_q8_0_warp_block(x[i], q + i, d + i / PL_CUDA_QK);
}

size_t pl_cuda_act_bytes(int type, int64_t ne0) {
    if (pl_cuda_act_form(type) == PL_CUDA_Q8_K) { /* quants, fp32 d per 256, int16 sum per 16 */
        if (ne0 <= 0 || ne0 > INT32_MAX || ne0 % PL_CUDA_QK_K) return 0;
        return (size_t)ne0 + (size_t)(ne0 / PL_CUDA_QK_K) * sizeof(float) + (size_t)(ne0 / 16) * sizeof(int16_t);
    }
    if (pl_cuda_act_form(type) != PL_CUDA_Q8_0) return 0;
    if (ne0 <= 0 || ne0 > INT32_MAX || ne0 % PL_CUDA_QK) return 0;
    return (size_t)ne0 + (size_t)(ne0 / PL_CUDA_QK) * sizeof(float);
}

int pl_cuda_quantize_q8_0(const float *x, int64_t n, void *q, char *err) {
    if (pl_cuda_act_bytes(PL_CUDA_Q8_0, n) == 0)
        return PL_CUDA_ERR("Q8_0 activations: n must be a positive multiple of 32 below 2^31, got %lld", (long long)n);
    if (!x || !q) return PL_CUDA_ERR("Q8_0 activations: NULL pointer");
    if ((uintptr_t)q % 16) return PL_CUDA_ERR("Q8_0 activations: the output must be 16-byte aligned");
    return pl_cuda_quantize_q8_0_on(x, n, q, 0, err);
}

int pl_cuda_quantize_q8_0_on(const float *x, int64_t n, void *q, cudaStream_t st, char *err) {
    const int threads = 256;
    const int64_t grid = (n + threads - 1) / threads; /* < 2^24 for n < 2^31 */
    PL_LAUNCH((unsigned)grid, threads, 0, st, quantize_q8_0_kernel)(x, n, (int8_t *)q, (float *)((char *)q + n));
    return PL_CUDA_LAUNCHED("Q8_0 activations: quantize_q8_0_kernel");
}
