/* kquant_panel_avx2.c: AVX2 prefill of packed Q6_K, Q5_K, Q4_K and Q3_K (layouts in tensor_types.h)
 * through a decoded super-block. On AVX2 the 6-bit (5-bit, 3-bit) weights take 4-5 vector operations per
 * 32 bytes to decode, as many as their dot product with one activation row; the tiles of
 * kquant_packed_simd.h share each decode among 4-5 activation rows only (registers). Here each
 * super-block of 8 rows is decoded once into a 2.7 KB buffer (the weight values, the scale pairs and
 * the offset / min pairs) and then multiplied with up to PANEL activation rows from there, 4 at a time,
 * the fp32 sums kept in memory between super-blocks; panels are the outer loop, so a panel's
 * activations stay in L2 while the weights stream past. Integer sums are exact and each row's float operations run in
 * the reference's order (kquant_packed.c), so the result equals the scalar reference bit for bit for
 * any number of activation rows. Fewer than MIN_ROWS activation rows (decode, short prompts) take
 * the tiles. Compiled with -mavx2 -mfma -mf16c; empty on other processors. */
#if defined(PYLLM_X86_SIMD) && (defined(__x86_64__) || defined(_M_X64))
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels_x86_shared.h"
#include "tensor_types.h"

#define PANEL 64   /* activation rows per pass over a group (their fp32 sums: 2 KB) */
/* activation rows from which the decoded path is taken (measured against the tiles, one thread of a Zen 5,
 * 256 x 2048 weights: Q6_K 12 rows even, 16 +10%, 256 +32%; Q5_K 16 +23%, 256 +32%; Q4_K, whose
 * tiles decode cheaply, 16 -3%, 32 even, 64 +3%, 256 +6% (+14% with 5632 columns)) */
#define MIN_ROWS 16
#define MIN_ROWS_Q4_K 64
/* records fetched ahead of the one decoded (1.1B Q6_K prefill, 256 tokens, one thread of a Zen 5: none
 * 102-106 tok/s, 1 ahead 109, 2 ahead 111-112, 3 109, 4 106-109) */
#define PREFETCH_AHEAD 2
#define Q8K_BYTES ((size_t)sizeof(pl_block_q8_k)) /* d at 0, qs at 4, bsums at 260 */

enum { QP_Q6_K = 0, QP_Q3_K = 1, QP_Q4_K = 2, QP_Q5_K = 3 };
#define QP_HAS_MIN(qt) ((qt) == QP_Q4_K || (qt) == QP_Q5_K) /* scale x weight - min; else an offset in the values */

/* one super-block of 8 rows (lanes), decoded: w[4u + i] = unit u's vector i (weights 16u + 4i .. +3 of
 * each row; values as stored: Q6_K + 32, Q3_K + 4, Q4_K / Q5_K < 32); sc[u] = the scale of unit u (Q6_K /
 * Q3_K: its group; Q4_K / Q5_K: its 32-weight sub-block u / 2) as an int16 pair; sp[j] = Q6_K / Q3_K:
 * the scales of groups 2j, 2j + 1 as an int16 pair (for the offset x the activation sums), Q4_K / Q5_K
 * (j < 4): the mins of sub-blocks 2j, 2j + 1; d (and dmin) of each row */
typedef struct {
    __m256i w[64], sc[16], sp[8];
    __m256 d, dmin;
} qp_block;

AI __m256i qp_bc(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
AI __m256i qp_s8(const uint8_t *p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)); }

static inline __attribute__((always_inline)) void qp_decode(const int qt, const uint8_t *rec, int lo, qp_block *B) {
    const __m256i m4 = _mm256_set1_epi32(0x0F0F0F0F), m30 = _mm256_set1_epi32(0x30303030);
    const __m256i m3 = _mm256_set1_epi32(0x03030303), m04 = _mm256_set1_epi32(0x04040404);
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
    if (QP_HAS_MIN(qt)) {
        /* sub-block s (32 weights): nibble s & 1 of the 8 words of chunk s / 2; Q5_K: plus bit s of its qh
         * word as 16 (16-bit shifts: no bit crosses into bit 4); unit 2s + v / 4 */
        const __m256i m10 = _mm256_set1_epi32(0x10101010);
        UNROLL for (int s = 0; s < 8; s++) UNROLL for (int v = 0; v < 8; v++) {
            const __m256i x = _mm256_load_si256((const __m256i *)(rec + 320 + 512 * (s / 2) + 64 * v + 4 * lo));
            __m256i q = s & 1 ? _mm256_and_si256(_mm256_srli_epi16(x, 4), m4) : _mm256_and_si256(x, m4);
            if (qt == QP_Q5_K) {
                const __m256i h = _mm256_load_si256((const __m256i *)(rec + 2368 + 64 * v + 4 * lo));
                q = _mm256_or_si256(q, _mm256_and_si256(s <= 4 ? _mm256_slli_epi16(h, 4 - s) : _mm256_srli_epi16(h, s - 4), m10));
            }
            B->w[8 * s + v] = q;
        }
        UNROLL for (int s = 0; s < 8; s++) {
            const __m256i u = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rec + 64 + 16 * s + lo)));
            B->sc[2 * s] = B->sc[2 * s + 1] = _mm256_or_si256(u, _mm256_slli_epi32(u, 16));
        }
        UNROLL for (int j = 0; j < 4; j++)
            B->sp[j] = _mm256_or_si256(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rec + 192 + 32 * j + lo))),
                                       _mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rec + 208 + 32 * j + lo))), 16));
        B->d = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(rec + 2 * lo)));
        B->dmin = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(rec + 32 + 2 * lo)));
        return;
    }
    UNROLL for (int h = 0; h < 2; h++) UNROLL for (int v = 0; v < 8; v++) {
        /* vector v of half h holds weights 128h + 32k + 4v .. +3 for k = 0..3: group 8h + 2k + v / 4 */
        if (qt == QP_Q6_K) {
            const uint8_t *base = rec + 320 + 1536 * h + 64 * v + 4 * lo;
            const __m256i ql0 = _mm256_load_si256((const __m256i *)base);
            const __m256i ql1 = _mm256_load_si256((const __m256i *)(base + 512));
            const __m256i hb = _mm256_load_si256((const __m256i *)(base + 1024));
            UNROLL for (int k = 0; k < 4; k++) {
                const __m256i ql = k & 1 ? ql1 : ql0;
                const __m256i l4 = k < 2 ? _mm256_and_si256(ql, m4) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4);
                const __m256i h2 = k == 0 ? _mm256_slli_epi16(hb, 4) : k == 1 ? _mm256_slli_epi16(hb, 2)
                                   : k == 2 ? hb : _mm256_srli_epi16(hb, 2);
                B->w[4 * (8 * h + 2 * k + v / 4) + v % 4] = _mm256_or_si256(l4, _mm256_and_si256(h2, m30));
            }
        } else { /* Q3_K: 2 bits at 2k of the qs word, bit 4h + k of the hmask word as 4 */
            const __m256i qs = _mm256_load_si256((const __m256i *)(rec + 320 + 512 * h + 64 * v + 4 * lo));
            const __m256i hm = _mm256_load_si256((const __m256i *)(rec + 320 + 1024 + 64 * v + 4 * lo));
            UNROLL for (int k = 0; k < 4; k++) {
                const int sh = 4 * h + k; /* 16-bit shifts: no bit of the other byte reaches bit 2 */
                const __m256i l2 = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * k), m3);
                const __m256i h1 = sh >= 2 ? _mm256_srli_epi16(hm, sh - 2) : _mm256_slli_epi16(hm, 2 - sh);
                B->w[4 * (8 * h + 2 * k + v / 4) + v % 4] = _mm256_or_si256(l2, _mm256_and_si256(h1, m04));
            }
        }
    }
    UNROLL for (int g = 0; g < 16; g++) {
        const __m256i s = qp_s8(rec + 64 + 16 * g + lo);
        B->sc[g] = _mm256_or_si256(_mm256_and_si256(s, lo16), _mm256_slli_epi32(s, 16));
    }
    UNROLL for (int j = 0; j < 8; j++)
        B->sp[j] = _mm256_or_si256(_mm256_and_si256(qp_s8(rec + 64 + 32 * j + lo), lo16),
                                   _mm256_slli_epi32(qp_s8(rec + 80 + 32 * j + lo), 16));
    B->d = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(rec + 2 * lo)));
}

/* C (<= 4) activation rows (as apart, super-block b's Q8_K blocks at a) x the decoded block: the fp32
 * sums fs[c] (8 lanes each) += (activation d x weight d) x the exact integer dot */
static inline __attribute__((always_inline)) void qp_dot(const int qt, const int C, const qp_block *B,
                                                          const uint8_t *a, size_t as, float *fs) {
    __m256i isum[4];
    UNROLL for (int g = 0; g < 16; g++) {
        __m256i w0 = B->w[4 * g], w1 = B->w[4 * g + 1], w2 = B->w[4 * g + 2], w3 = B->w[4 * g + 3];
        __asm__("" : "+x"(w0), "+x"(w1), "+x"(w2), "+x"(w3)); /* loaded once, not as memory operands per row */
        const __m256i sc = B->sc[g];
        UNROLL for (int c = 0; c < C; c++) {
            const uint8_t *q8 = a + (size_t)c * as + 4 + 16 * g;
            /* values < 64 by |q8| <= 128: two vpmaddubsw per int16 pair sum (<= 4 x 63 x 128); values < 32
             * (Q4_K / Q5_K): all four (<= 8 x 31 x 128) */
            __m256i x = _mm256_maddubs_epi16(w0, qp_bc(q8));
            x = _mm256_add_epi16(x, _mm256_maddubs_epi16(w1, qp_bc(q8 + 4)));
            __m256i y = _mm256_maddubs_epi16(w2, qp_bc(q8 + 8));
            y = _mm256_add_epi16(y, _mm256_maddubs_epi16(w3, qp_bc(q8 + 12)));
            const __m256i sd = QP_HAS_MIN(qt) ? _mm256_madd_epi16(_mm256_add_epi16(x, y), sc)
                                              : _mm256_add_epi32(_mm256_madd_epi16(x, sc), _mm256_madd_epi16(y, sc));
            isum[c] = g ? _mm256_add_epi32(isum[c], sd) : sd;
            __asm__("" : "+x"(isum[c])); /* keep each sum a serial chain in a register */
        }
    }
    if (QP_HAS_MIN(qt)) {
        UNROLL for (int c = 0; c < C; c++) {
            const uint8_t *ab = a + (size_t)c * as;
            /* the mins (< 64) by the sub-block activation sums (|.| <= 32 x 128), int16 pairs: exact */
            __m256i imin = _mm256_setzero_si256();
            UNROLL for (int j = 0; j < 4; j++) {
                const int32_t s0 = (int16_t)pl_ld_u16(ab + 260 + 8 * j) + (int16_t)pl_ld_u16(ab + 262 + 8 * j);
                const int32_t s1 = (int16_t)pl_ld_u16(ab + 264 + 8 * j) + (int16_t)pl_ld_u16(ab + 266 + 8 * j);
                imin = _mm256_add_epi32(imin, _mm256_madd_epi16(B->sp[j], _mm256_set1_epi32((int32_t)((uint32_t)(uint16_t)s0 | ((uint32_t)(uint16_t)s1 << 16)))));
            }
            const __m256 ad = _mm256_set1_ps(pl_ld_f32(ab));
            const __m256 t1 = _mm256_mul_ps(_mm256_mul_ps(ad, B->d), _mm256_cvtepi32_ps(isum[c]));
            const __m256 t2 = _mm256_mul_ps(_mm256_mul_ps(ad, B->dmin), _mm256_cvtepi32_ps(imin));
            _mm256_store_ps(fs + 8 * c, _mm256_add_ps(_mm256_load_ps(fs + 8 * c), _mm256_sub_ps(t1, t2)));
        }
        return;
    }
    UNROLL for (int c = 0; c < C; c++) {
        const uint8_t *ab = a + (size_t)c * as;
        /* less the offset (32 / 4) x the scales by the group activation sums (int16 pairs: exact) */
        __m256i t = _mm256_madd_epi16(B->sp[0], qp_bc(ab + 260));
        UNROLL for (int j = 1; j < 8; j++) t = _mm256_add_epi32(t, _mm256_madd_epi16(B->sp[j], qp_bc(ab + 260 + 4 * j)));
        const __m256i is = _mm256_sub_epi32(isum[c], _mm256_slli_epi32(t, qt == QP_Q6_K ? 5 : 2));
        float ad;
        memcpy(&ad, ab, 4);
        const __m256 f = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(ad), B->d), _mm256_cvtepi32_ps(is));
        _mm256_store_ps(fs + 8 * c, _mm256_add_ps(_mm256_load_ps(fs + 8 * c), f));
    }
}

/* rows lo .. lo + 7 (< rows) of one 16-row group x np (<= PANEL) activation rows */
static inline __attribute__((always_inline)) void qp_group_half(const int qt, int nb, const uint8_t *gp, size_t rec_bytes,
                                                                 const uint8_t *a, size_t as, int np, float *out,
                                                                 size_t os, int rows, int lo) {
    qp_block B __attribute__((aligned(32)));
    float fs[PANEL * 8] __attribute__((aligned(32)));
    memset(fs, 0, sizeof(float) * 8 * (size_t)np);
    for (int b = 0; b < nb; b++) {
        qp_decode(qt, gp + (size_t)b * rec_bytes, lo, &B);
        if (b + PREFETCH_AHEAD < nb) /* the records come from memory: fetch a later one while this one is in use */
            for (size_t o = 0; o < rec_bytes; o += 64) _mm_prefetch((const char *)gp + (size_t)(b + PREFETCH_AHEAD) * rec_bytes + o, _MM_HINT_T0);
        const uint8_t *ap = a + (size_t)b * Q8K_BYTES;
        int c = 0;
        for (; c + 4 <= np; c += 4) qp_dot(qt, 4, &B, ap + (size_t)c * as, as, fs + 8 * c);
        switch (np - c) {
        case 3: qp_dot(qt, 3, &B, ap + (size_t)c * as, as, fs + 8 * c); break;
        case 2: qp_dot(qt, 2, &B, ap + (size_t)c * as, as, fs + 8 * c); break;
        case 1: qp_dot(qt, 1, &B, ap + (size_t)c * as, as, fs + 8 * c); break;
        default: break;
        }
    }
    const int nrow = rows - lo < 8 ? rows - lo : 8;
    for (int c = 0; c < np; c++) memcpy(out + (size_t)c * os + lo, fs + 8 * c, sizeof(float) * (size_t)nrow);
}

static pl_gemm_packed_fn q6_k_tiles, q3_k_tiles, q4_k_tiles, q5_k_tiles; /* the tile gemms (kquant_packed_simd.h) for few rows */

static void qp_gemm(const int qt, int n, int nr, int nc, const void *vw, const void *va, size_t as, float *out, size_t os) {
    const pl_type t = qt == QP_Q6_K ? PL_TYPE_Q6_K : qt == QP_Q3_K ? PL_TYPE_Q3_K : qt == QP_Q4_K ? PL_TYPE_Q4_K : PL_TYPE_Q5_K;
    const size_t rec_bytes = qt == QP_Q6_K ? PL_PK_Q6_K_REC : qt == QP_Q3_K ? PL_PK_Q3_K_REC
                             : qt == QP_Q4_K ? PL_PK_Q4_K_REC : PL_PK_Q5_K_REC;
    const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;
    const int nb = n / PL_QK_K, ng = (nr + PL_PACK_ROWS - 1) / PL_PACK_ROWS;
    const size_t gb = pl_packed_group_bytes(t, n);
    /* panels outermost: a panel's activation rows (PANEL x nb x 292 bytes) stay in L2 across the groups */
    for (int p0 = 0; p0 < nc; p0 += PANEL) {
        const int np = nc - p0 < PANEL ? nc - p0 : PANEL;
        for (int g = 0; g < ng; g++) {
            const int rows = nr - PL_PACK_ROWS * g < PL_PACK_ROWS ? nr - PL_PACK_ROWS * g : PL_PACK_ROWS;
            float *o = out + (size_t)p0 * os + PL_PACK_ROWS * g;
            const uint8_t *ap = a + (size_t)p0 * as;
            qp_group_half(qt, nb, w + (size_t)g * gb, rec_bytes, ap, as, np, o, os, rows, 0);
            if (rows > 8) qp_group_half(qt, nb, w + (size_t)g * gb, rec_bytes, ap, as, np, o, os, rows, 8);
        }
    }
}

static void q6_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS) q6_k_tiles(n, nr, nc, w, a, as, out, os);
    else qp_gemm(QP_Q6_K, n, nr, nc, w, a, as, out, os);
}
static void q3_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS) q3_k_tiles(n, nr, nc, w, a, as, out, os);
    else qp_gemm(QP_Q3_K, n, nr, nc, w, a, as, out, os);
}
static void q4_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS_Q4_K) q4_k_tiles(n, nr, nc, w, a, as, out, os);
    else qp_gemm(QP_Q4_K, n, nr, nc, w, a, as, out, os);
}
static void q5_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    if (nc < MIN_ROWS) q5_k_tiles(n, nr, nc, w, a, as, out, os);
    else qp_gemm(QP_Q5_K, n, nr, nc, w, a, as, out, os);
}

/* called by pl_kernels_init_avx2 after the tiles are in the table */
PL_BASELINE_FN void pl_kernels_add_kquant_panel_avx2(pl_kernels *k) {
    if (k->types[PL_TYPE_Q6_K].gemm_packed == q6_k_gemm_packed) return; /* already added */
    q6_k_tiles = k->types[PL_TYPE_Q6_K].gemm_packed;
    q3_k_tiles = k->types[PL_TYPE_Q3_K].gemm_packed;
    q4_k_tiles = k->types[PL_TYPE_Q4_K].gemm_packed;
    q5_k_tiles = k->types[PL_TYPE_Q5_K].gemm_packed;
    k->types[PL_TYPE_Q4_K].gemm_packed = q4_k_gemm_packed;
    k->types[PL_TYPE_Q5_K].gemm_packed = q5_k_gemm_packed;
    k->types[PL_TYPE_Q6_K].gemm_packed = q6_k_gemm_packed;
    k->types[PL_TYPE_Q3_K].gemm_packed = q3_k_gemm_packed;
}
#endif
