/* types_scalar.c: the scalar reference for every weight type (conversion, quantization, dot
 * products) and for the fp32 helpers. These functions are the definition the SIMD kernels in
 * kernels_avx2.c / kernels_avx512.c are tested against; keep them simple and exact. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ops.h"
#include "tensor_types.h"

static inline float bits_to_fp32(uint32_t w) {
    union { uint32_t u; float f; } v;
    v.u = w;
    return v.f;
}
static inline uint32_t fp32_to_bits(float f) {
    union { float f; uint32_t u; } v;
    v.f = f;
    return v.u;
}

/* IEEE half -> float, exact, branch-light (denormals handled by a magic-number subtraction). */
float pl_fp16_to_fp32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = bits_to_fp32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = bits_to_fp32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t r = sign | (two_w < (1u << 27) ? fp32_to_bits(denormalized) : fp32_to_bits(normalized));
    return bits_to_fp32(r);
}

/* float -> IEEE half, round to nearest even, overflow to inf, NaN kept NaN. */
uint16_t pl_fp32_to_fp16(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = fp32_to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = bits_to_fp32((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = fp32_to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

uint16_t pl_fp32_to_bf16(float f) {
    uint32_t u = fp32_to_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* Rows may sit at any byte offset (pl_ld_u16 / pl_ld_f32 / pl_st_u16, tensor_types.h). Blocks are
 * addressed as bytes: block b at b * sizeof(block), its fp16 d at offset 0, its quants at
 * offsetof(..., qs). */
#define Q8_BYTES sizeof(pl_block_q8_0)
#define Q4_BYTES sizeof(pl_block_q4_0)
#define Q8_QS offsetof(pl_block_q8_0, qs)
#define Q4_QS offsetof(pl_block_q4_0, qs)

/* ---- F32 ---- */
static void f32_to_float(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }
static void f32_from_float(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }
static void f32_vec_dot(int n, float *s, const void *w, const void *a) {
    const char *x = (const char *)w, *y = (const char *)a;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += pl_ld_f32(x + 4 * (size_t)i) * pl_ld_f32(y + 4 * (size_t)i);
    *s = sum;
}

/* ---- F16 ---- */
static void f16_to_float(const void *x, float *y, int64_t n) {
    const char *h = (const char *)x;
    for (int64_t i = 0; i < n; i++) y[i] = pl_ld_fp16(h + 2 * i);
}
static void f16_from_float(const float *x, void *y, int64_t n) {
    char *h = (char *)y;
    for (int64_t i = 0; i < n; i++) pl_st_u16(h + 2 * i, pl_fp32_to_fp16(x[i]));
}
static void f16_vec_dot(int n, float *s, const void *w, const void *a) {
    const char *x = (const char *)w, *y = (const char *)a;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += pl_ld_fp16(x + 2 * (size_t)i) * pl_ld_f32(y + 4 * (size_t)i);
    *s = sum;
}

/* ---- BF16 ---- */
static void bf16_to_float(const void *x, float *y, int64_t n) {
    const char *h = (const char *)x;
    for (int64_t i = 0; i < n; i++) y[i] = pl_bf16_to_fp32(pl_ld_u16(h + 2 * i));
}
static void bf16_from_float(const float *x, void *y, int64_t n) {
    char *h = (char *)y;
    for (int64_t i = 0; i < n; i++) pl_st_u16(h + 2 * i, pl_fp32_to_bf16(x[i]));
}
static void bf16_vec_dot(int n, float *s, const void *w, const void *a) {
    const char *x = (const char *)w, *y = (const char *)a;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += pl_bf16_to_fp32(pl_ld_u16(x + 2 * (size_t)i)) * pl_ld_f32(y + 4 * (size_t)i);
    *s = sum;
}

/* ---- Q8_0: d = max|x| / 127, q = round-half-away(x / d) ---- */
static void q8_0_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const float *xb = x + b * PL_QK;
        uint8_t *yb = y + (size_t)b * Q8_BYTES;
        float amax = 0.0f;
        for (int j = 0; j < PL_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        pl_st_u16(yb, pl_fp32_to_fp16(d));
        for (int j = 0; j < PL_QK; j++) yb[Q8_QS + j] = (uint8_t)(int8_t)roundf(xb[j] * id);
    }
}
static void q8_0_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *x = (const uint8_t *)vx;
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *xb = x + (size_t)b * Q8_BYTES;
        const float d = pl_ld_fp16(xb);
        for (int j = 0; j < PL_QK; j++) y[b * PL_QK + j] = (int8_t)xb[Q8_QS + j] * d;
    }
}
static void q8_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;
    float sum = 0.0f;
    for (int b = 0; b < n / PL_QK; b++) {
        const uint8_t *wb = w + (size_t)b * Q8_BYTES, *ab = a + (size_t)b * Q8_BYTES;
        int32_t isum = 0;
        for (int j = 0; j < PL_QK; j++) isum += (int32_t)(int8_t)wb[Q8_QS + j] * (int32_t)(int8_t)ab[Q8_QS + j];
        sum += (float)isum * (pl_ld_fp16(wb) * pl_ld_fp16(ab));
    }
    *s = sum;
}

/* ---- Q4_0: d = (value of max |x|) / -8, q = min(15, trunc(x / d + 8.5)) ---- */
static void q4_0_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = (uint8_t *)vy;
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const float *xb = x + b * PL_QK;
        uint8_t *yb = y + (size_t)b * Q4_BYTES;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < PL_QK; j++) {
            if (amax < fabsf(xb[j])) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        pl_st_u16(yb, pl_fp32_to_fp16(d));
        for (int j = 0; j < PL_QK / 2; j++) {
            const float x0 = xb[j] * id, x1 = xb[j + PL_QK / 2] * id;
            const int q0 = (int)(x0 + 8.5f), q1 = (int)(x1 + 8.5f);
            yb[Q4_QS + j] = (uint8_t)((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
        }
    }
}
static void q4_0_to_float(const void *vx, float *y, int64_t n) {
    const uint8_t *x = (const uint8_t *)vx;
    for (int64_t b = 0; b < n / PL_QK; b++) {
        const uint8_t *xb = x + (size_t)b * Q4_BYTES;
        const float d = pl_ld_fp16(xb);
        for (int j = 0; j < PL_QK / 2; j++) {
            y[b * PL_QK + j] = ((xb[Q4_QS + j] & 0x0F) - 8) * d;
            y[b * PL_QK + j + PL_QK / 2] = ((xb[Q4_QS + j] >> 4) - 8) * d;
        }
    }
}
static void q4_0_vec_dot(int n, float *s, const void *vw, const void *va) {
    const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;
    float sum = 0.0f;
    for (int b = 0; b < n / PL_QK; b++) {
        const uint8_t *wb = w + (size_t)b * Q4_BYTES, *ab = a + (size_t)b * Q8_BYTES;
        int32_t isum = 0;
        for (int j = 0; j < PL_QK / 2; j++) {
            isum += ((wb[Q4_QS + j] & 0x0F) - 8) * (int32_t)(int8_t)ab[Q8_QS + j];
            isum += ((wb[Q4_QS + j] >> 4) - 8) * (int32_t)(int8_t)ab[Q8_QS + j + PL_QK / 2];
        }
        sum += (float)isum * (pl_ld_fp16(wb) * pl_ld_fp16(ab));
    }
    *s = sum;
}

/* ---- packed Q4_0 / Q8_0 (layout: tensor_types.h). The reference repack, activation packing and
 * gemm; the gemm does exactly the unpacked vec_dot's arithmetic, in the same order. ---- */
#define PK PL_PACK_ROWS

/* 0 for n <= 0, n not whole blocks, or a byte count past what a size_t holds */
static size_t q_packed_group_bytes(int qb, int64_t n) {
    if (n <= 0 || n % PL_QK) return 0;
    const size_t nb = (size_t)(n / PL_QK);
    if (nb > SIZE_MAX / (64 + PK * 32)) return 0;
    return (nb + 1) / 2 * 64 + nb * PK * (size_t)qb;
}
static size_t q4_0_packed_group_bytes(int64_t n) { return q_packed_group_bytes(16, n); }
static size_t q8_0_packed_group_bytes(int64_t n) { return q_packed_group_bytes(32, n); }

size_t pl_packed_group_bytes(pl_type t, int64_t n) {
    if (!pl_type_valid((int)t)) return 0;
    const pl_packed_bytes_fn f = pl_kernels_active()->types[t].packed_group_bytes;
    return f ? f(n) : 0;
}

size_t pl_packed_act_bytes(pl_type t, int64_t n) {
    if (!pl_type_valid((int)t)) return 0;
    const pl_type_traits *tt = &pl_kernels_active()->types[t];
    return tt->packed_act_bytes ? tt->packed_act_bytes(n) : pl_type_row_bytes(tt->act_type, n);
}

void pl_pack_acts_row(const pl_kernels *K, pl_type t, const float *x, void *dst, int64_t n) {
    const pl_type_traits *tt = &K->types[t];
    const pl_from_float_fn conv = K->types[tt->act_type].from_float;
    if (tt->pack_act) tt->pack_act(conv, x, dst, n);
    else conv(x, dst, n);
}

size_t pl_packed_act_row_bytes(int64_t n) {
    if (n <= 0 || n % PL_QK) return 0;
    const size_t nb = (size_t)(n / PL_QK);
    if (nb > (SIZE_MAX - 4 * 64) / (sizeof(pl_block_q8_0) + 3 * 4)) return 0; /* never for an int64 n */
    return pl_round64(nb * sizeof(pl_block_q8_0)) + 3 * pl_round64(nb * 4);
}

void pl_pack_act_row(pl_from_float_fn q8_from_float, const float *x, void *dst, int64_t n) {
    const size_t nb = (size_t)(n / PL_QK), ad = pl_round64(nb * 4);
    uint8_t *y = (uint8_t *)dst;
    q8_from_float(x, y, n);
    float *d = (float *)(y + pl_round64(nb * sizeof(pl_block_q8_0)));
    int32_t *c4 = (int32_t *)((uint8_t *)d + ad), *c8 = (int32_t *)((uint8_t *)d + 2 * ad);
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *blk = y + b * sizeof(pl_block_q8_0);
        uint16_t dh;
        memcpy(&dh, blk, 2);
        int32_t s = 0;
        for (int j = 0; j < PL_QK; j++) s += (int8_t)blk[2 + j];
        d[b] = pl_fp16_to_fp32(dh);
        c4[b] = -8 * s;
        c8[b] = -128 * s;
    }
}

/* qb: quant bytes per block (16 or 32); x: byte mask applied to the quants (0 or 0x80). Moves 4-byte
 * words (the unit of the layout); the destination is written in order. */
static void repack_rows(int qb, uint32_t x, const void *vsrc, size_t ss, int nrows, int64_t n, void *vdst) {
    const uint8_t *src = (const uint8_t *)vsrc;
    uint8_t *dst = (uint8_t *)vdst;
    const size_t nb = (size_t)(n / PL_QK), bs = 2 + (size_t)qb;
    const int nv = qb / 4;
    for (size_t b = 0; b < nb; b++) {
        if (b % 2 == 0) { /* the pair's scales: block b's 16, then block b+1's (zero past the end) */
            uint16_t d[2 * PK];
            memset(d, 0, sizeof(d));
            for (size_t h = 0; h < 2 && b + h < nb; h++)
                for (int r = 0; r < nrows; r++) memcpy(&d[PK * h + r], src + r * ss + (b + h) * bs, 2);
            memcpy(dst + pl_pk_d((int64_t)b, qb), d, sizeof(d));
        }
        uint32_t q[8][PK]; /* [v][r] */
        for (int r = 0; r < PK; r++) {
            const uint8_t *sq = src + r * ss + b * bs + 2;
            for (int v = 0; v < nv; v++) {
                uint32_t w = 0;
                if (r < nrows) {
                    memcpy(&w, sq + 4 * v, 4);
                    w ^= x;
                }
                q[v][r] = w;
            }
        }
        memcpy(dst + pl_pk_q((int64_t)b, qb), q, (size_t)nv * sizeof(q[0]));
    }
}
static void q4_0_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) { repack_rows(16, 0, src, ss, nrows, n, dst); }
static void q8_0_repack(const void *src, size_t ss, int nrows, int64_t n, void *dst) { repack_rows(32, 0x80808080u, src, ss, nrows, n, dst); }

static void q_gemm_packed(int qt8, int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    const int nb = n / PL_QK, qb = qt8 ? 32 : 16;
    const size_t gb = q_packed_group_bytes(qb, n);
    for (int i = 0; i < nr; i++) {
        const uint8_t *g = (const uint8_t *)w + (size_t)(i / PK) * gb;
        const int r = i % PK;
        for (int j = 0; j < nc; j++) {
            const uint8_t *arow = (const uint8_t *)a + (size_t)j * as;
            float sum = 0.0f;
            for (int b = 0; b < nb; b++) {
                const uint8_t *q = g + pl_pk_q(b, qb) + 4 * r;
                const uint8_t *ab = arow + (size_t)b * Q8_BYTES, *aq = ab + Q8_QS;
                const uint16_t dh = pl_ld_u16(g + pl_pk_d(b, qb) + 2 * r);
                int32_t isum = 0;
                for (int v = 0; v < qb / 4; v++)
                    for (int k = 0; k < 4; k++) {
                        const uint8_t byte = q[64 * v + k];
                        const int jj = 4 * v + k;
                        if (qt8) isum += (int32_t)(int8_t)(byte ^ 0x80) * (int32_t)(int8_t)aq[jj];
                        else isum += ((byte & 0x0F) - 8) * (int32_t)(int8_t)aq[jj] + ((byte >> 4) - 8) * (int32_t)(int8_t)aq[jj + 16];
                    }
                sum += (float)isum * (pl_fp16_to_fp32(dh) * pl_ld_fp16(ab));
            }
            out[(size_t)j * os + i] = sum;
        }
    }
}
static void q4_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    q_gemm_packed(0, n, nr, nc, w, a, as, out, os);
}
static void q8_0_gemm_packed(int n, int nr, int nc, const void *w, const void *a, size_t as, float *out, size_t os) {
    q_gemm_packed(1, n, nr, nc, w, a, as, out, os);
}

/* ---- fp32 helpers. gemm_nn / softmax / swiglu are the forward's (attention, MLP); dot_f32 and
 * axpy_f32 are no longer called by the engine (attention uses the type gemm kernels and gemm_nn):
 * they stay as kernel-table entries that tests/test_kernels.py checks per ISA. ---- */
static float dot_f32_scalar(int n, const float *a, const float *b) {
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}
static void axpy_f32_scalar(int n, float alpha, const float *x, float *y) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

static void gemm_nn_f32_scalar(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                               size_t ldc) {
    for (int i = 0; i < m; i++) {
        float *ci = c + (size_t)i * ldc;
        for (int j = 0; j < n; j++) ci[j] = 0.0f;
        for (int p = 0; p < k; p++) {
            const float aip = a[(size_t)i * lda + p];
            const float *bp = b + (size_t)p * ldb;
            for (int j = 0; j < n; j++) ci[j] += aip * bp[j];
        }
    }
}
static void softmax_f32_scalar(float *x, int n, float scale) {
    for (int i = 0; i < n; i++) x[i] *= scale;
    pl_softmax(x, n);
}

void pl_kernels_init_scalar(pl_kernels *k) {
    memset(k, 0, sizeof(*k));
    k->isa = "scalar";
    k->types[PL_TYPE_F32] = (pl_type_traits){"f32", 1, 4, PL_TYPE_F32, f32_to_float, f32_from_float, f32_vec_dot, NULL};
    k->types[PL_TYPE_F16] = (pl_type_traits){"f16", 1, 2, PL_TYPE_F32, f16_to_float, f16_from_float, f16_vec_dot, NULL};
    k->types[PL_TYPE_BF16] = (pl_type_traits){"bf16", 1, 2, PL_TYPE_F32, bf16_to_float, bf16_from_float, bf16_vec_dot, NULL};
    k->types[PL_TYPE_Q8_0] = (pl_type_traits){"q8_0", PL_QK, sizeof(pl_block_q8_0), PL_TYPE_Q8_0, q8_0_to_float,
                                              q8_0_from_float, q8_0_vec_dot, NULL};
    k->types[PL_TYPE_Q4_0] = (pl_type_traits){"q4_0", PL_QK, sizeof(pl_block_q4_0), PL_TYPE_Q8_0, q4_0_to_float,
                                              q4_0_from_float, q4_0_vec_dot, NULL};
    /* the packed layouts (tensor_types.h); the SIMD tables override gemm_packed only */
    pl_type_traits *t = &k->types[PL_TYPE_Q8_0];
    t->repack = q8_0_repack;
    t->gemm_packed = q8_0_gemm_packed;
    t->packed_group_bytes = q8_0_packed_group_bytes;
    t->pack_act = pl_pack_act_row;
    t->packed_act_bytes = pl_packed_act_row_bytes;
    t = &k->types[PL_TYPE_Q4_0];
    t->repack = q4_0_repack;
    t->gemm_packed = q4_0_gemm_packed;
    t->packed_group_bytes = q4_0_packed_group_bytes;
    t->pack_act = pl_pack_act_row;
    t->packed_act_bytes = pl_packed_act_row_bytes;
    k->dot_f32 = dot_f32_scalar;
    k->axpy_f32 = axpy_f32_scalar;
    k->gemm_nn_f32 = gemm_nn_f32_scalar;
    k->softmax_f32 = softmax_f32_scalar;
    k->swiglu_f32 = pl_swiglu;
    pl_kernels_add_read_only_types(k);
    pl_kernels_add_packed_kquants(k);
    pl_kernels_add_packed_legacy(k);
}
