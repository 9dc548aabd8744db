/* kquant_packed.c: the packed layouts of Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS (tensor_types.h) — their repack functions (the
 * same in every table), group sizes, and the scalar reference of their packed gemm, which does the
 * unpacked vec_dot's integer sums and float operations (types_kquants.c) in the same order, so packed
 * and unpacked results are equal bit for bit. kquant_packed_simd.h is the SIMD twin of the gemm.
 * Activations are plain Q8_K rows (no pack_act). */
#include <stdint.h>
#include <string.h>

#include "tensor_types.h"

#define PK PL_PACK_ROWS
#define Q8K_BYTES ((size_t)sizeof(pl_block_q8_k)) /* d at 0, qs at 4, bsums at 260 */

/* 0 for n <= 0, n not whole super-blocks, or a size_t overflow */
static size_t kq_group_bytes(size_t rec, int64_t n) {
    if (n <= 0 || n % PL_QK_K) return 0;
    const size_t nb = (size_t)(n / PL_QK_K);
    if (nb > SIZE_MAX / rec) return 0;
    return nb * rec;
}
static size_t q4_k_packed_group_bytes(int64_t n) { return kq_group_bytes(PL_PK_Q4_K_REC, n); }
static size_t q5_k_packed_group_bytes(int64_t n) { return kq_group_bytes(PL_PK_Q5_K_REC, n); }
static size_t q6_k_packed_group_bytes(int64_t n) { return kq_group_bytes(PL_PK_Q6_K_REC, n); }
static size_t iq4_xs_packed_group_bytes(int64_t n) { return kq_group_bytes(PL_PK_IQ4_XS_REC, n); }
static size_t q3_k_packed_group_bytes(int64_t n) { return kq_group_bytes(PL_PK_Q3_K_REC, n); }
static size_t q2_k_packed_group_bytes(int64_t n) { return kq_group_bytes(PL_PK_Q2_K_REC, n); }

/* the 8 6-bit scales and mins of a Q4_K super-block from its 12 scale bytes (ggml's packing) */
static void q4_k_scales_mins(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (uint8_t)((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4));
            mn[j] = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
        }
    }
}

/* 4-byte word w of each of the 16 rows (row r at src + r * ss + off; rows >= nrows zero) -> one
 * 64-byte vector at dst (lane r = row r) */
static void put_words(const uint8_t *src, size_t ss, int nrows, size_t off, uint8_t *dst) {
    memset(dst, 0, 64);
    for (int r = 0; r < nrows; r++) memcpy(dst + 4 * r, src + (size_t)r * ss + off, 4);
}

/* the 2560 quant bytes of a Q5_K record (rows r < nrows of super-block bo; the rest zero): byte 4r + i of
 * vector v of plane t = the value of weight 32t + 4v + i (bits 0-4) | bits 3t .. 3t + 2 of the stream
 * of weights 160 + 4v + i, 192 + .., 224 + .. (5 bits each, bits 5-7). Four weights at a time, one
 * 32-bit word per plane (each mask keeps a byte's own bits, so any byte order; measured on one thread
 * of a Zen 5: 10.3 Gweights/s, against 6.6 for a row's planes built whole in vectorized loops, 1.6
 * weight by weight) */
static void q5_k_planes(const uint8_t *src, size_t ss, int nrows, size_t bo, uint8_t *dst) {
    const uint32_t m1 = 0x01010101u, m3 = 0x03030303u, m7 = 0x07070707u, m4 = 0x0F0F0F0Fu;
    memset(dst, 0, 2560);
    for (int r = 0; r < nrows; r++) {
        const uint8_t *qh = src + (size_t)r * ss + bo + 16, *qs = qh + 32;
        for (int v = 0; v < 8; v++) {
            const uint32_t h = pl_ld_u32(qh + 4 * v);
            uint32_t q[8];
            for (int sb = 0; sb < 8; sb++) /* sub-block sb: nibble sb & 1 of qs word (sb / 2, v), bit sb of qh as 16 */
                q[sb] = ((pl_ld_u32(qs + 32 * (sb / 2) + 4 * v) >> (4 * (sb & 1))) & m4) | (((h >> sb) & m1) << 4);
            const uint32_t top[5] = {q[5] & m7, ((q[5] >> 3) & m3) | ((q[6] & m1) << 2), (q[6] >> 1) & m7,
                                     ((q[6] >> 4) & m1) | ((q[7] & m3) << 1), (q[7] >> 2) & m7};
            for (int t = 0; t < 5; t++) {
                const uint32_t word = q[t] | top[t] << 5;
                memcpy(dst + 512 * t + 64 * v + 4 * r, &word, 4);
            }
        }
    }
}

/* Q4_K (has_qh 0: 144-byte blocks) and Q5_K (1: 176 bytes, qh[32] at 16, qs at 48; its quants as the
 * five byte planes of tensor_types.h, q5_k_planes) */
static void q45_k_repack(const int has_qh, const uint8_t *src, size_t ss, int nrows, int64_t n, uint8_t *dst) {
    const size_t nb = (size_t)(n / PL_QK_K), bb = has_qh ? 176 : 144, rec_bytes = has_qh ? PL_PK_Q5_K_REC : PL_PK_Q4_K_REC;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *rec = dst + b * rec_bytes;
        const size_t bo = b * bb;
        memset(rec, 0, 320);
        for (int r = 0; r < nrows; r++) {
            const uint8_t *blk = src + (size_t)r * ss + bo;
            uint8_t sc[8], mn[8];
            memcpy(rec + 2 * r, blk, 2);
            memcpy(rec + 32 + 2 * r, blk + 2, 2);
            q4_k_scales_mins(blk + 4, sc, mn);
            for (int j = 0; j < 8; j++) {
                rec[64 + 16 * j + r] = sc[j];
                rec[192 + 16 * j + r] = mn[j];
            }
        }
        if (has_qh)
            q5_k_planes(src, ss, nrows, bo, rec + 320);
        else
            for (int c = 0; c < 4; c++)
                for (int v = 0; v < 8; v++) put_words(src, ss, nrows, bo + 16 + 32 * c + 4 * v, rec + 320 + 512 * c + 64 * v);
    }
}
static void q4_k_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) { q45_k_repack(0, src, ss, nrows, n, dst); }
static void q5_k_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) { q45_k_repack(1, src, ss, nrows, n, dst); }

/* Q6_K: plane p = 0, 1, 2 of (h, v): value k = p of weights 128h + 32k + 4v + i in bits 0..5 of byte i,
 * bits 2p, 2p + 1 of value k = 3 in 6..7. Four bytes at a time (each mask keeps a byte's own bits, so any
 * byte order): ggml's ql words hold values k = 0, 1 (low nibbles) and 2, 3 (high), its qh word the 2 high
 * bits of k at 2k (one value at a time: 8x slower, 0.65 Gweights/s, a second per 1.5 G weights at load) */
static void q6_k_repack(const void *vsrc, size_t ss, int nrows, int64_t n, void *vdst) {
    const uint8_t *src = vsrc;
    uint8_t *dst = vdst;
    const size_t nb = (size_t)(n / PL_QK_K);
    const uint32_t m4 = 0x0F0F0F0Fu, m30 = 0x30303030u, m3 = 0x03030303u;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *rec = dst + b * PL_PK_Q6_K_REC;
        const size_t bo = b * 210;
        memset(rec, 0, PL_PK_Q6_K_REC);
        for (int r = 0; r < nrows; r++) {
            const uint8_t *blk = src + (size_t)r * ss + bo;
            memcpy(rec + 2 * r, blk + 208, 2);
            for (int g = 0; g < 16; g++) rec[64 + 16 * g + r] = blk[192 + g];
            for (int h = 0; h < 2; h++)
                for (int v = 0; v < 8; v++) {
                    const uint32_t l0 = pl_ld_u32(blk + 64 * h + 4 * v), l1 = pl_ld_u32(blk + 64 * h + 32 + 4 * v);
                    const uint32_t hb = pl_ld_u32(blk + 128 + 32 * h + 4 * v);
                    const uint32_t q[3] = {(l0 & m4) | ((hb << 4) & m30), (l1 & m4) | ((hb << 2) & m30),
                                           ((l0 >> 4) & m4) | (hb & m30)};
                    const uint32_t q3 = ((l1 >> 4) & m4) | ((hb >> 2) & m30);
                    for (int p = 0; p < 3; p++) {
                        const uint32_t word = q[p] | ((q3 >> (2 * p)) & m3) << 6;
                        memcpy(rec + 320 + 1536 * h + 512 * p + 64 * v + 4 * r, &word, 4);
                    }
                }
        }
    }
}

static void iq4_xs_repack(const void *vsrc, size_t ss, int nrows, int64_t n, void *vdst) {
    const uint8_t *src = vsrc;
    uint8_t *dst = vdst;
    const size_t nb = (size_t)(n / PL_QK_K);
    for (size_t b = 0; b < nb; b++) {
        uint8_t *rec = dst + b * PL_PK_IQ4_XS_REC;
        const size_t bo = b * 136;
        memset(rec, 0, 192);
        for (int r = 0; r < nrows; r++) {
            const uint8_t *blk = src + (size_t)r * ss + bo;
            const uint16_t sh = pl_ld_u16(blk + 2);
            memcpy(rec + 2 * r, blk, 2);
            for (int j = 0; j < 8; j++) {
                const int ls = ((blk[4 + j / 2] >> (4 * (j % 2))) & 0x0F) | (((sh >> (2 * j)) & 3) << 4);
                rec[64 + 16 * j + r] = (uint8_t)(int8_t)(ls - 32);
            }
        }
        for (int j = 0; j < 8; j++)
            for (int v = 0; v < 4; v++) put_words(src, ss, nrows, bo + 8 + 16 * j + 4 * v, rec + 192 + 256 * j + 64 * v);
    }
}

/* Q3_K (q3 1: 110-byte blocks, hmask at 0, qs at 32, scales at 96, d at 108) and Q2_K (0: 84 bytes,
 * scales / mins at 0, qs at 16, d, dmin at 80) */
static void q23_k_repack(const int q3, const uint8_t *src, size_t ss, int nrows, int64_t n, uint8_t *dst) {
    const size_t nb = (size_t)(n / PL_QK_K), bb = q3 ? 110 : 84, rec_bytes = q3 ? PL_PK_Q3_K_REC : PL_PK_Q2_K_REC;
    const size_t head = q3 ? 320 : 576, qs = q3 ? 32 : 16;
    for (size_t b = 0; b < nb; b++) {
        uint8_t *rec = dst + b * rec_bytes;
        const size_t bo = b * bb;
        memset(rec, 0, head);
        for (int r = 0; r < nrows; r++) {
            const uint8_t *blk = src + (size_t)r * ss + bo;
            if (q3) {
                int8_t sc[16];
                pl_q3_k_scales(blk + 96, sc);
                memcpy(rec + 2 * r, blk + 108, 2);
                for (int g = 0; g < 16; g++) rec[64 + 16 * g + r] = (uint8_t)sc[g];
            } else {
                memcpy(rec + 2 * r, blk + 80, 2);
                memcpy(rec + 32 + 2 * r, blk + 82, 2);
                for (int g = 0; g < 16; g++) {
                    rec[64 + 16 * g + r] = blk[g] & 0x0F;
                    rec[320 + 16 * g + r] = blk[g] >> 4;
                }
            }
        }
        for (int h = 0; h < 2; h++)
            for (int v = 0; v < 8; v++) put_words(src, ss, nrows, bo + qs + 32 * h + 4 * v, rec + head + 512 * h + 64 * v);
        if (q3)
            for (int v = 0; v < 8; v++) put_words(src, ss, nrows, bo + 4 * v, rec + head + 1024 + 64 * v);
    }
}
static void q3_k_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) { q23_k_repack(1, src, ss, nrows, n, dst); }
static void q2_k_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) { q23_k_repack(0, src, ss, nrows, n, dst); }

/* the reference gemms: row i of the packed rows is lane r = i % 16 of group i / 16 */
static void q45_k_gemm_packed(const int has_qh, int n, int nr, int nc, const void *w, const void *a, size_t as,
                              float *out, size_t os) {
    const int nb = n / PL_QK_K;
    const size_t rec_bytes = has_qh ? PL_PK_Q5_K_REC : PL_PK_Q4_K_REC, gb = (size_t)nb * rec_bytes;
    for (int i = 0; i < nr; i++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(i / PK) * gb;
        const int r = i % PK;
        for (int j = 0; j < nc; j++) {
            const uint8_t *arow = (const uint8_t *)a + (size_t)j * as;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *rec = g + (size_t)b * rec_bytes, *ab = arow + (size_t)b * Q8K_BYTES;
                const int8_t *q8 = (const int8_t *)(ab + 4);
                int32_t isum = 0, imin = 0;
                for (int s = 0; s < 8; s++) {
                    int32_t dot = 0;
                    for (int v = 0; v < 8; v++)
                        for (int k = 0; k < 4; k++) {
                            int u;
                            if (has_qh) { /* plane s (s < 5), else 5 bits of the planes' top 3 bits in plane order */
                                const uint8_t *p = rec + 320 + 64 * v + 4 * r + k;
                                unsigned stream = 0;
                                for (int t = 0; t < 5; t++) stream |= (unsigned)(p[512 * t] >> 5) << (3 * t);
                                u = s < 5 ? p[512 * s] & 0x1F : (int)(stream >> (5 * (s - 5))) & 0x1F;
                            } else {
                                const uint8_t byte = rec[320 + 512 * (s / 2) + 64 * v + 4 * r + k];
                                u = (s & 1) ? byte >> 4 : byte & 0x0F;
                            }
                            dot += u * q8[32 * s + 4 * v + k];
                        }
                    isum += (int32_t)rec[64 + 16 * s + r] * dot;
                    imin += (int32_t)rec[192 + 16 * s + r] *
                            ((int16_t)pl_ld_u16(ab + 260 + 4 * s) + (int16_t)pl_ld_u16(ab + 262 + 4 * s));
                }
                const float ad = pl_ld_f32(ab);
                sum += (ad * pl_ld_fp16(rec + 2 * r)) * (float)isum - (ad * pl_ld_fp16(rec + 32 + 2 * r)) * (float)imin;
            }
            out[(size_t)j * os + i] = sum;
        }
    }
}
static void q4_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    q45_k_gemm_packed(0, n, nr, nc, w, a, as, out, os);
}
static void q5_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    q45_k_gemm_packed(1, n, nr, nc, w, a, as, out, os);
}

static void q6_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    const int nb = n / PL_QK_K;
    const size_t gb = q6_k_packed_group_bytes(n);
    for (int i = 0; i < nr; i++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(i / PK) * gb;
        const int r = i % PK;
        for (int j = 0; j < nc; j++) {
            const uint8_t *arow = (const uint8_t *)a + (size_t)j * as;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *rec = g + (size_t)b * PL_PK_Q6_K_REC, *ab = arow + (size_t)b * Q8K_BYTES;
                const int8_t *q8 = (const int8_t *)(ab + 4);
                int32_t dot[16] = {0};
                /* element 128h + 32k + 4v + i: k < 3: bits 0..5 of plane k of (h, v); k = 3: bits 6..7 of
                 * planes 0, 1, 2 as its bits 0..1, 2..3, 4..5 */
                for (int h = 0; h < 2; h++)
                    for (int v = 0; v < 8; v++)
                        for (int i4 = 0; i4 < 4; i4++) {
                            const uint8_t *q = rec + 320 + 1536 * h + 64 * v + 4 * r + i4;
                            for (int k = 0; k < 4; k++) {
                                const int u = k < 3 ? q[512 * k] & 0x3F : (q[0] >> 6) | (q[512] >> 6) << 2 | (q[1024] >> 6) << 4;
                                const int e = 128 * h + 32 * k + 4 * v + i4;
                                dot[e / 16] += (u - 32) * q8[e];
                            }
                        }
                int32_t isum = 0;
                for (int gi = 0; gi < 16; gi++) isum += (int32_t)(int8_t)rec[64 + 16 * gi + r] * dot[gi];
                sum += (pl_ld_f32(ab) * pl_ld_fp16(rec + 2 * r)) * (float)isum;
            }
            out[(size_t)j * os + i] = sum;
        }
    }
}

static void iq4_xs_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    const int nb = n / PL_QK_K;
    const size_t gb = iq4_xs_packed_group_bytes(n);
    for (int i = 0; i < nr; i++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(i / PK) * gb;
        const int r = i % PK;
        for (int j = 0; j < nc; j++) {
            const uint8_t *arow = (const uint8_t *)a + (size_t)j * as;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *rec = g + (size_t)b * PL_PK_IQ4_XS_REC, *ab = arow + (size_t)b * Q8K_BYTES;
                const int8_t *q8 = (const int8_t *)(ab + 4);
                int32_t isum = 0;
                for (int s = 0; s < 8; s++) {
                    int32_t dot = 0;
                    for (int v = 0; v < 4; v++)
                        for (int k = 0; k < 4; k++) {
                            const uint8_t byte = rec[192 + 256 * s + 64 * v + 4 * r + k];
                            dot += pl_iq4nl_values[byte & 0x0F] * q8[32 * s + 4 * v + k] +
                                   pl_iq4nl_values[byte >> 4] * q8[32 * s + 16 + 4 * v + k];
                        }
                    isum += (int32_t)(int8_t)rec[64 + 16 * s + r] * dot;
                }
                sum += (pl_ld_f32(ab) * pl_ld_fp16(rec + 2 * r)) * (float)isum;
            }
            out[(size_t)j * os + i] = sum;
        }
    }
}

/* element 128h + 32j + l: 2 bits at 2j of qs word (h, l / 4); Q3_K: plus 4 x bit 4h + j of hmask word
 * l / 4, minus 4 */
static void q23_k_gemm_packed(const int q3, int n, int nr, int nc, const void *w, const void *a, size_t as, float *out,
                              size_t os) {
    const int nb = n / PL_QK_K;
    const size_t rec_bytes = q3 ? PL_PK_Q3_K_REC : PL_PK_Q2_K_REC, head = q3 ? 320 : 576, gb = (size_t)nb * rec_bytes;
    for (int i = 0; i < nr; i++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(i / PK) * gb;
        const int r = i % PK;
        for (int j = 0; j < nc; j++) {
            const uint8_t *arow = (const uint8_t *)a + (size_t)j * as;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *rec = g + (size_t)b * rec_bytes, *ab = arow + (size_t)b * Q8K_BYTES;
                const int8_t *q8 = (const int8_t *)(ab + 4);
                int32_t dot[16] = {0};
                for (int e = 0; e < PL_QK_K; e++) {
                    const int h = e / 128, jj = (e % 128) / 32, l = e % 32;
                    const size_t wo = (size_t)64 * (l / 4) + 4 * (size_t)r + (size_t)(l % 4);
                    int u = (rec[head + 512 * h + wo] >> (2 * jj)) & 3;
                    if (q3) u += (((rec[head + 1024 + wo] >> (4 * h + jj)) & 1) << 2) - 4;
                    dot[e / 16] += u * q8[e];
                }
                int32_t isum = 0, imin = 0;
                for (int gi = 0; gi < 16; gi++) {
                    isum += (q3 ? (int32_t)(int8_t)rec[64 + 16 * gi + r] : (int32_t)rec[64 + 16 * gi + r]) * dot[gi];
                    if (!q3) imin += (int32_t)rec[320 + 16 * gi + r] * (int16_t)pl_ld_u16(ab + 260 + 2 * gi);
                }
                const float ad = pl_ld_f32(ab);
                if (q3) sum += (ad * pl_ld_fp16(rec + 2 * r)) * (float)isum;
                else sum += (ad * pl_ld_fp16(rec + 2 * r)) * (float)isum - (ad * pl_ld_fp16(rec + 32 + 2 * r)) * (float)imin;
            }
            out[(size_t)j * os + i] = sum;
        }
    }
}
static void q3_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    q23_k_gemm_packed(1, n, nr, nc, w, a, as, out, os);
}
static void q2_k_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    q23_k_gemm_packed(0, n, nr, nc, w, a, as, out, os);
}

void pl_kernels_add_packed_kquants(pl_kernels *k) {
    pl_type_traits *t = &k->types[PL_TYPE_Q4_K];
    t->repack = q4_k_repack;
    t->gemm_packed = q4_k_gemm_packed;
    t->packed_group_bytes = q4_k_packed_group_bytes;
    t = &k->types[PL_TYPE_Q5_K];
    t->repack = q5_k_repack;
    t->gemm_packed = q5_k_gemm_packed;
    t->packed_group_bytes = q5_k_packed_group_bytes;
    t = &k->types[PL_TYPE_Q2_K];
    t->repack = q2_k_repack;
    t->gemm_packed = q2_k_gemm_packed;
    t->packed_group_bytes = q2_k_packed_group_bytes;
    t = &k->types[PL_TYPE_Q3_K];
    t->repack = q3_k_repack;
    t->gemm_packed = q3_k_gemm_packed;
    t->packed_group_bytes = q3_k_packed_group_bytes;
    t = &k->types[PL_TYPE_IQ4_XS];
    t->repack = iq4_xs_repack;
    t->gemm_packed = iq4_xs_gemm_packed;
    t->packed_group_bytes = iq4_xs_packed_group_bytes;
    t = &k->types[PL_TYPE_Q6_K];
    t->repack = q6_k_repack;
    t->gemm_packed = q6_k_gemm_packed;
    t->packed_group_bytes = q6_k_packed_group_bytes;
}
