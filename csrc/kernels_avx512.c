/* kernels_avx512.c: the AVX-512 kernel table (F/BW/VL/DQ + VNNI + F16C), compiled with its own
 * ISA flags and chosen at run time by cpu_dispatch.c. Starts from the scalar table and overrides:
 *  - float weights (F32/F16/BF16) x fp32 activations: weights widened to fp32 on the fly (bf16:
 *    zero-extend + shift, f16: vcvtph2ps), activations stay fp32; gemm = 4 weight rows x 4
 *    activation rows register tiles; masked loads for tails (no read past a row, any alignment).
 *  - packed Q4_0 / Q8_0 weights (tensor_types.h) x q8x activations: VNNI vpdpbusd of a weight vector
 *    (lane r = row r of a 16-row group) with a broadcast activation dword; decode streams one group at
 *    a time, prefill runs a group over up to 6 activation rows. Packed Q4_K / Q6_K x Q8_K: the kernels
 *    of kquant_packed_simd.h. Unpacked rows of every integer type (PYLLM_REPACK=0) run
 *    kquant_dots_avx2.h's vec_dots.
 *  - Q8_0 / Q8_K from_float and F16/BF16/Q8_0/Q4_0 to_float (bit-identical to the scalar reference),
 *    dot_f32 / axpy_f32 (table entries the engine no longer calls; tests/test_kernels.py checks them).
 * Porting note (NEON): the packed layouts work as they are with SDOT (s8 x s8) on 4 rows per 128-bit
 * vector; the float paths map onto vfmaq_f32. */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_x86_shared.h"
#include "kquant_dots_avx2.h"
#include "packed_gemm_driver.h"
#include "tensor_types.h"
#include "zmm_lanes.h"


/* rows may sit at any byte offset (GGUF / safetensors data): scalar loads go through pl_ld_u16
 * (tensor_types.h), vector loads are unaligned */

/* ============================== float weights ============================== */

enum { FT_f32 = 0, FT_f16 = 1, FT_bf16 = 2 };

AI __m512 fl_load(const int ft, const void *p, int64_t i) {
    if (ft == FT_f32) return _mm512_loadu_ps((const float *)p + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (ft == FT_f16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/* masked: lanes outside m read nothing (no fault) and are 0 */
AI __m512 fl_load_m(const int ft, const void *p, int64_t i, __mmask16 m) {
    if (ft == FT_f32) return _mm512_maskz_loadu_ps(m, (const float *)p + i);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
    if (ft == FT_f16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
AI __mmask16 tail_mask(int r) { return (__mmask16)((1u << r) - 1u); }

/* one dot product, 4 independent accumulators */
AI float fl_dot(const int ft, int n, const void *w, const float *a) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(fl_load(ft, w, i), _mm512_loadu_ps(a + i), s0);
        s1 = _mm512_fmadd_ps(fl_load(ft, w, i + 16), _mm512_loadu_ps(a + i + 16), s1);
        s2 = _mm512_fmadd_ps(fl_load(ft, w, i + 32), _mm512_loadu_ps(a + i + 32), s2);
        s3 = _mm512_fmadd_ps(fl_load(ft, w, i + 48), _mm512_loadu_ps(a + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16) s0 = _mm512_fmadd_ps(fl_load(ft, w, i), _mm512_loadu_ps(a + i), s0);
    if (i < n) {
        const __mmask16 m = tail_mask(n - i);
        s1 = _mm512_fmadd_ps(fl_load_m(ft, w, i, m), _mm512_maskz_loadu_ps(m, a + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

/* lane i of the result = the sum of the 16 lanes of v[i] (a transpose-and-add network) */
AI __m512 hsum16(const __m512 *v) {
    __m512 t[8], u[4];
    UNROLL for (int i = 0; i < 8; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    UNROLL for (int i = 0; i < 4; i++) { /* per 128-bit lane: the lane's sums of v[4i..4i+3] */
        const __m512d c = _mm512_castps_pd(t[2 * i]), d = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)), _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    /* add up the four 128-bit lanes of each u[i] into 128-bit lane i of the result */
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

/* R weight rows x C activation rows: out[c*os + r] = dot(w_r, a_c). Each weight vector is loaded
 * (and converted) once and used for C FMAs; each activation vector is reused for R rows. */
#define FMR 4
#define FNC 4
AI void fl_tile(const int ft, const int R, const int C, int n, const char *w, size_t ws, const char *a, size_t as,
                float *out, size_t os) {
    __m512 acc[FMR][FNC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 av[FNC];
        UNROLL for (int c = 0; c < C; c++) av[c] = _mm512_loadu_ps((const float *)(a + c * as) + i);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 wv = fl_load(ft, w + r * ws, i);
            UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(wv, av[c], acc[r][c]);
        }
    }
    if (i < n) {
        const __mmask16 m = tail_mask(n - i);
        __m512 av[FNC];
        UNROLL for (int c = 0; c < C; c++) av[c] = _mm512_maskz_loadu_ps(m, (const float *)(a + c * as) + i);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 wv = fl_load_m(ft, w + r * ws, i, m);
            UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm512_fmadd_ps(wv, av[c], acc[r][c]);
        }
    }
    /* the R x C sums at once through one transpose-and-add network (45 shuffles/adds instead of up
     * to 16 reductions of 8). Unused slots are zero, so every output is summed in the same order
     * whatever the tile's shape: a row's result does not depend on how many rows share its call
     * (batch-invariant logits) */
    __m512 v[16];
    UNROLL for (int c = 0; c < 4; c++) UNROLL for (int r = 0; r < 4; r++)
        v[4 * c + r] = r < R && c < C ? acc[r][c] : _mm512_setzero_ps();
    const __m512 sum = hsum16(v);
    if (R == 4) {
        UNROLL for (int c = 0; c < C; c++) {
            const __m128 lane = c == 0 ? _mm512_castps512_ps128(sum) : c == 1 ? _mm512_extractf32x4_ps(sum, 1)
                                : c == 2 ? _mm512_extractf32x4_ps(sum, 2) : _mm512_extractf32x4_ps(sum, 3);
            _mm_storeu_ps(out + c * os, lane);
        }
    } else {
        float tmp[16];
        _mm512_storeu_ps(tmp, sum);
        UNROLL for (int c = 0; c < C; c++) UNROLL for (int r = 0; r < R; r++) out[c * os + r] = tmp[4 * c + r];
    }
}

#include "float_tile_table.h"

/* ---- conversions (bit-identical to the scalar reference) ---- */
static void f16_to_float(const void *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, fl_load(FT_f16, x, i));
    if (i < n) {
        const __mmask16 m = tail_mask((int)(n - i));
        _mm512_mask_storeu_ps(y + i, m, fl_load_m(FT_f16, x, i, m));
    }
}
static void bf16_to_float(const void *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, fl_load(FT_bf16, x, i));
    if (i < n) {
        const __mmask16 m = tail_mask((int)(n - i));
        _mm512_mask_storeu_ps(y + i, m, fl_load_m(FT_bf16, x, i, m));
    }
}
static void q8_0_to_float(const void *vx, float *y, int64_t n) {
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *blk = (const uint8_t *)vx + b * sizeof(pl_block_q8_0);
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(pl_ld_u16(blk)));
        const __m128i q0 = _mm_loadu_si128((const __m128i *)(blk + 2)), q1 = _mm_loadu_si128((const __m128i *)(blk + 18));
        _mm512_storeu_ps(y + b * PL_QK, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d));
        _mm512_storeu_ps(y + b * PL_QK + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d));
    }
}
static void q4_0_to_float(const void *vx, float *y, int64_t n) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m512i eight = _mm512_set1_epi32(8);
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *blk = (const uint8_t *)vx + b * sizeof(pl_block_q4_0);
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(pl_ld_u16(blk)));
        const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 2));
        const __m512i lo = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(q, m4)), eight);
        const __m512i hi = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), m4)), eight);
        _mm512_storeu_ps(y + b * PL_QK, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
        _mm512_storeu_ps(y + b * PL_QK + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
    }
}

/* roundf (half away from zero) of each lane, exactly: t = trunc(|v|), t += (|v| - t >= 0.5) (the
 * difference is exact), sign put back. _mm512_roundscale_ps with "nearest" would round ties to even. */
AI __m512 round_half_away(__m512 v) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    const __m512 av = _mm512_andnot_ps(sign, v);
    __m512 t = _mm512_roundscale_ps(av, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_sub_ps(av, t), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    t = _mm512_mask_add_ps(t, up, t, _mm512_set1_ps(1.0f));
    return _mm512_or_ps(t, _mm512_and_ps(v, sign));
}

/* Q8_0 activation quantization, bit-identical to q8_0_from_float in types_scalar.c: max_ps(|x|, m)
 * returns m when |x| is NaN, like fmaxf; the int8 store truncates the int32 like the C cast does. */
static void q8_0_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = (uint8_t *)vy;
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + b * PL_QK), v1 = _mm512_loadu_ps(x + b * PL_QK + 16);
        if (_mm512_cmp_ps_mask(v0, v1, _CMP_UNORD_Q)) { /* a NaN in the block (rare) */
            q8_0_block_ref(x + b * PL_QK, y + b * sizeof(pl_block_q8_0));
            continue;
        }
        __m512 m = _mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_setzero_ps());
        m = _mm512_max_ps(_mm512_andnot_ps(sign, v1), m);
        const float amax = _mm512_reduce_max_ps(m);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t *yb = y + b * sizeof(pl_block_q8_0);
        const uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        memcpy(yb, &dh, 2);
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v0, vid)));
        const __m512i q1 = _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v1, vid)));
        _mm_storeu_si128((__m128i *)(yb + 2), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(yb + 18), _mm512_cvtepi32_epi8(q1));
    }
}

/* Q8_K activation quantization (the K-quants' input), bit-identical to q8_k_from_float in
 * types_kquants.c the same way: d = max|x| / 127 per 256, q = roundf(x / d) truncated to int8, bsums
 * the exact sums of each 16 q; a super-block holding a NaN goes to the scalar reference. */
static pl_from_float_fn q8_k_ref; /* the scalar table's, set by pl_kernels_init_avx512 */
static void q8_k_from_float(const float *x, void *vy, int64_t n) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / PL_QK_K; i++) {
        const float *xb = x + i * PL_QK_K;
        uint8_t *yb = (uint8_t *)vy + i * sizeof(pl_block_q8_k);
        __m512 v[16], m = _mm512_setzero_ps();
        __mmask16 nan = 0;
        UNROLL for (int k = 0; k < 16; k++) {
            v[k] = _mm512_loadu_ps(xb + 16 * k);
            nan |= _mm512_cmp_ps_mask(v[k], v[k], _CMP_UNORD_Q);
            m = _mm512_max_ps(_mm512_andnot_ps(sign, v[k]), m);
        }
        if (nan) {
            q8_k_ref(xb, yb, PL_QK_K);
            continue;
        }
        const float d = _mm512_reduce_max_ps(m) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        memcpy(yb, &d, 4);
        const __m512 vid = _mm512_set1_ps(id);
        UNROLL for (int k = 0; k < 16; k++) {
            const __m512i q = _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v[k], vid)));
            _mm_storeu_si128((__m128i *)(yb + 4 + 16 * k), _mm512_cvtepi32_epi8(q));
            /* the sum of the int8 values (as the reference sums the stored bytes) */
            const int16_t bs = (int16_t)_mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm512_cvtepi32_epi8(q)));
            memcpy(yb + 260 + 2 * k, &bs, 2);
        }
    }
}

/* ---- fp32 helpers (attention) ---- */
static float dot_f32(int n, const float *a, const float *b) { return fl_dot(FT_f32, n, a, b); }
/* y += alpha * x with a separate multiply and add (no FMA), so it is bit-identical to the scalar loop;
 * the empty asm keeps the compiler from contracting the pair into an FMA. */
AI __m512 axpy_step(__m512 va, __m512 x, __m512 y) {
    __m512 p = _mm512_mul_ps(va, x);
    __asm__("" : "+v"(p));
    return _mm512_add_ps(y, p);
}
static void axpy_f32(int n, float alpha, const float *x, float *y) {
    const __m512 va = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 r0 = axpy_step(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i));
        const __m512 r1 = axpy_step(va, _mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16));
        _mm512_storeu_ps(y + i, r0);
        _mm512_storeu_ps(y + i + 16, r1);
    }
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, axpy_step(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, axpy_step(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

/* ---- attention / MLP helpers ---- */
/* c = a x b (row-major, m x k times k x n): R rows of a x NV 16-float vectors of b per register
 * tile (the last vector masked), b read once per R rows of a, in place (no transpose). */
AI void nn_tile(const int R, const int NV, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                size_t ldc, __mmask16 last) {
    __m512 acc[4][4];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < k; p++) {
        __m512 bv[4];
        UNROLL for (int v = 0; v < NV; v++) bv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(last, b + (size_t)p * ldb + 16 * v)
                                                                : _mm512_loadu_ps(b + (size_t)p * ldb + 16 * v);
        UNROLL for (int r = 0; r < R; r++) {
            const __m512 av = _mm512_set1_ps(a[(size_t)r * lda + p]);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) {
        if (v == NV - 1) _mm512_mask_storeu_ps(c + (size_t)r * ldc + 16 * v, last, acc[r][v]);
        else _mm512_storeu_ps(c + (size_t)r * ldc + 16 * v, acc[r][v]);
    }
}
typedef void (*nn_tile_fn)(int k, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                           __mmask16 last);
#define NN_DEF(R, NV)                                                                                           \
    static void nn_tile_##R##_##NV(int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,      \
                                   size_t ldc, __mmask16 last) {                                                \
        nn_tile(R, NV, k, a, lda, b, ldb, c, ldc, last);                                                        \
    }
#define NN_ROW(R) NN_DEF(R, 1) NN_DEF(R, 2) NN_DEF(R, 3) NN_DEF(R, 4)
NN_ROW(1) NN_ROW(2) NN_ROW(3) NN_ROW(4)
#define NN_TAB(R) {nn_tile_##R##_1, nn_tile_##R##_2, nn_tile_##R##_3, nn_tile_##R##_4}
static const nn_tile_fn nn_tab[4][4] = {NN_TAB(1), NN_TAB(2), NN_TAB(3), NN_TAB(4)};

static void gemm_nn_f32(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                        size_t ldc) {
    for (int j0 = 0; j0 < n; j0 += 64) {
        const int nj = n - j0 < 64 ? n - j0 : 64, nv = (nj + 15) / 16;
        const __mmask16 last = tail_mask(nj - 16 * (nv - 1)); /* 1..16 lanes */
        for (int i0 = 0; i0 < m; i0 += 4) {
            const int R = m - i0 < 4 ? m - i0 : 4;
            nn_tab[R - 1][nv - 1](k, a + (size_t)i0 * lda, lda, b + j0, ldb, c + (size_t)i0 * ldc + j0, ldc, last);
        }
    }
}

/* e^x for 16 floats: x = n ln2 + r (|r| <= ln2/2, ln2 in two parts), e^r by a degree-6 polynomial
 * (Cephes expf's coefficients), times 2^n with vscalefps (which also gives 0 and inf at the ends);
 * within 2 ulp of libm's expf. */
AI __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static void softmax_f32(float *x, int n, float scale) {
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_mul_ps(_mm512_loadu_ps(x + i), vs));
    if (i < n) mx = _mm512_mask_max_ps(mx, tail_mask(n - i), mx, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i), vs));
    const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vs), vm));
        _mm512_storeu_ps(x + i, e);
        sum = _mm512_add_ps(sum, e);
    }
    if (i < n) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs), vm));
        _mm512_mask_storeu_ps(x + i, m, e);
        sum = _mm512_mask_add_ps(sum, m, sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail_mask(n - i), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i), inv));
}

AI __m512 swiglu16(__m512 g, __m512 u) {
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g)))), u);
}
static void swiglu_f32(float *gate, const float *up, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(gate + i, swiglu16(_mm512_loadu_ps(gate + i), _mm512_loadu_ps(up + i)));
    if (i < n) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(gate + i, m, swiglu16(_mm512_maskz_loadu_ps(m, gate + i), _mm512_maskz_loadu_ps(m, up + i)));
    }
}

/* ============================== packed Q4_0 / Q8_0 x q8x activations ==============================
 * Layout in tensor_types.h: lane r of a weight vector is row r of a 16-row group, so one vpdpbusd
 * with a broadcast activation dword adds 4 products for 16 rows, no transposes, and the 16 block
 * scales are one 32-byte load. Decode (nc == 1): one group at a time (see pk_gemv).
 * Prefill: one group x up to PKC activation rows, the group's weight block decoded once per
 * PKC rows (Q4_0 nibbles as 0..15, Q8_0 bytes as w + 128; exact corrections c4 / c8 from the
 * activation row). Each lane sums its row's blocks in order with the scalar reference's roundings
 * (pk_accum), so the results are bit-identical to it on every ISA. */
#define PKR PL_PACK_ROWS
#define PKC 6 /* prefill: activation rows per pass (8 spills registers; the float part already limits) */
/* A pass over several activation rows computes longer per weight byte than decode, and the hardware
 * prefetcher alone falls behind the group stream (batched decode of 6-16 rows ran at half speed):
 * the tile prefetches the stream this many bytes ahead (measured: 2 KB < 4 KB < 8 KB = 16 KB = 32 KB) */
#define PK_PREFETCH 8192

/* acc + (float)dp * (dw * da), rounded after each operation like the scalar reference (no FMA: the
 * empty asm keeps the compiler from contracting), so packed results are bit-identical to it */
AI __m512 pk_accum(__m512 acc, __m512i dp, __m512 dw, __m512 da) {
    __m512 p = _mm512_mul_ps(_mm512_cvtepi32_ps(dp), _mm512_mul_ps(dw, da));
    __asm__("" : "+v"(p));
    return _mm512_add_ps(acc, p);
}
AI __m512i bcast32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* decode: one group x one activation row, the group read front to back as one stream (several groups
 * per pass, sharing the activation broadcasts, read ~35% slower here: more streams than the
 * prefetchers follow) */
AI void pk_gemv(const int qt, int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {
    const int QB = qt == QT_q4_0 ? 16 : 32;
    const float *ad = (const float *)(a + pk_d_off(nb));
    const int32_t *ac = (const int32_t *)(a + pk_c_off(qt, nb));
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 fa = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *ab = a + (size_t)b * Q8B + 2;
        const uint8_t *q = gp + pl_pk_q(b, QB);
        const __m512i corr = _mm512_set1_epi32(ac[b]);
        __m512i dp;
        if (qt == QT_q4_0) {
            __m512i lo = corr, hi = _mm512_setzero_si512();
            UNROLL for (int k = 0; k < 4; k++) {
                const __m512i v = _mm512_load_si512((const void *)(q + 64 * k));
                lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(v, m4), bcast32(ab + 4 * k));
                hi = _mm512_dpbusd_epi32(hi, _mm512_andnot_si512(m4, v), bcast32(ab + 16 + 4 * k)); /* 16 x high nibble */
            }
            dp = _mm512_add_epi32(lo, _mm512_srai_epi32(hi, 4));
        } else {
            __m512i d0 = corr, d1 = _mm512_setzero_si512();
            UNROLL for (int k = 0; k < 8; k += 2) {
                d0 = _mm512_dpbusd_epi32(d0, _mm512_load_si512((const void *)(q + 64 * k)), bcast32(ab + 4 * k));
                d1 = _mm512_dpbusd_epi32(d1, _mm512_load_si512((const void *)(q + 64 * k + 64)), bcast32(ab + 4 * k + 4));
            }
            dp = _mm512_add_epi32(d0, d1);
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(gp + pl_pk_d(b, QB))));
        fa = pk_accum(fa, dp, dw, _mm512_set1_ps(ad[b]));
    }
    _mm512_mask_storeu_ps(out, zmm_row_mask(rows), fa);
}

AI void pk_tile(const int qt, const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out,
                size_t os, int rows) {
    const int QB = qt == QT_q4_0 ? 16 : 32;
    const size_t doff = pk_d_off(nb), coff = pk_c_off(qt, nb);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 fa[PKC];
    UNROLL for (int c = 0; c < C; c++) fa[c] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = gp + pl_pk_q(b, QB);
        for (int i = 0; i < (QB == 16 ? 5 : 9); i++) /* this block's bytes, PK_PREFETCH ahead */
            _mm_prefetch((const char *)q + PK_PREFETCH + 64 * i, _MM_HINT_T0);
        __m512i W[8];
        if (qt == QT_q4_0) {
            UNROLL for (int k = 0; k < 4; k++) {
                const __m512i v = _mm512_load_si512((const void *)(q + 64 * k));
                W[k] = _mm512_and_si512(v, m4);
                W[k + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
        } else {
            UNROLL for (int k = 0; k < 8; k++) W[k] = _mm512_load_si512((const void *)(q + 64 * k));
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(gp + pl_pk_d(b, QB))));
        /* k outer, activation rows inner: C independent accumulator chains in flight */
        __m512i acc[PKC];
        UNROLL for (int c = 0; c < C; c++) acc[c] = _mm512_set1_epi32(((const int32_t *)(a + (size_t)c * as + coff))[b]);
        UNROLL for (int k = 0; k < 8; k++) UNROLL for (int c = 0; c < C; c++)
            acc[c] = _mm512_dpbusd_epi32(acc[c], W[k], bcast32(a + (size_t)c * as + (size_t)b * Q8B + 2 + 4 * k));
        UNROLL for (int c = 0; c < C; c++)
            fa[c] = pk_accum(fa[c], acc[c], dw, _mm512_set1_ps(((const float *)(a + (size_t)c * as + doff))[b]));
    }
    const __mmask16 m = zmm_row_mask(rows);
    UNROLL for (int c = 0; c < C; c++) _mm512_mask_storeu_ps(out + (size_t)c * os, m, fa[c]);
}

#define PKT_DEF(qt, C)                                                                                          \
    static void pk_tile_##qt##_##C(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, \
                                   int rows) {                                                                  \
        pk_tile(QT_##qt, C, nb, gp, a, as, out, os, rows);                                                      \
    }
static void pk_gemv_q4_0(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) { pk_gemv(QT_q4_0, nb, gp, a, out, rows); }
static void pk_gemv_q8_0(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) { pk_gemv(QT_q8_0, nb, gp, a, out, rows); }
PKT_DEF(q4_0, 1) PKT_DEF(q4_0, 2) PKT_DEF(q4_0, 3) PKT_DEF(q4_0, 4) PKT_DEF(q4_0, 5) PKT_DEF(q4_0, 6)
PKT_DEF(q8_0, 1) PKT_DEF(q8_0, 2) PKT_DEF(q8_0, 3) PKT_DEF(q8_0, 4) PKT_DEF(q8_0, 5) PKT_DEF(q8_0, 6)
static const pl_pk_tile_fn pk_tile_tab[2][PKC] = {
    {pk_tile_q4_0_1, pk_tile_q4_0_2, pk_tile_q4_0_3, pk_tile_q4_0_4, pk_tile_q4_0_5, pk_tile_q4_0_6},
    {pk_tile_q8_0_1, pk_tile_q8_0_2, pk_tile_q8_0_3, pk_tile_q8_0_4, pk_tile_q8_0_5, pk_tile_q8_0_6}};

static void q4_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    pl_pk_gemm_drive(PL_TYPE_Q4_0, PL_QK, pk_gemv_q4_0, pk_tile_tab[QT_q4_0], PKC, n, nr, nc, w, a, as, out, os);
}
static void q8_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    pl_pk_gemm_drive(PL_TYPE_Q8_0, PL_QK, pk_gemv_q8_0, pk_tile_tab[QT_q8_0], PKC, n, nr, nc, w, a, as, out, os);
}

/* ============================== packed Q4_K / Q6_K x Q8_K ==============================
 * kquant_packed_simd.h over one zmm per 16-row vector; vpdpbusd adds the 4 u8 x s8 products of a
 * lane exactly (weights < 64, so no saturation question arises). */
#define KV_LANES 16
#define KQP_MAXC_6 8 /* Q6_K / Q3_K: 8 activation rows per pass (32 zmm registers) */
#define KQP_MAXC_4 8 /* the others too (measured, Zen 5: Q4_K / Q5_K / IQ4_XS / Q2_K prefill +8..13% over 4) */
typedef __m512i kv_i;
typedef __m512 kv_f;
AI kv_i kv_load(const uint8_t *p) { return _mm512_load_si512((const void *)p); }
AI kv_i kv_set1(int32_t x) { return _mm512_set1_epi32(x); }
AI kv_i kv_zero(void) { return _mm512_setzero_si512(); }
AI kv_i kv_add(kv_i a, kv_i b) { return _mm512_add_epi32(a, b); }
AI kv_i kv_and(kv_i a, kv_i b) { return _mm512_and_si512(a, b); }
AI kv_i kv_andnot(kv_i m, kv_i x) { return _mm512_andnot_si512(m, x); }
/* a | (b & m); b as the last operand, the one vpternlogd can take from memory (a Q6_K plane load folds in) */
AI kv_i kv_or_and(kv_i a, kv_i b, kv_i m) { return _mm512_ternarylogic_epi32(a, m, b, 0xF8); }
#define KV_DOT_WIDE 1 /* vpdpbusd: u8 x s8 products summed in int32, no saturation */
AI kv_i kv_mullo(kv_i a, kv_i b) { return _mm512_mullo_epi32(a, b); }
AI kv_i kv_srli16(kv_i a, const int k) { return _mm512_srli_epi16(a, k); }
AI kv_i kv_slli16(kv_i a, const int k) { return _mm512_slli_epi16(a, k); }
AI kv_i kv_scales(kv_i sc) { return sc; }
/* vpdpbusd chain from init, >> shift, times the scales */
AI kv_i kv_sdot(const int NW, const int WBITS, const kv_i *w, const uint8_t *q8, kv_i sc, int32_t init, const int shift) {
    (void)WBITS;
    kv_i acc = _mm512_set1_epi32(init);
    UNROLL for (int v = 0; v < NW; v++) acc = _mm512_dpbusd_epi32(acc, w[v], bcast32(q8 + 4 * v));
    if (shift) acc = _mm512_srai_epi32(acc, shift);
    return _mm512_mullo_epi32(acc, sc);
}
/* signed weights: w + 128 as u8 (w ^ 0x80), the offset removed exactly by init -128 x sum8 */
AI kv_i kv_sdot_s8(const int NW, const kv_i *w, const uint8_t *q8, kv_i sc, int32_t sum8) {
    kv_i acc = _mm512_set1_epi32(-128 * sum8);
    UNROLL for (int v = 0; v < NW; v++)
        acc = _mm512_dpbusd_epi32(acc, _mm512_xor_si512(w[v], _mm512_set1_epi8((char)0x80)), bcast32(q8 + 4 * v));
    return _mm512_mullo_epi32(acc, sc);
}
AI kv_i kv_bcast128(const void *p) { return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)p)); }
AI kv_i kv_shuffle8(kv_i t, kv_i i) { return _mm512_shuffle_epi8(t, i); }
AI kv_i kv_u8(const uint8_t *p) { return _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)p)); }
AI kv_i kv_s8(const uint8_t *p) { return _mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)p)); }
#define kv_fp16 zmm_load_fp16 /* the fp32 ops: zmm_lanes.h */
#define kv_cvt zmm_from_i32
#define kv_fset1 zmm_set1
#define kv_fzero zmm_zero
#define kv_fadd zmm_add
#define kv_fsub zmm_sub
#define kv_fmul zmm_mul
#define kv_store zmm_store_rows
#include "kquant_packed_simd.h"

PL_BASELINE_FN void pl_kernels_init_avx512(pl_kernels *k) {
    pl_kernels_init_scalar(k);
    k->isa = "avx512";
    pl_type_traits *t;
    kq_register(k); /* kquant_dots_avx2.h */
    kqp_register(k); /* kquant_packed_simd.h */
    pl_kernels_add_packed_legacy_avx512(k); /* Q4_1 / Q5_0 / Q5_1 / IQ4_NL: legacy_packed_avx512.c */
    q8_k_ref = k->types[PL_TYPE_Q8_K].from_float;
    k->types[PL_TYPE_Q8_K].from_float = q8_k_from_float;
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
    t->vec_dot = kq_q8_0_vec_dot;
    t->gemm_packed = q8_0_gemm_packed;
    t->to_float = q8_0_to_float;
    t->from_float = q8_0_from_float;
    t = &k->types[PL_TYPE_Q4_0];
    t->vec_dot = kq_q4_0_vec_dot;
    t->gemm_packed = q4_0_gemm_packed;
    t->to_float = q4_0_to_float;
    k->dot_f32 = dot_f32;
    k->axpy_f32 = axpy_f32;
    k->gemm_nn_f32 = gemm_nn_f32;
    k->softmax_f32 = softmax_f32;
    k->swiglu_f32 = swiglu_f32;
}
#endif
