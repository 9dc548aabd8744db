/* legacy_packed.h: the packed layouts of the 32-weight types Q4_1, Q5_0, Q5_1 and IQ4_NL (the byte
 * offsets of a block's fields inside a 16-row group), shared by their scalar reference (legacy_packed.c)
 * and their SIMD gemms (legacy_packed_simd.h). As for Q4_0 (tensor_types.h) a 32-bit lane of a 64-byte
 * vector is one row (lane r = row r of the group), rows past the end of the tensor are zero, and a group
 * is the same size as the 16 rows it replaces (Q5_0 / IQ4_NL: when the block count is even). nb = n / 32.
 *   Q4_1, 320 bytes per block b (group: nb * 320):
 *         [32: fp16 d of rows 0..15][32: fp16 m][256: qs, 4 vectors v: lane r = qs bytes 4v .. 4v+3 of row r]
 *   Q5_1, 384 bytes per block: [32: d][32: m][64: qh' (lane r = row r's 32 fifth bits, rearranged as below)]
 *         [256: qs as Q4_1's]
 *   Q5_0, blocks in pairs (2p, 2p+1), 704 bytes per pair (group: ceil(nb/2) * 64 + nb * 320):
 *         [64: fp16 d of block 2p's rows, then of block 2p+1's (zero if nb is odd and 2p+1 = nb)]
 *         [64: qh' of block 2p][256: qs of 2p][64: qh' of 2p+1][256: qs of 2p+1]
 *   IQ4_NL: Q4_0's layout exactly (pairs: [64: d of both blocks][256: qs of 2p][256: qs of 2p+1]), the
 *         nibbles being table indices (group: ceil(nb/2) * 64 + nb * 256)
 * qs bytes are ggml's (low nibble: weight j, high nibble: weight j + 16 of the block). qh' is ggml's qh
 * (bit j: the fifth bit of weight j) moved so that a 16-bit shift and one mask give the fifth bits of
 * a qs vector: bit v of byte i of qh' = bit 4v + i of qh (weight 4v + i, the low nibble of byte i of qs
 * vector v), bit 4 + v of byte i = bit 16 + 4v + i of qh (weight 16 + 4v + i, its high nibble).
 * Activations: Q4_0's q8x rows (pl_pack_act_row: the Q8_0 row, fp32 d, c4 = -8 x sum(q8) per block): the
 * kernels take sum(q8) = -c4 / 8 for the min term of Q4_1 / Q5_1 and the -16 offset of Q5_0 (2 x c4),
 * and 16 x c4 (= -128 x sum(q8)) to undo IQ4_NL's table values + 128 on VNNI. */
#ifndef PYLLM_LEGACY_PACKED_H
#define PYLLM_LEGACY_PACKED_H

#include <stddef.h>
#include <stdint.h>

#include "tensor_types.h"

enum { LP_Q4_1 = 0, LP_Q5_0 = 1, LP_Q5_1 = 2, LP_IQ4_NL = 3 };

/* Q4_1 / Q5_1: one record per block; Q5_0 / IQ4_NL: pairs of blocks behind 64 bytes of scales */
static inline int lp_paired(int qt) { return qt == LP_Q5_0 || qt == LP_IQ4_NL; }
static inline int lp_has_qh(int qt) { return qt == LP_Q5_0 || qt == LP_Q5_1; }
static inline int lp_has_m(int qt) { return qt == LP_Q4_1 || qt == LP_Q5_1; }
/* bytes of one block's record (paired: of its part after the pair's 64 bytes of scales) */
static inline size_t lp_body_bytes(int qt) { return qt == LP_Q4_1 ? 320 : qt == LP_Q5_1 ? 384 : qt == LP_Q5_0 ? 320 : 256; }
static inline size_t lp_block_base(int qt, int64_t b) {
    return lp_paired(qt) ? (size_t)(b >> 1) * (64 + 2 * lp_body_bytes(qt)) + 64 + (size_t)(b & 1) * lp_body_bytes(qt)
                         : (size_t)b * lp_body_bytes(qt);
}
/* offsets in a group of block b's 16 fp16 d, 16 fp16 m (Q4_1 / Q5_1), 16 qh' words (Q5_*), qs vectors */
static inline size_t lp_d_off(int qt, int64_t b) {
    return lp_paired(qt) ? (size_t)(b >> 1) * (64 + 2 * lp_body_bytes(qt)) + 32 * (size_t)(b & 1) : (size_t)b * lp_body_bytes(qt);
}
static inline size_t lp_m_off(int qt, int64_t b) { return lp_d_off(qt, b) + 32; }
static inline size_t lp_qh_off(int qt, int64_t b) { return lp_block_base(qt, b) + (qt == LP_Q5_1 ? 64 : 0); }
static inline size_t lp_qs_off(int qt, int64_t b) {
    return lp_block_base(qt, b) + (qt == LP_Q4_1 ? 64 : qt == LP_Q5_1 ? 128 : qt == LP_Q5_0 ? 64 : 0);
}
/* group bytes for rows of n (0: n <= 0, not whole blocks, or a size_t overflow) */
static inline size_t lp_group_bytes(int qt, int64_t n) {
    if (n <= 0 || n % PL_QK) return 0;
    const size_t nb = (size_t)(n / PL_QK);
    if (nb > SIZE_MAX / 1024) return 0;
    return lp_paired(qt) ? (nb + 1) / 2 * 64 + nb * lp_body_bytes(qt) : nb * lp_body_bytes(qt);
}
/* qh' from ggml's qh (see above) and back */
static inline uint32_t lp_qh_pack(uint32_t qh) {
    uint32_t o = 0;
    for (int i = 0; i < 4; i++)
        for (int v = 0; v < 4; v++) {
            o |= ((qh >> (4 * v + i)) & 1u) << (8 * i + v);
            o |= ((qh >> (16 + 4 * v + i)) & 1u) << (8 * i + 4 + v);
        }
    return o;
}
/* the fifth bit of weight j (0..31) from qh' */
static inline int lp_qh_bit(uint32_t qhp, int j) {
    const int hi = j >= 16, jj = j & 15, v = jj >> 2, i = jj & 3;
    return (int)((qhp >> (8 * i + 4 * hi + v)) & 1u);
}

#endif
