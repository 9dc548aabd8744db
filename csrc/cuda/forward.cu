/* forward.cu: pl_cuda_forward, a batch through the whole model on the device, step for step the CPU's
 * forward (csrc/forward.c): embedding; per layer RMSNorm, q / k / v (the activations quantized once
 * for all three when their weights read the same quantized form: Q8_0 or Q8_K), biases / norms / RoPE / KV write, attention,
 * output projection, residual + RMSNorm, gate and up, SwiGLU, down, residual; then the final norm and the
 * LM head for the rows asked for, whose logits alone are copied back. Every index the batch holds is
 * checked on the host first; the batch's ids and its sequences' cache addresses go to the device in one
 * copy. Everything runs on the model's stream; the call returns when the logits are on the host. Decode
 * batches replay CUDA graphs (below). */
#include <stdlib.h>
#include <string.h>

#include "model_internal.cuh"

#define FAIL(...) PL_CUDA_ERR(__VA_ARGS__)
#define TRY(call) \
    do {          \
        if (call) return -1; \
    } while (0)

/* x's form `form` (PL_CUDA_Q8_0 / PL_CUDA_Q8_K) in m->s.act, unless have says it is there already */
static int quantize(pl_cuda_model *m, int form, int have, const float *x, int64_t n, char *err) {
    if (have == form) return 0;
    if (form == PL_CUDA_Q8_0) return pl_cuda_quantize_q8_0_on(x, n, m->s.act, m->stream, err);
    return pl_cuda_quantize_q8_k_on(x, n, m->s.act, m->stream, err);
}

/* y = W x. Quantized weights read x's Q8_0 form (Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1) or Q8_K form (the K-quants) in m->s.act;
 * have: the form already there for these rows x (pl_cuda_act_form's id; 0: none), else x is quantized first */
static int matmul(pl_cuda_model *m, const pl_cuda_weight *w, const float *x, int nt, float *y, int ldy, int have,
                  char *err) {
    const int form = pl_cuda_act_form(w->type);
    if (form) TRY(quantize(m, form, have, x, (int64_t)nt * w->ne0, err));
    if (form == PL_CUDA_Q8_0) {
        if (w->type != PL_CUDA_Q4_0 && w->type != PL_CUDA_Q8_0) /* Q4_1 / Q5_0 / Q5_1 */
            return pl_cuda_matmul_legacy_launch(w, m->s.act, nt, y, ldy, m->stream, err);
        if (nt >= m->mma_min_tokens) return pl_cuda_gemm_mma_launch(w, m->s.act, nt, y, ldy, m->stream, err);
        return pl_cuda_matmul_quant_launch(w, m->s.act, nt, y, ldy, m->stream, err);
    }
    if (form == PL_CUDA_Q8_K) {
        if (nt >= m->mma_min_tokens) return pl_cuda_gemm_mma_kquant_launch(w, m->s.act, nt, y, ldy, m->stream, err);
        return pl_cuda_matmul_kquant_launch(w, m->s.act, nt, y, ldy, m->stream, err);
    }
    return pl_cuda_matmul_float_launch(w, x, nt, (int)w->ne0, y, ldy, m->stream, err);
}

/* several weights with the same input x (q/k/v, gate/up): x quantized once per run of weights that read the
 * same form (a group mixing Q8_0-form and Q8_K-form types quantizes again where the form changes); have as
 * matmul's. With fused launches, a few tokens through consecutive weights of one type (Q4_0, Q8_0 or a
 * K-quant) and width take one launch for them (pl_cuda_gemv_group_launch). */
/* whether nt tokens take the fused GEMV launches (grouped q / k / v, gate / up + SwiGLU): fusing on, and too
 * few tokens for the tensor cores */
static int fused_gemv(const pl_cuda_model *m, int nt) { return m->fuse && nt < m->mma_min_tokens; }

static int matmul_shared_input(pl_cuda_model *m, const pl_cuda_weight *const *ws, float *const *ys, const int *ld, int n,
                               const float *x, int nt, int have, char *err) {
    const int grouping = fused_gemv(m, nt);
    for (int i = 0, j; i < n; i = j) {
        j = i + 1;
        while (grouping && j < n && pl_cuda_gemv_group_ok(ws + i, j - i + 1)) j++;
        if (j - i >= 2) {
            const int form = pl_cuda_act_form(ws[i]->type);
            TRY(quantize(m, form, have, x, (int64_t)nt * ws[i]->ne0, err));
            TRY(pl_cuda_gemv_group_launch(ws + i, ys + i, ld + i, j - i, m->s.act, nt, m->stream, err));
            have = form;
        } else {
            TRY(matmul(m, ws[i], x, nt, ys[i], ld[i], have, err));
            if (pl_cuda_act_form(ws[i]->type)) have = pl_cuda_act_form(ws[i]->type);
        }
    }
    return 0;
}

/* the activation form a kernel producing w's input should also write in m->s.act (saving a quantization
 * launch): w's form (PL_CUDA_Q8_0 / PL_CUDA_Q8_K) when fusing is on, else 0 */
static int emit_for(const pl_cuda_model *m, const pl_cuda_weight *w) { return m->fuse ? pl_cuda_act_form(w->type) : 0; }

/* tokens per attention launch: as many as PL_ATT_BUDGET_BYTES of partial outputs hold
 * (PYLLM_CUDA_ATT_BUDGET=bytes overrides it: the tests make long prompts take several launches) */
static int att_chunk(const pl_cuda_model *m, int n_splits) {
    const size_t per_token = (size_t)n_splits * m->c.n_heads * m->c.head_dim * sizeof(float);
    const char *env = getenv("PYLLM_CUDA_ATT_BUDGET");
    const long long budget = env ? atoll(env) : 0;
    const size_t n = (budget > 0 ? (size_t)budget : PL_ATT_BUDGET_BYTES) / per_token;
    return n < 1 ? 1 : n > (1 << 20) ? (1 << 20) : (int)n;
}

/* attention of layer l, written over s->q, as the batch's plan (pl_cuda_attention_plan) says: the prefill runs'
 * tiles on the tiled kernel, the other tokens' ranges on the split kernel in chunks of att_chunk tokens. A
 * mixed batch (a prompt's run beside other sequences' decode tokens) takes both, each token once. q8: the
 * split kernel also writes the output's Q8_0 form there (rows of the nt-token batch), or NULL */
static int attention(pl_cuda_model *m, int l, int n_splits, const int32_t *d_pos, const int32_t *d_seq, void *q8, int nt,
                     char *err) {
    pl_cuda_scratch *s = &m->s;
    const int qd = m->c.n_heads * m->c.head_dim, chunk = att_chunk(m, n_splits);
    TRY(pl_cuda_attention_prefill(m, l, s->q, s->q, d_pos, d_seq, s->views, err));
    for (int r = 0; r < s->n_split_ranges; r++)
        for (int c0 = s->split_ranges[2 * r], end = s->split_ranges[2 * r + 1]; c0 < end; c0 += chunk) {
            const int cn = end - c0 < chunk ? end - c0 : chunk;
            float *qc = s->q + (size_t)c0 * qd;
            TRY(pl_cuda_attention(m, l, qc, qc, cn, n_splits, d_pos + c0, d_seq + c0, s->views, q8, c0, nt, err));
        }
    return 0;
}

/* every kernel of one forward from the embedding to the logits on the device, enqueued on m->stream (or
 * recorded into a graph while the stream captures). Reads the batch from m->s.ids / m->s.views. */
static int enqueue_forward(pl_cuda_model *m, int nt, int n_out, int n_splits, char *err) {
    const pl_cuda_config *c = &m->c;
    pl_cuda_scratch *s = &m->s;
    const int32_t *d_tok = s->ids, *d_pos = s->ids + s->cap_tokens, *d_seq = s->ids + 2 * s->cap_tokens,
                  *d_out = s->ids + 3 * s->cap_tokens;
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim, hid = c->hidden_dim;
    TRY(pl_cuda_embed(m, d_tok, nt, s->x, err));
    /* have: the quantized form of xb (or of the attention's output) the kernel that made it also wrote in
     * s->act, 0 if none */
    int have = emit_for(m, &m->layers[0].wq);
    TRY(pl_cuda_rmsnorm(m, s->x, NULL, nt, c->dim, m->layers[0].attn_norm, s->xb, s->act, have, err));
    for (int l = 0; l < c->n_layers; l++) {
        const pl_cuda_layer *L = &m->layers[l];
        {
            const pl_cuda_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {s->q, s->k, s->v};
            const int ld[3] = {qd, kvd, kvd};
            TRY(matmul_shared_input(m, ws, ys, ld, 3, s->xb, nt, have, err));
        }
        TRY(pl_cuda_qkv_finish(m, L, l, s->q, s->k, s->v, nt, d_pos, d_seq, s->views, err));
        /* the split kernel writes a Q8_0 form head by head (Q8_K's super-blocks span heads), when every token
         * goes through it (no prefill tiles) */
        have = emit_for(m, &L->wo) == PL_CUDA_Q8_0 && c->head_dim % PL_CUDA_QK == 0 && s->n_tiles == 0 ? PL_CUDA_Q8_0 : 0;
        TRY(attention(m, l, n_splits, d_pos, d_seq, have ? s->act : NULL, nt, err));
        TRY(matmul(m, &L->wo, s->q, nt, s->xb, c->dim, have, err));
        const pl_cuda_weight *gate = &L->ffn_gate, *up = &L->ffn_up;
        have = emit_for(m, gate);
        TRY(pl_cuda_residual(m, s->x, s->xb, c->o_bias ? L->bo : NULL, nt, L->ffn_norm, s->xb, s->act, have, err));
        const pl_cuda_weight *gu[2] = {gate, up};
        if (fused_gemv(m, nt) && pl_cuda_gemv_group_ok(gu, 2)) { /* (gate and up: hidden_dim rows each) */
            /* gate, up and SwiGLU in one launch (the norm wrote their input's form) */
            TRY(quantize(m, pl_cuda_act_form(gate->type), have, s->xb, (int64_t)nt * c->dim, err));
            TRY(pl_cuda_gemv_swiglu_launch(gate, up, s->act, nt, s->hb, hid, m->stream, err));
        } else {
            float *ys[2] = {s->hb, s->hb2};
            const int ld[2] = {hid, hid};
            TRY(matmul_shared_input(m, gu, ys, ld, 2, s->xb, nt, have, err));
            TRY(pl_cuda_swiglu(m, s->hb, s->hb2, (int64_t)nt * hid, err));
        }
        TRY(matmul(m, &L->ffn_down, s->hb, nt, s->xb, c->dim, 0, err));
        /* the residual, and the next layer's attention norm in the same pass */
        const float *next_norm = l + 1 < c->n_layers ? m->layers[l + 1].attn_norm : NULL;
        have = next_norm ? emit_for(m, &m->layers[l + 1].wq) : 0;
        TRY(pl_cuda_residual(m, s->x, s->xb, NULL, nt, next_norm, s->xb, s->act, have, err));
    }
    if (n_out > 0) {
        have = emit_for(m, &m->output);
        TRY(pl_cuda_rmsnorm(m, s->x, d_out, n_out, c->dim, m->output_norm, s->xb, s->act, have, err));
        TRY(matmul(m, &m->output, s->xb, n_out, s->logits, c->n_vocab, have, err));
    }
    return 0;
}

/* ---- decode as CUDA graphs ----
 * A decode step (a few tokens, each a different sequence's next one) launches ~10 kernels per layer, each
 * costing the host a few microseconds, more than the kernels themselves on a small model. So the whole
 * forward of such a batch is captured once as a graph per (tokens, output rows) and replayed: every
 * launch argument is then the same from step to step (the scratch buffers, and an attention grid sized
 * for the longest context, whose blocks past a token's keys return at once), and what changes (tokens,
 * positions, caches) is read from the device copy of the batch, written before each replay. A scratch
 * reallocation drops the graphs (their kernels point into the old buffers). PYLLM_CUDA_GRAPHS=0 turns
 * them off (the same kernels launched one by one). */
#define GRAPH_MAX_TOKENS 32

static int graphs_enabled(void) {
    const char *e = getenv("PYLLM_CUDA_GRAPHS");
    return !(e && !strcmp(e, "0"));
}

void pl_cuda_graphs_free(pl_cuda_model *m) {
    for (int i = 0; i < PL_CUDA_GRAPH_SLOTS; i++)
        if (m->graphs[i].exec) {
            cudaGraphExecDestroy(m->graphs[i].exec);
            m->graphs[i].exec = NULL;
        }
    (void)cudaGetLastError();
}

/* the graph of a decode batch of nt tokens and n_out output rows (captured on first use), or NULL with
 * err set on a failure */
static cudaGraphExec_t decode_graph(pl_cuda_model *m, int nt, int n_out, int n_splits, char *err) {
    pl_cuda_graph *slot = NULL, *oldest = &m->graphs[0];
    for (int i = 0; i < PL_CUDA_GRAPH_SLOTS; i++) {
        pl_cuda_graph *g = &m->graphs[i];
        if (g->exec && g->n_tokens == nt && g->n_out == n_out && g->n_splits == n_splits) {
            g->last_use = ++m->graph_clock;
            return g->exec;
        }
        if (!g->exec && !slot) slot = g;
        if (g->last_use < oldest->last_use) oldest = g;
    }
    if (!slot) {
        slot = oldest;
        cudaGraphExecDestroy(slot->exec);
        slot->exec = NULL;
    }
    cudaGraph_t graph = NULL;
    if (pl_cuda_fail(cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal), "CUDA graph: capture", err))
        return NULL;
    const int rc = enqueue_forward(m, nt, n_out, n_splits, err);
    const cudaError_t ec = cudaStreamEndCapture(m->stream, &graph);
    if (rc) {
        if (graph) cudaGraphDestroy(graph);
        (void)cudaGetLastError();
        return NULL;
    }
    if (pl_cuda_fail(ec, "CUDA graph: capture", err)) return NULL;
    cudaGraphExec_t exec = NULL;
    const cudaError_t ei = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (pl_cuda_fail(ei, "CUDA graph: instantiate", err)) return NULL;
    slot->exec = exec;
    slot->n_tokens = nt;
    slot->n_out = n_out;
    slot->n_splits = n_splits;
    slot->last_use = ++m->graph_clock;
    return exec;
}

int pl_cuda_forward(pl_cuda_model *m, pl_cuda_kv *const *kvs, int n_kv, int n_tokens, const int32_t *token,
                    const int32_t *pos, const int32_t *seq, int n_out, const int32_t *out, float *logits, char *err) {
    if (!m) return FAIL("CUDA forward: no model");
    const pl_cuda_config *c = &m->c;
    const int nt = n_tokens;
    if (nt <= 0) return FAIL("empty batch");
    if (n_out < 0 || (n_out > 0 && (!out || !logits))) return FAIL("CUDA forward: bad output rows");
    if (n_kv <= 0 || !kvs) return FAIL("CUDA forward: no KV caches");
    int max_len = 1;
    for (int t = 0; t < nt; t++) {
        if (token[t] < 0 || token[t] >= c->n_vocab)
            return FAIL("token id %d at batch index %d outside the vocabulary (0..%d)", token[t], t, c->n_vocab - 1);
        if (seq[t] < 0 || seq[t] >= n_kv) return FAIL("sequence index %d out of range", seq[t]);
        const pl_cuda_kv *kv = kvs[seq[t]];
        if (!kv || kv->m != m) return FAIL("KV cache %d does not belong to this model", seq[t]);
        if (pos[t] < 0 || pos[t] >= kv->n_ctx || pos[t] >= c->max_ctx)
            return FAIL("position %d outside the context (%d tokens)", pos[t], kv->n_ctx);
        const int len = pos[t] + 1;
        const int win = c->sliding_window > 0 && len > c->sliding_window ? c->sliding_window : len;
        if (win > max_len) max_len = win;
    }
    for (int o = 0; o < n_out; o++)
        if (out[o] < 0 || out[o] >= nt) return FAIL("output row %d outside the batch", out[o]);
    /* a decode batch runs as a graph whose attention grid covers the whole context */
    const int use_graph = nt <= GRAPH_MAX_TOKENS && graphs_enabled();
    int ctx = c->max_ctx;
    if (c->sliding_window > 0 && c->sliding_window < ctx) ctx = c->sliding_window;
    const int n_splits = ((use_graph ? ctx : max_len) + m->att_split - 1) / m->att_split;
    /* (a reallocation drops the graphs) */
    const int cap = use_graph && nt < GRAPH_MAX_TOKENS ? GRAPH_MAX_TOKENS : nt;
    const int chunk = att_chunk(m, n_splits);
    TRY(pl_cuda_scratch_reserve(m, cap, n_kv, (int64_t)(cap < chunk ? cap : chunk) * n_splits, err));
    pl_cuda_scratch *s = &m->s;

    /* the batch to the device: token, pos, seq, out (4 x cap_tokens int32), then the caches */
    {
        int32_t *h = (int32_t *)s->host;
        const size_t T = (size_t)s->cap_tokens;
        memcpy(h, token, nt * sizeof(int32_t));
        memcpy(h + T, pos, nt * sizeof(int32_t));
        memcpy(h + 2 * T, seq, nt * sizeof(int32_t));
        if (n_out) memcpy(h + 3 * T, out, n_out * sizeof(int32_t));
        pl_cuda_kv_view *hv = (pl_cuda_kv_view *)(h + 4 * T);
        for (int i = 0; i < n_kv; i++) {
            const pl_cuda_kv *kv = kvs[i];
            hv[i].k = kv ? kv->k : NULL;
            hv[i].v = kv ? kv->v : NULL;
            hv[i].n_ctx = kv ? kv->n_ctx : 0;
            hv[i].type = kv ? kv->type : 0;
        }
        TRY(pl_cuda_fail(cudaMemcpyAsync(s->ids, h, 4 * T * sizeof(int32_t), cudaMemcpyHostToDevice, m->stream),
                         "CUDA forward: the batch to the device", err));
        TRY(pl_cuda_fail(cudaMemcpyAsync(s->views, hv, n_kv * sizeof(pl_cuda_kv_view), cudaMemcpyHostToDevice, m->stream),
                         "CUDA forward: the batch to the device", err));
    }
    /* which tokens' attention runs in prefill tiles (none in a graph: its launches are fixed) */
    TRY(pl_cuda_attention_plan(m, nt, pos, seq, !use_graph, err));
    if (use_graph) {
        const cudaGraphExec_t g = decode_graph(m, nt, n_out, n_splits, err);
        if (!g) return -1;
        TRY(pl_cuda_fail(cudaGraphLaunch(g, m->stream), "CUDA forward: graph launch", err));
    } else {
        TRY(enqueue_forward(m, nt, n_out, n_splits, err));
    }
    if (n_out > 0)
        TRY(pl_cuda_fail(cudaMemcpyAsync(logits, s->logits, (size_t)n_out * c->n_vocab * sizeof(float),
                                         cudaMemcpyDeviceToHost, m->stream),
                         "CUDA forward: the logits to the host", err));
    return pl_cuda_fail(cudaStreamSynchronize(m->stream), "CUDA forward: a kernel failed", err);
}
