/* quantize.c: converts float32 rows to any weight type with all threads (used when quantizing
 * a checkpoint while loading it and by tools/quantize.py). Rows are independent, so the result
 * is the same for any thread count. */
#include <math.h>
#include <string.h>

#include "pyllm.h"

/* one quantization call's rows, split over a pl_par_run */
typedef struct {
    int type;
    const float *src;
    void *dst;
    int64_t rows, n;
    size_t rb;
    const float *importance;
    pl_from_float_fn conv;
    const void *params; /* the Q4_0 / Q8_0 search's (qw_params) */
} quant_job;

/* the reference conversion: a contiguous block of rows per thread */
static void quant_plain(pl_par *P, void *arg) {
    const quant_job *J = arg;
    PL_PAR_FOR(P, r, J->rows) J->conv(J->src + r * J->n, (char *)J->dst + (size_t)r * J->rb, J->n);
}

int pl_quantize_rows(int type, const float *src, void *dst, int64_t rows, int64_t n, int n_threads) {
    if (!pl_type_valid(type)) return -1;
    const size_t rb = pl_type_row_bytes((pl_type)type, n);
    if (rb == 0 || rows < 0 || n_threads > PL_MAX_THREADS) return -1;
    const pl_from_float_fn conv = pl_kernels_active()->types[type].from_float;
    if (!conv) return -1; /* a type pyllm reads but does not write (types_kquants.c) */
    quant_job J = {type, src, dst, rows, n, rb, NULL, conv, NULL};
    pl_par_run(n_threads > 0 ? n_threads : 1, quant_plain, &J);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Error-minimizing Q4_0 / Q8_0 quantization (pl_quantize_rows_weighted).
 *
 * The blocks are plain ggml Q4_0 / Q8_0 (fp16 scale d, value = d * q with q in -8..7 / -128..127);
 * only the choice of d (and with it q) differs from the reference: per 32-weight block it picks the
 * d minimizing the weighted squared error  E(d) = sum_j w_j (x_j - d q_j)^2,  q_j = nearest level,
 * evaluated with d already rounded to fp16 (the value a reader will use). Candidates:
 *   - the reference block itself (the type's from_float): so no block is ever worse than the
 *     reference (the final comparison is done in double precision);
 *   - a grid of scales d = fp16(max * c_k), max the signed value of largest magnitude:
 *     Q4_0: max -> -g for g in 6.0..10.0 (step 0.1) and max -> +g for g in 5.5..8.5 (step 0.1);
 *     Q8_0: max -> -g for g in 110..135 (step 0.25);
 *   - then twice: the least-squares scale for the best candidate's q (sum w x q / sum w q^2), rounded
 *     to fp16, and the fp16 neighbours (one ulp up and down) of the best d.
 * Weights: w_j = importance[column of j] when importance is given (see pyllm/imatrix.py: the mean
 * square of the matmul's input column), else 1 (plain squared error: weighting by x^2, as ggml does
 * without an imatrix, by sqrt(mean(x^2) + x^2) or by rms(x) + |x| all measured a higher KL-divergence
 * on the shipped model, x^2 even higher than the reference's). A block whose weights are all 0
 * uses 1. Blocks with a non-finite value or all zeros keep the reference encoding.
 * Rows are independent and the arithmetic per block has a fixed order, so the output does not
 * depend on the thread count. Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K and IQ4_XS: quantize_kquants.c's
 * search (the same weights). Other types (F32, F16, BF16) are converted as pl_quantize_rows does.
 * --------------------------------------------------------------------------------------------- */
#define QW_N PL_QK
#define QW_LANES 8
#define QW_MAX_GRID 128

typedef struct {
    int nmin, nmax;           /* q range */
    int n_grid;
    float grid[QW_MAX_GRID];  /* d = max * grid[k] */
} qw_params;

static void qw_init_params(int type, qw_params *p) {
    memset(p, 0, sizeof(*p));
    if (type == PL_TYPE_Q4_0) {
        p->nmin = -8;
        p->nmax = 7;
        for (int k = -20; k <= 20; k++) p->grid[p->n_grid++] = -1.0f / (8.0f + 0.1f * (float)k);
        for (int k = -15; k <= 15; k++) p->grid[p->n_grid++] = 1.0f / (7.0f + 0.1f * (float)k);
    } else {
        p->nmin = -128;
        p->nmax = 127;
        for (int k = 0; k <= 100; k++) p->grid[p->n_grid++] = -1.0f / (110.0f + 0.25f * (float)k);
    }
}

static inline float qw_f16_round(float v) { return pl_fp16_to_fp32(pl_fp32_to_fp16(v)); }

/* q for scale d (id = 1/d): nearest level (ties up), clamped; returned as floats */
static inline void qw_levels(const float *x, float id, const qw_params *p, float *l) {
    const float lo = (float)p->nmin, hi = (float)p->nmax, off = 0.5f - (float)p->nmin;
    for (int g = 0; g < QW_N; g += QW_LANES)
        for (int k = 0; k < QW_LANES; k++) {
            float v = x[g + k] * id;
            v = v < lo ? lo : v;
            v = v > hi ? hi : v;
            l[g + k] = (float)(int)(v + off) + lo; /* v + off >= 0.5: truncation is floor */
        }
}

/* weighted squared error of scale d with nearest levels (float, fixed summation order) */
static inline float qw_err(const float *x, const float *w, float d, const qw_params *p) {
    const float id = 1.0f / d;
    const float lo = (float)p->nmin, hi = (float)p->nmax, off = 0.5f - (float)p->nmin;
    float acc[QW_LANES] = {0};
    for (int g = 0; g < QW_N; g += QW_LANES)
        for (int k = 0; k < QW_LANES; k++) {
            float v = x[g + k] * id;
            v = v < lo ? lo : v;
            v = v > hi ? hi : v;
            const float l = (float)(int)(v + off) + lo;
            const float r = x[g + k] - d * l;
            acc[k] += w[g + k] * r * r;
        }
    float e = 0.0f;
    for (int k = 0; k < QW_LANES; k++) e += acc[k];
    return e;
}

static double qw_err_exact(const float *x, const float *w, float d, const float *l) {
    double e = 0.0;
    for (int j = 0; j < QW_N; j++) {
        const double r = (double)x[j] - (double)d * (double)l[j];
        e += (double)w[j] * r * r;
    }
    return e;
}

/* least-squares scale for levels l, rounded to fp16 (0 if undefined) */
static float qw_ls_scale(const float *x, const float *w, const float *l) {
    float sx[QW_LANES] = {0}, s2[QW_LANES] = {0};
    for (int g = 0; g < QW_N; g += QW_LANES)
        for (int k = 0; k < QW_LANES; k++) {
            sx[k] += w[g + k] * x[g + k] * l[g + k];
            s2[k] += w[g + k] * l[g + k] * l[g + k];
        }
    float a = 0.0f, b = 0.0f;
    for (int k = 0; k < QW_LANES; k++) {
        a += sx[k];
        b += s2[k];
    }
    return b > 0.0f ? qw_f16_round(a / b) : 0.0f;
}

static inline int qw_usable(float d) { return d != 0.0f && isfinite(d) && isfinite(1.0f / d); }

/* the fp16 value next to d (dir +1: larger magnitude, -1: smaller), 0 if none */
static float qw_f16_step(float d, int dir) {
    const uint16_t h = pl_fp32_to_fp16(d);
    const int mag = (int)(h & 0x7fff) + dir;
    if (mag <= 0 || mag >= 0x7c00) return 0.0f;
    return pl_fp16_to_fp32((uint16_t)((h & 0x8000) | mag));
}

/* one block: writes the chosen d (fp16 bits) and levels (as ints in lq); returns 1 if the search
 * found something better than the reference, 0 to keep the reference block */
static int qw_search_block(const float *x, const float *wi, const qw_params *p, const float *ref_l, float ref_d,
                           uint16_t *d_out, int *lq) {
    float w[QW_N];
    float amax = 0.0f, max = 0.0f, wsum = 0.0f;
    for (int j = 0; j < QW_N; j++) {
        if (!isfinite(x[j])) return 0;
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
        w[j] = wi ? wi[j] : 1.0f;
        wsum += w[j];
    }
    if (amax == 0.0f) return 0;
    if (!(wsum > 0.0f)) {
        for (int j = 0; j < QW_N; j++) w[j] = 1.0f;
    }

    float best_d = 0.0f, best_e = INFINITY, prev = 0.0f;
    for (int k = 0; k < p->n_grid; k++) {
        const float d = qw_f16_round(max * p->grid[k]);
        if (d == prev || !qw_usable(d)) continue;
        prev = d;
        const float e = qw_err(x, w, d, p);
        if (e < best_e) {
            best_e = e;
            best_d = d;
        }
    }
    if (best_d == 0.0f) return 0;
    float l[QW_N];
    for (int it = 0; it < 2; it++) {
        qw_levels(x, 1.0f / best_d, p, l);
        float c[3] = {qw_ls_scale(x, w, l), qw_f16_step(best_d, 1), qw_f16_step(best_d, -1)};
        const float d0 = best_d;
        for (int k = 0; k < 3; k++) {
            if (!qw_usable(c[k]) || c[k] == d0) continue;
            const float e = qw_err(x, w, c[k], p);
            if (e < best_e) {
                best_e = e;
                best_d = c[k];
            }
        }
        if (best_d == d0) break;
    }
    qw_levels(x, 1.0f / best_d, p, l);
    /* keep the reference unless strictly better in double precision */
    if (!(qw_err_exact(x, w, best_d, l) < qw_err_exact(x, w, ref_d, ref_l))) return 0;
    *d_out = pl_fp32_to_fp16(best_d);
    for (int j = 0; j < QW_N; j++) lq[j] = (int)l[j];
    return 1;
}

static void qw_row_q4_0(const float *x, pl_block_q4_0 *y, int64_t n, const float *imp, const qw_params *p,
                        pl_from_float_fn ref) {
    float ref_l[QW_N];
    int lq[QW_N];
    ref(x, y, n); /* the reference row: each block is kept unless the search beats it */
    for (int64_t b = 0; b < n / QW_N; b++) {
        const float *xb = x + b * QW_N;
        for (int j = 0; j < QW_N / 2; j++) {
            ref_l[j] = (float)((y[b].qs[j] & 0x0F) - 8);
            ref_l[j + QW_N / 2] = (float)((y[b].qs[j] >> 4) - 8);
        }
        uint16_t d;
        if (qw_search_block(xb, imp ? imp + b * QW_N : NULL, p, ref_l, pl_fp16_to_fp32(y[b].d), &d, lq)) {
            y[b].d = d;
            for (int j = 0; j < QW_N / 2; j++)
                y[b].qs[j] = (uint8_t)((lq[j] + 8) | ((lq[j + QW_N / 2] + 8) << 4));
        }
    }
}

static void qw_row_q8_0(const float *x, pl_block_q8_0 *y, int64_t n, const float *imp, const qw_params *p,
                        pl_from_float_fn ref) {
    float ref_l[QW_N];
    int lq[QW_N];
    ref(x, y, n);
    for (int64_t b = 0; b < n / QW_N; b++) {
        const float *xb = x + b * QW_N;
        for (int j = 0; j < QW_N; j++) ref_l[j] = (float)y[b].qs[j];
        uint16_t d;
        if (qw_search_block(xb, imp ? imp + b * QW_N : NULL, p, ref_l, pl_fp16_to_fp32(y[b].d), &d, lq)) {
            y[b].d = d;
            for (int j = 0; j < QW_N; j++) y[b].qs[j] = (int8_t)lq[j];
        }
    }
}

/* the searches take rows 4 at a time from a shared counter (their time per row varies) */
static void quant_kq(pl_par *P, void *arg) {
    const quant_job *J = arg;
    int64_t lo, hi;
    while (pl_par_dynamic(P, J->rows, 4, &lo, &hi))
        for (int64_t r = lo; r < hi; r++)
            pl_kq_quantize_row(J->type, J->src + r * J->n, (char *)J->dst + (size_t)r * J->rb, J->n, J->importance);
}

static void quant_search(pl_par *P, void *arg) {
    const quant_job *J = arg;
    int64_t lo, hi;
    while (pl_par_dynamic(P, J->rows, 4, &lo, &hi))
        for (int64_t r = lo; r < hi; r++) {
            const float *x = J->src + r * J->n;
            char *y = (char *)J->dst + (size_t)r * J->rb;
            if (J->type == PL_TYPE_Q4_0)
                qw_row_q4_0(x, (pl_block_q4_0 *)y, J->n, J->importance, J->params, J->conv);
            else
                qw_row_q8_0(x, (pl_block_q8_0 *)y, J->n, J->importance, J->params, J->conv);
        }
}

int pl_quantize_rows_weighted(int type, const float *src, void *dst, int64_t rows, int64_t n,
                              const float *importance, int n_threads) {
    const int kq = pl_kq_searchable(type);
    if (type != PL_TYPE_Q4_0 && type != PL_TYPE_Q8_0 && !kq) return pl_quantize_rows(type, src, dst, rows, n, n_threads);
    const size_t rb = pl_type_row_bytes((pl_type)type, n);
    if (rb == 0 || rows < 0 || n_threads > PL_MAX_THREADS) return -1;
    if (importance)
        for (int64_t j = 0; j < n; j++)
            if (!(importance[j] >= 0.0f) || !isfinite(importance[j])) return -2;
    quant_job J = {type, src, dst, rows, n, rb, importance, NULL, NULL};
    if (kq) { /* quantize_kquants.c: Q4_1, Q5_0, Q5_1, IQ4_NL, the K-quants, IQ4_XS */
        pl_par_run(n_threads > 0 ? n_threads : 1, quant_kq, &J);
        return 0;
    }
    qw_params p;
    qw_init_params(type, &p);
    J.params = &p;
    J.conv = pl_kernels_active()->types[type].from_float;
    pl_par_run(n_threads > 0 ? n_threads : 1, quant_search, &J);
    return 0;
}
