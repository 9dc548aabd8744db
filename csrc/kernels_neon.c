/* kernels_neon.c: the ARM (AArch64) kernel tables, chosen at run time by cpu_dispatch.c. One source,
 * compiled three times: as itself (PL_NEON_LEVEL 0, Advanced SIMD only: runs on any Armv8-A CPU, no
 * extra flags), and through kernels_neon_dotprod.c (1: + Armv8.2 sdot/udot) and kernels_neon_i8mm.c
 * (2: + FEAT_I8MM's usdot / usmmla), each with its own -march flags, so the baseline build never
 * needs them. Starts from the scalar table and overrides:
 *  - packed Q4_0 / Q8_0 weights x q8x activations (layouts in tensor_types.h, the same bytes as on
 *    x86) and the packed K-quant gemms (kquant_packed_simd.h over 8-lane vectors of two q registers):
 *    exact int32 sums per block (sdot, usdot, or vmull + pairwise widening adds at level 0; level 2's
 *    Q4_0 / Q8_0 prefill tiles: usmmla), combined with the scalar reference's float operations in its
 *    order (no FMA: the build has -ffp-contract=off), so every result equals the scalar reference bit
 *    for bit;
 *  - the unpacked vec_dots of every integer type (Q4_0, Q8_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K,
 *    IQ4_XS: the default path of the types without a packed layout, and PYLLM_REPACK=0),
 *    bit-identical likewise;
 *  - Q8_0 / Q8_K activation quantization and F16 / BF16 / Q8_0 / Q4_0 to_float, bit-identical;
 *  - F32 / F16 / BF16 dots and gemm (fp32 FMAs in lanes: close to the scalar sum, not equal, as on
 *    x86), axpy (equal), gemm_nn (close), softmax / SwiGLU with a polynomial exp (within a few ulp of
 *    libm's expf, as the x86 one). */
#if defined(__aarch64__) || defined(_M_ARM64)
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "packed_gemm_driver.h"
#include "tensor_types.h"

#ifndef PL_NEON_LEVEL
#define PL_NEON_LEVEL 0
#endif

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

/* ============================== integer dot products ==============================
 * dot4(acc, w, x): per int32 lane, acc + the 4 products of its signed bytes. Exact for every int8
 * input: sdot at level >= 1; at level 0 vmull_s8 (int16 products, |p| <= 16384) then pairwise
 * widening adds into int32. */
AI int32x4_t dot4(int32x4_t acc, int8x16_t w, int8x16_t x) {
#if PL_NEON_LEVEL >= 1
    return vdotq_s32(acc, w, x);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(x)), hi = vmull_high_s8(w, x);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}
/* the same with unsigned weight bytes (0..255); only the i8mm table has usdot */
#if PL_NEON_LEVEL >= 2
AI int32x4_t dot4_u8(int32x4_t acc, uint8x16_t w, int8x16_t x) { return vusdotq_s32(acc, w, x); }
#endif
/* 4 activation bytes at p (any alignment) in every int32 lane */
AI int8x16_t bcast32(const uint8_t *p) { return vreinterpretq_s8_u32(vdupq_n_u32(pl_ld_u32(p))); }
AI float32x4_t ld_fp16x4(const uint8_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)(const void *)p))); }

/* ============================== float weights ============================== */
enum { FT_f32 = 0, FT_f16 = 1, FT_bf16 = 2 };

/* 4 weights from element i (any alignment: byte loads) widened to fp32 */
AI float32x4_t fl_load(const int ft, const void *p, int64_t i) {
    if (ft == FT_f32) return vreinterpretq_f32_u8(vld1q_u8((const uint8_t *)p + 4 * i));
    const uint16x4_t h = vreinterpret_u16_u8(vld1_u8((const uint8_t *)p + 2 * i));
    if (ft == FT_f16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(h), 16));
}
AI float fl_load1(const int ft, const void *p, int64_t i) {
    if (ft == FT_f32) return pl_ld_f32((const char *)p + 4 * i);
    const uint16_t h = pl_ld_u16((const char *)p + 2 * i);
    return ft == FT_f16 ? pl_fp16_to_fp32(h) : pl_bf16_to_fp32(h);
}

AI float fl_dot(const int ft, int n, const void *w, const void *a) {
    float32x4_t s0 = vdupq_n_f32(0), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = vfmaq_f32(s0, fl_load(ft, w, i), fl_load(FT_f32, a, i));
        s1 = vfmaq_f32(s1, fl_load(ft, w, i + 4), fl_load(FT_f32, a, i + 4));
        s2 = vfmaq_f32(s2, fl_load(ft, w, i + 8), fl_load(FT_f32, a, i + 8));
        s3 = vfmaq_f32(s3, fl_load(ft, w, i + 12), fl_load(FT_f32, a, i + 12));
    }
    for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, fl_load(ft, w, i), fl_load(FT_f32, a, i));
    float sum = vaddvq_f32(vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3)));
    for (; i < n; i++) sum += fl_load1(ft, w, i) * fl_load1(FT_f32, a, i);
    return sum;
}

/* R weight rows x C activation rows: out[c*os + r] = dot(w_r, a_c) */
#define FMR 4
#define FNC 2
AI void fl_tile(const int ft, const int R, const int C, int n, const char *w, size_t ws, const char *a, size_t as,
                float *out, size_t os) {
    float32x4_t acc[FMR][FNC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = vdupq_n_f32(0);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t av[FNC];
        UNROLL for (int c = 0; c < C; c++) av[c] = fl_load(FT_f32, a + c * as, i);
        UNROLL for (int r = 0; r < R; r++) {
            const float32x4_t wv = fl_load(ft, w + r * ws, i);
            UNROLL for (int c = 0; c < C; c++) acc[r][c] = vfmaq_f32(acc[r][c], wv, av[c]);
        }
    }
    UNROLL for (int c = 0; c < C; c++) UNROLL for (int r = 0; r < R; r++) {
        float s = vaddvq_f32(acc[r][c]);
        for (int k = i; k < n; k++) s += fl_load1(ft, w + r * ws, k) * fl_load1(FT_f32, a + c * as, k);
        out[c * os + r] = s;
    }
}
#include "float_tile_table.h"

/* ---- conversions (bit-identical to the scalar reference) ---- */
static void f16_to_float(const void *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, fl_load(FT_f16, x, i));
    for (; i < n; i++) y[i] = fl_load1(FT_f16, x, i);
}
static void bf16_to_float(const void *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, fl_load(FT_bf16, x, i));
    for (; i < n; i++) y[i] = fl_load1(FT_bf16, x, i);
}
static void q8_0_to_float(const void *vx, float *y, int64_t n) {
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *blk = (const uint8_t *)vx + b * sizeof(pl_block_q8_0);
        const float32x4_t d = vdupq_n_f32(pl_ld_fp16(blk));
        UNROLL for (int k = 0; k < 2; k++) {
            const int16x8_t q = vmovl_s8(vld1_s8((const int8_t *)blk + 2 + 8 * k)), q2 = vmovl_s8(vld1_s8((const int8_t *)blk + 18 + 8 * k));
            vst1q_f32(y + b * PL_QK + 8 * k, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(q))), d));
            vst1q_f32(y + b * PL_QK + 8 * k + 4, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(q)), d));
            vst1q_f32(y + b * PL_QK + 16 + 8 * k, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(q2))), d));
            vst1q_f32(y + b * PL_QK + 16 + 8 * k + 4, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(q2)), d));
        }
    }
}
static void q4_0_to_float(const void *vx, float *y, int64_t n) {
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *blk = (const uint8_t *)vx + b * sizeof(pl_block_q4_0);
        const float32x4_t d = vdupq_n_f32(pl_ld_fp16(blk));
        const uint8x16_t q = vld1q_u8(blk + 2);
        const int8x16_t parts[2] = {vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vdupq_n_s8(8)),
                                    vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8))};
        UNROLL for (int h = 0; h < 2; h++) {
            const int16x8_t lo = vmovl_s8(vget_low_s8(parts[h])), hi = vmovl_high_s8(parts[h]);
            float *o = y + b * PL_QK + 16 * h;
            vst1q_f32(o, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d));
            vst1q_f32(o + 4, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(lo)), d));
            vst1q_f32(o + 8, vmulq_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d));
            vst1q_f32(o + 12, vmulq_f32(vcvtq_f32_s32(vmovl_high_s16(hi)), d));
        }
    }
}

/* ---- activation quantization, bit-identical to the scalar reference: amax by vmaxq of |x| (a
 * block holding a NaN goes to the reference: fmaxf skips NaN, vmaxq does not), q = roundf(x * id)
 * as FRINTA (ties away from zero) then FCVTZS to int32 and its low byte, the same instructions the
 * compiler makes of the reference's (int8_t)roundf(...) here (also for inf / out-of-range values). */
static pl_from_float_fn q8_0_ref, q8_k_ref; /* the scalar table's, set by the init function */

/* 16 int32 lanes (4 vectors) -> 16 bytes, each the low byte */
AI int8x16_t low_bytes(int32x4_t a, int32x4_t b, int32x4_t c, int32x4_t d) {
    const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b)), cd = vcombine_s16(vmovn_s32(c), vmovn_s32(d));
    return vcombine_s8(vmovn_s16(ab), vmovn_s16(cd));
}
AI int32x4_t quant4(const float *x, float32x4_t id) { return vcvtq_s32_f32(vrndaq_f32(vmulq_f32(vld1q_f32(x), id))); }
/* nonzero if any of the n (a multiple of 4) values is NaN; else *amax = max |x| */
AI int amax_or_nan(const float *x, int n, float *amax) {
    float32x4_t m = vdupq_n_f32(0);
    uint32x4_t nan = vdupq_n_u32(0);
    for (int i = 0; i < n; i += 4) {
        const float32x4_t v = vld1q_f32(x + i);
        nan = vorrq_u32(nan, vmvnq_u32(vceqq_f32(v, v)));
        m = vmaxq_f32(m, vabsq_f32(v));
    }
    *amax = vmaxvq_f32(m);
    return vmaxvq_u32(nan) != 0;
}

static void q8_0_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const float *xb = x + b * PL_QK;
        uint8_t *yb = y + b * sizeof(pl_block_q8_0);
        float amax;
        if (amax_or_nan(xb, PL_QK, &amax)) {
            q8_0_ref(xb, yb, PL_QK);
            continue;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        pl_st_u16(yb, pl_fp32_to_fp16(d));
        const float32x4_t vid = vdupq_n_f32(id);
        UNROLL for (int h = 0; h < 2; h++)
            vst1q_s8((int8_t *)yb + 2 + 16 * h, low_bytes(quant4(xb + 16 * h, vid), quant4(xb + 16 * h + 4, vid),
                                                          quant4(xb + 16 * h + 8, vid), quant4(xb + 16 * h + 12, vid)));
    }
}

static void q8_k_from_float(const float *x, void *vy, int64_t n) {
    for (int64_t i = 0; i < n / PL_QK_K; i++) {
        const float *xb = x + i * PL_QK_K;
        uint8_t *yb = (uint8_t *)vy + i * sizeof(pl_block_q8_k);
        float amax;
        if (amax_or_nan(xb, PL_QK_K, &amax)) {
            q8_k_ref(xb, yb, PL_QK_K);
            continue;
        }
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        memcpy(yb, &d, 4);
        const float32x4_t vid = vdupq_n_f32(id);
        int16_t bsums[PL_QK_K / 16];
        for (int g = 0; g < PL_QK_K / 16; g++) {
            const float *xg = xb + 16 * g;
            const int8x16_t q = low_bytes(quant4(xg, vid), quant4(xg + 4, vid), quant4(xg + 8, vid), quant4(xg + 12, vid));
            vst1q_s8((int8_t *)yb + 4 + 16 * g, q);
            bsums[g] = (int16_t)vaddlvq_s8(q);
        }
        memcpy(yb + 260, bsums, sizeof(bsums));
    }
}

/* ============================== fp32 helpers ============================== */
static float dot_f32(int n, const float *a, const float *b) { return fl_dot(FT_f32, n, a, b); }
static void axpy_f32(int n, float alpha, const float *x, float *y) { /* multiply, then add: equal to the scalar loop */
    const float32x4_t va = vdupq_n_f32(alpha);
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vmulq_f32(va, vld1q_f32(x + i))));
    for (; i < n; i++) y[i] += alpha * x[i];
}

/* c = a x b (row-major): R rows of a x NV 4-float vectors of b per register tile; the columns past the
 * last whole vector go through a scalar loop with the same per-element order (p ascending) */
AI void nn_tile(const int R, const int NV, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                size_t ldc) {
    float32x4_t acc[4][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) acc[r][v] = vdupq_n_f32(0);
    for (int p = 0; p < k; p++) {
        float32x4_t bv[4];
        UNROLL for (int v = 0; v < NV; v++) bv[v] = vld1q_f32(b + (size_t)p * ldb + 4 * v);
        UNROLL for (int r = 0; r < R; r++) {
            const float32x4_t av = vdupq_n_f32(a[(size_t)r * lda + p]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = vfmaq_f32(acc[r][v], av, bv[v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) vst1q_f32(c + (size_t)r * ldc + 4 * v, acc[r][v]);
}
typedef void (*nn_tile_fn)(int k, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc);
#define NN_DEF(R, NV)                                                                                                 \
    static void nn_tile_##R##_##NV(int k, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc) { \
        nn_tile(R, NV, k, a, lda, b, ldb, c, ldc);                                                                    \
    }
#define NN_ROW(R) NN_DEF(R, 1) NN_DEF(R, 2) NN_DEF(R, 3) NN_DEF(R, 4)
NN_ROW(1) NN_ROW(2) NN_ROW(3) NN_ROW(4)
#define NN_TAB(R) {nn_tile_##R##_1, nn_tile_##R##_2, nn_tile_##R##_3, nn_tile_##R##_4}
static const nn_tile_fn nn_tab[4][4] = {NN_TAB(1), NN_TAB(2), NN_TAB(3), NN_TAB(4)};

static void gemm_nn_f32(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                        size_t ldc) {
    const int nvec = n / 4 * 4;
    for (int j0 = 0; j0 < nvec; j0 += 16) {
        const int nv = (nvec - j0 < 16 ? nvec - j0 : 16) / 4;
        for (int i0 = 0; i0 < m; i0 += 4) {
            const int R = m - i0 < 4 ? m - i0 : 4;
            nn_tab[R - 1][nv - 1](k, a + (size_t)i0 * lda, lda, b + j0, ldb, c + (size_t)i0 * ldc + j0, ldc);
        }
    }
    for (int i = 0; i < m; i++)
        for (int j = nvec; j < n; j++) {
            float s = 0.0f;
            for (int p = 0; p < k; p++) s += a[(size_t)i * lda + p] * b[(size_t)p * ldb + j];
            c[(size_t)i * ldc + j] = s;
        }
}

/* e^x for 4 floats: x = n ln2 + r (|r| <= ln2/2, ln2 in two parts), e^r by a degree-6 polynomial
 * (Cephes expf's coefficients), times 2^n built in the exponent field; x clamped to [-87.3, 88]
 * (results below e^-87.3 are 0). Within 2 ulp of libm's expf there. */
AI float32x4_t exp4(float32x4_t x) {
    const float32x4_t lo = vdupq_n_f32(-87.3f);
    const uint32x4_t under = vcltq_f32(x, lo);
    x = vminq_f32(vmaxq_f32(x, lo), vdupq_n_f32(88.0f));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), vmulq_f32(p, r), r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(vmulq_f32(p, vreinterpretq_f32_s32(e))), under));
}

static void softmax_f32(float *x, int n, float scale) {
    const float32x4_t vs = vdupq_n_f32(scale);
    float mx = -INFINITY;
    int i = 0;
    if (n >= 4) {
        float32x4_t m4 = vdupq_n_f32(-INFINITY);
        for (; i + 4 <= n; i += 4) m4 = vmaxq_f32(m4, vmulq_f32(vld1q_f32(x + i), vs));
        mx = vmaxvq_f32(m4);
    }
    for (; i < n; i++) mx = x[i] * scale > mx ? x[i] * scale : mx;
    const float32x4_t vm = vdupq_n_f32(mx);
    float32x4_t sum = vdupq_n_f32(0);
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t e = exp4(vsubq_f32(vmulq_f32(vld1q_f32(x + i), vs), vm));
        vst1q_f32(x + i, e);
        sum = vaddq_f32(sum, e);
    }
    float tail = 0.0f;
    if (i < n) {
        float t[4] = {0, 0, 0, 0};
        for (int j = 0; i + j < n; j++) t[j] = x[i + j] * scale - mx;
        float e[4];
        vst1q_f32(e, exp4(vld1q_f32(t)));
        for (int j = 0; i + j < n; j++) {
            x[i + j] = e[j];
            tail += e[j];
        }
    }
    const float inv = 1.0f / (vaddvq_f32(sum) + tail);
    const float32x4_t vinv = vdupq_n_f32(inv);
    for (i = 0; i + 4 <= n; i += 4) vst1q_f32(x + i, vmulq_f32(vld1q_f32(x + i), vinv));
    for (; i < n; i++) x[i] *= inv;
}

AI float32x4_t swiglu4(float32x4_t g, float32x4_t u) {
    return vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0f), exp4(vnegq_f32(g)))), u);
}
static void swiglu_f32(float *gate, const float *up, int n) {
    int i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(gate + i, swiglu4(vld1q_f32(gate + i), vld1q_f32(up + i)));
    if (i < n) {
        float g[4] = {0, 0, 0, 0}, u[4] = {0, 0, 0, 0}, r[4];
        for (int j = 0; i + j < n; j++) {
            g[j] = gate[i + j];
            u[j] = up[i + j];
        }
        vst1q_f32(r, swiglu4(vld1q_f32(g), vld1q_f32(u)));
        for (int j = 0; i + j < n; j++) gate[i + j] = r[j];
    }
}

/* ============================== Q4_0 / Q8_0 x Q8_0 (unpacked rows) ============================== */
/* block dots: exact int32, then sum += (float)isum * (dw * da) as the reference */
AI int32_t q4_0_block(const uint8_t *wb, const uint8_t *ab) {
    const uint8x16_t q = vld1q_u8(wb + 2);
    const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vdupq_n_s8(8));
    const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
    int32x4_t acc = dot4(vdupq_n_s32(0), lo, vld1q_s8((const int8_t *)ab + 2));
    acc = dot4(acc, hi, vld1q_s8((const int8_t *)ab + 18));
    return vaddvq_s32(acc);
}
AI int32_t q8_0_block(const uint8_t *wb, const uint8_t *ab) {
    int32x4_t acc = dot4(vdupq_n_s32(0), vld1q_s8((const int8_t *)wb + 2), vld1q_s8((const int8_t *)ab + 2));
    acc = dot4(acc, vld1q_s8((const int8_t *)wb + 18), vld1q_s8((const int8_t *)ab + 18));
    return vaddvq_s32(acc);
}
static void q4_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / PL_QK; b++, w += sizeof(pl_block_q4_0), a += sizeof(pl_block_q8_0))
        sum += (float)q4_0_block(w, a) * (pl_ld_fp16(w) * pl_ld_fp16(a));
    *s = sum;
}
static void q8_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / PL_QK; b++, w += sizeof(pl_block_q8_0), a += sizeof(pl_block_q8_0))
        sum += (float)q8_0_block(w, a) * (pl_ld_fp16(w) * pl_ld_fp16(a));
    *s = sum;
}

/* ============================== packed Q4_0 / Q8_0 x q8x activations ==============================
 * A 64-byte weight vector is 4 q registers of 4 rows each (lane r = row r of the group); each int32
 * lane takes the dot of its row's 4 bytes with a broadcast activation word. Q4_0: nibbles (0..15)
 * dotted as they are, plus the -8 correction c4 of the activation row. Q8_0: stored w + 128; levels
 * 0 / 1 flip it back to int8 (xor 0x80) and dot, level 2 dots the unsigned bytes (usdot) and adds the
 * -128 correction c8. Rows summed block by block with the reference's roundings. */
#define PKC 4 /* prefill: activation rows per pass */
enum { QT_q4_0 = 0, QT_q8_0 = 1 };
#define Q8B ((int)sizeof(pl_block_q8_0))
AI size_t pk_d_off(int nb) { return pl_round64((size_t)nb * Q8B); }
AI size_t pk_c_off(const int qt, int nb) { return pk_d_off(nb) + (qt == QT_q4_0 ? 1 : 2) * pl_round64((size_t)nb * 4); }

/* stores the first rows (<= 4 used) lanes of v */
AI void store4(float *out, float32x4_t v, int rows) {
    if (rows >= 4) {
        vst1q_f32(out, v);
        return;
    }
    float t[4];
    vst1q_f32(t, v);
    for (int r = 0; r < rows; r++) out[r] = t[r];
}

/* quads q0 .. q0 + NQ - 1 (4 rows each) of one group x C activation rows */
AI void pk_part(const int qt, const int C, const int NQ, int nb, const uint8_t *gp, const uint8_t *a, size_t as,
                float *out, size_t os, int rows, const int q0) {
    const int QB = qt == QT_q4_0 ? 16 : 32;
    const uint8_t *ab[PKC];
    const int32_t *ac[PKC];
    const float *ad[PKC];
    UNROLL for (int c = 0; c < C; c++) {
        ab[c] = a + (size_t)c * as + 2;
        ac[c] = (const int32_t *)(const void *)(a + (size_t)c * as + pk_c_off(qt, nb));
        ad[c] = (const float *)(const void *)(a + (size_t)c * as + pk_d_off(nb));
    }
    float32x4_t fa[PKC][4];
    UNROLL for (int c = 0; c < C; c++) UNROLL for (int j = 0; j < NQ; j++) fa[c][j] = vdupq_n_f32(0);
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = gp + pl_pk_q(b, QB) + 16 * q0;
        int32x4_t acc[PKC][4];
        if (qt == QT_q4_0) {
            UNROLL for (int c = 0; c < C; c++) UNROLL for (int j = 0; j < NQ; j++) acc[c][j] = vdupq_n_s32(ac[c][b]);
            UNROLL for (int k = 0; k < 4; k++) {
                int8x16_t alo[PKC], ahi[PKC];
                UNROLL for (int c = 0; c < C; c++) {
                    alo[c] = bcast32(ab[c] + (size_t)b * Q8B + 4 * k);
                    ahi[c] = bcast32(ab[c] + (size_t)b * Q8B + 16 + 4 * k);
                }
                UNROLL for (int j = 0; j < NQ; j++) {
                    const uint8x16_t v = vld1q_u8(q + 64 * k + 16 * j);
                    const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
                    const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                    UNROLL for (int c = 0; c < C; c++) acc[c][j] = dot4(dot4(acc[c][j], lo, alo[c]), hi, ahi[c]);
                }
            }
        } else {
            UNROLL for (int c = 0; c < C; c++) UNROLL for (int j = 0; j < NQ; j++)
                acc[c][j] = vdupq_n_s32(PL_NEON_LEVEL >= 2 ? ac[c][b] : 0);
            UNROLL for (int k = 0; k < 8; k++) {
                int8x16_t x[PKC];
                UNROLL for (int c = 0; c < C; c++) x[c] = bcast32(ab[c] + (size_t)b * Q8B + 4 * k);
                UNROLL for (int j = 0; j < NQ; j++) {
                    const uint8x16_t v = vld1q_u8(q + 64 * k + 16 * j);
#if PL_NEON_LEVEL >= 2
                    UNROLL for (int c = 0; c < C; c++) acc[c][j] = dot4_u8(acc[c][j], v, x[c]);
#else
                    const int8x16_t ws = vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80)));
                    UNROLL for (int c = 0; c < C; c++) acc[c][j] = dot4(acc[c][j], ws, x[c]);
#endif
                }
            }
        }
        const uint8_t *dp = gp + pl_pk_d(b, QB) + 8 * q0;
        UNROLL for (int j = 0; j < NQ; j++) {
            const float32x4_t dw = ld_fp16x4(dp + 8 * j);
            UNROLL for (int c = 0; c < C; c++)
                fa[c][j] = vaddq_f32(fa[c][j], vmulq_f32(vcvtq_f32_s32(acc[c][j]), vmulq_f32(dw, vdupq_n_f32(ad[c][b]))));
        }
    }
    UNROLL for (int c = 0; c < C; c++) UNROLL for (int j = 0; j < NQ; j++)
        if (rows > 4 * (q0 + j)) store4(out + (size_t)c * os + 4 * (q0 + j), fa[c][j], rows - 4 * (q0 + j));
}
/* decode: the whole group (4 quads) in one pass; prefill: two passes of 8 rows, C activation rows each */
#if PL_NEON_LEVEL >= 2
/* i8mm (prefill): usmmla multiplies 2 rows x 8 weight bytes by 2 activation rows x 8 bytes into a 2 x 2
 * int32 tile. A row's 8 consecutive weights are its words in vectors k and k + 1 (zip of the two), so
 * each quad of rows gives two 2 x 8 operands; the tiles [r0c0 r0c1 r1c0 r1c1] / [r2c0 ..] are unzipped
 * into one 4-row vector per activation row before the float combination (exact int32 sums, the same
 * float operations as pk_part: bit-identical). Q4_0: the nibbles and the c4 correction; Q8_0: the
 * stored w + 128 bytes and c8. CP activation-row pairs, NQ quads from q0. */
AI void pk_part_mm(const int qt, const int CP, const int NQ, int nb, const uint8_t *gp, const uint8_t *a, size_t as,
                   float *out, size_t os, int rows, const int q0) {
    const int QB = qt == QT_q4_0 ? 16 : 32;
    const uint8_t *ab[4];
    const int32_t *ac[4];
    const float *ad[4];
    UNROLL for (int c = 0; c < 2 * CP; c++) {
        ab[c] = a + (size_t)c * as + 2;
        ac[c] = (const int32_t *)(const void *)(a + (size_t)c * as + pk_c_off(qt, nb));
        ad[c] = (const float *)(const void *)(a + (size_t)c * as + pk_d_off(nb));
    }
    float32x4_t fa[4][4];
    UNROLL for (int c = 0; c < 2 * CP; c++) UNROLL for (int j = 0; j < NQ; j++) fa[c][j] = vdupq_n_f32(0);
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = gp + pl_pk_q(b, QB) + 16 * q0;
        int32x4_t t01[2][4], t23[2][4]; /* [pair][quad]: rows 0,1 / 2,3 of the quad x the pair's 2 columns */
        UNROLL for (int p = 0; p < CP; p++) {
            const int32x4_t init = vcombine_s32(vld1_s32((const int32_t[2]){ac[2 * p][b], ac[2 * p + 1][b]}),
                                                vld1_s32((const int32_t[2]){ac[2 * p][b], ac[2 * p + 1][b]}));
            UNROLL for (int j = 0; j < NQ; j++) t01[p][j] = t23[p][j] = init;
        }
        /* (vector pair k, k+1, activation offset) steps: Q4_0 low nibbles at 0 / 8, high at 16 / 24 */
        UNROLL for (int step = 0; step < 4; step++) {
            const int k = qt == QT_q4_0 ? 2 * (step & 1) : 2 * step;
            const int aoff = qt == QT_q4_0 ? 16 * (step >> 1) + 4 * k : 4 * k;
            int8x16_t x[2];
            UNROLL for (int p = 0; p < CP; p++)
                x[p] = vcombine_s8(vld1_s8((const int8_t *)ab[2 * p] + (size_t)b * Q8B + aoff),
                                   vld1_s8((const int8_t *)ab[2 * p + 1] + (size_t)b * Q8B + aoff));
            UNROLL for (int j = 0; j < NQ; j++) {
                uint8x16_t v0 = vld1q_u8(q + 64 * k + 16 * j), v1 = vld1q_u8(q + 64 * (k + 1) + 16 * j);
                if (qt == QT_q4_0) {
                    v0 = (step >> 1) ? vshrq_n_u8(v0, 4) : vandq_u8(v0, vdupq_n_u8(0x0F));
                    v1 = (step >> 1) ? vshrq_n_u8(v1, 4) : vandq_u8(v1, vdupq_n_u8(0x0F));
                }
                const uint8x16_t w01 = vreinterpretq_u8_u32(vzip1q_u32(vreinterpretq_u32_u8(v0), vreinterpretq_u32_u8(v1)));
                const uint8x16_t w23 = vreinterpretq_u8_u32(vzip2q_u32(vreinterpretq_u32_u8(v0), vreinterpretq_u32_u8(v1)));
                UNROLL for (int p = 0; p < CP; p++) {
                    t01[p][j] = vusmmlaq_s32(t01[p][j], w01, x[p]);
                    t23[p][j] = vusmmlaq_s32(t23[p][j], w23, x[p]);
                }
            }
        }
        const uint8_t *dp = gp + pl_pk_d(b, QB) + 8 * q0;
        UNROLL for (int j = 0; j < NQ; j++) {
            const float32x4_t dw = ld_fp16x4(dp + 8 * j);
            UNROLL for (int p = 0; p < CP; p++) {
                const int32x4_t col[2] = {vuzp1q_s32(t01[p][j], t23[p][j]), vuzp2q_s32(t01[p][j], t23[p][j])};
                UNROLL for (int e = 0; e < 2; e++) {
                    const int c = 2 * p + e;
                    fa[c][j] = vaddq_f32(fa[c][j], vmulq_f32(vcvtq_f32_s32(col[e]), vmulq_f32(dw, vdupq_n_f32(ad[c][b]))));
                }
            }
        }
    }
    UNROLL for (int c = 0; c < 2 * CP; c++) UNROLL for (int j = 0; j < NQ; j++)
        if (rows > 4 * (q0 + j)) store4(out + (size_t)c * os + 4 * (q0 + j), fa[c][j], rows - 4 * (q0 + j));
}
#endif
AI void pk_tile(const int qt, const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out,
                size_t os, int rows) {
#if PL_NEON_LEVEL >= 2
    if (C >= 2) { /* pairs of activation rows through usmmla, an odd last one through usdot */
        pk_part_mm(qt, C / 2, 2, nb, gp, a, as, out, os, rows, 0);
        if (rows > 8) pk_part_mm(qt, C / 2, 2, nb, gp, a, as, out, os, rows, 2);
        if (C & 1) {
            pk_part(qt, 1, 2, nb, gp, a + (size_t)(C - 1) * as, as, out + (size_t)(C - 1) * os, os, rows, 0);
            if (rows > 8) pk_part(qt, 1, 2, nb, gp, a + (size_t)(C - 1) * as, as, out + (size_t)(C - 1) * os, os, rows, 2);
        }
        return;
    }
#endif
    pk_part(qt, C, 2, nb, gp, a, as, out, os, rows, 0);
    if (rows > 8) pk_part(qt, C, 2, nb, gp, a, as, out, os, rows, 2);
}
static void pk_gemv_q4_0(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {
    pk_part(QT_q4_0, 1, 4, nb, gp, a, 0, out, 0, rows, 0);
}
static void pk_gemv_q8_0(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {
    pk_part(QT_q8_0, 1, 4, nb, gp, a, 0, out, 0, rows, 0);
}
#define PKT_DEF(qt, C)                                                                                          \
    static void pk_tile_##qt##_##C(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, \
                                   int rows) {                                                                  \
        pk_tile(QT_##qt, C, nb, gp, a, as, out, os, rows);                                                      \
    }
PKT_DEF(q4_0, 1) PKT_DEF(q4_0, 2) PKT_DEF(q4_0, 3) PKT_DEF(q4_0, 4)
PKT_DEF(q8_0, 1) PKT_DEF(q8_0, 2) PKT_DEF(q8_0, 3) PKT_DEF(q8_0, 4)
static const pl_pk_tile_fn pk_tile_tab[2][PKC] = {{pk_tile_q4_0_1, pk_tile_q4_0_2, pk_tile_q4_0_3, pk_tile_q4_0_4},
                                                  {pk_tile_q8_0_1, pk_tile_q8_0_2, pk_tile_q8_0_3, pk_tile_q8_0_4}};
static void q4_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    pl_pk_gemm_drive(PL_TYPE_Q4_0, PL_QK, pk_gemv_q4_0, pk_tile_tab[QT_q4_0], PKC, n, nr, nc, w, a, as, out, os);
}
static void q8_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    pl_pk_gemm_drive(PL_TYPE_Q8_0, PL_QK, pk_gemv_q8_0, pk_tile_tab[QT_q8_0], PKC, n, nr, nc, w, a, as, out, os);
}

/* ============================== packed K-quants x Q8_K ==============================
 * kquant_packed_simd.h over 8-lane vectors (two q registers: rows lo .. lo + 7; each group in two
 * passes). Its kv_* operations on NEON: */
#define KV_LANES 8
typedef struct { int32x4_t v[2]; } kv_i;
typedef struct { float32x4_t v[2]; } kv_f;
/* the header prefetches with x86's spelling */
#define _MM_HINT_T0 0
#define _mm_prefetch(p, hint) __builtin_prefetch((p), 0, 3)
#define KV_MAP1(expr) { kv_i r_; UNROLL for (int h_ = 0; h_ < 2; h_++) r_.v[h_] = (expr); return r_; }
#define KV_FMAP1(expr) { kv_f r_; UNROLL for (int h_ = 0; h_ < 2; h_++) r_.v[h_] = (expr); return r_; }
AI kv_i kv_load(const uint8_t *p) KV_MAP1(vreinterpretq_s32_u8(vld1q_u8(p + 16 * h_)))
AI kv_i kv_set1(int32_t x) KV_MAP1(vdupq_n_s32(x))
AI kv_i kv_zero(void) KV_MAP1(vdupq_n_s32(0))
AI kv_i kv_add(kv_i a, kv_i b) KV_MAP1(vaddq_s32(a.v[h_], b.v[h_]))
AI kv_i kv_and(kv_i a, kv_i b) KV_MAP1(vandq_s32(a.v[h_], b.v[h_]))
AI kv_i kv_andnot(kv_i m, kv_i x) KV_MAP1(vbicq_s32(x.v[h_], m.v[h_]))
AI kv_i kv_or_and(kv_i a, kv_i b, kv_i m) KV_MAP1(vorrq_s32(a.v[h_], vandq_s32(b.v[h_], m.v[h_])))
AI kv_i kv_mullo(kv_i a, kv_i b) KV_MAP1(vmulq_s32(a.v[h_], b.v[h_]))
AI kv_i kv_srli16(kv_i a, const int k) KV_MAP1(vreinterpretq_s32_u16(vshlq_u16(vreinterpretq_u16_s32(a.v[h_]), vdupq_n_s16((int16_t)-k))))
AI kv_i kv_slli16(kv_i a, const int k) KV_MAP1(vreinterpretq_s32_u16(vshlq_u16(vreinterpretq_u16_s32(a.v[h_]), vdupq_n_s16((int16_t)k))))
AI kv_i kv_srai32(kv_i a, const int k) KV_MAP1(vshlq_s32(a.v[h_], vdupq_n_s32(-k)))
AI kv_i kv_scales(kv_i sc) { return sc; }
AI kv_i kv_bcast128(const void *p) KV_MAP1(vreinterpretq_s32_u8(vld1q_u8((const uint8_t *)p)))
/* table lookup per 16 bytes (indices 0..15 here, as x86's vpshufb) */
AI kv_i kv_shuffle8(kv_i t, kv_i i) KV_MAP1(vreinterpretq_s32_u8(vqtbl1q_u8(vreinterpretq_u8_s32(t.v[h_]), vreinterpretq_u8_s32(i.v[h_]))))
AI kv_i kv_u8(const uint8_t *p) {
    const uint16x8_t w = vmovl_u8(vld1_u8(p));
    kv_i r;
    r.v[0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(w)));
    r.v[1] = vreinterpretq_s32_u32(vmovl_high_u16(w));
    return r;
}
AI kv_i kv_s8(const uint8_t *p) {
    const int16x8_t w = vmovl_s8(vld1_s8((const int8_t *)p));
    kv_i r;
    r.v[0] = vmovl_s16(vget_low_s16(w));
    r.v[1] = vmovl_high_s16(w);
    return r;
}
AI kv_f kv_fp16(const uint8_t *p) KV_FMAP1(ld_fp16x4(p + 8 * h_))
AI kv_f kv_cvt(kv_i a) KV_FMAP1(vcvtq_f32_s32(a.v[h_]))
AI kv_f kv_fset1(float x) KV_FMAP1(vdupq_n_f32(x))
AI kv_f kv_fzero(void) KV_FMAP1(vdupq_n_f32(0))
AI kv_f kv_fadd(kv_f a, kv_f b) KV_FMAP1(vaddq_f32(a.v[h_], b.v[h_]))
AI kv_f kv_fsub(kv_f a, kv_f b) KV_FMAP1(vsubq_f32(a.v[h_], b.v[h_]))
AI kv_f kv_fmul(kv_f a, kv_f b) KV_FMAP1(vmulq_f32(a.v[h_], b.v[h_]))
AI void kv_store(float *out, kv_f v, int rows) {
    store4(out, v.v[0], rows);
    if (rows > 4) store4(out + 4, v.v[1], rows - 4);
}
#if PL_NEON_LEVEL >= 2
/* usdot takes unsigned weight bytes up to 255: Q4_K's high nibbles are dotted in place (16 x) */
#define KV_DOT_WIDE 1
#endif
/* per lane sc x ((init + the 4-byte dots of w[v] with q8[4v ..]) >> shift), exact: weights below
 * 2^WBITS (<= 64 except with KV_DOT_WIDE) are valid int8, so sdot / the level-0 dot4 apply */
AI kv_i kv_sdot(const int NW, const int WBITS, const kv_i *w, const uint8_t *q8, kv_i sc, int32_t init, const int shift) {
    kv_i r;
    UNROLL for (int h = 0; h < 2; h++) {
        int32x4_t acc = vdupq_n_s32(init);
        UNROLL for (int v = 0; v < NW; v++) {
#if PL_NEON_LEVEL >= 2
            if (WBITS > 7) {
                acc = dot4_u8(acc, vreinterpretq_u8_s32(w[v].v[h]), bcast32(q8 + 4 * v));
                continue;
            }
#endif
            acc = dot4(acc, vreinterpretq_s8_s32(w[v].v[h]), bcast32(q8 + 4 * v));
        }
        if (shift) acc = vshlq_s32(acc, vdupq_n_s32(-shift));
        r.v[h] = vmulq_s32(acc, sc.v[h]);
    }
    return r;
}
/* signed int8 weights (IQ4_XS's table values) */
AI kv_i kv_sdot_s8(const int NW, const kv_i *w, const uint8_t *q8, kv_i sc, int32_t sum8) {
    (void)sum8;
    kv_i r;
    UNROLL for (int h = 0; h < 2; h++) {
        int32x4_t acc = vdupq_n_s32(0);
        UNROLL for (int v = 0; v < NW; v++) acc = dot4(acc, vreinterpretq_s8_s32(w[v].v[h]), bcast32(q8 + 4 * v));
        r.v[h] = vmulq_s32(acc, sc.v[h]);
    }
    return r;
}
/* its loops unrolled 4 deep, not fully: a full unroll of the 16 tiles makes one file take GCC minutes
 * (the RTL combiner on huge blocks) for no gain the 32 q registers could hold */
#undef UNROLL
#define UNROLL _Pragma("GCC unroll 4")
/* GCC cannot see that the s / g == 0 iteration assigns isum / imin once the loops stay loops */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "kquant_packed_simd.h"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#undef UNROLL
#define UNROLL _Pragma("GCC unroll 16")

/* ============================== Q4_K / Q6_K x Q8_K (unpacked rows) ==============================
 * the reference's integer sums (types_kquants.c) per sub-block / group, its float combination */
static void q4_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const uint8_t *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 144, a += sizeof(pl_block_q8_k)) {
        const uint8_t *sb = w + 4;
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) {
            if (j < 4) {
                sc[j] = sb[j] & 63;
                mn[j] = sb[j + 4] & 63;
            } else {
                sc[j] = (uint8_t)((sb[j + 4] & 0x0F) | ((sb[j - 4] >> 6) << 4));
                mn[j] = (uint8_t)((sb[j + 4] >> 4) | ((sb[j] >> 6) << 4));
            }
        }
        const int8_t *q8 = (const int8_t *)a + 4;
        int32_t isum = 0, imin = 0;
        for (int c = 0; c < 4; c++) {
            const uint8x16_t q0 = vld1q_u8(w + 16 + 32 * c), q1 = vld1q_u8(w + 16 + 32 * c + 16);
            const uint8x16_t m4 = vdupq_n_u8(0x0F);
            int32x4_t lo = dot4(vdupq_n_s32(0), vreinterpretq_s8_u8(vandq_u8(q0, m4)), vld1q_s8(q8 + 64 * c));
            lo = dot4(lo, vreinterpretq_s8_u8(vandq_u8(q1, m4)), vld1q_s8(q8 + 64 * c + 16));
            int32x4_t hi = dot4(vdupq_n_s32(0), vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), vld1q_s8(q8 + 64 * c + 32));
            hi = dot4(hi, vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), vld1q_s8(q8 + 64 * c + 48));
            isum += (int32_t)sc[2 * c] * vaddvq_s32(lo) + (int32_t)sc[2 * c + 1] * vaddvq_s32(hi);
        }
        for (int j = 0; j < 8; j++)
            imin += (int32_t)mn[j] * ((int16_t)pl_ld_u16(a + 260 + 4 * j) + (int16_t)pl_ld_u16(a + 262 + 4 * j));
        const float ad = pl_ld_f32(a);
        sum += (ad * pl_ld_fp16(w)) * (float)isum - (ad * pl_ld_fp16(w + 2)) * (float)imin;
    }
    *s = sum;
}

static void q6_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const uint8_t *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 210, a += sizeof(pl_block_q8_k)) {
        const int8_t *q8 = (const int8_t *)a + 4, *sc = (const int8_t *)(w + 192);
        const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
        int32_t isum = 0;
        for (int h = 0; h < 2; h++) /* 128 weights: ql[64 h ..], qh[32 h ..]; element 128h + 32k + l */
            for (int half = 0; half < 2; half++) { /* l in 16 half .. + 15 */
                const uint8x16_t ql0 = vld1q_u8(w + 64 * h + 16 * half), ql1 = vld1q_u8(w + 64 * h + 32 + 16 * half);
                const uint8x16_t qh = vld1q_u8(w + 128 + 32 * h + 16 * half);
                const uint8x16_t q[4] = {
                    vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8(vandq_u8(qh, m3), 4)),
                    vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 2), m3), 4)),
                    vorrq_u8(vshrq_n_u8(ql0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qh, 4), m3), 4)),
                    vorrq_u8(vshrq_n_u8(ql1, 4), vshlq_n_u8(vshrq_n_u8(qh, 6), 4))};
                UNROLL for (int k = 0; k < 4; k++) { /* group g = (128h + 32k + 16 half) / 16 */
                    const int g = 8 * h + 2 * k + half;
                    const int8x16_t v = vsubq_s8(vreinterpretq_s8_u8(q[k]), vdupq_n_s8(32));
                    isum += (int32_t)sc[g] * vaddvq_s32(dot4(vdupq_n_s32(0), v, vld1q_s8(q8 + 16 * g)));
                }
            }
        sum += (pl_ld_f32(a) * pl_ld_fp16(w + 208)) * (float)isum;
    }
    *s = sum;
}

/* ============================== the other unpacked integer types ==============================
 * Q4_1 / Q5_0 / Q5_1 / IQ4_NL x Q8_0 and Q2_K / Q3_K / Q5_K / IQ4_XS x Q8_K: the integer sums and
 * float combination of types_kquants.c, exact (every weight value fits an int8). */
/* 16 bytes: 0x10 where bit (first + l) of the 32-bit word qh is set, l = 0..15 */
AI uint8x16_t bits_to_16(uint32_t qh, int first) {
    static const uint8_t m[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint32_t w = qh >> first;
    const uint8x16_t b = vcombine_u8(vdup_n_u8((uint8_t)(w & 0xFF)), vdup_n_u8((uint8_t)((w >> 8) & 0xFF)));
    return vandq_u8(vtstq_u8(b, vld1q_u8(m)), vdupq_n_u8(0x10));
}
AI int32_t dot32(int8x16_t lo, int8x16_t hi, const int8_t *q8) {
    return vaddvq_s32(dot4(dot4(vdupq_n_s32(0), lo, vld1q_s8(q8)), hi, vld1q_s8(q8 + 16)));
}
AI int32_t sum32(const int8_t *q8) { return vaddlvq_s8(vld1q_s8(q8)) + vaddlvq_s8(vld1q_s8(q8 + 16)); }

static void q4_1_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 20, a += 34) {
        const int8_t *q8 = (const int8_t *)a + 2;
        const uint8x16_t q = vld1q_u8(w + 4);
        const int32_t isum = dot32(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), q8);
        const float d8 = pl_ld_fp16(a);
        sum += (float)isum * (pl_ld_fp16(w) * d8) + (float)sum32(q8) * (pl_ld_fp16(w + 2) * d8);
    }
    *s = sum;
}
static void q5_1_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 24, a += 34) {
        const int8_t *q8 = (const int8_t *)a + 2;
        const uint8x16_t q = vld1q_u8(w + 8);
        const uint32_t qh = pl_ld_u32(w + 4);
        const uint8x16_t lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), bits_to_16(qh, 0));
        const uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), bits_to_16(qh, 16));
        const int32_t isum = dot32(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), q8);
        const float d8 = pl_ld_fp16(a);
        sum += (float)isum * (pl_ld_fp16(w) * d8) + (float)sum32(q8) * (pl_ld_fp16(w + 2) * d8);
    }
    *s = sum;
}
static void q5_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 22, a += 34) {
        const uint8x16_t q = vld1q_u8(w + 6);
        const uint32_t qh = pl_ld_u32(w + 2);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), bits_to_16(qh, 0))), vdupq_n_s8(16));
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), bits_to_16(qh, 16))), vdupq_n_s8(16));
        sum += (float)dot32(lo, hi, (const int8_t *)a + 2) * (pl_ld_fp16(w) * pl_ld_fp16(a));
    }
    *s = sum;
}
static void iq4_nl_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    const int8x16_t table = vld1q_s8(pl_iq4nl_values);
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 18, a += 34) {
        const uint8x16_t q = vld1q_u8(w + 2);
        const int8x16_t lo = vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0F))), hi = vqtbl1q_s8(table, vshrq_n_u8(q, 4));
        sum += (float)dot32(lo, hi, (const int8_t *)a + 2) * (pl_ld_fp16(w) * pl_ld_fp16(a));
    }
    *s = sum;
}
static void iq4_xs_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    const int8x16_t table = vld1q_s8(pl_iq4nl_values);
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 136, a += sizeof(pl_block_q8_k)) {
        const uint16_t sh = pl_ld_u16(w + 2);
        const int8_t *q8 = (const int8_t *)a + 4;
        int32_t isum = 0;
        for (int ib = 0; ib < 8; ib++) {
            const int ls = ((w[4 + ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((sh >> (2 * ib)) & 3) << 4);
            const uint8x16_t q = vld1q_u8(w + 8 + 16 * ib);
            const int8x16_t lo = vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0F))), hi = vqtbl1q_s8(table, vshrq_n_u8(q, 4));
            isum += (ls - 32) * dot32(lo, hi, q8 + 32 * ib);
        }
        sum += (pl_ld_f32(a) * pl_ld_fp16(w)) * (float)isum;
    }
    *s = sum;
}
static void q5_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 176, a += sizeof(pl_block_q8_k)) {
        const uint8_t *sb = w + 4;
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) {
            if (j < 4) {
                sc[j] = sb[j] & 63;
                mn[j] = sb[j + 4] & 63;
            } else {
                sc[j] = (uint8_t)((sb[j + 4] & 0x0F) | ((sb[j - 4] >> 6) << 4));
                mn[j] = (uint8_t)((sb[j + 4] >> 4) | ((sb[j] >> 6) << 4));
            }
        }
        const int8_t *q8 = (const int8_t *)a + 4;
        const uint8x16_t qh0 = vld1q_u8(w + 16), qh1 = vld1q_u8(w + 32), m4 = vdupq_n_u8(0x0F), b4 = vdupq_n_u8(0x10);
        int32_t isum = 0, imin = 0;
        for (int j = 0; j < 8; j++) { /* sub-block j: nibble j & 1 of ql[32 (j / 2) + l], bit j of qh[l] */
            const uint8x16_t q0 = vld1q_u8(w + 48 + 32 * (j / 2)), q1 = vld1q_u8(w + 48 + 32 * (j / 2) + 16);
            const uint8x16_t bit = vdupq_n_u8((uint8_t)(1u << j));
            const uint8x16_t v0 = vorrq_u8((j & 1) ? vshrq_n_u8(q0, 4) : vandq_u8(q0, m4), vandq_u8(vtstq_u8(qh0, bit), b4));
            const uint8x16_t v1 = vorrq_u8((j & 1) ? vshrq_n_u8(q1, 4) : vandq_u8(q1, m4), vandq_u8(vtstq_u8(qh1, bit), b4));
            isum += (int32_t)sc[j] * dot32(vreinterpretq_s8_u8(v0), vreinterpretq_s8_u8(v1), q8 + 32 * j);
            imin += (int32_t)mn[j] * ((int16_t)pl_ld_u16(a + 260 + 4 * j) + (int16_t)pl_ld_u16(a + 262 + 4 * j));
        }
        const float ad = pl_ld_f32(a);
        sum += (ad * pl_ld_fp16(w)) * (float)isum - (ad * pl_ld_fp16(w + 2)) * (float)imin;
    }
    *s = sum;
}
static void q2_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 84, a += sizeof(pl_block_q8_k)) {
        const int8_t *q8 = (const int8_t *)a + 4;
        int32_t isum = 0, imin = 0;
        for (int g = 0; g < 16; g++) {
            const int h = g / 8, j = (g % 8) / 2, i0 = 16 * (g % 2);
            const uint8x16_t q = vandq_u8(vshlq_u8(vld1q_u8(w + 16 + 32 * h + i0), vdupq_n_s8((int8_t)(-2 * j))), vdupq_n_u8(3));
            isum += (int32_t)(w[g] & 0x0F) * vaddvq_s32(dot4(vdupq_n_s32(0), vreinterpretq_s8_u8(q), vld1q_s8(q8 + 16 * g)));
            imin += (int32_t)(w[g] >> 4) * (int16_t)pl_ld_u16(a + 260 + 2 * g);
        }
        const float ad = pl_ld_f32(a);
        sum += (ad * pl_ld_fp16(w + 80)) * (float)isum - (ad * pl_ld_fp16(w + 82)) * (float)imin;
    }
    *s = sum;
}
static void q3_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 110, a += sizeof(pl_block_q8_k)) {
        int8_t sc[16];
        pl_q3_k_scales(w + 96, sc);
        const int8_t *q8 = (const int8_t *)a + 4;
        int32_t isum = 0;
        for (int g = 0; g < 16; g++) {
            const int h = g / 8, j = (g % 8) / 2, i0 = 16 * (g % 2);
            const uint8x16_t lo2 = vandq_u8(vshlq_u8(vld1q_u8(w + 32 + 32 * h + i0), vdupq_n_s8((int8_t)(-2 * j))), vdupq_n_u8(3));
            const uint8x16_t hb = vandq_u8(vtstq_u8(vld1q_u8(w + i0), vdupq_n_u8((uint8_t)(1u << (4 * h + j)))), vdupq_n_u8(4));
            const int8x16_t v = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo2, hb)), vdupq_n_s8(4));
            isum += (int32_t)sc[g] * vaddvq_s32(dot4(vdupq_n_s32(0), v, vld1q_s8(q8 + 16 * g)));
        }
        sum += (pl_ld_f32(a) * pl_ld_fp16(w + 108)) * (float)isum;
    }
    *s = sum;
}

/* ============================== the table ============================== */
#if PL_NEON_LEVEL == 0
#define PL_NEON_INIT pl_kernels_init_neon
#define PL_NEON_NAME "neon"
#elif PL_NEON_LEVEL == 1
#define PL_NEON_INIT pl_kernels_init_neon_dotprod
#define PL_NEON_NAME "neon-dotprod"
#else
#define PL_NEON_INIT pl_kernels_init_neon_i8mm
#define PL_NEON_NAME "neon-i8mm"
#endif
void PL_NEON_INIT(pl_kernels *k);
void PL_NEON_INIT(pl_kernels *k) {
    pl_kernels_init_scalar(k);
    k->isa = PL_NEON_NAME;
    pl_type_traits *t;
    kqp_register(k); /* kquant_packed_simd.h: the packed K-quant gemms */
    /* Q4_1 / Q5_0 / Q5_1 / IQ4_NL have no NEON packed gemm (only the scalar reference, kept for a model
     * packed under another table): a model loaded on this table keeps their rows and NEON vec_dots */
    k->types[PL_TYPE_Q4_1].repack = k->types[PL_TYPE_Q5_0].repack = NULL;
    k->types[PL_TYPE_Q5_1].repack = k->types[PL_TYPE_IQ4_NL].repack = NULL;
    q8_0_ref = k->types[PL_TYPE_Q8_0].from_float;
    q8_k_ref = k->types[PL_TYPE_Q8_K].from_float;
    k->types[PL_TYPE_Q8_K].from_float = q8_k_from_float;
    k->types[PL_TYPE_Q4_K].vec_dot = q4_k_vec_dot;
    k->types[PL_TYPE_Q6_K].vec_dot = q6_k_vec_dot;
    k->types[PL_TYPE_Q5_K].vec_dot = q5_k_vec_dot;
    k->types[PL_TYPE_Q2_K].vec_dot = q2_k_vec_dot;
    k->types[PL_TYPE_Q3_K].vec_dot = q3_k_vec_dot;
    k->types[PL_TYPE_IQ4_XS].vec_dot = iq4_xs_vec_dot;
    k->types[PL_TYPE_Q4_1].vec_dot = q4_1_vec_dot;
    k->types[PL_TYPE_Q5_0].vec_dot = q5_0_vec_dot;
    k->types[PL_TYPE_Q5_1].vec_dot = q5_1_vec_dot;
    k->types[PL_TYPE_IQ4_NL].vec_dot = iq4_nl_vec_dot;
    t = &k->types[PL_TYPE_F32];
    t->vec_dot = f32_vec_dot;
    t->gemm = f32_gemm;
    t = &k->types[PL_TYPE_F16];
    t->vec_dot = f16_vec_dot;
    t->gemm = f16_gemm;
    t->to_float = f16_to_float;
    t = &k->types[PL_TYPE_BF16];
    t->vec_dot = bf16_vec_dot;
    t->gemm = bf16_gemm;
    t->to_float = bf16_to_float;
    t = &k->types[PL_TYPE_Q8_0];
    t->vec_dot = q8_0_vec_dot;
    t->gemm_packed = q8_0_gemm_packed;
    t->to_float = q8_0_to_float;
    t->from_float = q8_0_from_float;
    t = &k->types[PL_TYPE_Q4_0];
    t->vec_dot = q4_0_vec_dot;
    t->gemm_packed = q4_0_gemm_packed;
    t->to_float = q4_0_to_float;
    k->dot_f32 = dot_f32;
    k->axpy_f32 = axpy_f32;
    k->gemm_nn_f32 = gemm_nn_f32;
    k->softmax_f32 = softmax_f32;
    k->swiglu_f32 = swiglu_f32;
}
#endif
