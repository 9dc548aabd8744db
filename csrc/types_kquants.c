/* types_kquants.c: the scalar reference of the GGUF weight types pyllm reads but does not write
 * (yet): Q4_1, Q5_0, Q5_1 (32-weight blocks), llama.cpp's K-quants Q2_K..Q6_K and IQ4_XS (256-weight
 * super-blocks), IQ4_NL. Dequantization follows ggml's block layouts and arithmetic (float32, the
 * same operations in the same order, so the values equal gguf-py's numpy reference bit for bit:
 * tests/test_kquants.py). The matmul: the K-quants (Q2_K..Q6_K) and IQ4_XS multiply Q8_K
 * activations, the 32-weight types Q8_0 activations, with exact integer sums per block (the
 * references below; kquant_dots_avx2.h is the SIMD twin of most, bit-identical), so results do not
 * depend on the batch. Q2_K..Q6_K and IQ4_XS also have packed layouts (kquant_packed.c), which a model's
 * weights of these types take at load. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tensor_types.h"

#define QK_K 256


/* ---- 32-weight blocks ---- */
/* Q4_1: d, m (fp16), 16 bytes of nibbles; value = q * d + m */
static void q4_1_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / 32; i++, b += 20, y += 32) {
        const float d = pl_ld_fp16(b), m = pl_ld_fp16(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(qs[j] & 0x0F) * d + m;
            y[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

/* Q5_0: d, 32 high bits, 16 bytes of nibbles; value = (q - 16) * d */
static void q5_0_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / 32; i++, b += 22, y += 32) {
        const float d = pl_ld_fp16(b);
        const uint32_t qh = pl_ld_u32(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            const uint8_t h0 = (uint8_t)(((qh >> j) << 4) & 0x10), h1 = (uint8_t)((qh >> (j + 12)) & 0x10);
            y[j] = (float)(((qs[j] & 0x0F) | h0) - 16) * d;
            y[j + 16] = (float)(((qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

/* Q5_1: d, m, 32 high bits, 16 bytes of nibbles; value = q * d + m */
static void q5_1_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / 32; i++, b += 24, y += 32) {
        const float d = pl_ld_fp16(b), m = pl_ld_fp16(b + 2);
        const uint32_t qh = pl_ld_u32(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            const uint8_t h0 = (uint8_t)(((qh >> j) << 4) & 0x10), h1 = (uint8_t)((qh >> (j + 12)) & 0x10);
            y[j] = (float)((qs[j] & 0x0F) | h0) * d + m;
            y[j + 16] = (float)((qs[j] >> 4) | h1) * d + m;
        }
    }
}

/* IQ4_NL: d, 16 bytes of nibbles indexing a fixed non-linear table */
const int8_t pl_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static void iq4_nl_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / 32; i++, b += 18, y += 32) {
        const float d = pl_ld_fp16(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)pl_iq4nl_values[qs[j] & 0x0F];
            y[j + 16] = d * (float)pl_iq4nl_values[qs[j] >> 4];
        }
    }
}

/* ---- 256-weight super-blocks (K-quants) ---- */
/* Q2_K (84 bytes): scales[16] (4-bit scale, 4-bit min per 16 weights), qs[64] (2-bit), d, dmin */
static void q2_k_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / QK_K; i++, b += 84) {
        const uint8_t *sc = b, *q = b + 16;
        const float d = pl_ld_fp16(b + 80), dmin = pl_ld_fp16(b + 82);
        int is = 0;
        for (int h = 0; h < QK_K; h += 128, q += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int part = 0; part < 2; part++) {
                    const uint8_t s = sc[is++];
                    const float dl = d * (float)(s & 0x0F), ml = dmin * (float)(s >> 4);
                    for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[l + 16 * part] >> shift) & 3) - ml;
                }
    }
}

/* the 16 signed scales of a Q3_K super-block (6 bits - 32: low 4 bits, then 2 high bits from bytes 8..11) */
void pl_q3_k_scales(const uint8_t *s, int8_t *scales) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? (s[j] & 0x0F) : (s[j - 8] >> 4);
        const int hi = (s[8 + (j % 4)] >> (2 * (j / 4))) & 3;
        scales[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* Q3_K (110 bytes): hmask[32] (high bit), qs[64] (low 2 bits), scales[12] (16 6-bit scales), d */
static void q3_k_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / QK_K; i++, b += 110) {
        const uint8_t *hm = b, *q = b + 32, *s = b + 96;
        const float d = pl_ld_fp16(b + 108);
        int8_t scales[16];
        pl_q3_k_scales(s, scales);
        int is = 0;
        uint8_t m = 1;
        for (int h = 0; h < QK_K; h += 128, q += 32)
            for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                for (int part = 0; part < 2; part++) {
                    const float dl = d * (float)scales[is++];
                    for (int l = 0; l < 16; l++) {
                        const int k = l + 16 * part;
                        *y++ = dl * (float)(((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4));
                    }
                }
    }
}

/* the 6-bit scale and min of sub-block j of Q4_K / Q5_K (12 bytes for 8 pairs) */
static void scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Q4_K (144 bytes): d, dmin, scales[12], qs[128]; value = d * sc * q - dmin * m per 32 weights */
static void q4_k_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / QK_K; i++, b += 144) {
        const float d = pl_ld_fp16(b), dmin = pl_ld_fp16(b + 2);
        const uint8_t *scales = b + 4, *q = b + 16;
        for (int j = 0, is = 0; j < QK_K; j += 64, q += 32, is += 2) {
            uint8_t sc, m;
            scale_min_k4(is, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0x0F) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* Q5_K (176 bytes): d, dmin, scales[12], qh[32] (5th bits), qs[128] */
static void q5_k_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / QK_K; i++, b += 176) {
        const float d = pl_ld_fp16(b), dmin = pl_ld_fp16(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
        uint8_t u1 = 1, u2 = 2;
        for (int j = 0, is = 0; j < QK_K; j += 64, ql += 32, is += 2, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            scale_min_k4(is, scales, &sc, &m);
            const float d1 = d * (float)sc, m1 = dmin * (float)m;
            scale_min_k4(is + 1, scales, &sc, &m);
            const float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((ql[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

/* Q6_K (210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d */
static void q6_k_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / QK_K; i++, b += 210) {
        const float d = pl_ld_fp16(b + 208);
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        for (int h = 0; h < QK_K; h += 128, y += 128, ql += 64, qh += 32, sc += 8)
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
    }
}

/* IQ4_XS (136 bytes): d, scales_h (2 high bits per 32 weights), scales_l[4] (4 low bits), qs[128] */
static void iq4_xs_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / QK_K; i++, b += 136) {
        const float d = pl_ld_fp16(b);
        const uint16_t sh = pl_ld_u16(b + 2);
        const uint8_t *sl = b + 4, *qs = b + 8;
        for (int ib = 0; ib < QK_K / 32; ib++, y += 32, qs += 16) {
            const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((sh >> (2 * ib)) & 3) << 4);
            const float dl = d * (float)(ls - 32);
            for (int j = 0; j < 16; j++) {
                y[j] = dl * (float)pl_iq4nl_values[qs[j] & 0x0F];
                y[j + 16] = dl * (float)pl_iq4nl_values[qs[j] >> 4];
            }
        }
    }
}


/* ---- Q8_K activations and the integer dot products of Q4_K / Q6_K weights with them ----
 * The reference every SIMD version equals bit for bit: per super-block the integer sums are exact
 * (int32), and the float arithmetic is the same operations in the same order:
 *   Q4_K: sum += (a.d * d) * (float)isum - (a.d * dmin) * (float)imin,
 *         isum = sum over the 8 sub-blocks of scale_j * dot(q4, q8), imin = sum_j min_j * sum(q8 of j)
 *   Q6_K: sum += (a.d * d) * (float)isum, isum = sum over the 16 groups of scale_g * dot(q6 - 32, q8) */
static void q8_k_from_float(const float *x, void *vy, int64_t n) {
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        pl_block_q8_k b;
        float amax = 0.0f;
        for (int j = 0; j < QK_K; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b.d = d;
        for (int j = 0; j < QK_K; j++) b.qs[j] = (int8_t)roundf(x[j] * id);
        for (int g = 0; g < QK_K / 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += b.qs[16 * g + j];
            b.bsums[g] = (int16_t)s;
        }
        memcpy((char *)vy + (size_t)i * sizeof(pl_block_q8_k), &b, sizeof b);
    }
}

static void q8_k_to_float(const void *vx, float *y, int64_t n) {
    for (int64_t i = 0; i < n / QK_K; i++) {
        const char *b = (const char *)vx + (size_t)i * sizeof(pl_block_q8_k);
        const float d = pl_ld_f32(b);
        for (int j = 0; j < QK_K; j++) y[i * QK_K + j] = d * (float)(int8_t)b[4 + j];
    }
}

/* Q4_K (has_qh 0: 144-byte blocks) and Q5_K (1: 176 bytes; a fifth bit per weight, bit j of qh[l] for
 * sub-block j) x Q8_K */
static inline void q45_k_vec_dot(int n, float *s, const void *vw, const void *va, const int has_qh) {
    const uint8_t *w = vw;
    const char *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++, w += has_qh ? 176 : 144, a += sizeof(pl_block_q8_k)) {
        const uint8_t *qh = w + 16, *ql = w + (has_qh ? 48 : 16);
        const int8_t *q8 = (const int8_t *)(a + 4);
        int32_t isum = 0, imin = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            scale_min_k4(j, w + 4, &sc, &m);
            const uint8_t *q = ql + 32 * (j / 2);
            int32_t dot = 0;
            for (int l = 0; l < 32; l++) {
                const int v = ((j & 1) ? q[l] >> 4 : q[l] & 0x0F) + (has_qh ? ((qh[l] >> j) & 1) << 4 : 0);
                dot += v * q8[32 * j + l];
            }
            isum += (int32_t)sc * dot;
            imin += (int32_t)m * ((int16_t)pl_ld_u16(a + 260 + 4 * j) + (int16_t)pl_ld_u16(a + 262 + 4 * j));
        }
        const float ad = pl_ld_f32(a);
        sum += (ad * pl_ld_fp16(w)) * (float)isum - (ad * pl_ld_fp16(w + 2)) * (float)imin;
    }
    *s = sum;
}
static void q4_k_vec_dot(int n, float *s, const void *w, const void *a) { q45_k_vec_dot(n, s, w, a, 0); }
static void q5_k_vec_dot(int n, float *s, const void *w, const void *a) { q45_k_vec_dot(n, s, w, a, 1); }

/* IQ4_XS x Q8_K: isum = sum over the 8 blocks of 32 of (ls - 32) x dot(kvalues[q], q8) */
static void iq4_xs_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++, w += 136, a += sizeof(pl_block_q8_k)) {
        const uint16_t sh = pl_ld_u16(w + 2);
        const uint8_t *sl = w + 4, *qs = w + 8;
        const int8_t *q8 = (const int8_t *)(a + 4);
        int32_t isum = 0;
        for (int ib = 0; ib < 8; ib++, qs += 16, q8 += 32) {
            const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0F) | (((sh >> (2 * ib)) & 3) << 4);
            int32_t dot = 0;
            for (int j = 0; j < 16; j++)
                dot += pl_iq4nl_values[qs[j] & 0x0F] * q8[j] + pl_iq4nl_values[qs[j] >> 4] * q8[j + 16];
            isum += (ls - 32) * dot;
        }
        sum += (pl_ld_f32(a) * pl_ld_fp16(w)) * (float)isum;
    }
    *s = sum;
}

/* Q2_K x Q8_K: 16 groups of 16, value = d * (sc & 15) * q - dmin * (sc >> 4), q = 2 bits of
 * qs[32 h + i] at shift 2 j for element 128 h + 32 j + i */
static void q2_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++, w += 84, a += sizeof(pl_block_q8_k)) {
        const int8_t *q8 = (const int8_t *)(a + 4);
        int32_t isum = 0, imin = 0;
        for (int g = 0; g < 16; g++) {
            const int h = g / 8, j = (g % 8) / 2, i0 = 16 * (g % 2);
            int32_t dot = 0;
            for (int l = 0; l < 16; l++) dot += ((w[16 + 32 * h + i0 + l] >> (2 * j)) & 3) * q8[16 * g + l];
            isum += (int32_t)(w[g] & 0x0F) * dot;
            imin += (int32_t)(w[g] >> 4) * (int16_t)pl_ld_u16(a + 260 + 2 * g);
        }
        const float ad = pl_ld_f32(a);
        sum += (ad * pl_ld_fp16(w + 80)) * (float)isum - (ad * pl_ld_fp16(w + 82)) * (float)imin;
    }
    *s = sum;
}

/* Q3_K x Q8_K: 16 groups of 16, value = d * scale * (u - 4), u = the 2 bits of Q2_K's place plus 4 x
 * bit (4 h + j) of hmask[i] for element 128 h + 32 j + i */
static void q3_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++, w += 110, a += sizeof(pl_block_q8_k)) {
        int8_t sc[16];
        pl_q3_k_scales(w + 96, sc);
        const int8_t *q8 = (const int8_t *)(a + 4);
        int32_t isum = 0;
        for (int g = 0; g < 16; g++) {
            const int h = g / 8, j = (g % 8) / 2, i0 = 16 * (g % 2);
            int32_t dot = 0;
            for (int l = 0; l < 16; l++) {
                const int u = ((w[32 + 32 * h + i0 + l] >> (2 * j)) & 3) | (((w[i0 + l] >> (4 * h + j)) & 1) << 2);
                dot += (u - 4) * q8[16 * g + l];
            }
            isum += (int32_t)sc[g] * dot;
        }
        sum += (pl_ld_f32(a) * pl_ld_fp16(w + 108)) * (float)isum;
    }
    *s = sum;
}

/* the 256 values of a Q6_K super-block as unsigned 6-bit numbers (value + 32), in element order */
static void q6_k_unpack(const uint8_t *b, uint8_t *q) {
    const uint8_t *ql = b, *qh = b + 128;
    for (int h = 0; h < 2; h++, ql += 64, qh += 32, q += 128)
        for (int l = 0; l < 32; l++) {
            q[l] = (uint8_t)((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4));
            q[l + 32] = (uint8_t)((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4));
            q[l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
            q[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
        }
}

static void q6_k_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw;
    const char *a = va;
    float sum = 0.0f;
    for (int i = 0; i < n / QK_K; i++, w += 210, a += sizeof(pl_block_q8_k)) {
        uint8_t q[QK_K];
        q6_k_unpack(w, q);
        const int8_t *q8 = (const int8_t *)(a + 4), *sc = (const int8_t *)(w + 192);
        int32_t isum = 0;
        for (int g = 0; g < 16; g++) {
            int32_t dot = 0;
            for (int l = 0; l < 16; l++) dot += ((int32_t)q[16 * g + l] - 32) * q8[16 * g + l];
            isum += (int32_t)sc[g] * dot;
        }
        sum += (pl_ld_f32(a) * pl_ld_fp16(w + 208)) * (float)isum;
    }
    *s = sum;
}

/* ---- the 32-weight types x Q8_0 activations (fp16 d, 32 int8), exact integer sums per block:
 *   Q5_0 / IQ4_NL: sum += (float)isum * (d * d8), isum = dot(value, q8) (value = q - 16 / the table's)
 *   Q4_1 / Q5_1:   sum += (float)isum * (d * d8) + (float)sum8 * (m * d8), sum8 = sum(q8) */
static int q5_bit(const uint8_t *qh4, int e) { return (int)((pl_ld_u32(qh4) >> e) & 1); }

static void q5_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 22, a += 34) {
        const int8_t *q8 = (const int8_t *)(a + 2);
        int32_t isum = 0;
        for (int j = 0; j < 16; j++) {
            isum += (((w[6 + j] & 0x0F) | (q5_bit(w + 2, j) << 4)) - 16) * q8[j];
            isum += (((w[6 + j] >> 4) | (q5_bit(w + 2, j + 16) << 4)) - 16) * q8[j + 16];
        }
        sum += (float)isum * (pl_ld_fp16(w) * pl_ld_fp16(a));
    }
    *s = sum;
}

static void iq4_nl_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 18, a += 34) {
        const int8_t *q8 = (const int8_t *)(a + 2);
        int32_t isum = 0;
        for (int j = 0; j < 16; j++)
            isum += pl_iq4nl_values[w[2 + j] & 0x0F] * q8[j] + pl_iq4nl_values[w[2 + j] >> 4] * q8[j + 16];
        sum += (float)isum * (pl_ld_fp16(w) * pl_ld_fp16(a));
    }
    *s = sum;
}

static void q4_1_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 20, a += 34) {
        const int8_t *q8 = (const int8_t *)(a + 2);
        int32_t isum = 0, sum8 = 0;
        for (int j = 0; j < 16; j++) {
            isum += (w[4 + j] & 0x0F) * q8[j] + (w[4 + j] >> 4) * q8[j + 16];
            sum8 += q8[j] + q8[j + 16];
        }
        const float d8 = pl_ld_fp16(a);
        sum += (float)isum * (pl_ld_fp16(w) * d8) + (float)sum8 * (pl_ld_fp16(w + 2) * d8);
    }
    *s = sum;
}

static void q5_1_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = vw, *a = va;
    float sum = 0.0f;
    for (int b = 0; b < n / 32; b++, w += 24, a += 34) {
        const int8_t *q8 = (const int8_t *)(a + 2);
        int32_t isum = 0, sum8 = 0;
        for (int j = 0; j < 16; j++) {
            isum += ((w[8 + j] & 0x0F) | (q5_bit(w + 4, j) << 4)) * q8[j];
            isum += ((w[8 + j] >> 4) | (q5_bit(w + 4, j + 16) << 4)) * q8[j + 16];
            sum8 += q8[j] + q8[j + 16];
        }
        const float d8 = pl_ld_fp16(a);
        sum += (float)isum * (pl_ld_fp16(w) * d8) + (float)sum8 * (pl_ld_fp16(w + 2) * d8);
    }
    *s = sum;
}

/* no from_float: these types are not written yet */
void pl_kernels_add_read_only_types(pl_kernels *k) {
    k->types[PL_TYPE_Q4_1] = (pl_type_traits){"q4_1", 32, 20, PL_TYPE_Q8_0, q4_1_to_float, NULL, q4_1_vec_dot, NULL};
    k->types[PL_TYPE_Q5_0] = (pl_type_traits){"q5_0", 32, 22, PL_TYPE_Q8_0, q5_0_to_float, NULL, q5_0_vec_dot, NULL};
    k->types[PL_TYPE_Q5_1] = (pl_type_traits){"q5_1", 32, 24, PL_TYPE_Q8_0, q5_1_to_float, NULL, q5_1_vec_dot, NULL};
    k->types[PL_TYPE_IQ4_NL] =
        (pl_type_traits){"iq4_nl", 32, 18, PL_TYPE_Q8_0, iq4_nl_to_float, NULL, iq4_nl_vec_dot, NULL};
    k->types[PL_TYPE_Q2_K] = (pl_type_traits){"q2_k", QK_K, 84, PL_TYPE_Q8_K, q2_k_to_float, NULL, q2_k_vec_dot, NULL};
    k->types[PL_TYPE_Q3_K] = (pl_type_traits){"q3_k", QK_K, 110, PL_TYPE_Q8_K, q3_k_to_float, NULL, q3_k_vec_dot, NULL};
    k->types[PL_TYPE_Q4_K] = (pl_type_traits){"q4_k", QK_K, 144, PL_TYPE_Q8_K, q4_k_to_float, NULL, q4_k_vec_dot, NULL};
    k->types[PL_TYPE_Q5_K] = (pl_type_traits){"q5_k", QK_K, 176, PL_TYPE_Q8_K, q5_k_to_float, NULL, q5_k_vec_dot, NULL};
    k->types[PL_TYPE_Q6_K] = (pl_type_traits){"q6_k", QK_K, 210, PL_TYPE_Q8_K, q6_k_to_float, NULL, q6_k_vec_dot, NULL};
    k->types[PL_TYPE_Q8_K] = (pl_type_traits){"q8_k", QK_K, sizeof(pl_block_q8_k), PL_TYPE_Q8_K, q8_k_to_float,
                                              q8_k_from_float, NULL, NULL};
    k->types[PL_TYPE_IQ4_XS] =
        (pl_type_traits){"iq4_xs", QK_K, 136, PL_TYPE_Q8_K, iq4_xs_to_float, NULL, iq4_xs_vec_dot, NULL};
}
