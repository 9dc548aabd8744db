/* quantize_kquants.c: the writers of Q4_1, Q5_0, Q5_1, IQ4_NL (32-weight blocks) and the K-quants
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS (256-weight super-blocks), in ggml's block layouts (the ones
 * types_kquants.c reads, so llama.cpp and gguf-py read them too).
 *
 * Two entry points per type:
 *   - from_float (the kernel tables' field): Q4_1 / Q5_0 / Q5_1 are ggml's reference quantizers
 *     (the same float operations, so the bytes equal gguf-py's numpy quantizer); the other types
 *     have no short reference in ggml, so their from_float is the search below with unit weights.
 *   - pl_kq_quantize_row(type, x, y, n, importance): the search, minimizing per block the weighted
 *     squared error  sum_j w_j (x_j - xhat_j)^2  (w_j = importance[column j], or 1), where xhat is the
 *     value a reader computes (fp16 scales and integer codes already rounded, the same float
 *     operations as the dequantization in types_kquants.c).
 *
 * The search (all deterministic: fixed candidate lists, fixed summation order, one row at a time):
 *   one level ("sym", value = d * L[q], L a level set: -16..15, -4..3, -32..31, or IQ4's table):
 *     the signed value M of largest magnitude is mapped near either end of L (d = M / (L_end * f),
 *     f in 0.8..1.2 in steps of 0.025, K-quant sub-blocks but Q6_K's 0.05), each d scored with nearest levels; then twice the least-squares d
 *     for the best levels; for an fp16 scale, d is rounded before scoring and its fp16 neighbours
 *     are tried too.
 *   one level with a minimum ("aff", value = a * q - b, q in 0..nmax): levels from
 *     (x - min) * (nmax + f) / (max - min), f in -1..1 in steps of 0.1 (K-quant sub-blocks 0.2), then the weighted least-squares
 *     (a, b) for those levels (b >= 0 when the type's minimum is stored unsigned), scored with the
 *     nearest levels of that (a, b); then twice refit on the best's levels.
 *   super-blocks: the sub-blocks' float (scale[, min]) are fitted as above; the fp16 super-scale(s)
 *     start at max / code_max (or the largest signed scale over either end of the code range for
 *     signed codes); then three rounds of (a) each sub-block's code(s) chosen among round(s / d) - 1
 *     .. + 1 (3 x 3 for scale and min) by the error of its requantized levels, (b) the least-squares
 *     fp16 super-scale(s) for those codes and levels. The best round is kept.
 *   Q4_1 / Q5_0 / Q5_1: the reference block is a candidate too, so the search is never worse than
 *     ggml's reference on any block (compared in double precision).
 *   Every search is never worse than the all-zero block either (tiny weights, whose scales fp16
 *   cannot hold). Weights beyond fp16's range (|x| around 1e6 and more): the search writes zeros
 *   where no finite scale exists (ggml's reference, and so from_float of Q4_1 / Q5_0 / Q5_1, writes
 *   an infinite scale there, as Q4_0's does).
 * A block (super-block) holding a non-finite value is written as all zeros (d = 0): a deterministic
 * encoding instead of undefined float-to-int conversions; not an error, as for Q4_0 / Q8_0 (whose
 * search keeps the reference block there). A block whose weights are all 0 uses unit weights.
 *
 * Measured against llama.cpp's quantizers (ggml_quantize_chunk of llama-cpp-python 0.3.36's
 * libggml-base; with the importance passed as its imatrix for the weighted figures).
 * (1) squared error, ours (the search) / llama.cpp's, on 2048 Gaussian rows of 256 (g) and 4096 rows
 *     of the shipped model's 256-wide matrices (m); plain, and weighted by a random importance
 *     0.05 + 4 u^2 (Q4_1 / Q5_0 / Q5_1's from_float is ggml's reference: 1.000 plain):
 *              plain g / m     weighted g / m
 *     Q4_1     0.785 / 0.780   0.976 / 0.981
 *     Q5_0     0.878 / 0.861   0.949 / 0.952
 *     Q5_1     0.779 / 0.778   0.975 / 0.977
 *     IQ4_NL   0.926 / 0.927   0.921 / 0.923
 *     Q2_K     0.776 / 0.824   0.943 / 0.959
 *     Q3_K     0.904 / 0.902   0.984 / 0.987
 *     Q4_K     0.958 / 0.962   0.969 / 0.972
 *     Q5_K     0.910 / 0.913   0.932 / 0.937
 *     Q6_K     0.867 / 0.878   0.864 / 0.873
 *     IQ4_XS   0.925 / 0.926   0.917 / 0.921
 * (2) mean KL-divergence against the unquantized shipped model on its held-out text
 *     (tests/fixtures/heldout_shakespeare.txt, 33 chunks of 256), every 2-D weight in the type
 *     (ffn_down, 704 wide, in Q8_0 for the 256-weight types), ours / llama.cpp's quantizer on the
 *     same tensors; without, then with the importance collected from the model's calibration.txt:
 *              no importance          importance
 *     Q4_1     0.0145 / 0.0189        0.0145 / 0.0162
 *     Q5_0     0.00470 / 0.00553      0.00472 / 0.00517
 *     Q5_1     0.00346 / 0.00424      0.00353 / 0.00374
 *     IQ4_NL   0.0135 / 0.0148        0.0135 / 0.0142
 *     Q2_K     0.219 / 0.247          0.205 / 0.221
 *     Q3_K     0.0544 / 0.0600        0.0538 / 0.0556
 *     Q4_K     0.0121 / 0.0125        0.0117 / 0.0123
 *     Q5_K     0.00319 / 0.00329      0.00319 / 0.00330
 *     Q6_K     0.000872 / 0.000985    0.000878 / 0.000930
 *     IQ4_XS   0.0137 / 0.0153        0.0141 / 0.0150
 * (stderr ~2-3% of each figure.) Speed, one core's CPU time per weight on the development machine
 * (x86-64 with AVX-512, the AVX2 build; the scalar (SSE2) build ~25% slower): Q4_K 37 ns, Q5_K 38, Q6_K 47,
 * Q3_K 44, Q2_K 75, IQ4_XS 52, IQ4_NL 60, Q5_0 35, Q4_1 / Q5_1 55: a 1.1B-weight model in about
 * 20-40 s on 2 free cores. */
#include <math.h>
#include <string.h>

#include "pyllm.h"

#ifndef KQ_ROW
#define KQ_ROW pl_kq_quantize_row_scalar
#endif
void pl_kq_quantize_row_scalar(int type, const float *x, void *y, int64_t n, const float *imp);
void pl_kq_quantize_row_avx2(int type, const float *x, void *y, int64_t n, const float *imp);

#define QK_K 256
/* the error loops are vectorized for any n; a clone specialized for n = 16 was not (GCC 12) */
#if defined(__GNUC__) && !defined(__clang__)
#define KQ_NOCLONE __attribute__((noipa))
#else
#define KQ_NOCLONE
#endif
#define KQ_QK 32
/* candidates per side of the grids: one-level fits (f in 0.8..1.2: steps of 0.2 / KQ_SYM_STEPS; levels
 * (nmax + f): steps of 1 / KQ_AFF_STEPS), and the K-quants' sub-block fits, whose codes are chosen
 * again afterwards (smaller grids: about twice as fast, the error measured within 0.5%; not Q6_K's,
 * whose 8-bit codes keep the sub-block scale: there the smaller grid cost 3%) */
#define KQ_SYM_STEPS 8
#define KQ_AFF_STEPS 10
#define KQ_SUB_SYM_STEPS 4
#define KQ_SUB_AFF_STEPS 5
#define KQ_LANES 8

static inline float kq_f16r(float v) { return pl_fp16_to_fp32(pl_fp32_to_fp16(v)); }
static inline int kq_usable(float d) { return d != 0.0f && isfinite(d) && isfinite(1.0f / d); }
static inline int kq_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
/* round to nearest, halves away from zero, for |v| < 2^30 (the callers clamp first) */
static inline int kq_round(float v) { return v >= 0.0f ? (int)(v + 0.5f) : -(int)(0.5f - v); }

/* the fp16 value next to d (dir +1: larger magnitude, -1: smaller), 0 if none */
static float kq_f16_step(float d, int dir) {
    const uint16_t h = pl_fp32_to_fp16(d);
    const int mag = (int)(h & 0x7fff) + dir;
    if (mag <= 0 || mag >= 0x7c00) return 0.0f;
    return pl_fp16_to_fp32((uint16_t)((h & 0x8000) | mag));
}

static int kq_all_finite(const float *x, int n) {
    for (int j = 0; j < n; j++)
        if (!isfinite(x[j])) return 0;
    return 1;
}

/* the block's weights: importance (or 1), all 1 when they sum to 0 */
static void kq_weights(const float *imp, int n, float *w) {
    float s = 0.0f;
    for (int j = 0; j < n; j++) {
        w[j] = imp ? imp[j] : 1.0f;
        s += w[j];
    }
    if (!(s > 0.0f))
        for (int j = 0; j < n; j++) w[j] = 1.0f;
}

/* ---------------------------------------------------------------- one-level symmetric fit */
typedef struct {
    int n;         /* number of levels */
    int uniform;   /* 1: v[i] = lo + i */
    int lo;
    float v[64];   /* ascending */
    float mid[15]; /* tables: (v[i] + v[i + 1]) / 2 */
} kq_levels;

static void kq_levels_uniform(kq_levels *L, int lo, int hi) {
    L->n = hi - lo + 1;
    L->uniform = 1;
    L->lo = lo;
    for (int i = 0; i < L->n; i++) L->v[i] = (float)(lo + i);
}

static void kq_levels_iq4(kq_levels *L) {
    L->n = 16;
    L->uniform = 0;
    L->lo = 0;
    for (int i = 0; i < 16; i++) L->v[i] = (float)pl_iq4nl_values[i];
    for (int i = 0; i < 15; i++) L->mid[i] = 0.5f * (L->v[i] + L->v[i + 1]);
}

/* index of the level nearest t (ties: the upper one for uniform sets, the lower one for tables; NaN: 0) */
static inline int kq_nearest(const kq_levels *L, float t) {
    if (L->uniform) {
        const float top = (float)(L->n - 1);
        float u = t - (float)L->lo;
        u = u > 0.0f ? u : 0.0f; /* also maps NaN (0 * inf) to 0 */
        u = u < top ? u : top;
        return (int)(u + 0.5f);
    }
    int i = 0; /* tables (16 levels): the number of midpoints between levels that t exceeds */
    for (int k = 0; k < 15; k++) i += t > L->mid[k];
    return i;
}

/* x * (1 / d) to the nearest levels' indices (d = 0: the level nearest 0) */
static void kq_sym_levels(const float *x, int n, const kq_levels *L, float d, uint8_t *q) {
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < n; j++) q[j] = (uint8_t)kq_nearest(L, x[j] * id);
}

/* weighted error of x ~ d * v[q] with nearest levels. n is a multiple of KQ_LANES; the sums run in
 * KQ_LANES partial sums (a fixed order the compiler vectorizes). The level's value is computed
 * without a table lookup: lo + the rounded offset (uniform sets), or v[0] plus the steps between
 * levels whose midpoint t exceeds (tables; integers, so exactly v[nearest]). */
KQ_NOCLONE static float kq_sym_err(const float *restrict x, const float *restrict w, int n, const kq_levels *L, float d) {
    float acc[KQ_LANES] = {0};
    if (d == 0.0f) {
        for (int g = 0; g < n; g += KQ_LANES)
            for (int k = 0; k < KQ_LANES; k++) acc[k] += w[g + k] * x[g + k] * x[g + k];
    } else if (L->uniform) {
        const float id = 1.0f / d, lo = (float)L->lo, top = (float)(L->n - 1);
        for (int g = 0; g < n; g += KQ_LANES)
            for (int k = 0; k < KQ_LANES; k++) {
                float u = x[g + k] * id - lo;
                u = u > 0.0f ? u : 0.0f;
                u = u < top ? u : top;
                const float v = (float)(int)(u + 0.5f) + lo;
                const float r = x[g + k] - d * v;
                acc[k] += w[g + k] * r * r;
            }
    } else {
        const float id = 1.0f / d, v0 = L->v[0];
        float mid[15], step[15];
        for (int m = 0; m < 15; m++) {
            mid[m] = L->mid[m];
            step[m] = L->v[m + 1] - L->v[m];
        }
        for (int g = 0; g < n; g += KQ_LANES)
            for (int k = 0; k < KQ_LANES; k++) {
                const float t = x[g + k] * id;
                float v = v0;
                for (int m = 0; m < 15; m++) v += t > mid[m] ? step[m] : 0.0f;
                const float r = x[g + k] - d * v;
                acc[k] += w[g + k] * r * r;
            }
    }
    float e = 0.0f;
    for (int k = 0; k < KQ_LANES; k++) e += acc[k];
    return e;
}

/* least-squares d for levels q (0 if undefined) */
static float kq_sym_ls(const float *x, const float *w, int n, const kq_levels *L, const uint8_t *q) {
    float a = 0.0f, b = 0.0f;
    for (int j = 0; j < n; j++) {
        const float v = L->v[q[j]];
        a += w[j] * x[j] * v;
        b += w[j] * v * v;
    }
    return b > 0.0f ? a / b : 0.0f;
}

/* the scale d (fp16-rounded when f16) with the least error found; levels in q; returns the error */
static float kq_sym_fit(const float *x, const float *w, int n, const kq_levels *L, int f16, int steps, float *d_out,
                        uint8_t *q) {
    float amax = 0.0f, M = 0.0f;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            M = x[j];
        }
    float best_d = 0.0f, best_e = kq_sym_err(x, w, n, L, 0.0f);
    if (amax > 0.0f) {
        const float ends[2] = {L->v[0], L->v[L->n - 1]};
        for (int e = 0; e < 2; e++) {
            if (ends[e] == 0.0f) continue;
            for (int k = -steps; k <= steps; k++) {
                float d = M / (ends[e] * (1.0f + (0.2f / (float)steps) * (float)k));
                if (f16) d = kq_f16r(d);
                if (!kq_usable(d) || d == best_d) continue;
                const float err = kq_sym_err(x, w, n, L, d);
                if (err < best_e) {
                    best_e = err;
                    best_d = d;
                }
            }
        }
        for (int it = 0; it < 2 && best_d != 0.0f; it++) {
            kq_sym_levels(x, n, L, best_d, q);
            const float d0 = best_d;
            float c[3] = {kq_sym_ls(x, w, n, L, q), 0.0f, 0.0f};
            if (f16) {
                c[0] = kq_f16r(c[0]);
                c[1] = kq_f16_step(d0, 1);
                c[2] = kq_f16_step(d0, -1);
            }
            for (int k = 0; k < 3; k++) {
                if (!kq_usable(c[k]) || c[k] == d0) continue;
                const float err = kq_sym_err(x, w, n, L, c[k]);
                if (err < best_e) {
                    best_e = err;
                    best_d = c[k];
                }
            }
            if (best_d == d0) break;
        }
    }
    *d_out = best_d;
    kq_sym_levels(x, n, L, best_d, q);
    return best_e;
}

/* ---------------------------------------------------------------- one-level fit with a minimum */
/* the nearest levels 0..nmax of x ~ a * q - b (a = 0: 0) */
static void kq_aff_levels(const float *x, int n, int nmax, float a, float b, uint8_t *q) {
    const float ia = a != 0.0f ? 1.0f / a : 0.0f, top = (float)nmax;
    for (int j = 0; j < n; j++) {
        float t = (x[j] + b) * ia;
        t = t > 0.0f ? t : 0.0f;
        t = t < top ? t : top;
        q[j] = (uint8_t)(int)(t + 0.5f);
    }
}

/* weighted error of x ~ a * q - b with those levels; lanes as kq_sym_err */
KQ_NOCLONE static float kq_aff_err(const float *restrict x, const float *restrict w, int n, int nmax, float a, float b) {
    float acc[KQ_LANES] = {0};
    const float ia = a != 0.0f ? 1.0f / a : 0.0f, top = (float)nmax;
    for (int g = 0; g < n; g += KQ_LANES)
        for (int k = 0; k < KQ_LANES; k++) {
            float t = (x[g + k] + b) * ia;
            t = t > 0.0f ? t : 0.0f;
            t = t < top ? t : top;
            const float l = (float)(int)(t + 0.5f);
            const float r = x[g + k] - (a * l - b);
            acc[k] += w[g + k] * r * r;
        }
    float e = 0.0f;
    for (int k = 0; k < KQ_LANES; k++) e += acc[k];
    return e;
}

/* weighted least-squares (a, b) of x ~ a * q - b for fixed q (b clamped to >= 0 if nonneg_b);
 * returns 0 if undefined */
static int kq_aff_ls(const float *x, const float *w, int n, const uint8_t *q, int nonneg_b, float *a, float *b) {
    float sw = 0.0f, sq = 0.0f, sqq = 0.0f, sx = 0.0f, sqx = 0.0f;
    for (int j = 0; j < n; j++) {
        const float l = (float)q[j];
        sw += w[j];
        sq += w[j] * l;
        sqq += w[j] * l * l;
        sx += w[j] * x[j];
        sqx += w[j] * l * x[j];
    }
    const float det = sw * sqq - sq * sq;
    if (!(det > 0.0f)) return 0;
    float aa = (sw * sqx - sq * sx) / det, m = (sqq * sx - sq * sqx) / det; /* x ~ aa q + m */
    if (nonneg_b && m > 0.0f) {
        m = 0.0f;
        aa = sqx / sqq;
    }
    if (!(aa > 0.0f) || !isfinite(aa) || !isfinite(m)) return 0;
    *a = aa;
    *b = -m;
    return 1;
}

/* (a, b) with the least error found for x ~ a * q - b; nonneg_b: b >= 0 (a minimum stored unsigned) */
static float kq_aff_fit(const float *x, const float *w, int n, int nmax, int nonneg_b, int steps, float *a_out,
                        float *b_out, uint8_t *q) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < n; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
    }
    if (nonneg_b && mn > 0.0f) mn = 0.0f;
    float best_a = 0.0f, best_b = -mn;
    float best_e = kq_aff_err(x, w, n, nmax, best_a, best_b);
    if (mx > mn) {
        const float range = mx - mn;
        uint8_t l[KQ_QK];
        {
            const float a = range / (float)nmax, e = kq_aff_err(x, w, n, nmax, a, -mn);
            if (e < best_e) {
                best_e = e;
                best_a = a;
            }
        }
        for (int k = -steps; k <= steps; k++) {
            const float is = ((float)nmax + (float)k / (float)steps) / range, top = (float)nmax;
            for (int j = 0; j < n; j++) {
                float t = (x[j] - mn) * is;
                t = t < top ? t : top;
                l[j] = (uint8_t)(int)(t + 0.5f);
            }
            float a, b;
            if (!kq_aff_ls(x, w, n, l, nonneg_b, &a, &b)) continue;
            const float e = kq_aff_err(x, w, n, nmax, a, b);
            if (e < best_e) {
                best_e = e;
                best_a = a;
                best_b = b;
            }
        }
        for (int it = 0; it < 2 && best_a > 0.0f; it++) {
            kq_aff_levels(x, n, nmax, best_a, best_b, l);
            float a, b;
            if (!kq_aff_ls(x, w, n, l, nonneg_b, &a, &b)) break;
            const float e = kq_aff_err(x, w, n, nmax, a, b);
            if (!(e < best_e)) break;
            best_e = e;
            best_a = a;
            best_b = b;
        }
    }
    *a_out = best_a;
    *b_out = best_b;
    kq_aff_levels(x, n, nmax, best_a, best_b, q);
    return best_e;
}

/* ---------------------------------------------------------------- super-blocks, signed codes */
/* value = (d * c_j) * v[q] for sub-block j; codes c_j in cmin..cmax. Per sub-block the code among
 * round(s_j / d) +- 1 with the least error; returns the total error (codes and levels written). */
static float kq_sym_codes(const float *x, const float *w, int sub, int nsub, const kq_levels *L, int cmin, int cmax,
                          const float *s, float d, int *codes, uint8_t *q) {
    float total = 0.0f;
    for (int j = 0; j < nsub; j++) {
        const float *xj = x + j * sub, *wj = w + j * sub;
        float t = s[j] / d;
        t = t < (float)cmin ? (float)cmin : (t > (float)cmax ? (float)cmax : t);
        const int c0 = kq_round(t);
        float best = INFINITY;
        for (int c = c0 - 1; c <= c0 + 1; c++) {
            if (c < cmin || c > cmax) continue;
            const float e = kq_sym_err(xj, wj, sub, L, d * (float)c);
            if (e < best) {
                best = e;
                codes[j] = c;
            }
        }
        kq_sym_levels(xj, sub, L, d * (float)codes[j], q + j * sub);
        total += best;
    }
    return total;
}

static float kq_sym_super(const float *x, const float *w, int sub, const kq_levels *L, int cmin, int cmax,
                          int steps, float *d_out, int *codes, uint8_t *q) {
    const int nsub = QK_K / sub;
    float s[16], S = 0.0f;
    uint8_t tq[QK_K];
    int tc[16];
    for (int j = 0; j < nsub; j++) {
        kq_sym_fit(x + j * sub, w + j * sub, sub, L, 0, steps, &s[j], tq);
        if (fabsf(s[j]) > fabsf(S)) S = s[j];
    }
    *d_out = 0.0f;
    float best_e = 0.0f;
    for (int j = 0; j < QK_K; j++) best_e += w[j] * x[j] * x[j]; /* d = 0: all zero */
    for (int j = 0; j < nsub; j++) codes[j] = 0;
    for (int j = 0; j < QK_K; j++) q[j] = (uint8_t)kq_nearest(L, 0.0f);
    if (S == 0.0f) return best_e;
    const float start[2] = {S / (float)cmin, S / (float)cmax};
    for (int c = 0; c < 2; c++) {
        float d = kq_f16r(start[c]);
        for (int it = 0; it < 3 && kq_usable(d); it++) {
            const float e = kq_sym_codes(x, w, sub, nsub, L, cmin, cmax, s, d, tc, tq);
            if (e < best_e) {
                best_e = e;
                *d_out = d;
                memcpy(codes, tc, sizeof(int) * (size_t)nsub);
                memcpy(q, tq, QK_K);
            }
            /* least-squares super-scale for these codes and levels */
            float a = 0.0f, b = 0.0f;
            for (int j = 0; j < nsub; j++)
                for (int i = 0; i < sub; i++) {
                    const float u = (float)tc[j] * L->v[tq[j * sub + i]];
                    a += w[j * sub + i] * x[j * sub + i] * u;
                    b += w[j * sub + i] * u * u;
                }
            if (!(b > 0.0f)) break;
            const float d2 = kq_f16r(a / b);
            if (d2 == d) break;
            d = d2;
        }
    }
    return best_e;
}

/* ---------------------------------------------------------------- super-blocks, scale + min codes */
/* value = (d * sc_j) * q - (dmin * m_j), codes in 0..cmax, q in 0..nmax */
static float kq_aff_codes(const float *x, const float *w, int sub, int nsub, int nmax, int cmax, const float *a,
                          const float *b, float d, float dmin, int *sc, int *mc, uint8_t *q) {
    float total = 0.0f;
    for (int j = 0; j < nsub; j++) {
        const float *xj = x + j * sub, *wj = w + j * sub;
        const int s0 = d > 0.0f ? kq_clampi(kq_round(fminf(a[j] / d, (float)cmax)), 0, cmax) : 0;
        const int m0 = dmin > 0.0f ? kq_clampi(kq_round(fminf(b[j] / dmin, (float)cmax)), 0, cmax) : 0;
        float best = INFINITY;
        for (int s = s0 - 1; s <= s0 + 1; s++) {
            if (s < 0 || s > cmax || (s != s0 && d == 0.0f)) continue;
            for (int m = m0 - 1; m <= m0 + 1; m++) {
                if (m < 0 || m > cmax || (m != m0 && dmin == 0.0f)) continue;
                const float e = kq_aff_err(xj, wj, sub, nmax, d * (float)s, dmin * (float)m);
                if (e < best) {
                    best = e;
                    sc[j] = s;
                    mc[j] = m;
                }
            }
        }
        /* no minimum, and zero: where the fp16 scales are too coarse (tiny weights), a min offset
         * can be worse than none */
        const int extra[2][2] = {{s0, 0}, {0, 0}};
        for (int k = 0; k < 2; k++) {
            const float e = kq_aff_err(xj, wj, sub, nmax, d * (float)extra[k][0], 0.0f);
            if (e < best) {
                best = e;
                sc[j] = extra[k][0];
                mc[j] = 0;
            }
        }
        kq_aff_levels(xj, sub, nmax, d * (float)sc[j], dmin * (float)mc[j], q + j * sub);
        total += best;
    }
    return total;
}

static float kq_aff_super(const float *x, const float *w, int sub, int nmax, int cmax, float *d_out, float *dmin_out,
                          int *sc, int *mc, uint8_t *q) {
    const int nsub = QK_K / sub;
    float a[16], b[16], A = 0.0f, B = 0.0f;
    uint8_t tq[QK_K];
    int ts[16], tm[16];
    for (int j = 0; j < nsub; j++) {
        kq_aff_fit(x + j * sub, w + j * sub, sub, nmax, 1, KQ_SUB_AFF_STEPS, &a[j], &b[j], tq);
        A = a[j] > A ? a[j] : A;
        B = b[j] > B ? b[j] : B;
    }
    float d = kq_f16r(A / (float)cmax), dmin = kq_f16r(B / (float)cmax);
    if (!isfinite(d) || !isfinite(dmin)) d = dmin = 0.0f; /* beyond fp16: zeros (as a non-finite block) */
    /* the first candidate: all zeros */
    float best_e = 0.0f;
    for (int i = 0; i < QK_K; i++) best_e += w[i] * x[i] * x[i];
    *d_out = *dmin_out = 0.0f;
    for (int j = 0; j < nsub; j++) sc[j] = mc[j] = 0;
    memset(q, 0, QK_K);
    for (int it = 0; it < 3; it++) {
        const float e = kq_aff_codes(x, w, sub, nsub, nmax, cmax, a, b, d, dmin, ts, tm, tq);
        if (e < best_e) {
            best_e = e;
            *d_out = d;
            *dmin_out = dmin;
            memcpy(sc, ts, sizeof(int) * (size_t)nsub);
            memcpy(mc, tm, sizeof(int) * (size_t)nsub);
            memcpy(q, tq, QK_K);
        }
        /* least-squares (d, dmin) for these codes and levels: x ~ d u - dmin v, u = sc q, v = m */
        float suu = 0.0f, suv = 0.0f, svv = 0.0f, sxu = 0.0f, sxv = 0.0f;
        for (int j = 0; j < nsub; j++)
            for (int i = 0; i < sub; i++) {
                const float ww = w[j * sub + i], xx = x[j * sub + i];
                const float u = (float)ts[j] * (float)tq[j * sub + i], v = (float)tm[j];
                suu += ww * u * u;
                suv += ww * u * v;
                svv += ww * v * v;
                sxu += ww * xx * u;
                sxv += ww * xx * v;
            }
        const float det = suu * svv - suv * suv;
        float d2, m2;
        if (det > 0.0f) {
            d2 = (sxu * svv - sxv * suv) / det;
            m2 = -(suu * sxv - suv * sxu) / det;
        } else {
            d2 = suu > 0.0f ? sxu / suu : 0.0f;
            m2 = 0.0f;
        }
        if (m2 < 0.0f) {
            m2 = 0.0f;
            d2 = suu > 0.0f ? sxu / suu : 0.0f;
        }
        d2 = kq_f16r(d2);
        m2 = kq_f16r(m2);
        if (!(d2 > 0.0f) || !isfinite(d2) || !isfinite(m2) || (d2 == d && m2 == dmin)) break;
        d = d2;
        dmin = m2;
    }
    return best_e;
}

/* ---------------------------------------------------------------- encoders (ggml layouts) */
static void put_nibbles32(uint8_t *qs, const uint8_t *q) { /* 32 values: low nibbles 0..15, high 16..31 */
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
}
static void put_high_bits32(uint8_t *qh4, const uint8_t *q) { /* bit j of the u32 = bit 4 of q[j] */
    uint32_t h = 0;
    for (int j = 0; j < 32; j++) h |= (uint32_t)((q[j] >> 4) & 1) << j;
    memcpy(qh4, &h, 4);
}

/* ---- Q4_1 / Q5_1 (d, m fp16; value = q * d + m) and Q5_0 (d; value = (q - 16) * d) references:
 * ggml's quantize_row_*_ref arithmetic (float32: d = (max - min) / nmax, q = trunc((x - min) / d + 0.5)
 * clamped; Q5_0: d = max / -16, q = trunc(x / d + 16.5) clamped) */
static void ref_block_aff(const float *x, int nmax, float *d, float *m, uint8_t *q) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < KQ_QK; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
    }
    *d = (mx - mn) / (float)nmax;
    *m = mn;
    const float id = *d != 0.0f ? 1.0f / *d : 0.0f;
    for (int j = 0; j < KQ_QK; j++) {
        const int v = (int)((x[j] - mn) * id + 0.5f);
        q[j] = (uint8_t)(v < nmax ? v : nmax);
    }
}

static void ref_block_q5_0(const float *x, float *d, uint8_t *q) {
    float amax = 0.0f, mx = 0.0f;
    for (int j = 0; j < KQ_QK; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            mx = x[j];
        }
    *d = mx / -16.0f;
    const float id = *d != 0.0f ? 1.0f / *d : 0.0f;
    for (int j = 0; j < KQ_QK; j++) {
        const int v = (int)(x[j] * id + 16.5f);
        q[j] = (uint8_t)(v < 31 ? v : 31);
    }
}

static void write_q4_1(uint8_t *y, float d, float m, const uint8_t *q) {
    pl_st_u16(y, pl_fp32_to_fp16(d));
    pl_st_u16(y + 2, pl_fp32_to_fp16(m));
    put_nibbles32(y + 4, q);
}
static void write_q5_1(uint8_t *y, float d, float m, const uint8_t *q) {
    pl_st_u16(y, pl_fp32_to_fp16(d));
    pl_st_u16(y + 2, pl_fp32_to_fp16(m));
    put_high_bits32(y + 4, q);
    put_nibbles32(y + 8, q);
}
static void write_q5_0(uint8_t *y, float d, const uint8_t *q) {
    pl_st_u16(y, pl_fp32_to_fp16(d));
    put_high_bits32(y + 2, q);
    put_nibbles32(y + 6, q);
}

#ifndef KQ_SIMD_BUILD
static void pl_q4_1_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy, q[KQ_QK];
    for (int64_t b = 0; b < n / KQ_QK; b++, x += KQ_QK, y += 20) {
        float d, m;
        if (!kq_all_finite(x, KQ_QK)) {
            memset(y, 0, 20);
            continue;
        }
        ref_block_aff(x, 15, &d, &m, q);
        write_q4_1(y, d, m, q);
    }
}
static void pl_q5_1_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy, q[KQ_QK];
    for (int64_t b = 0; b < n / KQ_QK; b++, x += KQ_QK, y += 24) {
        float d, m;
        if (!kq_all_finite(x, KQ_QK)) {
            memset(y, 0, 24);
            continue;
        }
        ref_block_aff(x, 31, &d, &m, q);
        write_q5_1(y, d, m, q);
    }
}
static void pl_q5_0_from_float(const float *x, void *vy, int64_t n) {
    uint8_t *y = vy, q[KQ_QK];
    for (int64_t b = 0; b < n / KQ_QK; b++, x += KQ_QK, y += 22) {
        float d;
        if (!kq_all_finite(x, KQ_QK)) {
            memset(y, 0, 22);
            continue;
        }
        ref_block_q5_0(x, &d, q);
        write_q5_0(y, d, q);
    }
}

#endif

/* weighted error in double of a decoded block (the final comparison with the reference) */
static double kq_err_exact(const float *x, const float *w, const float *xhat, int n) {
    double e = 0.0;
    for (int j = 0; j < n; j++) {
        const double r = (double)x[j] - (double)xhat[j];
        e += (double)w[j] * r * r;
    }
    return e;
}

/* Q4_1 / Q5_1 search: the float fit, rounded to fp16, then the 3 x 3 fp16 neighbours of (d, m) and a
 * least-squares refit of the best's levels, twice; the reference block if it is not worse */
static void search_block_q41_q51(const float *x, const float *w, int nmax, uint8_t *y, int bytes) {
    uint8_t q[KQ_QK], rq[KQ_QK];
    float a, b;
    kq_aff_fit(x, w, KQ_QK, nmax, 0, KQ_AFF_STEPS, &a, &b, q);
    float d = kq_f16r(a), m = kq_f16r(-b);
    float best_e = kq_aff_err(x, w, KQ_QK, nmax, d, -m);
    for (int it = 0; it < 2; it++) {
        const float d0 = d, m0 = m;
        for (int i = -1; i <= 1; i++)
            for (int k = -1; k <= 1; k++) {
                const float dc = i ? kq_f16_step(d0, i) : d0, mc = k ? kq_f16_step(m0, k) : m0;
                if (!isfinite(dc) || !isfinite(mc)) continue;
                const float e = kq_aff_err(x, w, KQ_QK, nmax, dc, -mc);
                if (e < best_e) {
                    best_e = e;
                    d = dc;
                    m = mc;
                }
            }
        kq_aff_levels(x, KQ_QK, nmax, d, -m, q);
        float a2, b2;
        if (kq_aff_ls(x, w, KQ_QK, q, 0, &a2, &b2)) {
            const float dc = kq_f16r(a2), mc = kq_f16r(-b2);
            if (isfinite(dc) && isfinite(mc)) {
                const float e = kq_aff_err(x, w, KQ_QK, nmax, dc, -mc);
                if (e < best_e) {
                    best_e = e;
                    d = dc;
                    m = mc;
                }
            }
        }
        if (d == d0 && m == m0) break;
    }
    if (!isfinite(d) || !isfinite(m)) d = m = 0.0f; /* beyond fp16 (|x| ~ 1e6): zeros, not inf */
    kq_aff_levels(x, KQ_QK, nmax, d, -m, q);
    float rd, rm, xs[KQ_QK], xr[KQ_QK];
    for (int j = 0; j < KQ_QK; j++) xs[j] = (float)q[j] * d + m;
    {
        const float zero[KQ_QK] = {0};
        if (kq_err_exact(x, w, zero, KQ_QK) < kq_err_exact(x, w, xs, KQ_QK)) { /* tiny weights */
            d = m = 0.0f;
            memset(q, 0, KQ_QK);
            memset(xs, 0, sizeof xs);
        }
    }
    /* the reference block, decoded as a reader does */
    ref_block_aff(x, nmax, &rd, &rm, rq);
    const float rd16 = kq_f16r(rd), rm16 = kq_f16r(rm);
    for (int j = 0; j < KQ_QK; j++) xr[j] = (float)rq[j] * rd16 + rm16;
    /* the reference only if strictly better (so not where it decodes to inf / NaN) */
    const int use_ref = kq_err_exact(x, w, xr, KQ_QK) < kq_err_exact(x, w, xs, KQ_QK);
    if (bytes == 20) write_q4_1(y, use_ref ? rd : d, use_ref ? rm : m, use_ref ? rq : q);
    else write_q5_1(y, use_ref ? rd : d, use_ref ? rm : m, use_ref ? rq : q);
}

static void search_block_q5_0(const float *x, const float *w, const kq_levels *L, uint8_t *y) {
    uint8_t q[KQ_QK], rq[KQ_QK];
    float d, rd, xs[KQ_QK], xr[KQ_QK];
    kq_sym_fit(x, w, KQ_QK, L, 1, KQ_SYM_STEPS, &d, q); /* q: index into -16..15, i.e. the stored 5-bit value */
    ref_block_q5_0(x, &rd, rq);
    const float rd16 = kq_f16r(rd);
    for (int j = 0; j < KQ_QK; j++) {
        xr[j] = (float)((int)rq[j] - 16) * rd16;
        xs[j] = (float)((int)q[j] - 16) * d;
    }
    if (kq_err_exact(x, w, xr, KQ_QK) < kq_err_exact(x, w, xs, KQ_QK)) write_q5_0(y, rd, rq);
    else write_q5_0(y, d, q);
}

static void search_block_iq4_nl(const float *x, const float *w, const kq_levels *L, uint8_t *y) {
    uint8_t q[KQ_QK];
    float d;
    kq_sym_fit(x, w, KQ_QK, L, 1, KQ_SYM_STEPS, &d, q);
    pl_st_u16(y, pl_fp32_to_fp16(d));
    put_nibbles32(y + 2, q);
}

/* ---- K-quant super-block encoders ---- */
static void write_q2_k(uint8_t *y, float d, float dmin, const int *sc, const int *mc, const uint8_t *q) {
    for (int g = 0; g < 16; g++) y[g] = (uint8_t)(sc[g] | (mc[g] << 4));
    uint8_t *qs = y + 16;
    memset(qs, 0, 64);
    for (int e = 0; e < QK_K; e++) { /* e = 128 h + 32 j + i: bits 2j of qs[32 h + i] */
        const int h = e / 128, j = (e % 128) / 32, i = e % 32;
        qs[32 * h + i] |= (uint8_t)(q[e] << (2 * j));
    }
    pl_st_u16(y + 80, pl_fp32_to_fp16(d));
    pl_st_u16(y + 82, pl_fp32_to_fp16(dmin));
}

static void write_q3_k(uint8_t *y, float d, const int *codes, const uint8_t *q) {
    uint8_t *hm = y, *qs = y + 32, *s = y + 96;
    memset(y, 0, 108);
    for (int e = 0; e < QK_K; e++) { /* u = q + 4 in 0..7 (q index = u since levels are -4..3) */
        const int h = e / 128, j = (e % 128) / 32, i = e % 32, u = q[e];
        qs[32 * h + i] |= (uint8_t)((u & 3) << (2 * j));
        if (u & 4) hm[i] |= (uint8_t)(1u << (4 * h + j));
    }
    for (int j = 0; j < 16; j++) {
        const int l = codes[j] + 32;
        if (j < 8) s[j] |= (uint8_t)(l & 0x0F);
        else s[j - 8] |= (uint8_t)((l & 0x0F) << 4);
        s[8 + (j % 4)] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
    pl_st_u16(y + 108, pl_fp32_to_fp16(d));
}

/* Q4_K / Q5_K: the 8 6-bit scale and min codes in 12 bytes (the inverse of scale_min_k4) */
static void put_scale_min_k4(uint8_t *s, const int *sc, const int *mc) {
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((mc[j] & 63) | ((mc[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0x0F) | ((mc[j + 4] & 0x0F) << 4));
    }
}

static void write_q45_k(uint8_t *y, int has_qh, float d, float dmin, const int *sc, const int *mc, const uint8_t *q) {
    pl_st_u16(y, pl_fp32_to_fp16(d));
    pl_st_u16(y + 2, pl_fp32_to_fp16(dmin));
    put_scale_min_k4(y + 4, sc, mc);
    uint8_t *qh = y + 16, *ql = y + (has_qh ? 48 : 16);
    if (has_qh) memset(qh, 0, 32);
    for (int c = 0; c < 4; c++) /* sub-blocks 2c (low nibbles) and 2c + 1 (high) share 32 bytes */
        for (int l = 0; l < 32; l++) {
            const uint8_t lo = q[64 * c + l], hi = q[64 * c + 32 + l];
            ql[32 * c + l] = (uint8_t)((lo & 0x0F) | ((hi & 0x0F) << 4));
            if (has_qh) qh[l] |= (uint8_t)((((lo >> 4) & 1) << (2 * c)) | (((hi >> 4) & 1) << (2 * c + 1)));
        }
}

static void write_q6_k(uint8_t *y, float d, const int *codes, const uint8_t *q) {
    uint8_t *ql = y, *qh = y + 128;
    memset(y, 0, 192);
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t *u = q + 128 * h + l; /* q index = value + 32 (levels -32..31) */
            ql[64 * h + l] = (uint8_t)((u[0] & 0x0F) | ((u[64] & 0x0F) << 4));
            ql[64 * h + l + 32] = (uint8_t)((u[32] & 0x0F) | ((u[96] & 0x0F) << 4));
            qh[32 * h + l] = (uint8_t)((u[0] >> 4) | ((u[32] >> 4) << 2) | ((u[64] >> 4) << 4) | ((u[96] >> 4) << 6));
        }
    for (int g = 0; g < 16; g++) y[192 + g] = (uint8_t)(int8_t)codes[g];
    pl_st_u16(y + 208, pl_fp32_to_fp16(d));
}

static void write_iq4_xs(uint8_t *y, float d, const int *codes, const uint8_t *q) {
    pl_st_u16(y, pl_fp32_to_fp16(d));
    uint16_t sh = 0;
    uint8_t *sl = y + 4;
    memset(sl, 0, 4);
    for (int ib = 0; ib < 8; ib++) {
        const int ls = codes[ib] + 32;
        sl[ib / 2] |= (uint8_t)((ls & 0x0F) << (4 * (ib % 2)));
        sh |= (uint16_t)((ls >> 4) << (2 * ib));
        put_nibbles32(y + 8 + 16 * ib, q + 32 * ib);
    }
    pl_st_u16(y + 2, sh);
}

/* ---------------------------------------------------------------- rows */
#ifndef KQ_SIMD_BUILD
int pl_kq_searchable(int type) {
    switch (type) {
    case PL_TYPE_Q4_1: case PL_TYPE_Q5_0: case PL_TYPE_Q5_1: case PL_TYPE_IQ4_NL: case PL_TYPE_Q2_K:
    case PL_TYPE_Q3_K: case PL_TYPE_Q4_K: case PL_TYPE_Q5_K: case PL_TYPE_Q6_K: case PL_TYPE_IQ4_XS:
        return 1;
    default:
        return 0;
    }
}

#endif

/* the search over a row, compiled once per build of this file (KQ_ROW: the scalar or the AVX2 one) */
void KQ_ROW(int type, const float *x, void *vy, int64_t n, const float *imp) {
    uint8_t *y = vy;
    const int blk = (type == PL_TYPE_Q4_1 || type == PL_TYPE_Q5_0 || type == PL_TYPE_Q5_1 || type == PL_TYPE_IQ4_NL)
                        ? KQ_QK
                        : QK_K;
    const size_t bytes = pl_type_row_bytes((pl_type)type, blk);
    kq_levels L;
    switch (type) {
    case PL_TYPE_Q5_0: kq_levels_uniform(&L, -16, 15); break;
    case PL_TYPE_Q3_K: kq_levels_uniform(&L, -4, 3); break;
    case PL_TYPE_Q6_K: kq_levels_uniform(&L, -32, 31); break;
    default: kq_levels_iq4(&L); break; /* IQ4_NL, IQ4_XS (unused by the others) */
    }
    float w[QK_K];
    uint8_t q[QK_K];
    int sc[16], mc[16];
    for (int64_t b = 0; b < n / blk; b++, x += blk, y += bytes) {
        if (!kq_all_finite(x, blk)) {
            memset(y, 0, bytes);
            continue;
        }
        kq_weights(imp ? imp + b * blk : NULL, blk, w);
        float d = 0.0f, dmin = 0.0f;
        switch (type) {
        case PL_TYPE_Q4_1: search_block_q41_q51(x, w, 15, y, 20); break;
        case PL_TYPE_Q5_1: search_block_q41_q51(x, w, 31, y, 24); break;
        case PL_TYPE_Q5_0: search_block_q5_0(x, w, &L, y); break;
        case PL_TYPE_IQ4_NL: search_block_iq4_nl(x, w, &L, y); break;
        case PL_TYPE_Q2_K:
            kq_aff_super(x, w, 16, 3, 15, &d, &dmin, sc, mc, q);
            write_q2_k(y, d, dmin, sc, mc, q);
            break;
        case PL_TYPE_Q4_K:
        case PL_TYPE_Q5_K:
            kq_aff_super(x, w, 32, type == PL_TYPE_Q4_K ? 15 : 31, 63, &d, &dmin, sc, mc, q);
            write_q45_k(y, type == PL_TYPE_Q5_K, d, dmin, sc, mc, q);
            break;
        case PL_TYPE_Q3_K:
            kq_sym_super(x, w, 16, &L, -32, 31, KQ_SUB_SYM_STEPS, &d, sc, q);
            write_q3_k(y, d, sc, q);
            break;
        case PL_TYPE_Q6_K:
            kq_sym_super(x, w, 16, &L, -128, 127, KQ_SYM_STEPS, &d, sc, q);
            write_q6_k(y, d, sc, q);
            break;
        case PL_TYPE_IQ4_XS:
            kq_sym_super(x, w, 32, &L, -32, 31, KQ_SUB_SYM_STEPS, &d, sc, q);
            write_iq4_xs(y, d, sc, q);
            break;
        default: break;
        }
    }
}

#ifndef KQ_SIMD_BUILD
/* the AVX2 build (quantize_kquants_avx2.c) when the active kernel table is a SIMD one: the same C,
 * hence the same IEEE operations in the same order (no FMA contraction, no reassociation), so the
 * same bytes (tests/test_kquant_write.py compares every table's), about twice as fast */
void pl_kq_quantize_row(int type, const float *x, void *y, int64_t n, const float *imp) {
#ifdef PYLLM_X86_SIMD
    if (strcmp(pl_kernels_active()->isa, "scalar") != 0) {
        pl_kq_quantize_row_avx2(type, x, y, n, imp);
        return;
    }
#endif
    pl_kq_quantize_row_scalar(type, x, y, n, imp);
}

/* from_float of the types without a ggml reference quantizer: the search with unit weights */
static void pl_iq4_nl_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_IQ4_NL, x, y, n, NULL); }
static void pl_q2_k_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_Q2_K, x, y, n, NULL); }
static void pl_q3_k_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_Q3_K, x, y, n, NULL); }
static void pl_q4_k_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_Q4_K, x, y, n, NULL); }
static void pl_q5_k_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_Q5_K, x, y, n, NULL); }
static void pl_q6_k_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_Q6_K, x, y, n, NULL); }
static void pl_iq4_xs_from_float(const float *x, void *y, int64_t n) { pl_kq_quantize_row(PL_TYPE_IQ4_XS, x, y, n, NULL); }

pl_from_float_fn pl_kq_from_float(int type) {
    switch (type) {
    case PL_TYPE_Q4_1: return pl_q4_1_from_float;
    case PL_TYPE_Q5_0: return pl_q5_0_from_float;
    case PL_TYPE_Q5_1: return pl_q5_1_from_float;
    case PL_TYPE_IQ4_NL: return pl_iq4_nl_from_float;
    case PL_TYPE_Q2_K: return pl_q2_k_from_float;
    case PL_TYPE_Q3_K: return pl_q3_k_from_float;
    case PL_TYPE_Q4_K: return pl_q4_k_from_float;
    case PL_TYPE_Q5_K: return pl_q5_k_from_float;
    case PL_TYPE_Q6_K: return pl_q6_k_from_float;
    case PL_TYPE_IQ4_XS: return pl_iq4_xs_from_float;
    default: return NULL;
    }
}
#endif /* KQ_SIMD_BUILD */
