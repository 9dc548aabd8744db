/* kernels_avx2.c: the AVX2 kernel table (AVX2 + FMA + F16C), compiled with its own ISA flags and
 * chosen at run time by cpu_dispatch.c. Starts from the scalar table and overrides:
 *  - float weights (F32/F16/BF16) x fp32 activations: weights widened to fp32 on the fly,
 *    activations stay fp32; gemm = 4 weight rows x 2 activation rows register tiles; scalar tails
 *    (no read past a row, any alignment).
 *  - packed Q4_0 / Q8_0 weights (tensor_types.h) x q8x activations (Q4_0: vpmaddubsw of the nibbles;
 *    Q8_0: vpmaddubsw of |w| and the activations with w's sign, or, for activation rows holding a
 *    -128, bytes widened to int16 and vpmaddwd; exact for every input), each 64-byte vector as
 *    two 8-row halves; packed Q4_K / Q6_K x Q8_K: the kernels of kquant_packed_simd.h. Unpacked rows
 *    of every integer type (PYLLM_REPACK=0) run kquant_dots_avx2.h's vec_dots.
 *  - Q8_0 / Q8_K from_float and F16/BF16/Q8_0/Q4_0 to_float (bit-identical to the scalar reference),
 *    dot_f32 / axpy_f32 (table entries the engine no longer calls; tests/test_kernels.py checks them). */
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_x86_shared.h"
#include "kquant_dots_avx2.h"
#include "packed_gemm_driver.h"
#include "tensor_types.h"
#include "ymm_lanes.h"


/* rows may sit at any byte offset (GGUF / safetensors data): scalar loads go through pl_ld_u16
 * (tensor_types.h), vector loads are unaligned */

/* ============================== float weights ============================== */

enum { FT_f32 = 0, FT_f16 = 1, FT_bf16 = 2 };

AI __m256 fl_load(const int ft, const void *p, int64_t i) {
    if (ft == FT_f32) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (ft == FT_f16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
AI float fl_load1(const int ft, const void *p, int64_t i) {
    if (ft == FT_f32) {
        float v;
        memcpy(&v, (const char *)p + 4 * i, 4);
        return v;
    }
    const uint16_t h = pl_ld_u16((const char *)p + 2 * i);
    if (ft == FT_f16) return _cvtsh_ss(h);
    return pl_bf16_to_fp32(h);
}
AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AI float fl_dot(const int ft, int n, const void *w, const float *a) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(fl_load(ft, w, i), _mm256_loadu_ps(a + i), s0);
        s1 = _mm256_fmadd_ps(fl_load(ft, w, i + 8), _mm256_loadu_ps(a + i + 8), s1);
        s2 = _mm256_fmadd_ps(fl_load(ft, w, i + 16), _mm256_loadu_ps(a + i + 16), s2);
        s3 = _mm256_fmadd_ps(fl_load(ft, w, i + 24), _mm256_loadu_ps(a + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(fl_load(ft, w, i), _mm256_loadu_ps(a + i), s0);
    float sum = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++) sum += fl_load1(ft, w, i) * fl_load1(FT_f32, a, i); /* a may be unaligned too */
    return sum;
}

/* R weight rows x C activation rows: out[c*os + r] = dot(w_r, a_c) */
#define FMR 4
#define FNC 2
AI void fl_tile(const int ft, const int R, const int C, int n, const char *w, size_t ws, const char *a, size_t as,
                float *out, size_t os) {
    __m256 acc[FMR][FNC];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 av[FNC];
        UNROLL for (int c = 0; c < C; c++) av[c] = _mm256_loadu_ps((const float *)(a + c * as) + i);
        UNROLL for (int r = 0; r < R; r++) {
            const __m256 wv = fl_load(ft, w + r * ws, i);
            UNROLL for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(wv, av[c], acc[r][c]);
        }
    }
    UNROLL for (int c = 0; c < C; c++) UNROLL for (int r = 0; r < R; r++) {
        float s = hsum8(acc[r][c]);
        const char *ac = a + c * as; /* activation rows may be unaligned too */
        for (int k = i; k < n; k++) s += fl_load1(ft, w + r * ws, k) * fl_load1(FT_f32, ac, k);
        out[c * os + r] = s;
    }
}

#include "float_tile_table.h"

/* ---- conversions (bit-identical to the scalar reference) ---- */
static void f16_to_float(const void *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fl_load(FT_f16, x, i));
    for (; i < n; i++) y[i] = fl_load1(FT_f16, x, i);
}
static void bf16_to_float(const void *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fl_load(FT_bf16, x, i));
    for (; i < n; i++) y[i] = fl_load1(FT_bf16, x, i);
}
static void q8_0_to_float(const void *vx, float *y, int64_t n) {
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *blk = (const uint8_t *)vx + b * sizeof(pl_block_q8_0);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(pl_ld_u16(blk)));
        UNROLL for (int k = 0; k < 4; k++) {
            const __m128i q = _mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * k));
            _mm256_storeu_ps(y + b * PL_QK + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d));
        }
    }
}
static void q4_0_to_float(const void *vx, float *y, int64_t n) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m256i eight = _mm256_set1_epi32(8);
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *blk = (const uint8_t *)vx + b * sizeof(pl_block_q4_0);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(pl_ld_u16(blk)));
        const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 2));
        const __m128i lo = _mm_and_si128(q, m4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
        const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        UNROLL for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), eight);
            _mm256_storeu_ps(y + b * PL_QK + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(v), d));
        }
    }
}

/* roundf (half away from zero), exactly: t = trunc(|v|), t += (|v| - t >= 0.5), sign put back. */
AI __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 av = _mm256_andnot_ps(sign, v);
    __m256 t = _mm256_round_ps(av, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(_mm256_sub_ps(av, t), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    t = _mm256_add_ps(t, _mm256_and_ps(up, _mm256_set1_ps(1.0f)));
    return _mm256_or_ps(t, _mm256_and_ps(v, sign));
}

/* Q8_0 activation quantization, bit-identical to the scalar reference (see kernels_avx512.c). The
 * int32 -> int8 step keeps the low byte (like the C (int8_t) cast of cvttss2si's result), not a
 * saturating pack: it matters when a denormal d makes |x * id| exceed 127, or for inf/NaN. */
static void q8_0_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = (uint8_t *)vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /* low byte of each int32 -> dword k of each 128-bit lane */
    const __m256i lowb[4] = {
        _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1,
                         -1, -1, -1, -1, -1),
        _mm256_setr_epi8(-1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1,
                         -1, -1, -1, -1, -1),
        _mm256_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8,
                         12, -1, -1, -1, -1),
        _mm256_setr_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                         -1, -1, 0, 4, 8, 12)};
    for (int64_t b = 0; b < n / PL_QK; b++) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        UNROLL for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + b * PL_QK + 8 * k);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m); /* returns m when |x| is NaN, like fmaxf */
        }
        const __m256 nan = _mm256_or_ps(_mm256_cmp_ps(v[0], v[1], _CMP_UNORD_Q), _mm256_cmp_ps(v[2], v[3], _CMP_UNORD_Q));
        if (_mm256_movemask_ps(nan)) { /* a NaN in the block (rare) */
            q8_0_block_ref(x + b * PL_QK, y + b * sizeof(pl_block_q8_0));
            continue;
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t *yb = y + b * sizeof(pl_block_q8_0);
        const uint16_t dh = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
        memcpy(yb, &dh, 2);
        const __m256 vid = _mm256_set1_ps(id);
        __m256i p = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 4; k++) {
            const __m256i q = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[k], vid)));
            p = _mm256_or_si256(p, _mm256_shuffle_epi8(q, lowb[k]));
        }
        /* lane 0 holds elements 0-3, 8-11, 16-19, 24-27; lane 1 the others */
        _mm256_storeu_si256((__m256i *)(yb + 2), _mm256_permutevar8x32_epi32(p, perm));
    }
}

/* Q8_K activation quantization (the K-quants' input), bit-identical to q8_k_from_float in
 * types_kquants.c (see q8_0_from_float): d = max|x| / 127 per 256, q = roundf(x / d) as its low byte,
 * bsums the exact sums of each 16 int8 q; a super-block holding a NaN goes to the scalar reference. */
static pl_from_float_fn q8_k_ref; /* the scalar table's, set by pl_kernels_init_avx2 */
static void q8_k_from_float(const float *x, void *vy, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), lo8 = _mm256_set1_epi32(0xFF);
    for (int64_t i = 0; i < n / PL_QK_K; i++) {
        const float *xb = x + i * PL_QK_K;
        uint8_t *yb = (uint8_t *)vy + i * sizeof(pl_block_q8_k);
        __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++) {
            const __m256 v = _mm256_loadu_ps(xb + 8 * k);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        if (_mm256_movemask_ps(nan)) {
            q8_k_ref(xb, yb, PL_QK_K);
            continue;
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float d = _mm_cvtss_f32(h) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        memcpy(yb, &d, 4);
        const __m256 vid = _mm256_set1_ps(id);
        for (int k = 0; k < 8; k++) { /* 32 values: low bytes packed (unsigned packs of 0..255: no saturation) */
            __m256i q[4];
            UNROLL for (int j = 0; j < 4; j++)
                q[j] = _mm256_and_si256(_mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(_mm256_loadu_ps(xb + 32 * k + 8 * j), vid))), lo8);
            const __m256i b = _mm256_permutevar8x32_epi32(
                _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3])), perm);
            _mm256_storeu_si256((__m256i *)(yb + 4 + 32 * k), b);
            /* bsums of the two 16s: the int8 bytes widened and summed */
            const __m256i s0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(b)), s1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(b, 1));
            const __m256i t0 = _mm256_madd_epi16(s0, _mm256_set1_epi16(1)), t1 = _mm256_madd_epi16(s1, _mm256_set1_epi16(1));
            const __m256i t = _mm256_hadd_epi32(t0, t1); /* lane 0: partial sums of s0 / s1 halves */
            const __m256i u = _mm256_hadd_epi32(t, t);
            const int32_t b0 = _mm256_extract_epi32(u, 0) + _mm256_extract_epi32(u, 4);
            const int32_t b1 = _mm256_extract_epi32(u, 1) + _mm256_extract_epi32(u, 5);
            const int16_t bs[2] = {(int16_t)b0, (int16_t)b1};
            memcpy(yb + 260 + 4 * k, bs, 4);
        }
    }
}

/* ---- fp32 helpers (attention) ---- */
static float dot_f32(int n, const float *a, const float *b) { return fl_dot(FT_f32, n, a, b); }
/* separate multiply and add (bit-identical to the scalar loop); the asm blocks FMA contraction */
AI __m256 axpy_step(__m256 va, __m256 x, __m256 y) {
    __m256 p = _mm256_mul_ps(va, x);
    __asm__("" : "+x"(p));
    return _mm256_add_ps(y, p);
}
static void axpy_f32(int n, float alpha, const float *x, float *y) {
    const __m256 va = _mm256_set1_ps(alpha);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 r0 = axpy_step(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
        const __m256 r1 = axpy_step(va, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8));
        _mm256_storeu_ps(y + i, r0);
        _mm256_storeu_ps(y + i + 8, r1);
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, axpy_step(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - i), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(y + i, m, axpy_step(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
    }
}

/* ---- attention / MLP helpers ---- */
AI __m256i lanes_below(int r) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }

/* c = a x b (row-major, m x k times k x n): R rows of a x NV 8-float vectors of b per register tile
 * (the last vector masked), b read once per R rows of a, in place (no transpose). */
AI void nn_tile(const int R, const int NV, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                size_t ldc, __m256i last) {
    __m256 acc[4][3];
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm256_setzero_ps();
    for (int p = 0; p < k; p++) {
        __m256 bv[3];
        UNROLL for (int v = 0; v < NV; v++) bv[v] = v == NV - 1 ? _mm256_maskload_ps(b + (size_t)p * ldb + 8 * v, last)
                                                                : _mm256_loadu_ps(b + (size_t)p * ldb + 8 * v);
        UNROLL for (int r = 0; r < R; r++) {
            const __m256 av = _mm256_broadcast_ss(a + (size_t)r * lda + p);
            UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) {
        if (v == NV - 1) _mm256_maskstore_ps(c + (size_t)r * ldc + 8 * v, last, acc[r][v]);
        else _mm256_storeu_ps(c + (size_t)r * ldc + 8 * v, acc[r][v]);
    }
}
typedef void (*nn_tile_fn)(int k, const float *a, size_t lda, const float *b, size_t ldb, float *c, size_t ldc,
                           __m256i last);
#define NN_DEF(R, NV)                                                                                           \
    static void nn_tile_##R##_##NV(int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,      \
                                   size_t ldc, __m256i last) {                                                  \
        nn_tile(R, NV, k, a, lda, b, ldb, c, ldc, last);                                                        \
    }
#define NN_ROW(R) NN_DEF(R, 1) NN_DEF(R, 2) NN_DEF(R, 3)
NN_ROW(1) NN_ROW(2) NN_ROW(3) NN_ROW(4)
#define NN_TAB(R) {nn_tile_##R##_1, nn_tile_##R##_2, nn_tile_##R##_3}
static const nn_tile_fn nn_tab[4][3] = {NN_TAB(1), NN_TAB(2), NN_TAB(3), NN_TAB(4)};

static void gemm_nn_f32(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                        size_t ldc) {
    for (int j0 = 0; j0 < n; j0 += 24) {
        const int nj = n - j0 < 24 ? n - j0 : 24, nv = (nj + 7) / 8;
        const __m256i last = lanes_below(nj - 8 * (nv - 1)); /* 1..8 lanes */
        for (int i0 = 0; i0 < m; i0 += 4) {
            const int R = m - i0 < 4 ? m - i0 : 4;
            nn_tab[R - 1][nv - 1](k, a + (size_t)i0 * lda, lda, b + j0, ldb, c + (size_t)i0 * ldc + j0, ldc, last);
        }
    }
}

/* e^x for 8 floats: x = n ln2 + r (|r| <= ln2/2, ln2 in two parts), e^r by a degree-6 polynomial
 * (Cephes expf's coefficients), times 2^n built in the exponent field; x is clamped to
 * [-87.3, 88] (results below e^-87.3 are 0). Within 2 ulp of libm's expf in that range. */
AI __m256 exp256(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

static void softmax_f32(float *x, int n, float scale) {
    const __m256 vs = _mm256_set1_ps(scale);
    float mx = -INFINITY;
    int i = 0;
    if (n >= 8) {
        __m256 m8 = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(m8, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
        float t[8];
        _mm256_storeu_ps(t, m8);
        for (int j = 0; j < 8; j++) mx = t[j] > mx ? t[j] : mx;
    }
    for (; i < n; i++) mx = x[i] * scale > mx ? x[i] * scale : mx;
    const __m256 vm = _mm256_set1_ps(mx);
    __m256 sum = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), vm));
        _mm256_storeu_ps(x + i, e);
        sum = _mm256_add_ps(sum, e);
    }
    if (i < n) {
        const __m256i m = lanes_below(n - i);
        const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(m),
                                       exp256(_mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(x + i, m), vs), vm)));
        _mm256_maskstore_ps(x + i, m, e);
        sum = _mm256_add_ps(sum, e);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / hsum8(sum));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    const float invs = _mm256_cvtss_f32(inv);
    for (; i < n; i++) x[i] *= invs;
}

AI __m256 swiglu8(__m256 g, __m256 u) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), g)))), u);
}
static void swiglu_f32(float *gate, const float *up, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(gate + i, swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        const __m256i m = lanes_below(n - i);
        _mm256_maskstore_ps(gate + i, m, swiglu8(_mm256_maskload_ps(gate + i, m), _mm256_maskload_ps(up + i, m)));
    }
}

/* ============================== packed Q4_0 / Q8_0 x q8x activations ==============================
 * Layout in tensor_types.h: 32-bit lane r of a weight vector is row r of a 16-row group (two ymm
 * halves of 8 rows), multiplied with a broadcast activation dword. Q4_0: vpmaddubsw (nibble u8 x s8,
 * int16 sums of at most 16 products <= 30720: exact), then vpmaddwd by 1 and the -8 correction c4.
 * Q8_0: the stored bytes are w + 128; even/odd bytes widened to int16 (weights zero-extended,
 * activations sign-extended) and vpmaddwd (exact), then the -128 correction c8. Rows are summed
 * block by block with the scalar reference's roundings: bit-identical results. */
#define PKR PL_PACK_ROWS
#define PKC 6 /* prefill: activation rows per pass (6 over 4: Q4_0 +5-8%, Q8_0 +1%; 5 is between) */
/* the tile prefetches the group stream this far ahead: a pass over several activation rows computes
 * longer per weight byte than decode and the hardware prefetcher alone falls behind (as in the
 * AVX-512 file; batched decode of 4-8 rows ~25% faster) */
#define PK_PREFETCH 8192

/* acc + (float)dp * (dw * da) with the scalar reference's roundings (no FMA): bit-identical to it */
AI __m256 pk_accum(__m256 acc, __m256i dp, __m256 dw, __m256 da) {
    __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(dp), _mm256_mul_ps(dw, da));
    __asm__("" : "+x"(p));
    return _mm256_add_ps(acc, p);
}
AI __m256i bcast32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
/* stores the first rows (< 8) lanes of v */
AI void store_rows(float *out, __m256 v, int rows) {
    if (rows >= 8) {
        _mm256_storeu_ps(out, v);
        return;
    }
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    for (int r = 0; r < rows; r++) out[r] = tmp[r];
}

/* C activation rows x 8 weight rows (half h of a group): acc[c] = exact int32 block dots + correction */
AI void pk_block_dots(const int qt, const int C, const uint8_t *q, const uint8_t *const *ab, const int32_t *const *ac,
                      int b, __m256i *acc) {
    if (qt == QT_q4_0) {
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        __m256i s[PKC];
        UNROLL for (int c = 0; c < C; c++) s[c] = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_load_si256((const __m256i *)(q + 64 * k));
            const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            UNROLL for (int c = 0; c < C; c++) {
                s[c] = _mm256_add_epi16(s[c], _mm256_maddubs_epi16(lo, bcast32(ab[c] + 4 * k)));
                s[c] = _mm256_add_epi16(s[c], _mm256_maddubs_epi16(hi, bcast32(ab[c] + 16 + 4 * k)));
            }
            /* keeps GCC from computing every product of the block first (it spilled them) */
            UNROLL for (int c = 0; c < C; c++) __asm__("" : "+x"(s[c]));
        }
        UNROLL for (int c = 0; c < C; c++)
            acc[c] = _mm256_add_epi32(_mm256_madd_epi16(s[c], _mm256_set1_epi16(1)), _mm256_set1_epi32(ac[c][b]));
    } else {
        const __m256i m8 = _mm256_set1_epi16(0x00FF);
        UNROLL for (int c = 0; c < C; c++) acc[c] = _mm256_set1_epi32(ac[c][b]);
        UNROLL for (int k = 0; k < 8; k++) {
            const __m256i v = _mm256_load_si256((const __m256i *)(q + 64 * k));
            const __m256i ve = _mm256_and_si256(v, m8), vo = _mm256_srli_epi16(v, 8);
            UNROLL for (int c = 0; c < C; c++) {
                const __m256i x = bcast32(ab[c] + 4 * k);
                const __m256i xe = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8), xo = _mm256_srai_epi16(x, 8);
                acc[c] = _mm256_add_epi32(acc[c], _mm256_add_epi32(_mm256_madd_epi16(ve, xe), _mm256_madd_epi16(vo, xo)));
            }
        }
    }
}

/* one group (16 rows, as two halves) x C activation rows */
AI void pk_tile(const int qt, const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out,
                size_t os, int rows) {
    const int QB = qt == QT_q4_0 ? 16 : 32;
    const uint8_t *ab[PKC];
    const int32_t *ac[PKC];
    const float *ad[PKC];
    UNROLL for (int c = 0; c < C; c++) {
        ab[c] = a + (size_t)c * as + 2;
        ac[c] = (const int32_t *)(a + (size_t)c * as + pk_c_off(qt, nb));
        ad[c] = (const float *)(a + (size_t)c * as + pk_d_off(nb));
    }
    UNROLL for (int h = 0; h < 2; h++) {
        if (rows <= 8 * h) break;
        __m256 fa[PKC];
        UNROLL for (int c = 0; c < C; c++) fa[c] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *q = gp + pl_pk_q(b, QB) + 32 * h;
            if (h == 0) /* this block's bytes, PK_PREFETCH ahead (the second half's pass reads the group from cache) */
                for (int i = 0; i < (QB == 16 ? 5 : 9); i++) _mm_prefetch((const char *)q + PK_PREFETCH + 64 * i, _MM_HINT_T0);
            const uint8_t *abb[PKC];
            UNROLL for (int c = 0; c < C; c++) abb[c] = ab[c] + (size_t)b * Q8B;
            __m256i acc[PKC];
            pk_block_dots(qt, C, q, abb, ac, b, acc);
            const __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(gp + pl_pk_d(b, QB) + 16 * h)));
            UNROLL for (int c = 0; c < C; c++)
                fa[c] = pk_accum(fa[c], acc[c], dw, _mm256_set1_ps(ad[c][b]));
        }
        UNROLL for (int c = 0; c < C; c++) store_rows(out + (size_t)c * os + 8 * h, fa[c], rows - 8 * h);
    }
}

/* decode, Q8_0 activation rows holding a -128 (see sq8_gemv): one group (both halves) x one activation
 * row, bytes widened to int16 (weights zero-extended, activations sign-extended) and vpmaddwd */
static void pk_gemv_q8_0(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {
    const int32_t *ac = (const int32_t *)(a + pk_c_off(QT_q8_0, nb));
    const float *ad = (const float *)(a + pk_d_off(nb));
    const __m256i m8 = _mm256_set1_epi16(0x00FF);
    __m256 fa[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = gp + pl_pk_q(b, 32), *ab = a + (size_t)b * Q8B + 2;
        __m256i acc[2];
        acc[0] = acc[1] = _mm256_set1_epi32(ac[b]);
        UNROLL for (int k = 0; k < 8; k++) {
            const __m256i x = bcast32(ab + 4 * k);
            const __m256i xe = _mm256_srai_epi16(_mm256_slli_epi16(x, 8), 8), xo = _mm256_srai_epi16(x, 8);
            UNROLL for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_load_si256((const __m256i *)(q + 64 * k + 32 * h));
                acc[h] = _mm256_add_epi32(acc[h], _mm256_add_epi32(_mm256_madd_epi16(_mm256_and_si256(v, m8), xe),
                                                                   _mm256_madd_epi16(_mm256_srli_epi16(v, 8), xo)));
            }
        }
        const __m256 da = _mm256_set1_ps(ad[b]);
        UNROLL for (int h = 0; h < 2; h++)
            fa[h] = pk_accum(fa[h], acc[h], _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(gp + pl_pk_d(b, 32) + 16 * h))), da);
    }
    store_rows(out, fa[0], rows);
    if (rows > 8) store_rows(out + 8, fa[1], rows - 8);
}

#define PKT_DEF(qt, C)                                                                                          \
    static void pk_tile_##qt##_##C(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, \
                                   int rows) {                                                                  \
        pk_tile(QT_##qt, C, nb, gp, a, as, out, os, rows);                                                      \
    }
PKT_DEF(q4_0, 1) PKT_DEF(q4_0, 2) PKT_DEF(q4_0, 3) PKT_DEF(q4_0, 4) PKT_DEF(q4_0, 5) PKT_DEF(q4_0, 6)
PKT_DEF(q8_0, 1) PKT_DEF(q8_0, 2) PKT_DEF(q8_0, 3) PKT_DEF(q8_0, 4) PKT_DEF(q8_0, 5) PKT_DEF(q8_0, 6)
static const pl_pk_tile_fn pk_tile_tab[2][PKC] = {{pk_tile_q4_0_1, pk_tile_q4_0_2, pk_tile_q4_0_3, pk_tile_q4_0_4, pk_tile_q4_0_5, pk_tile_q4_0_6},
                                               {pk_tile_q8_0_1, pk_tile_q8_0_2, pk_tile_q8_0_3, pk_tile_q8_0_4, pk_tile_q8_0_5, pk_tile_q8_0_6}};

/* ---- Q8_0 through vpmaddubsw (the sign trick): per 32-bit lane, |w| (u8) x (a with w's sign) (s8), the
 * int16 pair sums (at most 2 x 128 x 127 = 32512: exact) widened by vpmaddwd by 1 at once. One
 * multiply fewer per vector than the int16 path above and no activation unpacking, so the prefill
 * tile runs ~1.5x faster. Exact unless an activation byte is -128 (its sign flip wraps): Q8_0 from
 * a finite block never holds one (|q| <= 127), only degenerate blocks do (a denormal scale, inf);
 * q8_0_gemm_packed checks the activation rows once per call and takes the int16 path for them. */
AI __m256i sq8_dot(__m256i aw, __m256i w, __m256i x, __m256i acc) {
    const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
AI __m256i sq8_w(const uint8_t *q) { return _mm256_xor_si256(_mm256_load_si256((const __m256i *)q), _mm256_set1_epi8((char)0x80)); }

/* C activation rows x 8 weight rows (half h of a group), exact int32 block dots */
AI void sq8_tile(const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, int rows) {
    const uint8_t *ab[PKC];
    const float *ad[PKC];
    UNROLL for (int c = 0; c < C; c++) {
        ab[c] = a + (size_t)c * as + 2;
        ad[c] = (const float *)(a + (size_t)c * as + pk_d_off(nb));
    }
    UNROLL for (int h = 0; h < 2; h++) {
        if (rows <= 8 * h) break;
        __m256 fa[PKC];
        UNROLL for (int c = 0; c < C; c++) fa[c] = _mm256_setzero_ps();
        for (int b = 0; b < nb; b++) {
            const uint8_t *q = gp + pl_pk_q(b, 32) + 32 * h;
            if (h == 0)
                for (int i = 0; i < 9; i++) _mm_prefetch((const char *)q + PK_PREFETCH + 64 * i, _MM_HINT_T0);
            __m256i acc[PKC];
            UNROLL for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_si256();
            UNROLL for (int k = 0; k < 8; k++) {
                const __m256i w = sq8_w(q + 64 * k), aw = _mm256_abs_epi8(w);
                UNROLL for (int c = 0; c < C; c++) acc[c] = sq8_dot(aw, w, bcast32(ab[c] + (size_t)b * Q8B + 4 * k), acc[c]);
                UNROLL for (int c = 0; c < C; c++) __asm__("" : "+x"(acc[c])); /* as in pk_block_dots */
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(gp + pl_pk_d(b, 32) + 16 * h)));
            UNROLL for (int c = 0; c < C; c++) fa[c] = pk_accum(fa[c], acc[c], dw, _mm256_set1_ps(ad[c][b]));
        }
        UNROLL for (int c = 0; c < C; c++) store_rows(out + (size_t)c * os + 8 * h, fa[c], rows - 8 * h);
    }
}
static void sq8_gemv(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {
    const float *ad = (const float *)(a + pk_d_off(nb));
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = gp + pl_pk_q(b, 32), *ab = a + (size_t)b * Q8B + 2;
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 8; k++) {
            const __m256i x = bcast32(ab + 4 * k);
            const __m256i w0 = sq8_w(q + 64 * k), w1 = sq8_w(q + 64 * k + 32);
            s0 = sq8_dot(_mm256_abs_epi8(w0), w0, x, s0);
            s1 = sq8_dot(_mm256_abs_epi8(w1), w1, x, s1);
            __asm__("" : "+x"(s0), "+x"(s1)); /* one vector at a time (GCC had spilled the products) */
        }
        const __m256 da = _mm256_set1_ps(ad[b]);
        const uint8_t *d = gp + pl_pk_d(b, 32);
        f0 = pk_accum(f0, s0, _mm256_cvtph_ps(_mm_load_si128((const __m128i *)d)), da);
        f1 = pk_accum(f1, s1, _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(d + 16))), da);
    }
    store_rows(out, f0, rows);
    if (rows > 8) store_rows(out + 8, f1, rows - 8);
}
/* decode Q4_0: one group (both halves) x one activation row, each activation broadcast serving 16 rows;
 * int16 sums of 16 products (<= 15 x 128 x 16 = 30720: exact) */
static void q4_gemv(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {
    const int32_t *ac = (const int32_t *)(a + pk_c_off(QT_q4_0, nb));
    const float *ad = (const float *)(a + pk_d_off(nb));
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *q = gp + pl_pk_q(b, 16), *ab = a + (size_t)b * Q8B + 2;
        __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
        UNROLL for (int k = 0; k < 4; k++) {
            const __m256i alo = bcast32(ab + 4 * k), ahi = bcast32(ab + 16 + 4 * k);
            const __m256i v0 = _mm256_load_si256((const __m256i *)(q + 64 * k));
            const __m256i v1 = _mm256_load_si256((const __m256i *)(q + 64 * k + 32));
            s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(v0, m4), alo));
            s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(v1, m4), alo));
            s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v0, 4), m4), ahi));
            s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v1, 4), m4), ahi));
            __asm__("" : "+x"(s0), "+x"(s1));
        }
        const __m256i corr = _mm256_set1_epi32(ac[b]), one = _mm256_set1_epi16(1);
        const __m256 da = _mm256_set1_ps(ad[b]);
        const uint8_t *d = gp + pl_pk_d(b, 16);
        f0 = pk_accum(f0, _mm256_add_epi32(_mm256_madd_epi16(s0, one), corr), _mm256_cvtph_ps(_mm_load_si128((const __m128i *)d)), da);
        f1 = pk_accum(f1, _mm256_add_epi32(_mm256_madd_epi16(s1, one), corr), _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(d + 16))), da);
    }
    store_rows(out, f0, rows);
    if (rows > 8) store_rows(out + 8, f1, rows - 8);
}
#define SQ8_DEF(C)                                                                                               \
    static void sq8_tile_##C(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, int rows) { \
        sq8_tile(C, nb, gp, a, as, out, os, rows);                                                                \
    }
SQ8_DEF(1) SQ8_DEF(2) SQ8_DEF(3) SQ8_DEF(4) SQ8_DEF(5) SQ8_DEF(6)
static const pl_pk_tile_fn sq8_tile_tab[PKC] = {sq8_tile_1, sq8_tile_2, sq8_tile_3, sq8_tile_4, sq8_tile_5, sq8_tile_6};

/* Q4_0 / Q8_0's pack_act (pl_pack_act_row in types_scalar.c, the same bytes): the Q8_0 row, then per
 * block the fp32 scale and the corrections -8 x / -128 x the sum of its quants, that sum by vpmaddubsw
 * (1 x q) and vpmaddwd, four blocks at a time */
static void q8x_pack_act(pl_from_float_fn q8_from_float, const float *x, void *dst, int64_t n) {
    const int64_t nb = n / PL_QK;
    const size_t ad = pl_round64((size_t)nb * 4);
    uint8_t *y = (uint8_t *)dst;
    q8_from_float(x, y, n);
    float *d = (float *)(y + pl_round64((size_t)nb * Q8B));
    int32_t *c4 = (int32_t *)((uint8_t *)d + ad), *c8 = (int32_t *)((uint8_t *)d + 2 * ad);
    const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m256i s[4];
        UNROLL for (int i = 0; i < 4; i++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(y + (size_t)(b + i) * Q8B + 2));
            s[i] = _mm256_madd_epi16(_mm256_maddubs_epi16(one8, q), one16); /* 8 int32 partial sums */
        }
        /* horizontal: [s0 s1 s2 s3] -> one int32 per block */
        const __m256i t01 = _mm256_hadd_epi32(s[0], s[1]), t23 = _mm256_hadd_epi32(s[2], s[3]);
        const __m256i t = _mm256_hadd_epi32(t01, t23); /* lane: b0 b1 b2 b3 (low half) + same (high half) */
        const __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        _mm_storeu_si128((__m128i *)(c4 + b), _mm_mullo_epi32(sum, _mm_set1_epi32(-8)));
        _mm_storeu_si128((__m128i *)(c8 + b), _mm_mullo_epi32(sum, _mm_set1_epi32(-128)));
        UNROLL for (int i = 0; i < 4; i++) d[b + i] = pl_ld_fp16(y + (size_t)(b + i) * Q8B);
    }
    for (; b < nb; b++) {
        const uint8_t *blk = y + (size_t)b * Q8B;
        int32_t sum = 0;
        for (int j = 0; j < PL_QK; j++) sum += (int8_t)blk[2 + j];
        d[b] = pl_ld_fp16(blk);
        c4[b] = -8 * sum;
        c8[b] = -128 * sum;
    }
}

/* any quant byte -128 in nc activation rows of nb blocks (as apart)? */
static int acts_hold_m128(int nb, const uint8_t *a, size_t as, int nc) {
    const __m256i m = _mm256_set1_epi8((char)0x80);
    __m256i any = _mm256_setzero_si256();
    for (int c = 0; c < nc; c++)
        for (int b = 0; b < nb; b++)
            any = _mm256_or_si256(any, _mm256_cmpeq_epi8(_mm256_loadu_si256((const __m256i *)(a + (size_t)c * as + (size_t)b * Q8B + 2)), m));
    return !_mm256_testz_si256(any, any);
}

static void q4_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    pl_pk_gemm_drive(PL_TYPE_Q4_0, PL_QK, q4_gemv, pk_tile_tab[QT_q4_0], PKC, n, nr, nc, w, a, as, out, os);
}
static void q8_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (!acts_hold_m128(n / PL_QK, (const uint8_t *)a, as, nc)) {
        pl_pk_gemm_drive(PL_TYPE_Q8_0, PL_QK, sq8_gemv, sq8_tile_tab, PKC, n, nr, nc, w, a, as, out, os);
        return;
    }
    pl_pk_gemm_drive(PL_TYPE_Q8_0, PL_QK, pk_gemv_q8_0, pk_tile_tab[QT_q8_0], PKC, n, nr, nc, w, a, as, out, os);
}

/* ============================== packed Q4_K / Q6_K x Q8_K ==============================
 * kquant_packed_simd.h over one ymm per 8 rows (each group in two passes: rows 0..7, 8..15). */
#define KV_LANES 8
/* activation rows per prefill pass for Q4_K / Q5_K / Q2_K (measured in one process on a Zen 5, 64 rows, 5
 * against 4: Q5_K +27%, Q4_K +2%, Q2_K 0); IQ4_XS keeps 4 (-7% with 5), Q6_K / Q3_K too (KQP_MAXC_6) */
#define KQP_MAXC_4 5
#define KQP_MAXC_IQ4 4
/* Q5_K's sub-blocks 5..7 (5-8 operations a vector) decoded and dotted 4 vectors (one int16 run) at a time:
 * decoded 8 at a time, their pieces outgrew the 16 registers (148 stack references in the gemv, 60 now;
 * measured in one process on a Zen 5: gemv +20%, prefill tiles of 2-5 rows +3..28%) */
#define KQP_Q5_RUN 4
/* each super-block's two 8-row halves back to back (kqp_tile) for every type and tile but IQ4_XS's of
 * several activation rows. Measured in one process, one thread of a Zen 5, against two passes over the
 * group; weights from DRAM (64 MB), gemv: Q4_K +20%, Q5_K +13%, Q6_K +20%, Q3_K +5%, Q2_K +6%, IQ4_XS
 * +12%; 2 / 4 activation rows (batched decode): Q4_K +14 / +11%, Q6_K +14 / +4%, Q5_K + 4% (4), Q3_K
 * -2 / +11%, Q2_K +2%, IQ4_XS -1 / -7%; weights from L3 (2-10 MB): gemv Q4_K +4%, Q6_K +7%, Q2_K -4%,
 * IQ4_XS -1%, tiles -3..+2% but IQ4_XS's -3 / -9%. The 1.1B model's decode, one thread: Q4_K_M 46.4 ->
 * 55.7 tok/s, Q6_K 32.4 -> 37.1 */
#define KQP_HALVES(qt, C) ((C) == 1 || (qt) != KQP_IQ4_XS)
typedef __m256i kv_i;
typedef __m256 kv_f;
AI kv_i kv_load(const uint8_t *p) { return _mm256_load_si256((const __m256i *)p); }
AI kv_i kv_set1(int32_t x) { return _mm256_set1_epi32(x); }
AI kv_i kv_zero(void) { return _mm256_setzero_si256(); }
AI kv_i kv_add(kv_i a, kv_i b) { return _mm256_add_epi32(a, b); }
AI kv_i kv_and(kv_i a, kv_i b) { return _mm256_and_si256(a, b); }
AI kv_i kv_andnot(kv_i m, kv_i x) { return _mm256_andnot_si256(m, x); }
AI kv_i kv_or_and(kv_i a, kv_i b, kv_i m) { return _mm256_or_si256(a, _mm256_and_si256(b, m)); }
AI kv_i kv_mullo(kv_i a, kv_i b) { return _mm256_mullo_epi32(a, b); }
AI kv_i kv_srli16(kv_i a, const int k) { return _mm256_srli_epi16(a, k); }
AI kv_i kv_slli16(kv_i a, const int k) { return _mm256_slli_epi16(a, k); }
#define KV_MASK_FIRST 1 /* VEX shifts take no memory operand, vpand does (kqp_bits) */
/* the scales as int16 pairs (the low 16 bits of each lane in both halves) for vpmaddwd: one byte shuffle
 * (was and + shift + or, 16 groups per Q6_K super-block) */
AI kv_i kv_scales(kv_i sc) {
    return _mm256_shuffle_epi8(sc, _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13,
                                                    0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13));
}
/* vpmaddubsw products summed in int16 over as many vectors as cannot overflow (each pair sum is at
 * most 2 x (2^WBITS - 1) x 128: 8 vectors of 4-bit weights, 4 of 5-bit, 2 of 6-bit), then vpmaddwd by
 * the scale pairs (int32, exact); init x scale with one multiply */
/* a value made opaque (empty asm): keeps a sum a serial chain (GCC otherwise reassociates it into a tree
 * whose partial sums no longer fit the 16 registers) */
#define KV_CHAIN(v) __asm__("" : "+x"(v))
AI kv_i kv_sdot(const int NW, const int WBITS, const kv_i *w, const uint8_t *q8, kv_i sc, int32_t init, const int shift) {
    (void)shift; /* no KV_DOT_WIDE here */
    const int run = WBITS <= 4 ? 8 : WBITS == 5 ? 4 : 2;
    __m256i acc = init ? _mm256_mullo_epi32(_mm256_set1_epi32(init), _mm256_srai_epi32(sc, 16)) : _mm256_setzero_si256();
    UNROLL for (int v0 = 0; v0 < NW; v0 += run) {
        __m256i s16 = _mm256_maddubs_epi16(w[v0], _mm256_set1_epi32((int)pl_ld_u32(q8 + 4 * v0)));
        UNROLL for (int k = 1; k < run; k++)
            if (v0 + k < NW) {
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[v0 + k], _mm256_set1_epi32((int)pl_ld_u32(q8 + 4 * (v0 + k)))));
                KV_CHAIN(s16);
            }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, sc));
    }
    return acc;
}
/* signed weights: |w| x (q8 with w's sign) so vpmaddubsw applies (pair sums <= 2 x 127 x 127: exact,
 * but two of them could overflow int16, so each is scaled by vpmaddwd at once). Q8_K activations are
 * in [-127, 127] (the sign flip of -128 would overflow). */
AI kv_i kv_sdot_s8(const int NW, const kv_i *w, const uint8_t *q8, kv_i sc, int32_t sum8) {
    (void)sum8;
    __m256i acc = _mm256_setzero_si256();
    UNROLL for (int v = 0; v < NW; v++) {
        const __m256i x = _mm256_set1_epi32((int)pl_ld_u32(q8 + 4 * v));
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w[v], w[v]), _mm256_sign_epi8(x, w[v]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
    }
    return acc;
}
AI kv_i kv_bcast128(const void *p) { return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p)); }
AI kv_i kv_shuffle8(kv_i t, kv_i i) { return _mm256_shuffle_epi8(t, i); }
AI kv_i kv_u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
AI kv_i kv_s8(const uint8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
/* Q4_K / Q5_K mins: per lane the int16 pair (byte p0[r], byte p1[r]) and vpmaddwd (the mins (< 64) by
 * the sub-block activation sums (|.| <= 32 x 127): exact int32) */
#define KV_MINS16 1
AI kv_i kv_pairs16(const uint8_t *p0, const uint8_t *p1) {
    return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)p0), _mm_loadl_epi64((const __m128i *)p1)));
}
AI kv_i kv_madd16(kv_i a, kv_i b) { return _mm256_madd_epi16(a, b); }
/* Q6_K (values stored + 32, < 64): the dot of a group's 4 vectors with the values as stored, as two int16
 * pair sums of 2 vpmaddubsw (<= 4 x 63 x 127: exact) each by the scales; the offset x the group activation
 * sums is taken once per super-block by kv_pairs16_s8 / kv_madd16 (Q3_K's too; measured in one process on
 * a Zen 5 against a per-group int16 correction: prefill Q6_K +17%, Q3_K +25%) */
#define KV_OFFS_BLOCK 1
AI kv_i kv_sdot6_split(const kv_i *w, const uint8_t *q8, kv_i sc) {
    __m256i a = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32((int)pl_ld_u32(q8)));
    a = _mm256_add_epi16(a, _mm256_maddubs_epi16(w[1], _mm256_set1_epi32((int)pl_ld_u32(q8 + 4))));
    __m256i b = _mm256_maddubs_epi16(w[2], _mm256_set1_epi32((int)pl_ld_u32(q8 + 8)));
    b = _mm256_add_epi16(b, _mm256_maddubs_epi16(w[3], _mm256_set1_epi32((int)pl_ld_u32(q8 + 12))));
    return _mm256_add_epi32(_mm256_madd_epi16(a, sc), _mm256_madd_epi16(b, sc));
}
/* per lane the int16 pair (s8 byte p0[r], s8 byte p1[r]): the bytes interleaved, then widened */
AI kv_i kv_pairs16_s8(const uint8_t *p0, const uint8_t *p1) {
    return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)p0), _mm_loadl_epi64((const __m128i *)p1)));
}
/* the scale of group 2j + h (h = 0, 1) from the pairs of groups 2j, 2j + 1 (kv_pairs16_s8): in kv_scales'
 * form, one vpshufb (was vpmovsxbd + vpshufb per group, and the pairs built again for the offsets) */
AI kv_i kv_pair_scale(kv_i sp, const int h) {
    return h ? _mm256_shuffle_epi8(sp, _mm256_setr_epi8(2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15,
                                                         2, 3, 2, 3, 6, 7, 6, 7, 10, 11, 10, 11, 14, 15, 14, 15))
             : _mm256_shuffle_epi8(sp, _mm256_setr_epi8(0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13,
                                                         0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13));
}
AI kv_i kv_sub(kv_i a, kv_i b) { return _mm256_sub_epi32(a, b); }
AI kv_i kv_slli32(kv_i a, const int k) { return _mm256_slli_epi32(a, k); }
#define kv_fp16 ymm_load_fp16 /* the fp32 ops: ymm_lanes.h */
#define kv_cvt ymm_from_i32
#define kv_fset1 ymm_set1
#define kv_fzero ymm_zero
#define kv_fadd ymm_add
#define kv_fsub ymm_sub
#define kv_fmul ymm_mul
#define kv_store ymm_store_rows
#include "kquant_packed_simd.h"

PL_BASELINE_FN void pl_kernels_init_avx2(pl_kernels *k) {
    pl_kernels_init_scalar(k);
    k->isa = "avx2";
    pl_type_traits *t;
    kq_register(k); /* kquant_dots_avx2.h */
    kqp_register(k); /* kquant_packed_simd.h */
    pl_kernels_add_kquant_panel_avx2(k); /* Q6_K / Q3_K prefill from decoded super-blocks */
    pl_kernels_add_packed_legacy_avx2(k); /* Q4_1 / Q5_0 / Q5_1 / IQ4_NL: legacy_packed_avx2.c */
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
    t->pack_act = q8x_pack_act;
    t = &k->types[PL_TYPE_Q4_0];
    t->pack_act = q8x_pack_act; /* the same function for both: matmul.c shares one activation form */
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
