/* forward.c: one call runs a batch of tokens (any mix of sequences and positions) through every
 * layer: embedding, then per layer RMSNorm, q/k/v (+ biases, per-head norms), RoPE, KV-cache
 * write, attention, output projection, residual, RMSNorm, the layer's feed-forward block (dense
 * SwiGLU or a mixture of SwiGLU experts), residual; then final norm and LM head for the rows whose
 * logits are wanted. All threads run the whole call as one pl_par_run (thread_pool.h), meeting at
 * barriers between steps, and all of them use the one kernel table read at the start of the call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

/* tokens per pass through the MLP: its two hidden-size buffers are the largest scratch (2 x 5.8 MB
 * at 128 tokens for a 1.1B model instead of 23 MB for a 512-token batch); the gemm reuses a weight
 * tile over 64 tokens at a time anyway */
#define MLP_CHUNK 128
#define SWIGLU_CHUNK 1024 /* floats per work item of the SwiGLU loop (a multiple of 16) */
/* tokens routed together by a mixture-of-experts layer: each expert's weights are read once per
 * group (per MLP_CHUNK of the tokens it gets), and a 512-token prefill batch is one group */
#define MOE_CHUNK 512

struct pl_scratch {
    size_t cap;   /* bytes in mem */
    void *mem;
    double *stats; /* optional: activation statistics for calibration (see pl_scratch_set_stats) */
};

void pl_scratch_set_stats(pl_scratch *s, double *stats) { s->stats = stats; }

size_t pl_stats_len(const pl_model *m) { return m->stats_len; }

/* adds the squares of nt rows of x (n wide, ld apart) to acc, column-parallel (no races) */
static void accumulate_squares(pl_par *P, double *acc, const float *x, int nt, int n, int ld) {
    PL_PAR_FOR(P, i, n) {
        double a = 0.0;
        for (int t = 0; t < nt; t++) a += (double)x[(size_t)t * ld + i] * x[(size_t)t * ld + i];
        acc[i] += a;
    }
    pl_par_barrier(P);
}

/* calibration: w's statistics slot gets the squares of the nt input rows x (ld apart) per column
 * and their count (no-op without stats or a slot) */
static void tensor_stats(pl_par *P, double *stats, const pl_tensor *w, const float *x, int nt, int ld) {
    if (!stats || w->stats_off < 0 || nt <= 0) return;
    double *slot = stats + w->stats_off;
    accumulate_squares(P, slot, x, nt, (int)w->ne0, ld);
    if (P->ith == 0) slot[w->ne0] += nt;
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
    /* mixture of experts (n_expert > 0): router logits [group][nexp], each expert's tokens of a group
     * (index and routing weight) [nexp][MOE_CHUNK], gathered rows [MLP_CHUNK][dim], the group's sum
     * [group][dim] */
    float *router, *exp_w, *xg, *acc;
    int *exp_tok, *exp_n;
    /* LongRoPE: the largest position of each sequence in the batch [n_kv] */
    int *seq_max;
} bufs;

static int carve(pl_scratch *s, const pl_kernels *K, const pl_model *m, int nt, int n_out, int n_kv, int nth,
                 int max_len, bufs *B) {
    const pl_config *c = &m->cfg;
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    const int rows = nt > n_out ? nt : n_out;
    const int mlp_rows = nt < MLP_CHUNK ? nt : MLP_CHUNK;
    const size_t nexp = (size_t)c->n_expert;
    const size_t moe_rows = nexp ? (size_t)(nt < MOE_CHUNK ? nt : MOE_CHUNK) : 0;
    /* rows of hb/hb2 (and the gathered rows): a chunk of the MLP, or one token's selected experts */
    const size_t h_rows = nexp && (size_t)c->n_expert_used > (size_t)mlp_rows ? (size_t)c->n_expert_used : (size_t)mlp_rows;
    size_t act = 0;
    /* the largest activation conversion any matmul of this model may need */
    size_t a1 = pl_matmul_act_bytes(K, &m->output, rows);
    if (a1 > act) act = a1;
    for (int l = 0; l < c->n_layers; l++) {
        const pl_layer *L = &m->layers[l];
#define ACT(f, mm, e0, e1, need, stk)                                                                  \
        if ((mm) && L->f.data) {                                                                       \
            const size_t a = pl_matmul_act_bytes(K, &L->f, !strcmp(#f, "ffn_gate_inp") ? (int)moe_rows  \
                                                     : !strncmp(#f, "ffn_", 4) ? mlp_rows : nt);          \
            if (a > act) act = a;                                                                      \
        }
        PL_LAYER_TENSORS(ACT)
#undef ACT
    }
    B->scores_stride = align64(pl_attention_scratch_floats(m, max_len) * sizeof(float)) / sizeof(float);
    const size_t sz[] = {
        (size_t)rows * c->dim, (size_t)rows * c->dim, (size_t)nt * qd, (size_t)nt * kvd, (size_t)nt * kvd,
        h_rows * c->hidden_dim, h_rows * c->hidden_dim, (size_t)nth * B->scores_stride,
        nexp * moe_rows, nexp * MOE_CHUNK, nexp ? h_rows * c->dim : 0, moe_rows * c->dim,
        nexp * MOE_CHUNK, nexp, c->rope_long_after > 0 ? (size_t)n_kv : 0,
    };
    void **dst[] = {(void **)&B->x, (void **)&B->xb, (void **)&B->q, (void **)&B->k, (void **)&B->v,
                    (void **)&B->hb, (void **)&B->hb2, (void **)&B->scores, (void **)&B->router, (void **)&B->exp_w,
                    (void **)&B->xg, (void **)&B->acc, (void **)&B->exp_tok, (void **)&B->exp_n,
                    (void **)&B->seq_max};
    enum { NBUF = sizeof(sz) / sizeof(sz[0]) };
    _Static_assert(sizeof(float) == sizeof(int), "scratch counts floats and ints alike");
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
        *dst[i] = p;
        p += align64(sz[i] * sizeof(float));
    }
    return 1;
}

/* expert e of a stacked tensor (rows per expert each): a view of its rows, packed ones included
 * (repack.c packs a stacked tensor only when every expert starts a 16-row group) */
static pl_tensor expert_view(const pl_tensor *t, int e, int64_t rows) {
    pl_tensor v = *t;
    v.ne1 = rows;
    v.data = (const char *)t->data + (size_t)e * rows * t->row_bytes;
    if (t->packed) v.packed = (const char *)t->packed + (size_t)(e * rows / PL_PACK_ROWS) * t->packed_group_bytes;
    if (t->stats_off >= 0) v.stats_off = t->stats_off + (int64_t)e * (t->ne0 + 1);
    return v;
}

/* hb = silu(hb) * hb2 over n rows of hid: hb and hb2 are [n][hid] contiguous, so the flat range is
 * split over threads (one token's row is shared by all threads in decode) */
static void swiglu_rows(pl_par *P, const pl_kernels *K, bufs *B, int n, int hid) {
    const int64_t tot = (int64_t)n * hid, nch = (tot + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
    PL_PAR_FOR(P, ch, nch) {
        const int64_t i0 = ch * SWIGLU_CHUNK;
        K->swiglu_f32(B->hb + i0, B->hb2 + i0, (int)(tot - i0 < SWIGLU_CHUNK ? tot - i0 : SWIGLU_CHUNK));
    }
    pl_par_barrier(P);
}

/* The dense SwiGLU MLP of layer L over nt rows of xb, written back over xb: MLP_CHUNK tokens at a
 * time (hb/hb2 are the largest buffers); the down projection of a chunk goes over that chunk's xb
 * rows, already read by gate/up. st: the calibration statistics (tensor_stats) or NULL. */
static void ffn_dense(pl_par *P, const pl_kernels *K, const pl_model *m, const pl_layer *L, bufs *B, int nt, double *st) {
    const int dim = m->cfg.dim, hid = m->cfg.hidden_dim;
    for (int c0 = 0; c0 < nt; c0 += MLP_CHUNK) {
        const int cn = nt - c0 < MLP_CHUNK ? nt - c0 : MLP_CHUNK;
        float *xbc = B->xb + (size_t)c0 * dim;
        tensor_stats(P, st, &L->ffn_gate, xbc, cn, dim);
        tensor_stats(P, st, &L->ffn_up, xbc, cn, dim);
        {
            const pl_tensor *ws[2] = {&L->ffn_gate, &L->ffn_up};
            float *ys[2] = {B->hb, B->hb2};
            const int ld[2] = {hid, hid};
            pl_matmul_multi(P, K, ws, ys, ld, 2, xbc, cn, dim, B->act, 0);
        }
        swiglu_rows(P, K, B, cn, hid);
        tensor_stats(P, st, &L->ffn_down, B->hb, cn, hid);
        pl_matmul(P, K, &L->ffn_down, B->hb, cn, hid, xbc, dim, B->act);
    }
}

/* The mixture-of-experts block of layer L (Mixtral, as transformers computes it): per token the
 * router's logits, their softmax, the top n_expert_used experts, their weights renormalized to sum
 * to 1, and the weighted sum of those experts' SwiGLU outputs, written back over xb. A group's tokens
 * (MOE_CHUNK) are grouped by expert, so each selected expert's weights are read once per group (per
 * MLP_CHUNK of its tokens) and every matmul is split over all threads (one token's decode included). Each token's sum runs over its experts in
 * index order, whatever else is in the batch (batch invariance). */
/* one token's routing: softmax of its router logits p (in place), the top ku experts by probability
 * (ties: the lower index, as torch.topk on CPU) listed in expert order in sel, their probabilities
 * renormalized to sum to 1 in w */
static void route(float *p, int nexp, int ku, int *sel, float *w) {
    pl_softmax(p, nexp);
    float sum = 0.0f;
    for (int j = 0; j < ku; j++) {
        int best = -1;
        for (int e = 0; e < nexp; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= sel[i] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        sel[j] = best;
        sum += p[best];
    }
    for (int j = 1; j < ku; j++) /* expert order: the order each token's sum runs in */
        for (int i = j; i > 0 && sel[i - 1] > sel[i]; i--) {
            const int t = sel[i];
            sel[i] = sel[i - 1];
            sel[i - 1] = t;
        }
    for (int j = 0; j < ku; j++) w[j] = p[sel[j]] / sum;
}

/* ffn_moe for a batch of one token (decode): the selected experts' gate and up projections in one
 * pass over the same input, one SwiGLU over their rows, then each down projection; the weighted
 * sum in expert order, the arithmetic of the general path (batch invariance) with fewer barriers */
static void moe_one_token(pl_par *P, const pl_kernels *K, const pl_model *m, const pl_layer *L, bufs *B, double *st) {
    const pl_config *c = &m->cfg;
    const int dim = c->dim, hid = c->hidden_dim, nexp = c->n_expert, ku = c->n_expert_used;
    tensor_stats(P, st, &L->ffn_gate_inp, B->xb, 1, dim);
    pl_matmul(P, K, &L->ffn_gate_inp, B->xb, 1, dim, B->router, nexp, B->act);
    int *sel = B->exp_tok;
    float *w = B->exp_w;
    if (P->ith == 0) route(B->router, nexp, ku, sel, w);
    pl_par_barrier(P);
    {
        pl_tensor v[2 * PL_MAX_EXPERTS];
        const pl_tensor *ws[2 * PL_MAX_EXPERTS];
        float *ys[2 * PL_MAX_EXPERTS];
        int ld[2 * PL_MAX_EXPERTS];
        for (int j = 0; j < ku; j++) {
            v[2 * j] = expert_view(&L->ffn_gate_exps, sel[j], hid);
            v[2 * j + 1] = expert_view(&L->ffn_up_exps, sel[j], hid);
            ws[2 * j] = &v[2 * j];
            ws[2 * j + 1] = &v[2 * j + 1];
            tensor_stats(P, st, &v[2 * j], B->xb, 1, dim);
            tensor_stats(P, st, &v[2 * j + 1], B->xb, 1, dim);
            ys[2 * j] = B->hb + (size_t)j * hid;
            ys[2 * j + 1] = B->hb2 + (size_t)j * hid;
            ld[2 * j] = ld[2 * j + 1] = hid;
        }
        pl_matmul_multi(P, K, ws, ys, ld, 2 * ku, B->xb, 1, dim, B->act, 0);
    }
    swiglu_rows(P, K, B, ku, hid);
    for (int j = 0; j < ku; j++) {
        const pl_tensor down = expert_view(&L->ffn_down_exps, sel[j], dim);
        tensor_stats(P, st, &down, B->hb + (size_t)j * hid, 1, hid);
        pl_matmul(P, K, &down, B->hb + (size_t)j * hid, 1, hid, B->xg + (size_t)j * dim, dim, B->act);
    }
    PL_PAR_FOR(P, d, dim) {
        float a = 0.0f;
        for (int j = 0; j < ku; j++) a += w[j] * B->xg[(size_t)j * dim + d];
        B->xb[d] = a;
    }
    pl_par_barrier(P);
}

static void ffn_moe(pl_par *P, const pl_kernels *K, const pl_model *m, const pl_layer *L, bufs *B, int nt, double *st) {
    const pl_config *c = &m->cfg;
    const int dim = c->dim, hid = c->hidden_dim, nexp = c->n_expert, ku = c->n_expert_used;
    if (nt == 1) {
        moe_one_token(P, K, m, L, B, st);
        return;
    }
    for (int c0 = 0; c0 < nt; c0 += MOE_CHUNK) {
        const int cn = nt - c0 < MOE_CHUNK ? nt - c0 : MOE_CHUNK;
        float *xbc = B->xb + (size_t)c0 * dim;
        tensor_stats(P, st, &L->ffn_gate_inp, xbc, cn, dim);
        pl_matmul(P, K, &L->ffn_gate_inp, xbc, cn, dim, B->router, nexp, B->act);
        if (P->ith == 0) {
            for (int e = 0; e < nexp; e++) B->exp_n[e] = 0;
            for (int t = 0; t < cn; t++) {
                int sel[PL_MAX_EXPERTS];
                float w[PL_MAX_EXPERTS];
                route(B->router + (size_t)t * nexp, nexp, ku, sel, w);
                for (int j = 0; j < ku; j++) {
                    const int e = sel[j], n = B->exp_n[e]++;
                    B->exp_tok[(size_t)e * MOE_CHUNK + n] = t;
                    B->exp_w[(size_t)e * MOE_CHUNK + n] = w[j];
                }
            }
        }
        pl_par_barrier(P);
        PL_PAR_FOR(P, t, cn) memset(B->acc + (size_t)t * dim, 0, (size_t)dim * sizeof(float));
        pl_par_barrier(P);
        for (int e = 0; e < nexp; e++) {
            const pl_tensor gate = expert_view(&L->ffn_gate_exps, e, hid), up = expert_view(&L->ffn_up_exps, e, hid);
            const pl_tensor down = expert_view(&L->ffn_down_exps, e, dim);
            /* the expert's tokens, MLP_CHUNK at a time (hb/hb2 hold that many rows) */
            for (int i0 = 0; i0 < B->exp_n[e]; i0 += MLP_CHUNK) {
                const int n = B->exp_n[e] - i0 < MLP_CHUNK ? B->exp_n[e] - i0 : MLP_CHUNK;
                const int *tok = B->exp_tok + (size_t)e * MOE_CHUNK + i0;
                const float *w = B->exp_w + (size_t)e * MOE_CHUNK + i0;
                PL_PAR_FOR(P, i, n)
                    memcpy(B->xg + (size_t)i * dim, xbc + (size_t)tok[i] * dim, (size_t)dim * sizeof(float));
                pl_par_barrier(P);
                tensor_stats(P, st, &gate, B->xg, n, dim);
                tensor_stats(P, st, &up, B->xg, n, dim);
                {
                    const pl_tensor *ws[2] = {&gate, &up};
                    float *ys[2] = {B->hb, B->hb2};
                    const int ld[2] = {hid, hid};
                    pl_matmul_multi(P, K, ws, ys, ld, 2, B->xg, n, dim, B->act, 0);
                }
                swiglu_rows(P, K, B, n, hid);
                tensor_stats(P, st, &down, B->hb, n, hid);
                pl_matmul(P, K, &down, B->hb, n, hid, B->xg, dim, B->act); /* the gathered rows are read: reuse them */
                PL_PAR_FOR(P, i, n) {
                    float *a = B->acc + (size_t)tok[i] * dim;
                    const float *y = B->xg + (size_t)i * dim;
                    for (int d = 0; d < dim; d++) a[d] += w[i] * y[d];
                }
                pl_par_barrier(P);
            }
        }
        PL_PAR_FOR(P, t, cn) memcpy(xbc + (size_t)t * dim, B->acc + (size_t)t * dim, (size_t)dim * sizeof(float));
        pl_par_barrier(P);
    }
}

/* what every thread of the forward's run reads */
typedef struct {
    const pl_model *m;
    pl_scratch *s;
    pl_kv *const *kvs;
    const pl_batch *b;
    float *logits;
    const pl_kernels *K;
    bufs B;
} fwd_job;

/* the forward on one thread of the run: every step split over the threads, barriers between */
static void forward_run(pl_par *P, void *arg) {
    fwd_job *J = arg;
    const pl_model *m = J->m;
    const pl_config *c = &m->cfg;
    pl_scratch *s = J->s;
    pl_kv *const *kvs = J->kvs;
    const pl_batch *b = J->b;
    float *logits = J->logits;
    const pl_kernels *K = J->K;
    bufs B = J->B;
    const int nt = b->n_tokens;
    const int dim = c->dim, hd = c->head_dim, half = hd / 2;
    const int qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;

    {
        /* token embeddings */
        const pl_to_float_fn embd = K->types[m->tok_embd.type].to_float;
        PL_PAR_FOR(P, t, nt)
            embd((const char *)m->tok_embd.data + (size_t)b->token[t] * m->tok_embd.row_bytes, B.x + (size_t)t * dim, dim);
        pl_par_barrier(P);

        for (int l = 0; l < c->n_layers; l++) {
            const pl_layer *L = &m->layers[l];
            double *st = s->stats; /* calibration statistics (tensor_stats), or NULL */
            /* attention norm */
            PL_PAR_FOR(P, t, nt)
                pl_rmsnorm(B.xb + (size_t)t * dim, B.x + (size_t)t * dim, L->attn_norm.f32, dim, c->norm_eps);
            pl_par_barrier(P);
            tensor_stats(P, st, &L->wq, B.xb, nt, dim);
            tensor_stats(P, st, &L->wk, B.xb, nt, dim);
            tensor_stats(P, st, &L->wv, B.xb, nt, dim);
            /* q, k, v projections */
            {
                const pl_tensor *ws[3] = {&L->wq, &L->wk, &L->wv};
                float *ys[3] = {B.q, B.k, B.v};
                const int ld[3] = {qd, kvd, kvd};
                pl_matmul_multi(P, K, ws, ys, ld, 3, B.xb, nt, dim, B.act, 0);
            }
            /* biases, per-head q/k norms, RoPE at each token's position (LongRoPE: the long table once
             * its sequence reaches the original context in this batch), then write k, v into its
             * sequence's cache */
            PL_PAR_FOR(P, t, nt) {
                float *qt = B.q + (size_t)t * qd, *kt = B.k + (size_t)t * kvd, *vt = B.v + (size_t)t * kvd;
                if (c->qkv_bias) {
                    for (int i = 0; i < qd; i++) qt[i] += L->bq.f32[i];
                    for (int i = 0; i < kvd; i++) kt[i] += L->bk.f32[i];
                    for (int i = 0; i < kvd; i++) vt[i] += L->bv.f32[i];
                }
                if (c->qk_norm) {
                    for (int h = 0; h < c->n_heads; h++) pl_rmsnorm(qt + h * hd, qt + h * hd, L->q_norm.f32, hd, c->norm_eps);
                    for (int h = 0; h < c->n_kv_heads; h++) pl_rmsnorm(kt + h * hd, kt + h * hd, L->k_norm.f32, hd, c->norm_eps);
                }
                const int lng = c->rope_long_after > 0 && B.seq_max[b->seq[t]] >= c->rope_long_after;
                const size_t ro = (size_t)b->pos[t] * half;
                const float *cs = (lng ? m->rope_cos_long : m->rope_cos) + ro, *sn = (lng ? m->rope_sin_long : m->rope_sin) + ro;
                pl_rope(qt, c->n_heads, hd, cs, sn, c->rope_interleaved);
                pl_rope(kt, c->n_kv_heads, hd, cs, sn, c->rope_interleaved);
                pl_kv *kv = kvs[b->seq[t]];
                const size_t off = ((size_t)l * kv->n_ctx + b->pos[t]) * kvd;
                if (kv->type == PL_TYPE_F32) {
                    memcpy((float *)kv->k + off, kt, (size_t)kvd * sizeof(float));
                    memcpy((float *)kv->v + off, vt, (size_t)kvd * sizeof(float));
                } else {
                    const pl_from_float_fn to_kv = K->types[kv->type].from_float;
                    to_kv(kt, (char *)kv->k + off * kv->elt, kvd);
                    to_kv(vt, (char *)kv->v + off * kv->elt, kvd);
                }
            }
            pl_par_barrier(P);
            /* attention over the cache, written over q (each work item reads its own q rows before it
             * writes the same rows) */
            pl_attention(P, K, m, l, kvs, b, B.q, qd, B.q, qd, B.scores, B.scores_stride);
            tensor_stats(P, st, &L->wo, B.q, nt, qd);
            /* output projection into xb (free once q/k/v are made), its bias, residual, MLP norm back
             * into xb */
            pl_matmul(P, K, &L->wo, B.q, nt, qd, B.xb, dim, B.act);
            PL_PAR_FOR(P, t, nt) {
                float *x = B.x + (size_t)t * dim, *xb = B.xb + (size_t)t * dim;
                if (c->o_bias)
                    for (int i = 0; i < dim; i++) x[i] += xb[i] + L->bo.f32[i];
                else
                    for (int i = 0; i < dim; i++) x[i] += xb[i];
                pl_rmsnorm(xb, x, L->ffn_norm.f32, dim, c->norm_eps);
            }
            pl_par_barrier(P);
            /* the feed-forward block this layer has */
            if (L->ffn_gate_inp.data)
                ffn_moe(P, K, m, L, &B, nt, st);
            else
                ffn_dense(P, K, m, L, &B, nt, st);
            PL_PAR_FOR(P, t, nt) {
                float *x = B.x + (size_t)t * dim;
                const float *y = B.xb + (size_t)t * dim;
                for (int i = 0; i < dim; i++) x[i] += y[i];
            }
            pl_par_barrier(P);
        }
        /* final norm and LM head, only for the rows asked for */
        if (b->n_out > 0) {
            PL_PAR_FOR(P, o, b->n_out)
                pl_rmsnorm(B.xb + (size_t)o * dim, B.x + (size_t)b->out[o] * dim, m->output_norm.f32, dim, c->norm_eps);
            pl_par_barrier(P);
            pl_matmul(P, K, &m->output, B.xb, b->n_out, dim, logits, c->n_vocab, B.act);
        }
    }
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
        return FAIL(-1, "n_threads %d outside 1..%d (0: all CPUs)", n_threads, PL_MAX_THREADS);
    int nth = n_threads > 0 ? n_threads : pl_default_threads();
    if (nth > PL_MAX_THREADS) nth = PL_MAX_THREADS;
    /* the kernel table, read once: every matmul and attention call below uses this one, even if
     * another thread calls pl_set_isa meanwhile */
    const pl_kernels *K = pl_kernels_active();
    bufs B;
    if (!carve(s, K, m, nt, b->n_out, n_kv, nth, max_len, &B)) return FAIL(-5, "out of memory for scratch buffers");
    if (c->rope_long_after > 0) {
        for (int i = 0; i < n_kv; i++) B.seq_max[i] = -1;
        for (int t = 0; t < nt; t++)
            if (b->pos[t] > B.seq_max[b->seq[t]]) B.seq_max[b->seq[t]] = b->pos[t];
    }

    fwd_job J = {m, s, kvs, b, logits, K, B};
    pl_par_run(nth, forward_run, &J);
    return 0;
}
