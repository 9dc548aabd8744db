/* cuda_common.cuh: what the .cu files share: the error reporting of every runtime call (the runtime's
 * message, prefixed by what was being done), fp16 / bf16 -> fp32 in registers, and the launchers that
 * pl_cuda_gemv (gemv.cu) picks from. Internal to csrc/cuda/. */
#ifndef PYLLM_CUDA_COMMON_CUH
#define PYLLM_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>

#include "pl_cuda.h"

/* -1 with "what: the runtime's message" in err when e is an error, else 0. The runtime's last-error slot
 * is cleared, so a recoverable error (an allocation that did not fit) is not reported again by the next
 * launch's check. */
static inline int pl_cuda_fail(cudaError_t e, const char *what, char *err) {
    if (e == cudaSuccess) return 0;
    (void)cudaGetLastError();
    if (err) snprintf(err, PL_CUDA_ERRMSG_LEN, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
    return -1;
}
/* an error that is not the runtime's: -1 with the message */
#define PL_CUDA_ERR(...) ((err ? snprintf(err, PL_CUDA_ERRMSG_LEN, __VA_ARGS__) : 0), -1)
/* a launch's configuration errors show at once; errors while it runs show at the next sync */
#define PL_CUDA_LAUNCHED(what) pl_cuda_fail(cudaGetLastError(), what, err)

/* IEEE fp16 / bf16 bits -> fp32 (exact), without cuda_fp16.h (so the pip toolkit needs no CCCL headers) */
static __device__ __forceinline__ float pl_h2f(uint16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
static __device__ __forceinline__ float pl_bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
/* fp32 -> fp16 bits, round to nearest even (pl_fp32_to_fp16's rounding) */
static __device__ __forceinline__ uint16_t pl_f2h(float f) {
    uint16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

/* sum over the 32 lanes of a warp (every lane gets it) */
static __device__ __forceinline__ float pl_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Kernel launches and dynamic shared memory go through these two macros (never <<< >>> or extern
 * __shared__ directly), so that the same sources also build for the CPU emulation of the kernels:
 *     PL_LAUNCH(grid, block, smem_bytes, stream, kernel)(args...);
 *     PL_DYNAMIC_SHARED(float, buf);   // inside a kernel: float *buf, smem_bytes of it
 * kernel may be a template-id with commas (it is the macro's last argument). Static __shared__ arrays
 * are fine. Device code uses only the intrinsics the emulation provides (see it). */
#define PL_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define PL_DYNAMIC_SHARED(type, name) extern __shared__ type name[]

/* launchers (sizes already checked by the caller), on stream st; each returns 0 or -1 with err.
 * Quant: act holds nt rows of Q8_0 activations in pl_cuda.h's layout (all quants, then all scales);
 * y[t * ldy + r]. Float (F32 / F16 / BF16): x rows at x + t * ldx. */
int pl_cuda_matmul_quant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                char *err);
int pl_cuda_matmul_float_launch(const pl_cuda_weight *w, const float *x, int nt, int ldx, float *y, int ldy,
                                cudaStream_t st, char *err);
/* pl_cuda_quantize_q8_0 on stream st, without its argument checks */
int pl_cuda_quantize_q8_0_on(const float *x, int64_t n, void *q, cudaStream_t st, char *err);

#endif
