/* legacy_packed_simd.h: the packed Q4_1 / Q5_0 / Q5_1 / IQ4_NL gemm kernels (layouts in legacy_packed.h,
 * scalar reference in legacy_packed.c) written once over a vector of int32 / fp32 lanes (lane r = row r of
 * a 16-row group). legacy_packed_avx512.c includes it with one zmm per 16 rows (VNNI vpdpbusd),
 * legacy_packed_avx2.c with one ymm per 8 rows (vpmaddubsw + vpmaddwd); each defines, before including it:
 *   LV_LANES (16 or 8), LV_MAXC (activation rows per prefill pass, <= 8), types lv_i (LV_LANES x int32,
 *   or their bytes) and lv_f (LV_LANES x fp32), AI (static always_inline), UNROLL (full-unroll pragma);
 *   lv_load(p) (4 x LV_LANES aligned bytes), lv_set1(int32), lv_and, lv_srli16 / lv_slli16 (16-bit lane
 *   shifts), lv_or_and(a, b, m) = a | (b & m);
 *   lv_dot(w, q8, init, wbits): per lane init + the sum over v < 8 of the 4 products of the u8 bytes of
 *   w[v] (< 2^wbits, wbits 4 or 5) with the s8 bytes q8[4v .. 4v + 3], exact;
 *   lv_dot_nl(x, q8, init): the same for IQ4_NL, x[v] holding table indices (< 16) instead of weights,
 *   the products taken with the table's values + 128 (init carries the -128 x sum(q8) that undoes it);
 *   lv_fp16(p) (LV_LANES fp16 -> fp32, aligned), lv_cvt, lv_fset1, lv_fadd, lv_fmul, lv_store(out, v,
 *   rows) (lanes < rows).
 * Per block each lane sums its row's products exactly in int32 and combines the sum with the reference's
 * float operations in its order (the build has no FP contraction), so every ISA equals the scalar
 * reference bit for bit and a row's result never depends on the batch. */
#ifndef PYLLM_LEGACY_PACKED_SIMD_H
#define PYLLM_LEGACY_PACKED_SIMD_H

#include <stdint.h>
#include <string.h>

#include "legacy_packed.h"
#include "packed_gemm_driver.h"
#include "tensor_types.h"

#define LP_Q8B ((size_t)sizeof(pl_block_q8_0))
/* the group stream is prefetched this far ahead, in decode too (as the packed K-quants do): measured on a
 * 32768 x 2048 weight (past the L3), one thread of a Zen 4, medians of 4 alternating runs of 5, Gweights/s
 * without -> with: AVX-512 Q4_1 57 -> 66, Q5_0 50 -> 56, Q5_1 47 -> 55, IQ4_NL 63 -> 74; AVX2 Q4_1 52 ->
 * 64, Q5_0 43 -> 52, Q5_1 41 -> 51, IQ4_NL 42 -> 46 */
#define LP_PREFETCH 8192

/* acc + t, with t rounded on its own (the empty asm keeps the compiler from contracting) */
AI lv_f lv_accum(lv_f acc, lv_f t) {
    __asm__("" : "+v"(t));
    return lv_fadd(acc, t);
}

/* lanes of NH consecutive KV_LANES-row parts, starting at part h0, of one group x C q8x activation rows
 * (as apart): out[c * os + r] for the rows r of those parts below rows */
AI void lp_part(const int qt, const int C, const int NH, int nb, const uint8_t *gp, const uint8_t *a, size_t as,
                float *out, size_t os, int rows, const int h0, const int prefetch) {
    const size_t doff = pl_round64((size_t)nb * LP_Q8B), coff = doff + pl_round64((size_t)nb * 4);
    const lv_i m4 = lv_set1(0x0F0F0F0F), m10 = lv_set1(0x10101010);
    lv_f fa[2][8];
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int c = 0; c < C; c++) fa[h][c] = lv_fset1(0.0f);
    for (int b = 0; b < nb; b++) {
        const uint8_t *qs = gp + lp_qs_off(qt, b), *qh = gp + (lp_has_qh(qt) ? lp_qh_off(qt, b) : 0);
        const uint8_t *dp = gp + lp_d_off(qt, b);
        if (prefetch)
            for (size_t o = 0; o < lp_body_bytes(qt); o += 64) _mm_prefetch((const char *)qs + LP_PREFETCH + o, _MM_HINT_T0);
        UNROLL for (int h = 0; h < NH; h++) {
            const int lo = (h0 + h) * LV_LANES;
            lv_i w[8];
            UNROLL for (int v = 0; v < 4; v++) {
                const lv_i x = lv_load(qs + 64 * v + 4 * lo);
                w[v] = lv_and(x, m4);
                w[v + 4] = lv_and(lv_srli16(x, 4), m4);
            }
            if (lp_has_qh(qt)) { /* bit v of each qh' byte to bit 4 for the low nibbles, bit 4 + v for the high */
                const lv_i x = lv_load(qh + 4 * lo);
                UNROLL for (int v = 0; v < 4; v++) {
                    w[v] = lv_or_and(w[v], lv_slli16(x, 4 - v), m10);
                    w[v + 4] = lv_or_and(w[v + 4], v ? lv_srli16(x, v) : x, m10);
                }
            }
            const lv_f dw = lv_fp16(dp + 2 * lo);
            lv_f mw = dw;
            if (lp_has_m(qt)) mw = lv_fp16(dp + 32 + 2 * lo);
            UNROLL for (int c = 0; c < C; c++) {
                const uint8_t *arow = a + (size_t)c * as, *q8 = arow + (size_t)b * LP_Q8B + 2;
                const int32_t c4 = ((const int32_t *)(arow + coff))[b]; /* -8 x sum(q8) */
                const lv_f da = lv_fset1(((const float *)(arow + doff))[b]);
                lv_i isum;
                if (qt == LP_IQ4_NL) isum = lv_dot_nl(w, q8, 16 * c4);
                else isum = lv_dot(w, q8, qt == LP_Q5_0 ? 2 * c4 : 0, lp_has_qh(qt) ? 5 : 4);
                lv_f t = lv_fmul(lv_cvt(isum), lv_fmul(dw, da));
                if (lp_has_m(qt)) {
                    lv_f t2 = lv_fmul(lv_fset1((float)(-(c4 / 8))), lv_fmul(mw, da));
                    __asm__("" : "+v"(t2));
                    __asm__("" : "+v"(t));
                    t = lv_fadd(t, t2);
                }
                fa[h][c] = lv_accum(fa[h][c], t);
            }
        }
    }
    UNROLL for (int h = 0; h < NH; h++) {
        const int lo = (h0 + h) * LV_LANES;
        if (rows <= lo) break;
        UNROLL for (int c = 0; c < C; c++) lv_store(out + (size_t)c * os + lo, fa[h][c], rows - lo);
    }
}

/* prefill: one group x C activation rows, LV_LANES rows per pass (AVX2: a second pass of 8 rows only
 * when the group has more than 8; it reads the group again from L1 / L2) */
AI void lp_tile(const int qt, const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os,
                int rows) {
    UNROLL for (int h = 0; h < 16 / LV_LANES; h++) {
        if (rows <= h * LV_LANES) break;
        lp_part(qt, C, 1, nb, gp, a, as, out, os, rows, h, h == 0);
    }
}

#define LP_TILE_DEF(qt, C)                                                                                      \
    static void lp_tile_##qt##_##C(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, \
                                   int rows) {                                                                  \
        lp_tile(LP_##qt, C, nb, gp, a, as, out, os, rows);                                                      \
    }
/* decode: one group x one activation row, all 16 rows in one pass over the group's stream (prefetched) */
#define LP_DEFS(qt, TYPE)                                                                                       \
    LP_TILE_DEF(qt, 1) LP_TILE_DEF(qt, 2) LP_TILE_DEF(qt, 3) LP_TILE_DEF(qt, 4) LP_TILE_DEF(qt, 5)              \
    LP_TILE_DEF(qt, 6) LP_TILE_DEF(qt, 7) LP_TILE_DEF(qt, 8)                                                    \
    static void lp_gemv_##qt(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {               \
        lp_part(LP_##qt, 1, 16 / LV_LANES, nb, gp, a, 0, out, 0, rows, 0, 1);                                   \
    }                                                                                                           \
    static const pl_pk_tile_fn lp_tiles_##qt[8] = {lp_tile_##qt##_1, lp_tile_##qt##_2, lp_tile_##qt##_3,         \
                                                   lp_tile_##qt##_4, lp_tile_##qt##_5, lp_tile_##qt##_6,        \
                                                   lp_tile_##qt##_7, lp_tile_##qt##_8};                         \
    static void lp_gemm_packed_##qt(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out,   \
                                    size_t os) {                                                                \
        pl_pk_gemm_drive(TYPE, PL_QK, lp_gemv_##qt, lp_tiles_##qt, LV_MAXC, n, nr, nc, w, a, as, out, os);      \
    }
LP_DEFS(Q4_1, PL_TYPE_Q4_1)
LP_DEFS(Q5_0, PL_TYPE_Q5_0)
LP_DEFS(Q5_1, PL_TYPE_Q5_1)
LP_DEFS(IQ4_NL, PL_TYPE_IQ4_NL)

static void lp_register(pl_kernels *k) {
    k->types[PL_TYPE_Q4_1].gemm_packed = lp_gemm_packed_Q4_1;
    k->types[PL_TYPE_Q5_0].gemm_packed = lp_gemm_packed_Q5_0;
    k->types[PL_TYPE_Q5_1].gemm_packed = lp_gemm_packed_Q5_1;
    k->types[PL_TYPE_IQ4_NL].gemm_packed = lp_gemm_packed_IQ4_NL;
}

#endif
