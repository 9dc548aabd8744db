/* legacy_packed.c: the packed layouts of Q4_1, Q5_0, Q5_1 and IQ4_NL (legacy_packed.h) — their repack
 * functions (the same in every table), group sizes, and the scalar reference of their packed gemm over
 * Q4_0's q8x activation rows, which does the unpacked vec_dot's integer sums and float operations
 * (types_kquants.c) in the same order, so packed and unpacked results are equal bit for bit.
 * legacy_packed_simd.h is the SIMD twin of the gemm. */
#include <stdint.h>
#include <string.h>

#include "legacy_packed.h"
#include "tensor_types.h"

#define PK PL_PACK_ROWS

/* source block layouts (ggml): bytes per block, and the offsets of d, m, qh, qs (-1: none) */
static size_t src_bytes(int qt) { return qt == LP_Q4_1 ? 20 : qt == LP_Q5_0 ? 22 : qt == LP_Q5_1 ? 24 : 18; }
static int src_m(int qt) { return lp_has_m(qt) ? 2 : -1; }
static int src_qh(int qt) { return qt == LP_Q5_0 ? 2 : qt == LP_Q5_1 ? 4 : -1; }
static int src_qs(int qt) { return qt == LP_Q4_1 ? 4 : qt == LP_Q5_0 ? 6 : qt == LP_Q5_1 ? 8 : 2; }

/* rows r < nrows of src (stride ss) into one group at dst; written front to back, whole 4-byte words
 * moved (qh rearranged to qh'), rows past nrows and an odd pair's missing scales zero */
static void lp_repack(int qt, const void *vsrc, size_t ss, int nrows, int64_t n, void *vdst) {
    const uint8_t *src = (const uint8_t *)vsrc;
    uint8_t *dst = (uint8_t *)vdst;
    const size_t nb = (size_t)(n / PL_QK), bs = src_bytes(qt);
    if (nrows > PK) nrows = PK;
    for (size_t b = 0; b < nb; b++) {
        if (!lp_paired(qt) || b % 2 == 0) { /* the scales (paired: block b's 16, then block b+1's) */
            uint16_t d[2 * PK];
            memset(d, 0, sizeof(d));
            const size_t nh = lp_paired(qt) ? 2 : 1;
            for (size_t h = 0; h < nh && b + h < nb; h++)
                for (int r = 0; r < nrows; r++) memcpy(&d[PK * h + r], src + r * ss + (b + h) * bs, 2);
            if (lp_has_m(qt))
                for (int r = 0; r < nrows; r++) memcpy(&d[PK + r], src + r * ss + b * bs + src_m(qt), 2);
            memcpy(dst + lp_d_off(qt, (int64_t)b), d, sizeof(d));
        }
        if (lp_has_qh(qt)) {
            uint32_t qh[PK];
            for (int r = 0; r < PK; r++) qh[r] = r < nrows ? lp_qh_pack(pl_ld_u32(src + r * ss + b * bs + src_qh(qt))) : 0;
            memcpy(dst + lp_qh_off(qt, (int64_t)b), qh, sizeof(qh));
        }
        uint32_t q[4][PK]; /* [v][r] */
        for (int r = 0; r < PK; r++)
            for (int v = 0; v < 4; v++) q[v][r] = r < nrows ? pl_ld_u32(src + r * ss + b * bs + src_qs(qt) + 4 * v) : 0;
        memcpy(dst + lp_qs_off(qt, (int64_t)b), q, sizeof(q));
    }
}

/* the reference: row r of a group, one q8x activation row; the unpacked vec_dot's arithmetic */
static float lp_row_dot(int qt, int nb, const uint8_t *g, int r, const uint8_t *arow) {
    float sum = 0.0f;
    for (int b = 0; b < nb; b++) {
        const uint8_t *ab = arow + (size_t)b * sizeof(pl_block_q8_0);
        const int8_t *q8 = (const int8_t *)(ab + 2);
        const uint8_t *qs = g + lp_qs_off(qt, b) + 4 * r;
        const uint32_t qhp = lp_has_qh(qt) ? pl_ld_u32(g + lp_qh_off(qt, b) + 4 * r) : 0;
        int32_t isum = 0, sum8 = 0;
        for (int j = 0; j < 16; j++) {
            const uint8_t byte = qs[64 * (j / 4) + j % 4];
            int lo = byte & 0x0F, hi = byte >> 4;
            if (lp_has_qh(qt)) {
                lo |= lp_qh_bit(qhp, j) << 4;
                hi |= lp_qh_bit(qhp, j + 16) << 4;
            }
            if (qt == LP_Q5_0) {
                lo -= 16;
                hi -= 16;
            } else if (qt == LP_IQ4_NL) {
                lo = pl_iq4nl_values[lo];
                hi = pl_iq4nl_values[hi];
            }
            isum += lo * q8[j] + hi * q8[j + 16];
            sum8 += q8[j] + q8[j + 16];
        }
        const float d8 = pl_ld_fp16(ab), d = pl_ld_fp16(g + lp_d_off(qt, b) + 2 * r);
        if (lp_has_m(qt)) sum += (float)isum * (d * d8) + (float)sum8 * (pl_ld_fp16(g + lp_m_off(qt, b) + 2 * r) * d8);
        else sum += (float)isum * (d * d8);
    }
    return sum;
}

static void lp_gemm_packed(int qt, int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    const int nb = n / PL_QK;
    const size_t gb = lp_group_bytes(qt, n);
    for (int i = 0; i < nr; i++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(i / PK) * gb;
        for (int j = 0; j < nc; j++) out[(size_t)j * os + i] = lp_row_dot(qt, nb, g, i % PK, (const uint8_t *)a + (size_t)j * as);
    }
}

#define LP_FNS(name, qt)                                                                                         \
    static void name##_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) {                    \
        lp_repack(qt, src, ss, nrows, n, dst);                                                                   \
    }                                                                                                            \
    static void name##_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out,  \
                                   size_t os) {                                                                  \
        lp_gemm_packed(qt, n, nr, nc, w, a, as, out, os);                                                        \
    }                                                                                                            \
    static size_t name##_group_bytes(int64_t n) { return lp_group_bytes(qt, n); }
LP_FNS(q4_1, LP_Q4_1)
LP_FNS(q5_0, LP_Q5_0)
LP_FNS(q5_1, LP_Q5_1)
LP_FNS(iq4_nl, LP_IQ4_NL)

static void set_row(pl_type_traits *t, pl_repack_fn rp, pl_gemm_packed_fn gp, pl_packed_bytes_fn gbytes) {
    t->repack = rp;
    t->gemm_packed = gp;
    t->packed_group_bytes = gbytes;
    t->pack_act = pl_pack_act_row;
    t->packed_act_bytes = pl_packed_act_row_bytes;
}

void pl_kernels_add_packed_legacy(pl_kernels *k) {
    set_row(&k->types[PL_TYPE_Q4_1], q4_1_repack, q4_1_gemm_packed, q4_1_group_bytes);
    set_row(&k->types[PL_TYPE_Q5_0], q5_0_repack, q5_0_gemm_packed, q5_0_group_bytes);
    set_row(&k->types[PL_TYPE_Q5_1], q5_1_repack, q5_1_gemm_packed, q5_1_group_bytes);
    set_row(&k->types[PL_TYPE_IQ4_NL], iq4_nl_repack, iq4_nl_gemm_packed, iq4_nl_group_bytes);
}
