/* kquant_packed_simd.h: the packed Q2_K..Q6_K / IQ4_XS gemm kernels (layouts in tensor_types.h; the scalar
 * reference in kquant_packed.c) written once over a vector of int32 / fp32 lanes (lane r = row r of a
 * 16-row group). kernels_avx512.c includes it with one zmm per 16 rows (VNNI vpdpbusd), kernels_avx2.c
 * with one ymm per 8 rows (vpmaddubsw + vpmaddwd); each defines, before including it:
 *   KV_LANES (16 or 8: rows per vector; with 8 each group runs in two passes of 8 rows), types kv_i
 *   (KV_LANES x int32, or their bytes as u8) and kv_f (KV_LANES x fp32), AI (static always_inline);
 *   kv_load(p) (4 x KV_LANES aligned bytes), kv_set1(int32), kv_zero(), kv_add, kv_and, kv_andnot(m, x) = ~m & x,
 *   kv_mullo,
 *   kv_srli16(v, k) / kv_slli16(v, k) / kv_srai32(v, k) (lane shifts), kv_or_and(a, b, m) = a | (b & m),
 *   KV_DOT_WIDE (defined where kv_sdot is exact for weight bytes up to 255: Q4_K's high nibbles are
 *   then dotted in place, as 16 x the nibble, and the sum divided by 16 once);
 *   kv_scales(v): per-lane int32 scales in the form kv_sdot takes them;
 *   kv_sdot(NW, WBITS, w, q8, sc, init, shift): per lane, sc x ((init + sum over v < NW of the 4
 *   products of the u8 bytes of lane r of w[v] with the s8 bytes q8[4v .. 4v+3]) >> shift), exact
 *   (weights < 2^WBITS; shift only with KV_DOT_WIDE);
 *   kv_sdot_s8(NW, w, q8, sc, sum8): the same for signed int8 weights (any but -128), sum8 = the sum of
 *   the 4 x NW activations; kv_bcast128(p) (16 bytes in every 128-bit lane), kv_shuffle8(t, i)
 *   (vpshufb: byte i & 15 of t's lane);
 *   kv_u8(p) / kv_s8(p): KV_LANES bytes zero / sign extended to the lanes; kv_fp16(p): KV_LANES fp16;
 *   kv_cvt(i), kv_fset1(f), kv_fzero(), kv_fadd, kv_fsub, kv_fmul; kv_store(out, v, rows) (lanes
 *   < rows); UNROLL (a full-unroll pragma).
 * Optional: KV_OFFS_BLOCK 1 (AVX2) with kv_sdot6_split(w, q8, sc) (sc x the dot of 4 vectors of Q6_K
 *   values as stored, < 64), kv_pairs16_s8(p0, p1) (per lane the int16 pair of s8 bytes p0[r], p1[r]),
 *   kv_madd16 (vpmaddwd), kv_sub, kv_slli32, kv_pair_scale(sp, h) (group 2j + h's scale from the
 *   pairs of groups 2j, 2j + 1): Q6_K / Q3_K then dot their values as stored (+ 32 / + 4) and take the
 *   offset x the scales x the group activation sums per super-block instead of an int32 start value per
 *   group. KQP_HALVES(qt, C) (AVX2): a group's two halves of 8 rows taken super-block by super-block.
 *   KV_MASK_FIRST (AVX2): Q5_K's bit pieces masked before their shift (see kqp_bits); KQP_Q5_RUN (AVX2: 4).
 * Per super-block each lane sums its row's integer dot products exactly (int32, as the reference) and
 * combines them with the reference's float operations in its order (the build has no FP contraction),
 * so every ISA equals the scalar reference bit for bit and a row's result never depends on the batch. */
#ifndef PYLLM_KQUANT_PACKED_SIMD_H
#define PYLLM_KQUANT_PACKED_SIMD_H

#include <stdint.h>
#include <string.h>

#include "packed_gemm_driver.h"
#include "tensor_types.h"

#define KQ_Q8K ((size_t)sizeof(pl_block_q8_k)) /* d at 0, qs at 4, bsums at 260 */
/* the group stream is prefetched this far ahead, in decode too: a record takes longer to compute than
 * the hardware prefetcher runs ahead (measured, 1.1B Q4_K_M / Q6_K decode on one thread of a Zen 4:
 * 17 / 12-18 tok/s without, 28 / 20 with 4 or 8 KB, 25 / 18.5 with 16 KB) */
#define KQP_PREFETCH 8192

/* activation rows per prefill pass: KQP_MAXC at most (the tile functions made), KQP_MAXC_6 for the
 * types whose weight vectors take the most work to decode (Q6_K, Q3_K: more rows share each decode),
 * where the ISA has the registers for it */
#define KQP_MAXC 8
#ifndef KQP_MAXC_6
#define KQP_MAXC_6 4
#endif
#ifndef KQP_MAXC_4
#define KQP_MAXC_4 4 /* the other types */
#endif
#ifndef KQP_Q5_RUN
#define KQP_Q5_RUN 8 /* Q5_K's sub-blocks 5..7: weight vectors decoded, then dotted, at a time (<= 8) */
#endif
#ifndef KQP_MAXC_IQ4
#define KQP_MAXC_IQ4 KQP_MAXC_4 /* IQ4_XS */
#endif

/* x86: v's value made opaque to the compiler, at no cost, after each group's sum is added (qt: where
 * it is done): GCC otherwise reassociates the per-group sums into a tree and moves their multiplies
 * down, so the C pending sums of several groups no longer fit the registers and go through the stack
 * (measured in one process on a Zen 5: AVX-512 prefill +14% Q6_K .. +30% Q2_K; AVX2 +0..12%, except
 * Q3_K's prefill, 28% slower with it) */
#if defined(__x86_64__)
#define KQP_OPAQUE(qt, v)                                      \
    do {                                                       \
        if (KV_LANES == 16 || (qt) != KQP_Q3_K) __asm__("" : "+v"(v)); \
    } while (0)
#else
#define KQP_OPAQUE(qt, v) ((void)0)
#endif

#ifndef KV_OFFS_BLOCK
#define KV_OFFS_BLOCK 0
#endif

enum { KQP_Q4_K = 0, KQP_Q6_K = 1, KQP_Q5_K = 2, KQP_IQ4_XS = 3, KQP_Q3_K = 4, KQP_Q2_K = 5 };

static inline int32_t kqp_bsum(const uint8_t *ab, int g) { return (int16_t)pl_ld_u16(ab + 260 + 2 * g); }

/* Q6_K: the values k = 3 of a vector quad, bits 6..7 of planes a, b, c (mc0 = 0xC0 bytes) to bits 0..1,
 * 2..3, 4..5: each plane's top bits ORed in above the others, shifted down 2 at a time (16-bit shifts:
 * what crosses from the other byte is its bits 0..1, zero by then). 8 operations on AVX2, 6 with
 * vpternlogd, each load folded into an AND, one constant besides 0x3F's */
AI kv_i kqp_q6_top(kv_i a, kv_i b, kv_i c, kv_i mc0) {
    const kv_i t = kv_or_and(kv_srli16(kv_and(a, mc0), 2), b, mc0);
    return kv_srli16(kv_or_and(kv_srli16(t, 2), c, mc0), 2);
}

/* the bytes at p (one vector) >> k (in 16-bit lanes), & m: the bits of the piece (m << k < 256) stay in
 * their byte. KV_MASK_FIRST (AVX2, whose shifts take no memory operand): masked first, so that the load
 * folds into the AND; else shifted first (AVX-512: the load folds into the shift, and kqp_or_bits' OR
 * and mask are one vpternlogd) */
AI kv_i kqp_bytes(const unsigned m) { return kv_set1((int32_t)(0x01010101u * m)); } /* byte m in every byte */
AI kv_i kqp_bits(const uint8_t *p, const int k, const unsigned m) {
#ifdef KV_MASK_FIRST
    return kv_srli16(kv_and(kv_load(p), kqp_bytes(m << k)), k);
#else
    return kv_and(kv_srli16(kv_load(p), k), kqp_bytes(m));
#endif
}
/* a | kqp_bits(p, k, m), for bits not set in a */
AI kv_i kqp_or_bits(kv_i a, const uint8_t *p, const int k, const unsigned m) {
#ifdef KV_MASK_FIRST
    return kv_add(a, kqp_bits(p, k, m)); /* no bit in common: the sum is the OR */
#else
    return kv_or_and(a, kv_srli16(kv_load(p), k), kqp_bytes(m));
#endif
}

/* Q5_K: the values of sub-block s in the vector at p (an offset in plane 0; the planes 512 bytes apart,
 * tensor_types.h). s < 5: plane s's bits 0-4 (one AND); s = 5, 6, 7: bits 5s - 25 .. 5s - 21 of the
 * planes' bits 5-7 taken in plane order (AVX2: 5, 8, 5 operations, AVX-512: 4, 6, 4) */
AI kv_i kqp_q5_k(const uint8_t *p, const int s) {
    if (s < 5) return kv_and(kv_load(p + 512 * s), kqp_bytes(0x1F));
    if (s == 5) return kqp_or_bits(kqp_bits(p, 5, 0x07), p + 512, 2, 0x18); /* bits 0-2: plane 0, 3-4: plane 1 */
    if (s == 6) /* bit 0: plane 1, 1-3: plane 2, 4: plane 3 */
        return kqp_or_bits(kqp_or_bits(kqp_bits(p + 512, 7, 0x01), p + 1024, 4, 0x0E), p + 1536, 1, 0x10);
    return kqp_or_bits(kqp_bits(p + 1536, 6, 0x03), p + 2048, 3, 0x1C); /* bits 0-1: plane 3, 2-4: plane 4 */
}

/* the bytes of one 16-row group's record of a super-block */
AI size_t kqp_rec_bytes(const int qt) {
    return qt == KQP_Q4_K ? PL_PK_Q4_K_REC : qt == KQP_Q5_K ? PL_PK_Q5_K_REC : qt == KQP_IQ4_XS ? PL_PK_IQ4_XS_REC
           : qt == KQP_Q3_K ? PL_PK_Q3_K_REC : qt == KQP_Q2_K ? PL_PK_Q2_K_REC : PL_PK_Q6_K_REC;
}

/* lanes lo .. lo + KV_LANES - 1 of one 16-row group x C activation rows (as apart, Q8_K):
 * out[c * os + r] for lo <= r < rows; with acc, the sums are added to acc[c] instead */
AI void kqp_tile_part(const int qt, const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out,
                      size_t os, int rows, const int lo, kv_f *acc) {
    const size_t rec_bytes = kqp_rec_bytes(qt);
    const kv_i m3 = kv_set1(0x03030303), m04 = kv_set1(0x04040404);
    const kv_i m4 = kv_set1(0x0F0F0F0F);
    const kv_i m3f = kv_set1(0x3F3F3F3F), mc0 = kv_set1((int32_t)0xC0C0C0C0);
    kv_f fa[KQP_MAXC];
    UNROLL for (int c = 0; c < C; c++) fa[c] = acc ? acc[c] : kv_fzero();
    for (int b = 0; b < nb; b++) {
        const uint8_t *rec = gp + (size_t)b * rec_bytes;
        /* AVX2's rows 8..15 read records the half of rows 0..7 already fetched: no prefetch there
         * (53 of ~760 instructions per Q6_K pass; kernel alone, one thread, A/B: +2-3% Q4_K / Q6_K gemv).
         * One prefetch per 64-byte line, in a loop: every other line, or the loop unrolled, were faster
         * from cache but slower from DRAM (1.1B Q6_K decode, one thread, AVX2, A/B: 33.6 tok/s against
         * 29.7 and 26.0) */
        if (lo == 0)
            for (size_t o = 0; o < rec_bytes; o += 64) _mm_prefetch((const char *)rec + KQP_PREFETCH + o, _MM_HINT_T0);
        kv_i isum[KQP_MAXC];
        if (qt == KQP_IQ4_XS) {
            const kv_i table = kv_bcast128(pl_iq4nl_values);
            UNROLL for (int s = 0; s < 8; s++) { /* sub-block s: 4 words of nibbles, low then high 16 weights */
                kv_i w[8];
                UNROLL for (int v = 0; v < 4; v++) {
                    const kv_i x = kv_load(rec + 192 + 256 * s + 64 * v + 4 * lo);
                    w[v] = kv_shuffle8(table, kv_and(x, m4));
                    w[v + 4] = kv_shuffle8(table, kv_and(kv_srli16(x, 4), m4));
                }
                const kv_i sc = kv_scales(kv_s8(rec + 64 + 16 * s + lo));
                UNROLL for (int c = 0; c < C; c++) {
                    const uint8_t *ab = a + (size_t)c * as + (size_t)b * KQ_Q8K;
                    /* w[v] holds weights 32s + 4v .. (v < 4) and 32s + 16 + 4(v - 4) ..: q8 + 4v for both */
                    const kv_i sd = kv_sdot_s8(8, w, ab + 4 + 32 * s, sc, kqp_bsum(ab, 2 * s) + kqp_bsum(ab, 2 * s + 1));
                    isum[c] = s ? kv_add(isum[c], sd) : sd;
                    KQP_OPAQUE(qt, isum[c]);
                }
            }
            const kv_f d = kv_fp16(rec + 2 * lo);
            UNROLL for (int c = 0; c < C; c++) {
                const kv_f ad = kv_fset1(pl_ld_f32(a + (size_t)c * as + (size_t)b * KQ_Q8K));
                fa[c] = kv_fadd(fa[c], kv_fmul(kv_fmul(ad, d), kv_cvt(isum[c])));
            }
        } else if (qt == KQP_Q4_K || qt == KQP_Q5_K) {
            kv_i imin[KQP_MAXC];
            UNROLL for (int s = 0; s < 8; s++) { /* sub-block s: 32 weights (Q4_K: nibble s & 1 of the words of chunk s / 2) */
                const uint8_t *q = rec + 320 + 512 * (s / 2);
#ifdef KV_DOT_WIDE
                const int wide = (s & 1) && qt == KQP_Q4_K;
#else
                const int wide = 0;
#endif
                /* vectors decoded, then dotted, at a time (KQP_Q5_RUN: Q5_K's multi-operation sub-blocks) */
                const int run = qt == KQP_Q5_K && s >= 5 ? KQP_Q5_RUN : 8;
                kv_i sc, mn;
                UNROLL for (int v0 = 0; v0 < 8; v0 += run) {
                    kv_i w[8];
                    UNROLL for (int v = 0; v < run; v++) {
                        if (qt == KQP_Q5_K) {
                            w[v] = kqp_q5_k(rec + 320 + 64 * (v0 + v) + 4 * lo, s);
                            continue;
                        }
                        const kv_i x = kv_load(q + 64 * v + 4 * lo);
                        w[v] = wide ? kv_andnot(m4, x) : (s & 1) ? kv_and(kv_srli16(x, 4), m4) : kv_and(x, m4);
                    }
                    if (v0 == 0) { /* read after the first decode: the order Q4_K's kernels were measured with */
                        sc = kv_scales(kv_u8(rec + 64 + 16 * s + lo));
                        mn = kv_u8(rec + 192 + 16 * s + lo);
                    }
                    UNROLL for (int c = 0; c < C; c++) {
                        const uint8_t *ab = a + (size_t)c * as + (size_t)b * KQ_Q8K, *q8 = ab + 4 + 32 * s + 4 * v0;
                        /* wide: every product was 16 x the nibble's, so >> 4 is exact */
                        const kv_i sd = kv_sdot(run, wide ? 8 : qt == KQP_Q5_K ? 5 : 4, w, q8, sc, 0, wide ? 4 : 0);
#ifndef KV_MINS16
                        const int mins = v0 + run == 8; /* with the sub-block's last vectors */
                        const kv_i ms = mins ? kv_mullo(mn, kv_set1(kqp_bsum(ab, 2 * s) + kqp_bsum(ab, 2 * s + 1))) : kv_zero();
#endif
                        isum[c] = s || v0 ? kv_add(isum[c], sd) : sd;
                        KQP_OPAQUE(qt, isum[c]);
#ifndef KV_MINS16
                        if (mins) {
                            imin[c] = s ? kv_add(imin[c], ms) : ms;
                            KQP_OPAQUE(qt, imin[c]);
                        }
#endif
                    }
                }
#ifdef KV_MINS16
                (void)mn;
#endif
            }
#ifdef KV_MINS16
            { /* the mins after the sub-blocks: the (int16) mins of sub-blocks 2j, 2j + 1 by their activation sums */
                kv_i mp[4];
                UNROLL for (int j = 0; j < 4; j++) mp[j] = kv_pairs16(rec + 192 + 32 * j + lo, rec + 208 + 32 * j + lo);
                UNROLL for (int c = 0; c < C; c++) {
                    const uint8_t *ab = a + (size_t)c * as + (size_t)b * KQ_Q8K;
                    kv_i t = kv_zero();
                    UNROLL for (int j = 0; j < 4; j++) {
                        const int32_t s0 = kqp_bsum(ab, 4 * j) + kqp_bsum(ab, 4 * j + 1);
                        const int32_t s1 = kqp_bsum(ab, 4 * j + 2) + kqp_bsum(ab, 4 * j + 3);
                        t = kv_add(t, kv_madd16(mp[j], kv_set1((int32_t)((uint32_t)(uint16_t)s0 | ((uint32_t)(uint16_t)s1 << 16)))));
                    }
                    imin[c] = t;
                }
            }
#endif
            const kv_f d = kv_fp16(rec + 2 * lo), dmin = kv_fp16(rec + 32 + 2 * lo);
            UNROLL for (int c = 0; c < C; c++) {
                const kv_f ad = kv_fset1(pl_ld_f32(a + (size_t)c * as + (size_t)b * KQ_Q8K));
                const kv_f t1 = kv_fmul(kv_fmul(ad, d), kv_cvt(isum[c]));
                const kv_f t2 = kv_fmul(kv_fmul(ad, dmin), kv_cvt(imin[c]));
                fa[c] = kv_fadd(fa[c], kv_fsub(t1, t2));
            }
        } else { /* Q6_K, Q3_K, Q2_K: 16 groups of 16 weights with a scale each */
            kv_i imin[KQP_MAXC]; /* Q2_K */
            const size_t qoff = qt == KQP_Q2_K ? 576 : 320; /* Q2_K / Q3_K: qs words (then Q3_K's hmask) */
#if KV_OFFS_BLOCK
            /* Q6_K, and Q3_K's gemv: the scales taken from sp, the pairs of groups g & ~1, g | 1, whose products
             * with the group activation sums make the offsets as the groups go (measured in one process on a
             * Zen 5, three runs: Q6_K gemv +1.4..4.6%, its tiles of 4 rows -2..+3%, Q3_K gemv +4%; Q3_K's tiles
             * of 4 rows 2-8% slower, so they keep the pairs built again after the groups; llvm-mca's Zen 3
             * model, no measurement: Q6_K gemv 150 -> 129 cycles per super-block pass, vpmovsxbd ymm being
             * 2-3 operations there) */
            const int pairs = qt == KQP_Q6_K || (qt == KQP_Q3_K && C == 1);
            kv_i offs[KQP_MAXC], sp = kv_zero();
#endif
            UNROLL for (int g = 0; g < 16; g++) { /* group g: 16 weights 128h + 32k + 4v + i, v = 4 (g % 2) .. + 3 */
                const int h = g / 8, k = (g % 8) / 2, v0 = 4 * (g % 2);
                kv_i w[4];
                UNROLL for (int i = 0; i < 4; i++) {
                    const int v = v0 + i;
                    if (qt == KQP_Q6_K) { /* k < 3: bits 0..5 of plane k; k = 3: bits 6..7 of planes 0, 1, 2 */
                        const uint8_t *q = rec + 320 + 1536 * h + 64 * v + 4 * lo;
                        w[i] = k < 3 ? kv_and(kv_load(q + 512 * k), m3f) : kqp_q6_top(kv_load(q), kv_load(q + 512), kv_load(q + 1024), mc0);
                    } else { /* 2 bits at 2k of the qs word; Q3_K: bit 4h + k of the hmask word as 4 */
                        w[i] = kv_and(kv_srli16(kv_load(rec + qoff + 512 * h + 64 * v + 4 * lo), 2 * k), m3);
                        if (qt == KQP_Q3_K) {
                            const kv_i hm = kv_load(rec + qoff + 1024 + 64 * v + 4 * lo);
                            const int sh = 4 * h + k; /* 16-bit shifts: no bit of the other byte reaches bit 2 */
                            w[i] = kv_or_and(w[i], sh >= 2 ? kv_srli16(hm, sh - 2) : kv_slli16(hm, 2 - sh), m04);
                        }
                    }
                }
#if KV_OFFS_BLOCK /* the scales as the pairs of the two groups, which the offsets take as they are */
                if (pairs && g % 2 == 0) sp = kv_pairs16_s8(rec + 64 + 16 * g + lo, rec + 80 + 16 * g + lo);
                const kv_i sc = pairs ? kv_pair_scale(sp, g % 2)
                                      : kv_scales(qt == KQP_Q2_K ? kv_u8(rec + 64 + 16 * g + lo) : kv_s8(rec + 64 + 16 * g + lo));
#else
                const kv_i sc = kv_scales(qt == KQP_Q2_K ? kv_u8(rec + 64 + 16 * g + lo) : kv_s8(rec + 64 + 16 * g + lo));
#endif
                UNROLL for (int c = 0; c < C; c++) {
                    const uint8_t *ab = a + (size_t)c * as + (size_t)b * KQ_Q8K, *q8 = ab + 4 + 16 * g;
                    /* Q6_K's values are stored + 32, Q3_K's + 4 */
#if KV_OFFS_BLOCK /* the offsets once per super-block, below */
                    const kv_i sd = qt == KQP_Q6_K ? kv_sdot6_split(w, q8, sc) : kv_sdot(4, qt == KQP_Q3_K ? 3 : 2, w, q8, sc, 0, 0);
#else
                    const int32_t init = qt == KQP_Q6_K ? -32 * kqp_bsum(ab, g) : qt == KQP_Q3_K ? -4 * kqp_bsum(ab, g) : 0;
                    const kv_i sd = kv_sdot(4, qt == KQP_Q6_K ? 6 : qt == KQP_Q3_K ? 3 : 2, w, q8, sc, init, 0);
#endif
                    isum[c] = g ? kv_add(isum[c], sd) : sd;
                    KQP_OPAQUE(qt, isum[c]);
#if KV_OFFS_BLOCK /* the pairs by the two groups' activation sums (int16 pairs: exact int32) */
                    if (pairs && g % 2 == 1) {
                        const kv_i m = kv_madd16(sp, kv_set1((int32_t)pl_ld_u32(ab + 260 + 2 * (g - 1))));
                        offs[c] = g == 1 ? m : kv_add(offs[c], m);
                    }
#endif
                    if (qt == KQP_Q2_K) {
                        const kv_i ms = kv_mullo(kv_u8(rec + 320 + 16 * g + lo), kv_set1(kqp_bsum(ab, g)));
                        imin[c] = g ? kv_add(imin[c], ms) : ms;
                        KQP_OPAQUE(qt, imin[c]);
                    }
                }
            }
#if KV_OFFS_BLOCK
            if (qt != KQP_Q2_K) { /* less 32 (Q6_K) / 4 (Q3_K) x the scales by the group activation sums (int16 pairs: exact int32) */
                if (!pairs) {
                    kv_i spj[8];
                    UNROLL for (int j = 0; j < 8; j++) spj[j] = kv_pairs16_s8(rec + 64 + 32 * j + lo, rec + 80 + 32 * j + lo);
                    UNROLL for (int c = 0; c < C; c++) {
                        const uint8_t *ab = a + (size_t)c * as + (size_t)b * KQ_Q8K;
                        offs[c] = kv_madd16(spj[0], kv_set1((int32_t)pl_ld_u32(ab + 260)));
                        UNROLL for (int j = 1; j < 8; j++) offs[c] = kv_add(offs[c], kv_madd16(spj[j], kv_set1((int32_t)pl_ld_u32(ab + 260 + 4 * j))));
                    }
                }
                UNROLL for (int c = 0; c < C; c++) isum[c] = kv_sub(isum[c], kv_slli32(offs[c], qt == KQP_Q6_K ? 5 : 2));
            }
#endif
            const kv_f d = kv_fp16(rec + 2 * lo);
            UNROLL for (int c = 0; c < C; c++) {
                const kv_f ad = kv_fset1(pl_ld_f32(a + (size_t)c * as + (size_t)b * KQ_Q8K));
                if (qt == KQP_Q2_K) {
                    const kv_f t1 = kv_fmul(kv_fmul(ad, d), kv_cvt(isum[c]));
                    const kv_f t2 = kv_fmul(kv_fmul(ad, kv_fp16(rec + 32 + 2 * lo)), kv_cvt(imin[c]));
                    fa[c] = kv_fadd(fa[c], kv_fsub(t1, t2));
                } else {
                    fa[c] = kv_fadd(fa[c], kv_fmul(kv_fmul(ad, d), kv_cvt(isum[c])));
                }
            }
        }
    }
    if (acc) {
        UNROLL for (int c = 0; c < C; c++) acc[c] = fa[c];
        return;
    }
    UNROLL for (int c = 0; c < C; c++) kv_store(out + (size_t)c * os + lo, fa[c], rows - lo);
}

/* one 16-row group x C activation rows. KV_LANES rows at a time: with 8 lanes and KQP_HALVES set (AVX2),
 * rows 0..7, then 8..15 of each super-block, the second half from the record the first has just brought
 * to L1, each half a call (half0 / half1: inlined together, the two halves' constants and sums outgrew
 * the 16 registers, 315 stack references in Q6_K's gemv). Without: two passes over the group, the
 * second only when the group has more than 8 rows, whose first streams each record from DRAM / L3 for
 * half of its bytes (the other half of every line is the second pass's). */
#ifndef KQP_HALVES
#define KQP_HALVES(qt, C) 0 /* (type, activation rows): whether to take the halves back to back */
#endif
typedef void (*kqp_half_fn)(const uint8_t *rec, const uint8_t *ab, size_t as, kv_f *fa);
AI void kqp_tile(const int qt, const int C, int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out,
                 size_t os, int rows, kqp_half_fn half0, kqp_half_fn half1) {
    if (KV_LANES < 16 && KQP_HALVES(qt, C) && rows > KV_LANES) {
        const size_t rec_bytes = kqp_rec_bytes(qt);
        kv_f f0[KQP_MAXC], f1[KQP_MAXC];
        UNROLL for (int c = 0; c < C; c++) f0[c] = f1[c] = kv_fzero();
        for (int b = 0; b < nb; b++) {
            half0(gp + (size_t)b * rec_bytes, a + (size_t)b * KQ_Q8K, as, f0);
            half1(gp + (size_t)b * rec_bytes, a + (size_t)b * KQ_Q8K, as, f1);
        }
        UNROLL for (int c = 0; c < C; c++) {
            kv_store(out + (size_t)c * os, f0[c], KV_LANES);
            kv_store(out + (size_t)c * os + KV_LANES, f1[c], rows - KV_LANES);
        }
        return;
    }
    kqp_tile_part(qt, C, nb, gp, a, as, out, os, rows, 0, NULL);
    if (KV_LANES < 16 && rows > KV_LANES) kqp_tile_part(qt, C, nb, gp, a, as, out, os, rows, KV_LANES, NULL);
}

#define KQP_TILE_DEF(qt, C)                                                                                      \
    static __attribute__((noinline)) void kqp_half0_##qt##_##C(const uint8_t *rec, const uint8_t *ab, size_t as, \
                                                               kv_f *fa) {                                       \
        kqp_tile_part(KQP_##qt, C, 1, rec, ab, as, NULL, 0, 0, 0, fa);                                           \
    }                                                                                                            \
    static __attribute__((noinline)) void kqp_half1_##qt##_##C(const uint8_t *rec, const uint8_t *ab, size_t as, \
                                                               kv_f *fa) {                                       \
        kqp_tile_part(KQP_##qt, C, 1, rec, ab, as, NULL, 0, 0, KV_LANES, fa);                                    \
    }                                                                                                            \
    static void kqp_tile_##qt##_##C(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os, \
                                    int rows) {                                                                  \
        kqp_tile(KQP_##qt, C, nb, gp, a, as, out, os, rows, kqp_half0_##qt##_##C, kqp_half1_##qt##_##C);         \
    }
#define KQP_DEFS(qt)                                                                                             \
    KQP_TILE_DEF(qt, 1) KQP_TILE_DEF(qt, 2) KQP_TILE_DEF(qt, 3) KQP_TILE_DEF(qt, 4) KQP_TILE_DEF(qt, 5)          \
    KQP_TILE_DEF(qt, 6) KQP_TILE_DEF(qt, 7) KQP_TILE_DEF(qt, 8)                                                  \
    static void kqp_gemv_##qt(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows) {               \
        kqp_tile_##qt##_1(nb, gp, a, 0, out, 0, rows);                                                           \
    }                                                                                                            \
    static const pl_pk_tile_fn kqp_tiles_##qt[8] = {kqp_tile_##qt##_1, kqp_tile_##qt##_2, kqp_tile_##qt##_3,      \
                                                    kqp_tile_##qt##_4, kqp_tile_##qt##_5, kqp_tile_##qt##_6,     \
                                                    kqp_tile_##qt##_7, kqp_tile_##qt##_8};                       \
    static void kqp_gemm_packed_##qt(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out,    \
                                     size_t os) {                                                                \
        pl_pk_gemm_drive(PL_TYPE_##qt, PL_QK_K, kqp_gemv_##qt, kqp_tiles_##qt,                                 \
                         KQP_##qt == KQP_Q6_K || KQP_##qt == KQP_Q3_K ? KQP_MAXC_6                               \
                         : KQP_##qt == KQP_IQ4_XS                    ? KQP_MAXC_IQ4                              \
                                                                     : KQP_MAXC_4,                               \
                         n, nr, nc, w, a, as, out, \
                         os);                                                                                    \
    }
KQP_DEFS(Q4_K)
KQP_DEFS(Q5_K)
KQP_DEFS(Q6_K)
KQP_DEFS(IQ4_XS)
KQP_DEFS(Q3_K)
KQP_DEFS(Q2_K)

/* the table entries (the AVX2 and AVX-512 tables call this) */
static void kqp_register(pl_kernels *k) {
    k->types[PL_TYPE_Q4_K].gemm_packed = kqp_gemm_packed_Q4_K;
    k->types[PL_TYPE_Q5_K].gemm_packed = kqp_gemm_packed_Q5_K;
    k->types[PL_TYPE_Q6_K].gemm_packed = kqp_gemm_packed_Q6_K;
    k->types[PL_TYPE_IQ4_XS].gemm_packed = kqp_gemm_packed_IQ4_XS;
    k->types[PL_TYPE_Q3_K].gemm_packed = kqp_gemm_packed_Q3_K;
    k->types[PL_TYPE_Q2_K].gemm_packed = kqp_gemm_packed_Q2_K;
}

#endif
