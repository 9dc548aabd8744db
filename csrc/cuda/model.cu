/* model.cu: a model on the device: the config checked, the rope tables and every tensor uploaded once
 * (matmul weights in the GEMV kernels' layout, weight_upload.cu; norms and biases as fp32 vectors), each
 * name and shape checked against the config, and the model's stream (every kernel of its forwards runs on
 * it, in order). */
#include <stdlib.h>
#include <string.h>

#include "model_internal.cuh"

#define FAIL(...) PL_CUDA_ERR(__VA_ARGS__)

static int upload_floats(float **dst, const float *src, size_t n, size_t *bytes, char *err) {
    void *d = NULL;
    if (pl_cuda_alloc(&d, n * sizeof(float), err)) return -1;
    if (pl_cuda_to_device(d, src, n * sizeof(float), err)) {
        pl_cuda_free(d);
        return -1;
    }
    *dst = (float *)d;
    *bytes += n * sizeof(float);
    return 0;
}

pl_cuda_model *pl_cuda_model_new(const pl_cuda_config *c, const float *rope_cos, const float *rope_sin, char *err) {
    if (c->n_vocab <= 0 || c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->hidden_dim <= 0 || c->max_ctx <= 0) {
        (void)FAIL("CUDA model: every size of the config must be positive");
        return NULL;
    }
    if (c->n_heads % c->n_kv_heads) {
        (void)FAIL("CUDA model: %d query heads do not share %d KV heads evenly", c->n_heads, c->n_kv_heads);
        return NULL;
    }
    if (c->head_dim % 2 || c->head_dim > 256) {
        (void)FAIL("CUDA model: head_dim %d must be even and at most 256", c->head_dim);
        return NULL;
    }
    if (c->n_heads / c->n_kv_heads > 32) {
        (void)FAIL("CUDA model: %d query heads per KV head (at most 32 on the GPU)", c->n_heads / c->n_kv_heads);
        return NULL;
    }
    if (c->sliding_window < 0) {
        (void)FAIL("CUDA model: negative sliding window %d", c->sliding_window);
        return NULL;
    }
    if (!rope_cos || !rope_sin) {
        (void)FAIL("CUDA model: no rope tables");
        return NULL;
    }
    pl_cuda_model *m = (pl_cuda_model *)calloc(1, sizeof(pl_cuda_model));
    if (!m || !(m->layers = (pl_cuda_layer *)calloc((size_t)c->n_layers, sizeof(pl_cuda_layer)))) {
        free(m);
        (void)FAIL("CUDA model: out of host memory");
        return NULL;
    }
    m->c = *c;
    m->fuse = 1;
    m->att_split = PL_ATT_SPLIT;
    m->mma_min_tokens = PL_MMA_MIN_TOKENS;
    if (pl_cuda_fail(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking), "CUDA model: creating a stream", err)) {
        free(m->layers);
        free(m);
        return NULL;
    }
    const size_t nt = (size_t)c->max_ctx * (c->head_dim / 2);
    if (upload_floats(&m->rope_cos, rope_cos, nt, &m->bytes, err) ||
        upload_floats(&m->rope_sin, rope_sin, nt, &m->bytes, err) || pl_cuda_attention_setup(m, err) ||
        pl_cuda_attention_prefill_setup(m, err)) {
        pl_cuda_model_free(m);
        return NULL;
    }
    return m;
}

/* the layer fields by name: is it a matmul weight, its shape, is it needed by this config */
typedef struct {
    const char *name;
    int matmul;
    size_t off; /* of the pl_cuda_weight or the float * in pl_cuda_layer */
} field;
#define W(f) {#f, 1, offsetof(pl_cuda_layer, f)}
#define V(f) {#f, 0, offsetof(pl_cuda_layer, f)}
static const field FIELDS[] = {V(attn_norm), W(wq), W(wk), W(wv), V(bq), V(bk), V(bv), V(q_norm), V(k_norm),
                               W(wo), V(bo), V(ffn_norm), W(ffn_gate), W(ffn_up), W(ffn_down)};
#undef W
#undef V
#define NFIELDS (int)(sizeof(FIELDS) / sizeof(FIELDS[0]))

/* shape (ne0, ne1) and need of layer field i */
static void field_shape(const pl_cuda_config *c, int i, int64_t *ne0, int64_t *ne1, int *need) {
    const int64_t dim = c->dim, q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim,
                  hd = c->head_dim, hid = c->hidden_dim;
    const char *n = FIELDS[i].name;
    *ne1 = 1;
    *need = 1;
    if (!strcmp(n, "attn_norm") || !strcmp(n, "ffn_norm")) *ne0 = dim;
    else if (!strcmp(n, "wq")) *ne0 = dim, *ne1 = q;
    else if (!strcmp(n, "wk") || !strcmp(n, "wv")) *ne0 = dim, *ne1 = kv;
    else if (!strcmp(n, "bq")) *ne0 = q, *need = c->qkv_bias;
    else if (!strcmp(n, "bk") || !strcmp(n, "bv")) *ne0 = kv, *need = c->qkv_bias;
    else if (!strcmp(n, "q_norm") || !strcmp(n, "k_norm")) *ne0 = hd, *need = c->qk_norm;
    else if (!strcmp(n, "wo")) *ne0 = q, *ne1 = dim;
    else if (!strcmp(n, "bo")) *ne0 = dim, *need = c->o_bias;
    else if (!strcmp(n, "ffn_gate") || !strcmp(n, "ffn_up")) *ne0 = dim, *ne1 = hid;
    else *ne0 = hid, *ne1 = dim; /* ffn_down */
}

static int set_weight(pl_cuda_model *m, pl_cuda_weight *w, const char *what, int type, int64_t ne0, int64_t ne1,
                      int64_t want0, int64_t want1, const void *host, size_t nbytes, char *err) {
    if (ne0 != want0 || ne1 != want1)
        return FAIL("%s: shape %lld x %lld, the config needs %lld x %lld (rows x columns)", what, (long long)ne1,
                    (long long)ne0, (long long)want1, (long long)want0);
    if (!pl_cuda_type_name(type))
        return FAIL("%s: weight type %d has no GPU kernels yet (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
                    "Q4_K, Q5_K, Q6_K run): load with quant='q4_k_m', 'q8_0' or 'f16', or use device='cpu'", what, type);
    pl_cuda_weight nw;
    char e2[PL_CUDA_ERRMSG_LEN];
    if (pl_cuda_weight_upload(&nw, type, ne0, ne1, host, nbytes, e2)) return FAIL("%s: %.190s", what, e2);
    if (w->data) {
        m->bytes -= w->nbytes;
        pl_cuda_weight_free(w);
    }
    *w = nw;
    m->bytes += nw.nbytes;
    return 0;
}

int pl_cuda_model_set(pl_cuda_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                      const void *host, size_t nbytes, char *err) {
    const pl_cuda_config *c = &m->c;
    if (!name) return FAIL("CUDA model: NULL tensor name");
    if (!strcmp(name, "tok_embd") || !strcmp(name, "output")) {
        pl_cuda_weight *w = name[0] == 't' ? &m->tok_embd : &m->output;
        return set_weight(m, w, name, type, ne0, ne1, c->dim, c->n_vocab, host, nbytes, err);
    }
    if (!strcmp(name, "output_norm")) {
        if (type != PL_CUDA_F32 || ne0 != c->dim || ne1 != 1 || nbytes != (size_t)c->dim * sizeof(float) || !host)
            return FAIL("output_norm: needs %d F32 values", c->dim);
        pl_cuda_free(m->output_norm);
        m->output_norm = NULL;
        return upload_floats(&m->output_norm, (const float *)host, (size_t)c->dim, &m->bytes, err);
    }
    int i = 0;
    while (i < NFIELDS && strcmp(FIELDS[i].name, name)) i++;
    if (i == NFIELDS) return FAIL("CUDA model: unknown tensor name '%s'", name);
    if (layer < 0 || layer >= c->n_layers) return FAIL("%s: layer %d outside 0..%d", name, layer, c->n_layers - 1);
    int64_t w0, w1;
    int need;
    field_shape(c, i, &w0, &w1, &need);
    char what[64];
    snprintf(what, sizeof(what), "layer %d %s", layer, name);
    if (!need) return FAIL("%s: this model's config has no such tensor", what);
    char *base = (char *)&m->layers[layer] + FIELDS[i].off;
    if (FIELDS[i].matmul)
        return set_weight(m, (pl_cuda_weight *)base, what, type, ne0, ne1, w0, w1, host, nbytes, err);
    if (type != PL_CUDA_F32 || ne0 != w0 || ne1 != 1 || nbytes != (size_t)w0 * sizeof(float) || !host)
        return FAIL("%s: needs %lld F32 values", what, (long long)w0);
    float **v = (float **)base;
    pl_cuda_free(*v);
    *v = NULL;
    return upload_floats(v, (const float *)host, (size_t)w0, &m->bytes, err);
}

int pl_cuda_model_check(const pl_cuda_model *m, char *err) {
    if (!m->tok_embd.data) return FAIL("CUDA model: tok_embd not set");
    if (!m->output.data) return FAIL("CUDA model: output not set");
    if (!m->output_norm) return FAIL("CUDA model: output_norm not set");
    for (int l = 0; l < m->c.n_layers; l++)
        for (int i = 0; i < NFIELDS; i++) {
            int64_t w0, w1;
            int need;
            field_shape(&m->c, i, &w0, &w1, &need);
            const char *base = (const char *)&m->layers[l] + FIELDS[i].off;
            const int set = FIELDS[i].matmul ? ((const pl_cuda_weight *)base)->data != NULL : *(float *const *)base != NULL;
            if (need && !set) return FAIL("CUDA model: layer %d %s not set", l, FIELDS[i].name);
        }
    return 0;
}

size_t pl_cuda_model_bytes(const pl_cuda_model *m) { return m ? m->bytes : 0; }

int pl_cuda_model_set_attention_split(pl_cuda_model *m, int keys, char *err) {
    if (!m) return PL_CUDA_ERR("no model");
    if (keys < 0) return m->att_split;
    if (keys < 32 || keys > PL_ATT_SPLIT || (keys & (keys - 1)))
        return PL_CUDA_ERR("attention split: %d keys; a power of two from 32 to %d", keys, PL_ATT_SPLIT);
    if (keys != m->att_split) pl_cuda_graphs_free(m); /* captured with the old split */
    const int was = m->att_split;
    m->att_split = keys;
    return was;
}

int pl_cuda_model_set_mma_min_tokens(pl_cuda_model *m, int n, char *err) {
    if (!m) return PL_CUDA_ERR("no model");
    if (n < 0) return m->mma_min_tokens;
    if (n < 1 || n > PL_MMA_NEVER)
        return PL_CUDA_ERR("mma_min_tokens: %d; from 1 to %d (that many: never the tensor cores)", n, PL_MMA_NEVER);
    if (n != m->mma_min_tokens) pl_cuda_graphs_free(m); /* captured with the other kernels */
    const int was = m->mma_min_tokens;
    m->mma_min_tokens = n;
    return was;
}

int pl_cuda_model_set_fused(pl_cuda_model *m, int on) {
    if (!m) return 0;
    const int was = m->fuse;
    if (on < 0) return was;
    if (!!on != was) pl_cuda_graphs_free(m); /* captured with the other kernels */
    m->fuse = !!on;
    return was;
}

static void scratch_free(pl_cuda_scratch *s) {
    pl_cuda_free(s->x);
    pl_cuda_free(s->xb);
    pl_cuda_free(s->q);
    pl_cuda_free(s->k);
    pl_cuda_free(s->v);
    pl_cuda_free(s->hb);
    pl_cuda_free(s->hb2);
    pl_cuda_free(s->act);
    pl_cuda_free(s->att_o);
    pl_cuda_free(s->att_ml);
    pl_cuda_free(s->logits);
    pl_cuda_free(s->ids);
    pl_cuda_free(s->views);
    pl_cuda_free(s->tiles);
    if (s->host) cudaFreeHost(s->host);
    memset(s, 0, sizeof(*s));
}

void pl_cuda_model_free(pl_cuda_model *m) {
    if (!m) return;
    if (m->stream) cudaStreamSynchronize(m->stream);
    pl_cuda_graphs_free(m);
    scratch_free(&m->s);
    for (int l = 0; l < m->c.n_layers; l++) {
        pl_cuda_layer *L = &m->layers[l];
        for (int i = 0; i < NFIELDS; i++) {
            char *base = (char *)L + FIELDS[i].off;
            if (FIELDS[i].matmul) pl_cuda_weight_free((pl_cuda_weight *)base);
            else pl_cuda_free(*(float **)base);
        }
    }
    pl_cuda_weight_free(&m->tok_embd);
    pl_cuda_weight_free(&m->output);
    pl_cuda_free(m->output_norm);
    pl_cuda_free(m->rope_cos);
    pl_cuda_free(m->rope_sin);
    if (m->stream) cudaStreamDestroy(m->stream);
    (void)cudaGetLastError();
    free(m->layers);
    free(m);
}

/* forward.cu's scratch, grown to nt tokens, n_seq sequences and att (token, split) attention partials */
int pl_cuda_scratch_reserve(pl_cuda_model *m, int nt, int n_seq, int64_t att, char *err) {
    pl_cuda_scratch *s = &m->s;
    if (nt <= s->cap_tokens && n_seq <= s->cap_seqs && att <= s->cap_att) return 0;
    const pl_cuda_config *c = &m->c;
    const int T = nt > s->cap_tokens ? nt : s->cap_tokens, S = n_seq > s->cap_seqs ? n_seq : s->cap_seqs;
    const int64_t P = att > s->cap_att ? att : s->cap_att;
    cudaStreamSynchronize(m->stream); /* the old buffers may still be in use */
    pl_cuda_graphs_free(m);           /* and the graphs point into them */
    scratch_free(s);
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t widest = (size_t)c->dim;
    if (qd > widest) widest = qd;
    if ((size_t)c->hidden_dim > widest) widest = (size_t)c->hidden_dim;
    const size_t f = sizeof(float);
    /* act: the Q8_0 form (quants, a scale per 32) or the Q8_K form (quants, a d per 256, a sum per 16) of T
     * rows of the widest input, whichever is larger */
    size_t act_bytes = (size_t)T * widest + (size_t)T * (widest / PL_CUDA_QK + 1) * f + 16;
    const size_t act_k = (size_t)T * widest + (size_t)T * (widest / PL_CUDA_QK_K) * f + (size_t)T * (widest / 16) * 2 + 16;
    if (act_k > act_bytes) act_bytes = act_k;
    const size_t ids_bytes = 4 * (size_t)T * sizeof(int32_t), views_bytes = (size_t)S * sizeof(pl_cuda_kv_view);
    const size_t plan_bytes = 4 * (size_t)T * sizeof(int32_t); /* the attention plan's tiles, then split ranges */
    if (pl_cuda_alloc((void **)&s->x, (size_t)T * c->dim * f, err) ||
        pl_cuda_alloc((void **)&s->xb, (size_t)T * c->dim * f, err) ||
        pl_cuda_alloc((void **)&s->q, (size_t)T * qd * f, err) || pl_cuda_alloc((void **)&s->k, (size_t)T * kvd * f, err) ||
        pl_cuda_alloc((void **)&s->v, (size_t)T * kvd * f, err) ||
        pl_cuda_alloc((void **)&s->hb, (size_t)T * c->hidden_dim * f, err) ||
        pl_cuda_alloc((void **)&s->hb2, (size_t)T * c->hidden_dim * f, err) ||
        pl_cuda_alloc(&s->act, act_bytes, err) ||
        pl_cuda_alloc((void **)&s->att_o, (size_t)P * qd * f, err) ||
        pl_cuda_alloc((void **)&s->att_ml, (size_t)P * c->n_heads * 2 * f, err) ||
        pl_cuda_alloc((void **)&s->logits, (size_t)T * c->n_vocab * f, err) || pl_cuda_alloc((void **)&s->ids, ids_bytes, err) ||
        pl_cuda_alloc((void **)&s->views, views_bytes, err) || pl_cuda_alloc((void **)&s->tiles, plan_bytes / 2, err) ||
        pl_cuda_fail(cudaMallocHost(&s->host, ids_bytes + views_bytes + plan_bytes), "pinned host memory for the batch", err)) {
        scratch_free(s);
        return -1;
    }
    s->cap_tokens = T;
    s->cap_seqs = S;
    s->cap_att = P;
    s->plan_host = (int32_t *)((char *)s->host + ids_bytes + views_bytes);
    return 0;
}
