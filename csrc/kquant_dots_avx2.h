/* kquant_dots_avx2.h: K-quant (Q2_K..Q6_K) and IQ4_XS weights x Q8_K activations, and Q4_0, Q8_0,
 * Q4_1, Q5_0, Q5_1, IQ4_NL weights x Q8_0 activations with AVX2 integer arithmetic (the vec_dots of the
 * unpacked rows), for the
 * AVX2 and AVX-512 tables (both files are compiled with -mavx2 and include this). Bit-identical to
 * the scalar reference in types_kquants.c: every integer sum is exact (vpmaddubsw's int16 pair sums
 * cannot overflow: <= 2 x 127 x 127; the scale products are int32), and the float arithmetic per
 * super-block is the reference's, in its order. */
#ifndef PYLLM_KQUANT_DOTS_AVX2_H
#define PYLLM_KQUANT_DOTS_AVX2_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "tensor_types.h"

/* an fp16 field (any alignment) with F16C: exact, as the scalar pl_ld_fp16 */
static inline float kq_fp16(const void *p) { return _cvtsh_ss(pl_ld_u16(p)); }

static inline int32_t kq_hsum_i32(__m256i v) {
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, _MM_SHUFFLE(2, 3, 0, 1))));
}

/* the 8 scales (bytes 0..7) and 8 mins (bytes 8..15) of a Q4_K / Q5_K super-block from its 12 scale
 * bytes, four at a time (the same values as types_kquants.c's scale_min_k4) */
static inline void kq_q4_k_scales(const uint8_t *s12, uint8_t *out16) {
    uint32_t u[4];
    memcpy(u, s12, 12);
    const uint32_t k1 = 0x3f3f3f3fu, k2 = 0x0f0f0f0fu, k3 = 0x03030303u;
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    const uint32_t mins_lo = u[1] & k1;
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    u[2] = mins_lo;
    u[0] &= k1;
    memcpy(out16, u, 16);
}

/* sum over the 8 sub-blocks of min_j x (the sums of its 32 activations): the bsums in pairs */
static inline int32_t kq_mins_dot(const uint8_t *mins8, const char *bsums) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i m8 = _mm_loadl_epi64((const __m128i *)mins8);
    const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8)); /* m0 m0 m1 m1 ... */
    return kq_hsum_i32(_mm256_madd_epi16(b, m16));
}

/* Q4_K (has_qh 0: 144-byte blocks) and Q5_K (1: 176 bytes, a fifth bit per weight in qh[32]): per
 * 64 weights c, sub-blocks 2c (low nibbles, qh bit 2c) and 2c + 1 (high nibbles, qh bit 2c + 1) */
static inline __attribute__((always_inline)) void kq_q45_k_vec_dot(int n, float *s, const void *vw, const void *va,
                                                                   const int has_qh) {
    const uint8_t *w = vw;
    const char *a = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    const int bytes = has_qh ? 176 : 144, qs_off = has_qh ? 48 : 16;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += bytes, a += sizeof(pl_block_q8_k)) {
        uint8_t sm[16];
        kq_q4_k_scales(w + 4, sm);
        const int8_t *q8 = (const int8_t *)(a + 4);
        const __m256i qh = has_qh ? _mm256_loadu_si256((const __m256i *)(w + 16)) : _mm256_setzero_si256();
        __m256i acc = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w + qs_off + 32 * c));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (has_qh) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one), 4));
            }
            const __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * c)));
            const __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * c + 32)));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, _mm256_set1_epi16(sm[2 * c])));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, _mm256_set1_epi16(sm[2 * c + 1])));
        }
        const int32_t isum = kq_hsum_i32(acc), imin = kq_mins_dot(sm + 8, a + 260);
        const float ad = pl_ld_f32(a);
        sum += (ad * kq_fp16(w)) * (float)isum - (ad * kq_fp16(w + 2)) * (float)imin;
    }
    *s = sum;
}
static void kq_q4_k_vec_dot(int n, float *s, const void *w, const void *a) { kq_q45_k_vec_dot(n, s, w, a, 0); }
static void kq_q5_k_vec_dot(int n, float *s, const void *w, const void *a) { kq_q45_k_vec_dot(n, s, w, a, 1); }

static void kq_q6_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 210, a += sizeof(pl_block_q8_k)) {
        const int8_t *q8 = (const int8_t *)(a + 4), *sc = (const int8_t *)(w + 192);
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) { /* 128 weights: ql[64 h ..], qh[32 h ..] */
            const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(w + 64 * h));
            const __m256i ql1 = _mm256_loadu_si256((const __m256i *)(w + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h));
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4));
            for (int k = 0; k < 4; k++) { /* elements 128 h + 32 k ..: groups g, g + 1 */
                const int g = 8 * h + 2 * k;
                const __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * k)));
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scv));
            }
        }
        int32_t off = 0; /* the values are stored + 32: remove 32 x scale x sum(q8) per group */
        for (int g = 0; g < 16; g++) off += (int32_t)sc[g] * (int16_t)pl_ld_u16(a + 260 + 2 * g);
        const int32_t isum = kq_hsum_i32(acc) - 32 * off;
        sum += (pl_ld_f32(a) * kq_fp16(w + 208)) * (float)isum;
    }
    *s = sum;
}

/* Q2_K and Q3_K: per half h and shift j, 32 values of 2 bits (Q3_K: plus 4 x its hmask bit) for groups
 * 8 h + 2 j and + 1 */
static void kq_q2_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    const __m256i m3 = _mm256_set1_epi8(3);
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 84, a += sizeof(pl_block_q8_k)) {
        const int8_t *q8 = (const int8_t *)(a + 4);
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * h));
            for (int j = 0; j < 4; j++) {
                const int g = 8 * h + 2 * j;
                const __m256i u = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), m3);
                const __m256i p = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * j)));
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(w[g + 1] & 0x0F), _mm_set1_epi16(w[g] & 0x0F));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scv));
            }
        }
        int32_t imin = 0;
        for (int g = 0; g < 16; g++) imin += (int32_t)(w[g] >> 4) * (int16_t)pl_ld_u16(a + 260 + 2 * g);
        const float ad = pl_ld_f32(a);
        sum += (ad * kq_fp16(w + 80)) * (float)kq_hsum_i32(acc) -
               (ad * kq_fp16(w + 82)) * (float)imin;
    }
    *s = sum;
}

static void kq_q3_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 110, a += sizeof(pl_block_q8_k)) {
        int8_t sc[16];
        pl_q3_k_scales(w + 96, sc);
        const int8_t *q8 = (const int8_t *)(a + 4);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)w);
        __m256i acc = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(w + 32 + 32 * h));
            for (int j = 0; j < 4; j++) {
                const int g = 8 * h + 2 * j;
                const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), one);
                const __m256i u = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), m3),
                                                  _mm256_slli_epi16(hb, 2));
                const __m256i p = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * j)));
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, scv));
            }
        }
        int32_t off = 0; /* u - 4: remove 4 x scale x sum(q8) per group */
        for (int g = 0; g < 16; g++) off += (int32_t)sc[g] * (int16_t)pl_ld_u16(a + 260 + 2 * g);
        sum += (pl_ld_f32(a) * kq_fp16(w + 108)) * (float)(kq_hsum_i32(acc) - 4 * off);
    }
    *s = sum;
}

/* IQ4_XS: the 4-bit indices looked up in the non-linear table (vpshufb), signed x signed products as
 * |value| x (q8 with value's sign) so vpmaddubsw applies (pair sums <= 2 x 127 x 127: no saturation) */
static void kq_iq4_xs_vec_dot(int n, float *s, const void *vw, const void *va) {
    const __m128i kv128 = _mm_loadu_si128((const __m128i *)pl_iq4nl_values);
    const __m256i table = _mm256_set_m128i(kv128, kv128), m4 = _mm256_set1_epi8(0x0F);
    const uint8_t *w = vw;
    const char *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / PL_QK_K; i++, w += 136, a += sizeof(pl_block_q8_k)) {
        const uint16_t sh = pl_ld_u16(w + 2);
        const uint8_t *sl = w + 4;
        const int8_t *q8 = (const int8_t *)(a + 4);
        __m256i acc = _mm256_setzero_si256();
        for (int ib = 0; ib < 8; ib++) { /* 32 weights: 16 bytes, low nibbles then high nibbles */
            const __m128i q = _mm_loadu_si128((const __m128i *)(w + 8 + 16 * ib));
            const __m256i idx = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
            const __m256i v = _mm256_shuffle_epi8(table, idx);
            const __m256i y = _mm256_loadu_si256((const __m256i *)(q8 + 32 * ib));
            const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(y, v));
            const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((sh >> (2 * ib)) & 3) << 4);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16((int16_t)(ls - 32))));
        }
        sum += (pl_ld_f32(a) * kq_fp16(w)) * (float)kq_hsum_i32(acc);
    }
    *s = sum;
}

/* ---- 32-weight types x Q8_0 activations (fp16 d + 32 int8 per block), as types_kquants.c ---- */
/* the 32 weights of a block from 16 bytes of nibbles: weights 0..15 the low nibbles, 16..31 the high */
static inline __m256i kq_nibbles32(const uint8_t *q16) {
    const __m128i q = _mm_loadu_si128((const __m128i *)q16);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F));
}
/* 0x10 in the bytes whose bit of the 32-bit qh is set (byte e <- bit e) */
static inline __m256i kq_high_bits32(const uint8_t *qh4) {
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                         2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)pl_ld_u32(qh4)), sel), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(0x10));
}
static inline int32_t kq_dot_u8_s8(__m256i u, __m256i q8) {
    return kq_hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, q8), _mm256_set1_epi16(1)));
}
static inline int32_t kq_sum_s8(__m256i q8) { return kq_dot_u8_s8(_mm256_set1_epi8(1), q8); }

/* Q4_0 (nibbles - 8) and Q8_0 x Q8_0, as types_scalar.c: the int32 vectors of 4 blocks reduced together
 * (vphaddd), then each block's sum += (float)isum * (d * d8) in order */
static inline __m128i kq_hsum4_i32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d), abcd = _mm256_hadd_epi32(ab, cd);
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1)); /* a, b, c, d */
}
/* the int32 partial sums of one block (8 lanes; their sum is the block's exact integer dot) */
static inline __m256i kq_q4_0_block(const uint8_t *w, const uint8_t *a) {
    const __m256i q8 = _mm256_loadu_si256((const __m256i *)(a + 2));
    const __m256i v = _mm256_sub_epi8(kq_nibbles32(w + 2), _mm256_set1_epi8(8)); /* -8 .. 7 */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(q8, v)), _mm256_set1_epi16(1));
}
static inline __m256i kq_q8_0_block(const uint8_t *w, const uint8_t *a) { /* widened to int16: exact for -128 too */
    const __m128i w0 = _mm_loadu_si128((const __m128i *)(w + 2)), w1 = _mm_loadu_si128((const __m128i *)(w + 18));
    const __m128i a0 = _mm_loadu_si128((const __m128i *)(a + 2)), a1 = _mm_loadu_si128((const __m128i *)(a + 18));
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(w0), _mm256_cvtepi8_epi16(a0)),
                            _mm256_madd_epi16(_mm256_cvtepi8_epi16(w1), _mm256_cvtepi8_epi16(a1)));
}
static inline __attribute__((always_inline)) void kq_q_0_vec_dot(const int q8w, int n, float *s, const uint8_t *w,
                                                                  const uint8_t *a) {
    const size_t wb = q8w ? 34 : 18;
    const int nb = n / 32;
    float sum = 0.0f;
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m256i p[4];
        for (int k = 0; k < 4; k++)
            p[k] = q8w ? kq_q8_0_block(w + (b + k) * wb, a + (b + k) * 34) : kq_q4_0_block(w + (b + k) * wb, a + (b + k) * 34);
        int32_t is[4];
        _mm_storeu_si128((__m128i *)is, kq_hsum4_i32(p[0], p[1], p[2], p[3]));
        for (int k = 0; k < 4; k++)
            sum += (float)is[k] * (kq_fp16(w + (b + k) * wb) * kq_fp16(a + (b + k) * 34));
    }
    for (; b < nb; b++) {
        const __m256i p = q8w ? kq_q8_0_block(w + b * wb, a + b * 34) : kq_q4_0_block(w + b * wb, a + b * 34);
        sum += (float)kq_hsum_i32(p) * (kq_fp16(w + b * wb) * kq_fp16(a + b * 34));
    }
    *s = sum;
}
static void kq_q4_0_vec_dot(int n, float *s, const void *w, const void *a) { kq_q_0_vec_dot(0, n, s, w, a); }
static void kq_q8_0_vec_dot(int n, float *s, const void *w, const void *a) { kq_q_0_vec_dot(1, n, s, w, a); }

static void kq_q5_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 22, a += 34) {
        const __m256i q8 = _mm256_loadu_si256((const __m256i *)(a + 2));
        const __m256i u = _mm256_or_si256(kq_nibbles32(w + 6), kq_high_bits32(w + 2));
        const int32_t isum = kq_dot_u8_s8(u, q8) - 16 * kq_sum_s8(q8);
        sum += (float)isum * (kq_fp16(w) * kq_fp16(a));
    }
    *s = sum;
}

static void kq_q5_1_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 24, a += 34) {
        const __m256i q8 = _mm256_loadu_si256((const __m256i *)(a + 2));
        const __m256i u = _mm256_or_si256(kq_nibbles32(w + 8), kq_high_bits32(w + 4));
        const int32_t isum = kq_dot_u8_s8(u, q8), sum8 = kq_sum_s8(q8);
        const float d8 = kq_fp16(a);
        sum += (float)isum * (kq_fp16(w) * d8) + (float)sum8 * (kq_fp16(w + 2) * d8);
    }
    *s = sum;
}

static void kq_q4_1_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 20, a += 34) {
        const __m256i q8 = _mm256_loadu_si256((const __m256i *)(a + 2));
        const int32_t isum = kq_dot_u8_s8(kq_nibbles32(w + 4), q8), sum8 = kq_sum_s8(q8);
        const float d8 = kq_fp16(a);
        sum += (float)isum * (kq_fp16(w) * d8) + (float)sum8 * (kq_fp16(w + 2) * d8);
    }
    *s = sum;
}

static void kq_iq4_nl_vec_dot(int n, float *s, const void *vw, const void *va) {
    const __m128i kv128 = _mm_loadu_si128((const __m128i *)pl_iq4nl_values);
    const __m256i table = _mm256_set_m128i(kv128, kv128);
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 18, a += 34) {
        const __m256i q8 = _mm256_loadu_si256((const __m256i *)(a + 2));
        const __m256i v = _mm256_shuffle_epi8(table, kq_nibbles32(w + 2));
        const int32_t isum = kq_dot_u8_s8(_mm256_sign_epi8(v, v), _mm256_sign_epi8(q8, v));
        sum += (float)isum * (kq_fp16(w) * kq_fp16(a));
    }
    *s = sum;
}

/* the table entries: every type above (the AVX2 and AVX-512 tables call this) */
static void kq_register(pl_kernels *k) {
    k->types[PL_TYPE_Q2_K].vec_dot = kq_q2_k_vec_dot;
    k->types[PL_TYPE_Q3_K].vec_dot = kq_q3_k_vec_dot;
    k->types[PL_TYPE_Q4_K].vec_dot = kq_q4_k_vec_dot;
    k->types[PL_TYPE_Q5_K].vec_dot = kq_q5_k_vec_dot;
    k->types[PL_TYPE_Q6_K].vec_dot = kq_q6_k_vec_dot;
    k->types[PL_TYPE_IQ4_XS].vec_dot = kq_iq4_xs_vec_dot;
    k->types[PL_TYPE_Q4_1].vec_dot = kq_q4_1_vec_dot;
    k->types[PL_TYPE_Q5_0].vec_dot = kq_q5_0_vec_dot;
    k->types[PL_TYPE_Q5_1].vec_dot = kq_q5_1_vec_dot;
    k->types[PL_TYPE_IQ4_NL].vec_dot = kq_iq4_nl_vec_dot;
}

#endif
