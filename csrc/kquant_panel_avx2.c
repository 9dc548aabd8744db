/* kquant_panel_avx2.c: AVX2 prefill of packed Q6_K, Q5_K, Q4_K and Q3_K (layouts in tensor_types.h)
 * through a decoded super-block. On AVX2 the 6-bit (5-bit, 3-bit) weights take about 3-5 vector operations per
 * 32 bytes to decode, about as many as their dot product with one activation row; the tiles of
 * kquant_packed_simd.h share each decode among 4-5 activation rows only (registers). Here each
 * super-block of 8 rows is decoded once into a 2.7 KB buffer (the weight values, the scale pairs, the
 * mins or the offset correction) and then multiplied with up to PANEL activation rows from there, 4 at
 * a time, the fp32 sums kept in memory between super-blocks; panels are the outer loop, so a panel's
 * activations stay in L2 while the weights stream past.
 * Q6_K / Q3_K, whose values carry an offset (+32 / +4), are decoded signed (value - offset) and
 * multiplied with the activations + 128 (a per-panel copy of the Q8_K rows, quants xor 0x80, so
 * vpmaddubsw takes them as its unsigned operand); 128 x the scaled weight sums, a per-row constant of
 * the super-block, is taken off once: no per-row offset x activation-sum products (+5-11% over doing
 * those, measured in one process).
 * Integer sums are exact and each row's float operations run in the reference's order
 * (kquant_packed.c), so the result equals the scalar reference bit for bit for any number of
 * activation rows. Fewer than MIN_ROWS activation rows (decode, short prompts) take the tiles, and so
 * does a call whose activation copy cannot be allocated. Compiled with -mavx2 -mfma -mf16c; empty on
 * other processors. */
#if defined(PYLLM_X86_SIMD) && (defined(__x86_64__) || defined(_M_X64))
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_x86_shared.h"
#include "tensor_types.h"

#define PANEL 64 /* activation rows per pass over a group (their fp32 sums: 2 KB) */
/* activation rows from which the decoded path is taken (measured against the tiles, one thread of a Zen 5,
 * 256 x 2048 weights: Q6_K 12 rows even, 16 +5%, 24 +15%, 256 +31%; Q5_K 16 +6%, 32 +10%, 256 +14%; Q4_K, whose
 * tiles decode cheaply, 16 -3%, 32 even, 64 +3%, 256 +6% (+14% with 5632 columns)) */
#define MIN_ROWS 16
#define MIN_ROWS_Q4_K 64
/* records fetched ahead of the one decoded (1.1B Q6_K prefill, 256 tokens, one thread of a Zen 5: none
 * 102-106 tok/s, 1 ahead 109, 2 ahead 111-112, 3 109, 4 106-109) */
#define PREFETCH_AHEAD 2
#define Q8K_BYTES ((size_t)sizeof(pl_block_q8_k)) /* d at 0, qs at 4, bsums at 260 */
#define BIASED_BYTES 260                          /* a biased activation block: fp32 d, 256 x (q8 + 128) */

enum { QP_Q6_K = 0, QP_Q3_K = 1, QP_Q4_K = 2, QP_Q5_K = 3 };
#define QP_HAS_MIN(qt) ((qt) == QP_Q4_K || (qt) == QP_Q5_K) /* scale x weight - min; else an offset in the values */

/* one super-block of 8 rows (lanes), decoded: w[4u + i] = unit u's vector i (weights 16u + 4i .. +3 of
 * each row; Q6_K / Q3_K: value - 32 / - 4, signed; Q4_K / Q5_K: the values, < 32); sc[u] = the scale
 * of unit u (Q6_K / Q3_K: its group; Q4_K / Q5_K: its 32-weight sub-block u / 2) as an int16 pair;
 * mp[j] = Q4_K / Q5_K: the mins of sub-blocks 2j, 2j + 1 as an int16 pair; corr = Q6_K / Q3_K: 128 x
 * the sum over units of the scale x the unit's signed weights; d (and dmin) of each row */
typedef struct {
    __m256i w[64], sc[16], mp[4], corr;
    __m256 d, dmin;
} qp_block;

AI __m256i qp_bc(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
AI __m256i qp_u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
/* (the vector at p >> k in 16-bit lanes) & m in each byte, m << k < 256: masked first (the load folds into
 * vpand), so no bit crosses from the other byte */
AI __m256i qp_bits(const uint8_t *p, const int k, const int m) {
    return _mm256_srli_epi16(_mm256_and_si256(_mm256_load_si256((const __m256i *)p), _mm256_set1_epi8((char)(m << k))), k);
}
/* Q5_K: the values of sub-block s in the vector at p (an offset in plane 0 of the five planes of
 * tensor_types.h, 512 bytes apart): as kquant_packed_simd.h's kqp_q5_k */
AI __m256i qp_q5_k(const uint8_t *p, const int s) {
    if (s < 5) return qp_bits(p + 512 * s, 0, 0x1F);
    if (s == 5) return _mm256_or_si256(qp_bits(p, 5, 0x07), qp_bits(p + 512, 2, 0x18));
    if (s == 6) return _mm256_or_si256(_mm256_or_si256(qp_bits(p + 512, 7, 0x01), qp_bits(p + 1024, 4, 0x0E)), qp_bits(p + 1536, 1, 0x10));
    return _mm256_or_si256(qp_bits(p + 1536, 6, 0x03), qp_bits(p + 2048, 3, 0x1C));
}

static inline __attribute__((always_inline)) void qp_decode(const int qt, const uint8_t *rec, int lo, qp_block *B) {
    const __m256i m4 = _mm256_set1_epi32(0x0F0F0F0F);
    B->d = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(rec + 2 * lo)));
    if (QP_HAS_MIN(qt)) {
        /* sub-block s (32 weights): Q4_K nibble s & 1 of the 8 words of chunk s / 2, Q5_K qp_q5_k; unit 2s + v / 4 */
        UNROLL for (int s = 0; s < 8; s++) UNROLL for (int v = 0; v < 8; v++) {
            if (qt == QP_Q5_K) {
                B->w[8 * s + v] = qp_q5_k(rec + 320 + 64 * v + 4 * lo, s);
                continue;
            }
            const __m256i x = _mm256_load_si256((const __m256i *)(rec + 320 + 512 * (s / 2) + 64 * v + 4 * lo));
            B->w[8 * s + v] = s & 1 ? _mm256_and_si256(_mm256_srli_epi16(x, 4), m4) : _mm256_and_si256(x, m4);
        }
        UNROLL for (int s = 0; s < 8; s++) {
            const __m256i u = qp_u8(rec + 64 + 16 * s + lo);
            B->sc[2 * s] = B->sc[2 * s + 1] = _mm256_or_si256(u, _mm256_slli_epi32(u, 16));
        }
        UNROLL for (int j = 0; j < 4; j++)
            B->mp[j] = _mm256_or_si256(qp_u8(rec + 192 + 32 * j + lo), _mm256_slli_epi32(qp_u8(rec + 208 + 32 * j + lo), 16));
        B->dmin = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(rec + 32 + 2 * lo)));
        return;
    }
    const __m256i m3 = _mm256_set1_epi32(0x03030303), m04 = _mm256_set1_epi32(0x04040404);
    const __m256i m3f = _mm256_set1_epi32(0x3F3F3F3F), mc0 = _mm256_set1_epi32((int32_t)0xC0C0C0C0);
    const __m256i off = _mm256_set1_epi8(qt == QP_Q6_K ? 32 : 4);
    UNROLL for (int h = 0; h < 2; h++) UNROLL for (int v = 0; v < 8; v++) {
        /* vector v of half h holds weights 128h + 32k + 4v .. +3 for k = 0..3: group 8h + 2k + v / 4 */
        if (qt == QP_Q6_K) { /* k < 3: bits 0..5 of plane k; k = 3: bits 6..7 of planes 0, 1, 2 as its bits
                              * 0..1, 2..3, 4..5, ORed in from the top and shifted down (kqp_q6_top) */
            const uint8_t *base = rec + 320 + 1536 * h + 64 * v + 4 * lo;
            const __m256i p0 = _mm256_load_si256((const __m256i *)base);
            const __m256i p1 = _mm256_load_si256((const __m256i *)(base + 512));
            const __m256i p2 = _mm256_load_si256((const __m256i *)(base + 1024));
            __m256i k3 = _mm256_or_si256(_mm256_srli_epi16(_mm256_and_si256(p0, mc0), 2), _mm256_and_si256(p1, mc0));
            k3 = _mm256_srli_epi16(_mm256_or_si256(_mm256_srli_epi16(k3, 2), _mm256_and_si256(p2, mc0)), 2);
            const __m256i q[4] = {_mm256_and_si256(p0, m3f), _mm256_and_si256(p1, m3f), _mm256_and_si256(p2, m3f), k3};
            UNROLL for (int k = 0; k < 4; k++) B->w[4 * (8 * h + 2 * k + v / 4) + v % 4] = _mm256_sub_epi8(q[k], off);
        } else { /* Q3_K: 2 bits at 2k of the qs word, bit 4h + k of the hmask word as 4 */
            const __m256i qs = _mm256_load_si256((const __m256i *)(rec + 320 + 512 * h + 64 * v + 4 * lo));
            const __m256i hm = _mm256_load_si256((const __m256i *)(rec + 320 + 1024 + 64 * v + 4 * lo));
            UNROLL for (int k = 0; k < 4; k++) {
                const int sh = 4 * h + k; /* 16-bit shifts: no bit of the other byte reaches bit 2 */
                const __m256i l2 = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * k), m3);
                const __m256i h1 = sh >= 2 ? _mm256_srli_epi16(hm, sh - 2) : _mm256_slli_epi16(hm, 2 - sh);
                B->w[4 * (8 * h + 2 * k + v / 4) + v % 4] = _mm256_sub_epi8(_mm256_or_si256(l2, _mm256_and_si256(h1, m04)), off);
            }
        }
    }
    /* the scales (int8) as int16 pairs, and 128 x sum over g of scale g x the group's 16 signed weights
     * (|.| <= 128 x 16 x 128 x 32: exact int32) */
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF), ones = _mm256_set1_epi8(1);
    __m256i corr = _mm256_setzero_si256();
    UNROLL for (int g = 0; g < 16; g++) {
        const __m256i s = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(rec + 64 + 16 * g + lo)));
        B->sc[g] = _mm256_or_si256(_mm256_and_si256(s, lo16), _mm256_slli_epi32(s, 16));
        __m256i s16 = _mm256_maddubs_epi16(ones, B->w[4 * g]);
        UNROLL for (int i = 1; i < 4; i++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(ones, B->w[4 * g + i]));
        corr = _mm256_add_epi32(corr, _mm256_madd_epi16(s16, B->sc[g]));
    }
    B->corr = _mm256_slli_epi32(corr, 7);
}

/* C (<= 4) activation rows (rs bytes apart; Q4_K / Q5_K: super-block b's Q8_K blocks, Q6_K / Q3_K: its
 * biased blocks) x the decoded block: the fp32 sums fs[c] (8 lanes each) += the reference's float
 * operations on the exact integer sums */
static inline __attribute__((always_inline)) void qp_dot(const int qt, const int C, const qp_block *B,
                                                          const uint8_t *a, size_t rs, float *fs) {
    __m256i isum[4];
    UNROLL for (int u = 0; u < 16; u++) {
        __m256i w0 = B->w[4 * u], w1 = B->w[4 * u + 1], w2 = B->w[4 * u + 2], w3 = B->w[4 * u + 3];
        __asm__("" : "+x"(w0), "+x"(w1), "+x"(w2), "+x"(w3)); /* loaded once, not as memory operands per row */
        const __m256i sc = B->sc[u];
        UNROLL for (int c = 0; c < C; c++) {
            const uint8_t *q8 = a + (size_t)c * rs + 4 + 16 * u;
            __m256i sd;
            if (QP_HAS_MIN(qt)) { /* values < 32 by |q8| <= 128: all four in one int16 pair sum (<= 8 x 31 x 128) */
                __m256i x = _mm256_maddubs_epi16(w0, qp_bc(q8));
                x = _mm256_add_epi16(x, _mm256_maddubs_epi16(w1, qp_bc(q8 + 4)));
                x = _mm256_add_epi16(x, _mm256_maddubs_epi16(w2, qp_bc(q8 + 8)));
                x = _mm256_add_epi16(x, _mm256_maddubs_epi16(w3, qp_bc(q8 + 12)));
                sd = _mm256_madd_epi16(x, sc);
            } else { /* (q8 + 128 <= 255) x |w| <= 32: two per int16 pair sum (<= 4 x 255 x 32) */
                __m256i x = _mm256_maddubs_epi16(qp_bc(q8), w0);
                x = _mm256_add_epi16(x, _mm256_maddubs_epi16(qp_bc(q8 + 4), w1));
                __m256i y = _mm256_maddubs_epi16(qp_bc(q8 + 8), w2);
                y = _mm256_add_epi16(y, _mm256_maddubs_epi16(qp_bc(q8 + 12), w3));
                sd = _mm256_add_epi32(_mm256_madd_epi16(x, sc), _mm256_madd_epi16(y, sc));
            }
            isum[c] = u ? _mm256_add_epi32(isum[c], sd) : sd;
            __asm__("" : "+x"(isum[c])); /* keep each sum a serial chain in a register */
        }
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *ab = a + (size_t)c * rs;
        const __m256 ad = _mm256_set1_ps(pl_ld_f32(ab));
        __m256 f;
        if (QP_HAS_MIN(qt)) { /* the mins (< 64) by the sub-block activation sums (|.| <= 32 x 128), int16 pairs */
            __m256i imin = _mm256_setzero_si256();
            UNROLL for (int j = 0; j < 4; j++) {
                const int32_t s0 = (int16_t)pl_ld_u16(ab + 260 + 8 * j) + (int16_t)pl_ld_u16(ab + 262 + 8 * j);
                const int32_t s1 = (int16_t)pl_ld_u16(ab + 264 + 8 * j) + (int16_t)pl_ld_u16(ab + 266 + 8 * j);
                const int32_t pair = (int32_t)((uint32_t)(uint16_t)s0 | ((uint32_t)(uint16_t)s1 << 16));
                imin = _mm256_add_epi32(imin, _mm256_madd_epi16(B->mp[j], _mm256_set1_epi32(pair)));
            }
            const __m256 t1 = _mm256_mul_ps(_mm256_mul_ps(ad, B->d), _mm256_cvtepi32_ps(isum[c]));
            const __m256 t2 = _mm256_mul_ps(_mm256_mul_ps(ad, B->dmin), _mm256_cvtepi32_ps(imin));
            f = _mm256_sub_ps(t1, t2);
        } else {
            f = _mm256_mul_ps(_mm256_mul_ps(ad, B->d), _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[c], B->corr)));
        }
        _mm256_store_ps(fs + 8 * c, _mm256_add_ps(_mm256_load_ps(fs + 8 * c), f));
    }
}

/* rows lo .. lo + 7 (< rows) of one 16-row group x np (<= PANEL) activation rows: super-block b of
 * row c at a + b * bstep + c * rs */
static inline __attribute__((always_inline)) void qp_group_half(const int qt, int nb, const uint8_t *gp, size_t rec_bytes,
                                                                 const uint8_t *a, size_t bstep, size_t rs, int np,
                                                                 float *out, size_t os, int rows, int lo) {
    qp_block B __attribute__((aligned(32)));
    float fs[PANEL * 8] __attribute__((aligned(32)));
    memset(fs, 0, sizeof(float) * 8 * (size_t)np);
    for (int b = 0; b < nb; b++) {
        qp_decode(qt, gp + (size_t)b * rec_bytes, lo, &B);
        if (b + PREFETCH_AHEAD < nb) /* the records come from memory: fetch a later one while this one is in use */
            for (size_t o = 0; o < rec_bytes; o += 64) _mm_prefetch((const char *)gp + (size_t)(b + PREFETCH_AHEAD) * rec_bytes + o, _MM_HINT_T0);
        const uint8_t *ap = a + (size_t)b * bstep;
        int c = 0;
        for (; c + 4 <= np; c += 4) qp_dot(qt, 4, &B, ap + (size_t)c * rs, rs, fs + 8 * c);
        switch (np - c) {
        case 3: qp_dot(qt, 3, &B, ap + (size_t)c * rs, rs, fs + 8 * c); break;
        case 2: qp_dot(qt, 2, &B, ap + (size_t)c * rs, rs, fs + 8 * c); break;
        case 1: qp_dot(qt, 1, &B, ap + (size_t)c * rs, rs, fs + 8 * c); break;
        default: break;
        }
    }
    const int nrow = rows - lo < 8 ? rows - lo : 8;
    for (int c = 0; c < np; c++) memcpy(out + (size_t)c * os + lo, fs + 8 * c, sizeof(float) * (size_t)nrow);
}

/* the biased copy of np activation rows' Q8_K blocks: block b of row c at buf + (b * np + c) * 260 */
static void qp_bias_acts(int nb, const uint8_t *a, size_t as, int np, uint8_t *buf) {
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    for (int b = 0; b < nb; b++)
        for (int c = 0; c < np; c++) {
            const uint8_t *src = a + (size_t)c * as + (size_t)b * Q8K_BYTES;
            uint8_t *dst = buf + ((size_t)b * np + c) * BIASED_BYTES;
            memcpy(dst, src, 4);
            for (int k = 0; k < 8; k++)
                _mm256_storeu_si256((__m256i *)(dst + 4 + 32 * k),
                                    _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + 4 + 32 * k)), x80));
        }
}

/* 0, or -1 (nothing written) when the biased activation copy cannot be allocated */
static int qp_gemm(const int qt, int n, int nr, int nc, const void *vw, const void *va, size_t as, float *out, size_t os) {
    const pl_type t = qt == QP_Q6_K ? PL_TYPE_Q6_K : qt == QP_Q3_K ? PL_TYPE_Q3_K : qt == QP_Q4_K ? PL_TYPE_Q4_K : PL_TYPE_Q5_K;
    const size_t rec_bytes = qt == QP_Q6_K ? PL_PK_Q6_K_REC : qt == QP_Q3_K ? PL_PK_Q3_K_REC
                             : qt == QP_Q4_K ? PL_PK_Q4_K_REC : PL_PK_Q5_K_REC;
    const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;
    const int nb = n / PL_QK_K, ng = (nr + PL_PACK_ROWS - 1) / PL_PACK_ROWS;
    const size_t gb = pl_packed_group_bytes(t, n);
    uint8_t *buf = NULL;
    if (!QP_HAS_MIN(qt) && !(buf = malloc((size_t)nb * (nc < PANEL ? nc : PANEL) * BIASED_BYTES))) return -1;
    /* panels outermost: a panel's activation rows stay in L2 across the groups */
    for (int p0 = 0; p0 < nc; p0 += PANEL) {
        const int np = nc - p0 < PANEL ? nc - p0 : PANEL;
        const uint8_t *ap = a + (size_t)p0 * as;
        size_t bstep = Q8K_BYTES, rs = as;
        if (buf) {
            qp_bias_acts(nb, ap, as, np, buf);
            ap = buf, bstep = (size_t)np * BIASED_BYTES, rs = BIASED_BYTES;
        }
        for (int g = 0; g < ng; g++) {
            const int rows = nr - PL_PACK_ROWS * g < PL_PACK_ROWS ? nr - PL_PACK_ROWS * g : PL_PACK_ROWS;
            float *o = out + (size_t)p0 * os + PL_PACK_ROWS * g;
            qp_group_half(qt, nb, w + (size_t)g * gb, rec_bytes, ap, bstep, rs, np, o, os, rows, 0);
            if (rows > 8) qp_group_half(qt, nb, w + (size_t)g * gb, rec_bytes, ap, bstep, rs, np, o, os, rows, 8);
        }
    }
    free(buf);
    return 0;
}

static pl_gemm_packed_fn q6_k_tiles, q3_k_tiles, q4_k_tiles, q5_k_tiles; /* kquant_packed_simd.h's, for few rows */

static void q6_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS || qp_gemm(QP_Q6_K, n, nr, nc, w, a, as, out, os)) q6_k_tiles(n, nr, nc, w, a, as, out, os);
}
static void q3_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS || qp_gemm(QP_Q3_K, n, nr, nc, w, a, as, out, os)) q3_k_tiles(n, nr, nc, w, a, as, out, os);
}
static void q4_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS_Q4_K || qp_gemm(QP_Q4_K, n, nr, nc, w, a, as, out, os)) q4_k_tiles(n, nr, nc, w, a, as, out, os);
}
static void q5_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS || qp_gemm(QP_Q5_K, n, nr, nc, w, a, as, out, os)) q5_k_tiles(n, nr, nc, w, a, as, out, os);
}

/* called by pl_kernels_init_avx2 after the tiles are in the table */
PL_BASELINE_FN void pl_kernels_add_kquant_panel_avx2(pl_kernels *k) {
    if (k->types[PL_TYPE_Q6_K].gemm_packed == q6_k_gemm_packed) return; /* already added */
    q6_k_tiles = k->types[PL_TYPE_Q6_K].gemm_packed;
    q3_k_tiles = k->types[PL_TYPE_Q3_K].gemm_packed;
    q4_k_tiles = k->types[PL_TYPE_Q4_K].gemm_packed;
    q5_k_tiles = k->types[PL_TYPE_Q5_K].gemm_packed;
    k->types[PL_TYPE_Q6_K].gemm_packed = q6_k_gemm_packed;
    k->types[PL_TYPE_Q3_K].gemm_packed = q3_k_gemm_packed;
    k->types[PL_TYPE_Q4_K].gemm_packed = q4_k_gemm_packed;
    k->types[PL_TYPE_Q5_K].gemm_packed = q5_k_gemm_packed;
}
#endif
