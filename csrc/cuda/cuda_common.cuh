/* cuda_common.cuh: what the .cu files share: the error reporting of every runtime call (the runtime's
 * message, prefixed by what was being done), fp16 / bf16 -> fp32 in registers, unfused float operations,
 * the int8 mma, the Q4_K / Q5_K scale unpacking, and the launchers that pl_cuda_gemv (gemv.cu) picks from.
 * Internal to csrc/cuda/. */
#ifndef PYLLM_CUDA_COMMON_CUH
#define PYLLM_CUDA_COMMON_CUH

#ifndef PL_CUDA_EMULATED /* the CPU emulation (emulation/cuda_emulation.h, force-included) is the runtime */
#include <cuda_runtime.h>
#endif
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
#ifndef PL_CUDA_EMULATED
static __device__ __forceinline__ float pl_h2f(uint16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
#else /* the same conversion in C: exact, subnormals normalized, inf / nan kept (nan payload too) */
static __device__ __forceinline__ float pl_h2f(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu;
    uint32_t m = h & 0x3FFu, bits;
    if (e == 0x1F) {
        bits = sign | 0x7F800000u | (m << 13);
    } else if (e) {
        bits = sign | ((e + 112) << 23) | (m << 13);
    } else if (!m) {
        bits = sign;
    } else { /* subnormal m * 2^-24: shift the leading 1 to bit 10 */
        uint32_t fe = 113;
        while (!(m & 0x400u)) {
            m <<= 1;
            fe--;
        }
        bits = sign | (fe << 23) | ((m & 0x3FFu) << 13);
    }
    return __uint_as_float(bits);
}
#endif
static __device__ __forceinline__ float pl_bf2f(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
/* fp32 -> fp16 bits, round to nearest even (pl_fp32_to_fp16's rounding) */
#ifndef PL_CUDA_EMULATED
static __device__ __forceinline__ uint16_t pl_f2h(float f) {
    uint16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else /* cvt.rn.f16.f32 in C: nearest even, subnormal results, overflow to inf, nan stays nan */
static __device__ __forceinline__ uint16_t pl_f2h(float f) {
    const uint32_t x = __float_as_uint(f), ax = x & 0x7FFFFFFFu;
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu)); /* nan, quiet */
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);   /* >= 65520 (and inf): inf */
    if (ax >= 0x38800000u) {                                    /* a normal fp16: >= 2^-14 */
        const uint32_t r = ax - 0x38000000u;                    /* rebias the exponent by 127 - 15 */
        return (uint16_t)(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13));
    }
    if (ax <= 0x33000000u) return sign; /* <= 2^-25: zero (2^-25 itself is a tie, to the even 0) */
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u, shift = 126 - (ax >> 23); /* 14..24: units of 2^-24 */
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}
#endif

/* a * b, a - b, a + b rounded once each, never fused into a multiply-add: the K-quants' per-super-block (and
 * Q4_1 / Q5_0 / Q5_1's per-block) float terms are the CPU's operations exactly (the C compiler of the emulation fuses nothing without -mfma) */
#ifndef PL_CUDA_EMULATED
static __device__ __forceinline__ float pl_fmul(float a, float b) { return __fmul_rn(a, b); }
static __device__ __forceinline__ float pl_fsub(float a, float b) { return __fsub_rn(a, b); }
static __device__ __forceinline__ float pl_fadd(float a, float b) { return __fadd_rn(a, b); }
#else
static __device__ __forceinline__ float pl_fmul(float a, float b) { return a * b; }
static __device__ __forceinline__ float pl_fsub(float a, float b) { return a - b; }
static __device__ __forceinline__ float pl_fadd(float a, float b) { return a + b; }
#endif

/* sum over the 32 lanes of a warp (every lane gets it) */
static __device__ __forceinline__ float pl_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* one Q8_0 block quantized by the 32 lanes of a warp, lane j holding the block's value j, with the CPU's
 * scalar q8_0_from_float arithmetic (d = max|x| / 127 rounded through fp16, q = roundf(x / d) with the
 * fp32 d): lane j writes its quant to *q, lane 0 the block's scale (the fp16 d's value) to *d. Every lane
 * of the warp must call it together. quantize_q8_0.cu and the kernels that emit their output's Q8_0 form
 * beside it (norms, attention) all go through this, so the quants are the same bits wherever made. */
static __device__ __forceinline__ void pl_q8_0_warp_block(float v, int8_t *q, float *d) {
    float amax = fabsf(v);
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    *q = (int8_t)roundf(v * id);
    if ((threadIdx.x & 31) == 0) *d = pl_h2f(pl_f2h(dd));
}

/* K-quant super-blocks (gemv_kquant.cu, gemm_mma_kquant.cu): word i / byte k of 16 loaded bytes, and the
 * 6-bit scale and min of sub-block j of Q4_K / Q5_K from the super-block's first 16 bytes h (d, dmin, then
 * the 12 scale bytes: byte k of the scales is byte 4 + k of h), as the CPU's scale_min_k4 */
static __device__ __forceinline__ unsigned pl_word_of(uint4 v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
static __device__ __forceinline__ int pl_byte_of(uint4 v, int k) {
    return (int)((pl_word_of(v, k >> 2) >> (8 * (k & 3))) & 0xFFu);
}
static __device__ __forceinline__ void pl_kq_scale_min(uint4 h, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = pl_byte_of(h, 4 + j) & 63;
        *m = pl_byte_of(h, 8 + j) & 63;
    } else {
        *sc = (pl_byte_of(h, 8 + j) & 0x0F) | ((pl_byte_of(h, j) >> 6) << 4);
        *m = (pl_byte_of(h, 8 + j) >> 4) | ((pl_byte_of(h, 4 + j) >> 6) << 4);
    }
}

/* Kernel launches and dynamic shared memory go through these two macros (never <<< >>> or extern
 * __shared__ directly), so that the same sources also build for the CPU emulation of the kernels:
 *     PL_LAUNCH(grid, block, smem_bytes, stream, kernel)(args...);
 *     PL_DYNAMIC_SHARED(float, buf);   // inside a kernel: float *buf, smem_bytes of it
 * kernel may be a template-id with commas (it is the macro's last argument). Static __shared__ arrays
 * are fine. Device code uses only the intrinsics the emulation provides (see it). */
#ifndef PL_CUDA_EMULATED
#define PL_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define PL_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#else /* the CPU emulation: the same arguments, run by emulation/cuda_emulation.cpp */
#define PL_LAUNCH PL_EMU_LAUNCH
#define PL_DYNAMIC_SHARED PL_EMU_DYNAMIC_SHARED
#endif

/* Tensor cores, one instruction: C += A B for A 16x32 int8 (row-major), B 32x8 int8 (column-major), C 16x8
 * int32, spread over the warp by the PTX ISA's fragment layout of mma.m16n8k32 (.s8): with g = lane >> 2
 * and t = lane % 4, a[r] holds 4 int8 of A (lowest byte first) at row g (r = 0, 2) or g + 8 (r = 1, 3),
 * columns 4t..4t+3 (r = 0, 1) or 16 + 4t.. (r = 2, 3); b[r] holds B's rows (k) 4t..4t+3 (r = 0) or
 * 16 + 4t.. (r = 1) of column g; c[i] is C's row g (i = 0, 1) or g + 8 (i = 2, 3), column 2t + (i & 1).
 * Every lane of the warp must call it together (mma.sync.aligned); sm_80 or newer. */
static __device__ __forceinline__ void pl_mma_s8_m16n8k32(int c[4], const unsigned a[4], const unsigned b[2]) {
#if defined(PL_CUDA_EMULATED)
    pl_emu_mma_s8_m16n8k32(c, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDA_ARCH__)
    (void)c, (void)a, (void)b;
    __trap(); /* no int8 mma before sm_80 */
#else
    (void)c, (void)a, (void)b;
#endif
}

/* the batched GEMV kernels' token counts: each pass over the weights takes 8 tokens, then 4, then what is
 * left (1..4), so a kernel is instantiated for T = 1, 2, 3, 4, 8 only */
#define PL_TOKENS_PER_PASS 8
static inline int pl_tokens_this_pass(int left) { return left >= PL_TOKENS_PER_PASS ? PL_TOKENS_PER_PASS : left > 4 ? 4 : left; }

/* launchers (sizes already checked by the caller), on stream st; each returns 0 or -1 with err.
 * Quant: act holds nt rows of Q8_0 activations in pl_cuda.h's layout (all quants, then all scales);
 * y[t * ldy + r]. Float (F32 / F16 / BF16): x rows at x + t * ldx. */
int pl_cuda_matmul_quant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                char *err);
int pl_cuda_matmul_float_launch(const pl_cuda_weight *w, const float *x, int nt, int ldx, float *y, int ldy,
                                cudaStream_t st, char *err);
/* Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K weights in fewer launches (gemv_group.cu), pl_cuda_matmul_quant_launch's
 * contract: n <= 3 weights of one type and width with the same input (q / k / v) in one grid (group_ok says
 * whether they qualify), and gate / up with SwiGLU: y[t * ldy + r] = silu(gate_r . x_t) * (up_r . x_t) */
int pl_cuda_gemv_group_ok(const pl_cuda_weight *const *ws, int n);
int pl_cuda_gemv_group_launch(const pl_cuda_weight *const *ws, float *const *ys, const int *ldy, int n, const void *act,
                              int nt, cudaStream_t st, char *err);
int pl_cuda_gemv_swiglu_launch(const pl_cuda_weight *gate, const pl_cuda_weight *up, const void *act, int nt, float *y,
                               int ldy, cudaStream_t st, char *err);
/* a Q4_0 / Q8_0 / Q6_K / Q4_K / Q5_K weight's quants (wq) and fp16 scales (wd) in weight_upload.cu's layout:
 * Q4_0 / Q8_0 / Q6_K keep the scales after all the quants (Q6_K: 208-byte parts of a super-block); Q4_K /
 * Q5_K keep theirs inside each super-block (wd NULL) */
static inline void pl_cuda_weight_parts(const pl_cuda_weight *w, const uint8_t **wq, const uint16_t **wd) {
    const size_t nr = (size_t)w->ne1;
    *wq = (const uint8_t *)w->data;
    *wd = NULL;
    if (w->type == PL_CUDA_Q4_0) *wd = (const uint16_t *)(*wq + nr * (size_t)(w->ne0 / PL_CUDA_QK) * 16);
    else if (w->type == PL_CUDA_Q8_0) *wd = (const uint16_t *)(*wq + nr * (size_t)(w->ne0 / PL_CUDA_QK) * 32);
    else if (w->type == PL_CUDA_Q6_K) *wd = (const uint16_t *)(*wq + nr * (size_t)(w->ne0 / PL_CUDA_QK_K) * 208);
}
/* the weight types with a tensor-core kernel (gemm_mma.cu, gemm_mma_kquant.cu) */
static inline int pl_cuda_has_mma(int type) {
    return type == PL_CUDA_Q4_0 || type == PL_CUDA_Q8_0 || type == PL_CUDA_Q4_K || type == PL_CUDA_Q5_K ||
           type == PL_CUDA_Q6_K;
}
/* rows (one warp each) per block of the integer-dot GEMVs (gemv_rows.cuh; gemv_group.cu sizes their grids) */
#define PL_GEMV_ROWS_PER_CTA 4
/* what one such launch takes (gemv_rows.cuh): weights of one type and width, their quants / scales / outputs,
 * and the first block of each weight's rows (first_block[n]: the grid) */
#define PL_GEMV_GROUP_MAX 3
typedef struct {
    int type, n;
    int64_t ne0;
    const uint8_t *wq[PL_GEMV_GROUP_MAX];
    const uint16_t *wd[PL_GEMV_GROUP_MAX];
    float *y[PL_GEMV_GROUP_MAX];
    int ldy[PL_GEMV_GROUP_MAX], nr[PL_GEMV_GROUP_MAX], first_block[PL_GEMV_GROUP_MAX + 1];
} pl_gemv_group;
/* the group's matmuls (swiglu: its gate / up pair's product) for nt activation rows: Q4_0 / Q8_0 weights
 * (gemv_quant.cu), K-quants (gemv_kquant.cu) */
int pl_cuda_gemv_rows_q8_0(const pl_gemv_group *g, const void *act, int nt, int swiglu, cudaStream_t st, char *err);
int pl_cuda_gemv_rows_q8_k(const pl_gemv_group *g, const void *act, int nt, int swiglu, cudaStream_t st, char *err);
/* pl_cuda_quantize_q8_0 / _q8_k on stream st, without their argument checks */
int pl_cuda_quantize_q8_0_on(const float *x, int64_t n, void *q, cudaStream_t st, char *err);
int pl_cuda_quantize_q8_k_on(const float *x, int64_t n, void *q, cudaStream_t st, char *err);
/* Q4_1 / Q5_0 / Q5_1 (gemv_legacy.cu): pl_cuda_matmul_quant_launch's contract (Q8_0 activations) */
int pl_cuda_matmul_legacy_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                 char *err);
/* the K-quants (gemv_kquant.cu, launched by gemv_group.cu): act holds nt rows of Q8_K activations in
 * pl_cuda.h's layout */
int pl_cuda_matmul_kquant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                 char *err);
/* a weight type's name for messages, or NULL for a type the GPU kernels do not take */
static inline const char *pl_cuda_type_name(int type) {
    switch (type) {
    case PL_CUDA_F32: return "F32";
    case PL_CUDA_F16: return "F16";
    case PL_CUDA_BF16: return "BF16";
    case PL_CUDA_Q4_0: return "Q4_0";
    case PL_CUDA_Q8_0: return "Q8_0";
    case PL_CUDA_Q4_1: return "Q4_1";
    case PL_CUDA_Q5_0: return "Q5_0";
    case PL_CUDA_Q5_1: return "Q5_1";
    case PL_CUDA_Q4_K: return "Q4_K";
    case PL_CUDA_Q5_K: return "Q5_K";
    case PL_CUDA_Q6_K: return "Q6_K";
    default: return NULL;
    }
}

/* the activation form a quantized weight type is multiplied with: PL_CUDA_Q8_0, PL_CUDA_Q8_K, or 0 (fp32) */
static inline int pl_cuda_act_form(int type) {
    if (type == PL_CUDA_Q4_0 || type == PL_CUDA_Q8_0 || type == PL_CUDA_Q4_1 || type == PL_CUDA_Q5_0 || type == PL_CUDA_Q5_1)
        return PL_CUDA_Q8_0;
    if (type == PL_CUDA_Q4_K || type == PL_CUDA_Q5_K || type == PL_CUDA_Q6_K) return PL_CUDA_Q8_K;
    return 0;
}

#endif
