/* forward.c: one call runs a batch of tokens (any mix of sequences and positions) through every
 * layer: embedding, then per layer RMSNorm, q/k/v, RoPE, KV-cache write, attention, output
 * projection, residual, RMSNorm, SwiGLU MLP, residual; then final norm and LM head for the rows
 * whose logits are wanted. All threads live in one OpenMP region for the whole call, and all of them
 * use the one kernel table read at the start of the call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

/* tokens per pass through the MLP: its two hidden-size buffers are the largest scratch (2 x 5.8 MB
 * at 128 tokens for a 1.1B model instead of 23 MB for a 512-token batch); the gemm reuses a weight
 * tile over 64 tokens at a time anyway */
#define MLP_CHUNK 128
#define SWIGLU_CHUNK 1024 /* floats per work item of the SwiGLU loop (a multiple of 16) */

struct pl_scratch {
    size_t cap;   /* bytes in mem */
    void *mem;
    double *stats; /* optional: activation statistics for calibration (see pl_scratch_set_stats) */
};

void pl_scratch_set_stats(pl_scratch *s, double *stats) { s->stats = stats; }

size_t pl_stats_len(const pl_model *m) {
    const pl_config *c = &m->cfg;
    return (size_t)c->n_layers * (2 * c->dim + c->n_heads * c->head_dim + c->hidden_dim);
}

/* adds the squares of nt rows of x (n wide, ld apart) to acc, column-parallel (no races) */
static void accumulate_squares(double *acc, const float *x, int nt, int n, int ld) {
#pragma omp for schedule(static)
    for (int i = 0; i < n; i++) {
        double a = 0.0;
        for (int t = 0; t < nt; t++) a += (double)x[(size_t)t * ld + i] * x[(size_t)t * ld + i];
        acc[i] += a;
    }
}

pl_scratch *pl_scratch_new(void) { return calloc(1, sizeof(pl_scratch)); }

void pl_scratch_free(pl_scratch *s) {
    if (!s) return;
    free(s->mem);
    free(s);
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* carves the scratch arena into buffers; returns 0 if it could not grow */
typedef struct {
    float *x, *xb, *q, *k, *v, *hb, *hb2, *scores;
    void *act;
    size_t scores_stride;
} bufs;

static int carve(pl_scratch *s, const pl_kernels *K, const pl_model *m, int nt, int n_out, int nth, int max_len,
                 bufs *B) {
    const pl_config *c = &m->cfg;
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    const int rows = nt > n_out ? nt : n_out;
    size_t act = 0;
    /* the largest activation conversion any matmul of this model may need */
    size_t a1 = pl_matmul_act_bytes(K, &m->output, rows);
    if (a1 > act) act = a1;
    for (int l = 0; l < c->n_layers; l++) {
        const pl_layer *L = &m->layers[l];
        const pl_tensor *ts[] = {&L->wq, &L->wo, &L->ffn_gate, &L->ffn_down};
        for (int i = 0; i < 4; i++) {
            size_t a = pl_matmul_act_bytes(K, ts[i], i >= 2 && nt > MLP_CHUNK ? MLP_CHUNK : nt);
            if (a > act) act = a;
        }
    }
    B->scores_stride = align64(pl_attention_scratch_floats(m, max_len) * sizeof(float)) / sizeof(float);
    const size_t mlp_rows = nt < MLP_CHUNK ? (size_t)nt : MLP_CHUNK;
    const size_t sz[] = {
        (size_t)rows * c->dim, (size_t)rows * c->dim, (size_t)nt * qd, (size_t)nt * kvd, (size_t)nt * kvd,
        mlp_rows * c->hidden_dim, mlp_rows * c->hidden_dim, (size_t)nth * B->scores_stride,
    };
    float **dst[] = {&B->x, &B->xb, &B->q, &B->k, &B->v, &B->hb, &B->hb2, &B->scores};
    enum { NBUF = sizeof(sz) / sizeof(sz[0]) };
    size_t need = align64(act);
    for (int i = 0; i < NBUF; i++) need += align64(sz[i] * sizeof(float));
    if (need > s->cap) {
        void *mem = NULL;
        if (posix_memalign(&mem, 64, need)) return 0;
        free(s->mem);
        s->mem = mem;
        s->cap = need;
    }
    char *p = s->mem;
    B->act = p;
    p += align64(act);
    for (int i = 0; i < NBUF; i++) {
        *dst[i] = (float *)p;
        p += align64(sz[i] * sizeof(float));
    }
    return 1;
}

#define FAIL(code, ...) (snprintf(err, PL_ERRMSG_LEN, __VA_ARGS__), code)

int pl_forward(const pl_model *m, pl_scratch *s, pl_kv *const *kvs, int n_kv, const pl_batch *b, float *logits,
               int n_threads, char *err) {
    const pl_config *c = &m->cfg;
    if (!m->finalized) return FAIL(-1, "model not finalized");
    const int nt = b->n_tokens;
    if (nt <= 0) return FAIL(-1, "empty batch");
    int max_len = 1;
    for (int t = 0; t < nt; t++) {
        if (b->token[t] < 0 || b->token[t] >= c->n_vocab)
            return FAIL(-2, "token id %d at batch index %d outside the vocabulary (0..%d)", b->token[t], t, c->n_vocab - 1);
        if (b->seq[t] < 0 || b->seq[t] >= n_kv) return FAIL(-3, "sequence index %d out of range", b->seq[t]);
        const pl_kv *kv = kvs[b->seq[t]];
        if (!kv || kv->n_layers != c->n_layers || kv->kv_dim != c->n_kv_heads * c->head_dim ||
            (kv->type != PL_TYPE_F32 && kv->type != PL_TYPE_F16))
            return FAIL(-3, "KV cache %d does not belong to this model", b->seq[t]);
        if (b->pos[t] < 0 || b->pos[t] >= kv->n_ctx || b->pos[t] >= c->max_ctx)
            return FAIL(-4, "position %d outside the context (%d tokens)", b->pos[t], kv->n_ctx);
        const int len = b->pos[t] + 1;
        const int win = c->sliding_window > 0 && len > c->sliding_window ? c->sliding_window : len;
        if (win > max_len) max_len = win;
    }
    for (int o = 0; o < b->n_out; o++)
        if (b->out[o] < 0 || b->out[o] >= nt) return FAIL(-1, "output row %d outside the batch", b->out[o]);
    if (n_threads < 0 || n_threads > PL_MAX_THREADS)
        return FAIL(-1, "n_threads %d outside 1..%d (0: the OpenMP default)", n_threads, PL_MAX_THREADS);
#ifdef _OPENMP
    const int nth = n_threads > 0 ? n_threads : omp_get_max_threads();
#else
    const int nth = 1;
    (void)n_threads;
#endif
    /* the kernel table, read once: every matmul and attention call below uses this one, even if
     * another thread calls pl_set_isa meanwhile */
    const pl_kernels *K = pl_kernels_active();
    bufs B;
    if (!carve(s, K, m, nt, b->n_out, nth, max_len, &B)) return FAIL(-5, "out of memory for scratch buffers");

    const int dim = c->dim, hd = c->head_dim, half = hd / 2;
    const int qd = c->n_heads * hd, kvd = c->n_kv_heads * hd, hid = c->hidden_dim;

#pragma omp parallel num_threads(nth)
    {
        /* token embeddings */
        const pl_to_float_fn embd = K->types[m->tok_embd.type].to_float;
#pragma omp for schedule(static)
        for (int t = 0; t < nt; t++)
            embd((const char *)m->tok_embd.data + (size_t)b->token[t] * m->tok_embd.row_bytes, B.x + (size_t)t * dim, dim);

        for (int l = 0; l < c->n_layers; l++) {
            const pl_layer *L = &m->layers[l];
            double *st = s->stats ? s->stats + (size_t)l * (2 * dim + qd + hid) : NULL;
            /* attention norm */
#pragma omp for schedule(static)
            for (int t = 0; t < nt; t++)
                pl_rmsnorm(B.xb + (size_t)t * dim, B.x + (size_t)t * dim, L->attn_norm_f32, dim, c->norm_eps);
            if (st) accumulate_squares(st, B.xb, nt, dim, dim);
            /* q, k, v projections */
            {
                const pl_tensor *ws[3] = {&L->wq, &L->wk, &L->wv};
                float *ys[3] = {B.q, B.k, B.v};
                const int ld[3] = {qd, kvd, kvd};
                pl_matmul_multi(K, ws, ys, ld, 3, B.xb, nt, dim, B.act, 0);
            }
            /* RoPE at each token's position, then write k, v into its sequence's cache */
#pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                const float *cs = m->rope_cos + (size_t)b->pos[t] * half, *sn = m->rope_sin + (size_t)b->pos[t] * half;
                pl_rope(B.q + (size_t)t * qd, c->n_heads, hd, cs, sn, c->rope_interleaved);
                pl_rope(B.k + (size_t)t * kvd, c->n_kv_heads, hd, cs, sn, c->rope_interleaved);
                pl_kv *kv = kvs[b->seq[t]];
                const size_t off = ((size_t)l * kv->n_ctx + b->pos[t]) * kvd;
                if (kv->type == PL_TYPE_F32) {
                    memcpy((float *)kv->k + off, B.k + (size_t)t * kvd, (size_t)kvd * sizeof(float));
                    memcpy((float *)kv->v + off, B.v + (size_t)t * kvd, (size_t)kvd * sizeof(float));
                } else {
                    const pl_from_float_fn to_kv = K->types[kv->type].from_float;
                    to_kv(B.k + (size_t)t * kvd, (char *)kv->k + off * kv->elt, kvd);
                    to_kv(B.v + (size_t)t * kvd, (char *)kv->v + off * kv->elt, kvd);
                }
            }
            /* attention over the cache, written over q (each work item reads its own q rows before it
             * writes the same rows) */
            pl_attention(K, m, l, kvs, b, B.q, qd, B.q, qd, B.scores, B.scores_stride);
            if (st) accumulate_squares(st + dim, B.q, nt, qd, qd);
            /* output projection into xb (free once q/k/v are made), residual, MLP norm back into xb */
            pl_matmul(K, &L->wo, B.q, nt, qd, B.xb, dim, B.act);
#pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                float *x = B.x + (size_t)t * dim, *xb = B.xb + (size_t)t * dim;
                for (int i = 0; i < dim; i++) x[i] += xb[i];
                pl_rmsnorm(xb, x, L->ffn_norm_f32, dim, c->norm_eps);
            }
            if (st) accumulate_squares(st + dim + qd, B.xb, nt, dim, dim);
            /* SwiGLU MLP, MLP_CHUNK tokens at a time (hb/hb2 are the largest buffers); the down
             * projection of a chunk goes over that chunk's xb rows, already read by gate/up */
            for (int c0 = 0; c0 < nt; c0 += MLP_CHUNK) {
                const int cn = nt - c0 < MLP_CHUNK ? nt - c0 : MLP_CHUNK;
                float *xbc = B.xb + (size_t)c0 * dim;
                {
                    const pl_tensor *ws[2] = {&L->ffn_gate, &L->ffn_up};
                    float *ys[2] = {B.hb, B.hb2};
                    const int ld[2] = {hid, hid};
                    pl_matmul_multi(K, ws, ys, ld, 2, xbc, cn, dim, B.act, 0);
                }
                /* hb and hb2 are [cn][hid] contiguous: split the flat range, so one token's row is
                 * shared by all threads in decode */
                {
                    const int64_t tot = (int64_t)cn * hid, nch = (tot + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp for schedule(static)
                    for (int64_t ch = 0; ch < nch; ch++) {
                        const int64_t i0 = ch * SWIGLU_CHUNK;
                        K->swiglu_f32(B.hb + i0, B.hb2 + i0, (int)(tot - i0 < SWIGLU_CHUNK ? tot - i0 : SWIGLU_CHUNK));
                    }
                }
                if (st) accumulate_squares(st + 2 * dim + qd, B.hb, cn, hid, hid);
                pl_matmul(K, &L->ffn_down, B.hb, cn, hid, xbc, dim, B.act);
            }
#pragma omp for schedule(static)
            for (int t = 0; t < nt; t++) {
                float *x = B.x + (size_t)t * dim;
                const float *y = B.xb + (size_t)t * dim;
                for (int i = 0; i < dim; i++) x[i] += y[i];
            }
        }
        /* final norm and LM head, only for the rows asked for */
        if (b->n_out > 0) {
#pragma omp for schedule(static)
            for (int o = 0; o < b->n_out; o++)
                pl_rmsnorm(B.xb + (size_t)o * dim, B.x + (size_t)b->out[o] * dim, m->output_norm_f32, dim, c->norm_eps);
            pl_matmul(K, &m->output, B.xb, b->n_out, dim, logits, c->n_vocab, B.act);
        }
    }
    return 0;
}
