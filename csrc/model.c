/* model.c: model and KV-cache lifecycle. Every tensor the caller hands in is checked against the
 * config (type, shape, byte size) before it is used; finalize (once) builds the rope tables and fp32
 * copies of the norm weights. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyllm.h"

#define ERR(...) (snprintf(err, PL_ERRMSG_LEN, __VA_ARGS__), -1)

pl_model *pl_model_new(const pl_config *c, char *err) {
    if (c->n_vocab <= 0 || c->dim <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
        c->head_dim <= 0 || c->hidden_dim <= 0 || c->max_ctx <= 0) {
        snprintf(err, PL_ERRMSG_LEN, "config sizes must be positive");
        return NULL;
    }
    if (c->n_heads % c->n_kv_heads) {
        snprintf(err, PL_ERRMSG_LEN, "num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                 c->n_heads, c->n_kv_heads);
        return NULL;
    }
    if (c->head_dim % 2) {
        snprintf(err, PL_ERRMSG_LEN, "head_dim (%d) must be even for rotary embeddings", c->head_dim);
        return NULL;
    }
    if (c->sliding_window < 0 || !(c->norm_eps >= 0.0f) || c->rope_long_after < 0) {
        snprintf(err, PL_ERRMSG_LEN, "sliding_window, rms_norm_eps and rope_long_after must not be negative");
        return NULL;
    }
    if (c->n_expert < 0 || (c->n_expert > 0 && (c->n_expert_used < 1 || c->n_expert_used > c->n_expert)) ||
        c->n_expert > PL_MAX_EXPERTS) {
        snprintf(err, PL_ERRMSG_LEN, "%d experts with %d used per token: need 1 <= used <= experts <= %d",
                 c->n_expert, c->n_expert_used, PL_MAX_EXPERTS);
        return NULL;
    }
    pl_model *m = calloc(1, sizeof(pl_model));
    if (m) m->layers = calloc((size_t)c->n_layers, sizeof(pl_layer));
    if (!m || !m->layers) {
        free(m);
        snprintf(err, PL_ERRMSG_LEN, "out of memory");
        return NULL;
    }
    m->cfg = *c;
    return m;
}

static int set(pl_tensor *t, const char *name, int layer, int type, int64_t ne0, int64_t ne1, int64_t want0,
               int64_t want1, const void *data, size_t nbytes, char *err) {
    if (!pl_type_valid(type)) return ERR("%s (layer %d): unsupported tensor type %d", name, layer, type);
    if (ne0 != want0 || ne1 != want1)
        return ERR("%s (layer %d): shape [%lld, %lld] but the config needs [%lld, %lld]", name, layer,
                   (long long)ne1, (long long)ne0, (long long)want1, (long long)want0);
    const size_t rb = pl_type_row_bytes((pl_type)type, ne0);
    if (rb == 0) return ERR("%s (layer %d): row length %lld is not a multiple of the type's block", name, layer,
                            (long long)ne0);
    if (nbytes != rb * (size_t)ne1)
        return ERR("%s (layer %d): %zu bytes of data but the shape needs %zu", name, layer, nbytes, rb * (size_t)ne1);
    if (!data) return ERR("%s (layer %d): no data", name, layer);
    t->type = type;
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->data = data;
    t->row_bytes = rb;
    return 0;
}

/* the tensor called name in layer (-1: model-level), the shape the config needs and whether the
 * config uses it; NULL + err if unknown */
static pl_tensor *find(const pl_model *m, const char *name, int layer, int64_t *w0, int64_t *w1, int *needed,
                       char *err) {
    const pl_config *c = &m->cfg;
    pl_model *mm = (pl_model *)m;
    *needed = 1;
    if (layer < 0) {
        *w0 = c->dim;
        *w1 = c->n_vocab;
        if (!strcmp(name, "tok_embd")) return &mm->tok_embd;
        if (!strcmp(name, "output")) return &mm->output;
        *w1 = 1;
        if (!strcmp(name, "output_norm")) return &mm->output_norm;
        snprintf(err, PL_ERRMSG_LEN, "unknown tensor %s", name);
        return NULL;
    }
    if (layer >= c->n_layers) {
        snprintf(err, PL_ERRMSG_LEN, "%s: layer %d out of range (model has %d)", name, layer, c->n_layers);
        return NULL;
    }
    pl_layer *L = &m->layers[layer];
    PL_LAYER_SHAPE_VARS(c);
    struct { const char *n; pl_tensor *t; int64_t w0, w1; int need; } tab[] = {
#define ROW(f, mm, e0, e1, need, stk) {#f, &L->f, e0, e1, need},
        PL_LAYER_TENSORS(ROW)
#undef ROW
    };
    for (size_t i = 0; i < sizeof(tab) / sizeof(tab[0]); i++)
        if (!strcmp(name, tab[i].n)) {
            *w0 = tab[i].w0;
            *w1 = tab[i].w1;
            *needed = tab[i].need;
            return tab[i].t;
        }
    snprintf(err, PL_ERRMSG_LEN, "unknown tensor %s", name);
    return NULL;
}

int pl_model_set_tensor(pl_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                        const void *data, size_t nbytes, char *err) {
    if (m->finalized) return ERR("model already finalized");
    int64_t w0, w1;
    int needed;
    pl_tensor *t = find(m, name, layer, &w0, &w1, &needed, err);
    if (!t) return -1;
    if (!needed) return ERR("%s (layer %d): this model's config has no such tensor", name, layer);
    if (set(t, name, layer, type, ne0, ne1, w0, w1, data, nbytes, err)) return -1;
    t->flags = 0;
    return 0;
}

int pl_model_set_tensor_flags(pl_model *m, const char *name, int layer, int flags, char *err) {
    if (m->finalized) return ERR("model already finalized");
    int64_t w0, w1;
    int needed;
    pl_tensor *t = find(m, name, layer, &w0, &w1, &needed, err);
    if (!t) return -1;
    if (!t->data) return ERR("%s (layer %d): flags set before the tensor", name, layer);
    t->flags = flags;
    return 0;
}

int pl_model_set_lora(pl_model *m, const char *name, int layer, int rank, const float *a, const float *b, char *err) {
    if (m->finalized) return ERR("model already finalized");
    int64_t w0, w1;
    int needed;
    pl_tensor *t = find(m, name, layer, &w0, &w1, &needed, err);
    if (!t) return -1;
    if (!t->data) return ERR("%s (layer %d): LoRA set before the tensor", name, layer);
    if (t->ne1 == 1 || strstr(name, "_exps") || !strcmp(name, "tok_embd"))
        return ERR("%s (layer %d): LoRA applies to matmul weights (not vectors, embeddings or stacked experts)",
                   name, layer);
    if (rank < 1 || rank > PL_MAX_LORA_RANK) return ERR("%s (layer %d): LoRA rank %d outside 1..%d", name, layer, rank,
                                                        PL_MAX_LORA_RANK);
    if (!a || !b) return ERR("%s (layer %d): no LoRA factors", name, layer);
    t->lora_a = a;
    t->lora_b = b;
    t->lora_rank = rank;
    return 0;
}

int64_t pl_model_stats_offset(const pl_model *m, const char *name, int layer) {
    char err[PL_ERRMSG_LEN];
    int64_t w0, w1;
    int needed;
    if (layer < 0) return -1;
    const pl_tensor *t = find(m, name, layer, &w0, &w1, &needed, err);
    return t && t->data ? t->stats_off : -1;
}

size_t pl_model_packed_bytes(const pl_model *m, const char *name, int layer) {
    char err[PL_ERRMSG_LEN];
    int64_t w0, w1;
    int needed;
    const pl_tensor *t = find(m, name, layer, &w0, &w1, &needed, err);
    if (!t || !t->packed) return 0;
    return (size_t)((t->ne1 + PL_PACK_ROWS - 1) / PL_PACK_ROWS) * t->packed_group_bytes;
}

static float *to_f32(const pl_kernels *K, const pl_tensor *t) {
    float *out = malloc((size_t)t->ne0 * sizeof(float));
    if (out) K->types[t->type].to_float(t->data, out, t->ne0);
    return out;
}

/* frees what finalize allocated (rope tables, vector copies) and clears the pointers */
static void free_finalized(pl_model *m) {
    for (int l = 0; m->layers && l < m->cfg.n_layers; l++) {
        pl_layer *L = &m->layers[l];
#define FREE_F32(f, mm, e0, e1, need, stk) \
        free(L->f.f32);                  \
        L->f.f32 = NULL;
        PL_LAYER_TENSORS(FREE_F32)
#undef FREE_F32
    }
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->rope_cos_long);
    free(m->rope_sin_long);
    free(m->output_norm.f32);
    m->rope_cos = m->rope_sin = m->rope_cos_long = m->rope_sin_long = m->output_norm.f32 = NULL;
}

static int finite_all(const float *x, int n) {
    for (int i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

/* as transformers: angle = float(pos) * inv_freq in fp32, then cos/sin, times attention factor */
static void rope_tables(float *cs, float *sn, const float *inv_freq, int max_ctx, int half, float attn_factor) {
    for (int p = 0; p < max_ctx; p++)
        for (int i = 0; i < half; i++) {
            const float a = (float)p * inv_freq[i];
            cs[(size_t)p * half + i] = cosf(a) * attn_factor;
            sn[(size_t)p * half + i] = sinf(a) * attn_factor;
        }
}

int pl_model_finalize(pl_model *m, const float *inv_freq, const float *inv_freq_long, float attn_factor,
                      char *err) {
    const pl_config *c = &m->cfg;
    /* a second call would allocate the tables and repack again over the first ones */
    if (m->finalized) return ERR("model already finalized");
    if (!inv_freq) return ERR("no rope inverse frequencies");
    if (c->rope_long_after > 0 && !inv_freq_long) return ERR("no long rope inverse frequencies (rope_long_after set)");
    if (!isfinite(attn_factor)) return ERR("rope attention factor is not finite");
    const pl_kernels *K = pl_kernels_active(); /* act_type and to_float are the same in every table */
    if (!m->tok_embd.data) return ERR("missing tensor tok_embd");
    if (!m->output.data) return ERR("missing tensor output");
    if (!m->output_norm.data) return ERR("missing tensor output_norm");
    PL_LAYER_SHAPE_VARS(c);
    for (int l = 0; l < c->n_layers; l++) {
        pl_layer *L = &m->layers[l];
#define CHECK(f, mm, e0, e1, need, stk) \
        if ((need) && !L->f.data) return ERR("missing tensor %s of layer %d", #f, l);
        PL_LAYER_TENSORS(CHECK)
#undef CHECK
    }
    const int half = c->head_dim / 2;
    if (!finite_all(inv_freq, half)) return ERR("a rope inverse frequency is not finite");
    if (c->rope_long_after > 0 && !finite_all(inv_freq_long, half)) return ERR("a long rope inverse frequency is not finite");
    /* everything checked: only running out of memory can fail from here, and then nothing is kept */
    const size_t tab = (size_t)c->max_ctx * half * sizeof(float);
    m->rope_cos = malloc(tab);
    m->rope_sin = malloc(tab);
    m->output_norm.f32 = to_f32(K, &m->output_norm);
    int ok = m->rope_cos && m->rope_sin && m->output_norm.f32;
    if (ok && c->rope_long_after > 0) {
        m->rope_cos_long = malloc(tab);
        m->rope_sin_long = malloc(tab);
        ok = m->rope_cos_long && m->rope_sin_long;
    }
    for (int l = 0; ok && l < c->n_layers; l++) {
        pl_layer *L = &m->layers[l];
#define VEC(f, mm, e0, e1, need, stk) \
        if (ok && !(mm) && L->f.data) ok = (L->f.f32 = to_f32(K, &L->f)) != NULL;
        PL_LAYER_TENSORS(VEC)
#undef VEC
    }
    if (!ok) {
        free_finalized(m);
        return ERR("out of memory");
    }
    rope_tables(m->rope_cos, m->rope_sin, inv_freq, c->max_ctx, half, attn_factor);
    if (m->rope_cos_long) rope_tables(m->rope_cos_long, m->rope_sin_long, inv_freq_long, c->max_ctx, half, attn_factor);
    /* calibration statistics: every per-layer matmul weight its own slot (ne0 sums + a row count, per
     * expert for stacked tensors) */
    int64_t off = 0;
    m->tok_embd.stats_off = m->output.stats_off = m->output_norm.stats_off = -1;
    for (int l = 0; l < c->n_layers; l++) {
        pl_layer *L = &m->layers[l];
#define SLOT(f, mm, e0, e1, need, stk)                                            \
        L->f.stats_off = -1;                                                    \
        if ((mm) && L->f.data) {                                                \
            L->f.stats_off = off;                                               \
            off += (L->f.ne0 + 1) * ((stk) ? c->n_expert : 1);                  \
        }
        PL_LAYER_TENSORS(SLOT)
#undef SLOT
    }
    m->stats_len = (size_t)off;
    m->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    m->finalized = 1;
    pl_model_repack(m); /* best effort: a tensor it cannot repack (no memory) stays as it is */
    return 0;
}

void pl_model_free(pl_model *m) {
    if (!m) return;
    free_finalized(m);
    free(m->layers);
    pl_packed_arena_free(m->packed_arena, m->packed_arena_bytes);
    free(m);
}

pl_kv *pl_kv_new(const pl_model *m, int n_ctx, int type, char *err) {
    if (n_ctx <= 0 || n_ctx > m->cfg.max_ctx) {
        snprintf(err, PL_ERRMSG_LEN, "KV cache length %d outside 1..%d", n_ctx, m->cfg.max_ctx);
        return NULL;
    }
    if (type != PL_TYPE_F32 && type != PL_TYPE_F16) {
        snprintf(err, PL_ERRMSG_LEN, "KV cache type %d is not f32 (%d) or f16 (%d)", type, PL_TYPE_F32, PL_TYPE_F16);
        return NULL;
    }
    pl_kv *kv = calloc(1, sizeof(pl_kv));
    if (!kv) {
        snprintf(err, PL_ERRMSG_LEN, "out of memory");
        return NULL;
    }
    kv->n_ctx = n_ctx;
    kv->n_layers = m->cfg.n_layers;
    kv->kv_dim = m->cfg.n_kv_heads * m->cfg.head_dim;
    kv->type = type;
    kv->elt = type == PL_TYPE_F16 ? 2 : 4;
    const size_t n = (size_t)kv->n_layers * n_ctx * kv->kv_dim;
    kv->k = calloc(n, kv->elt);
    kv->v = calloc(n, kv->elt);
    if (!kv->k || !kv->v) {
        snprintf(err, PL_ERRMSG_LEN, "out of memory allocating a %zu MB KV cache", 2 * n * kv->elt >> 20);
        pl_kv_free(kv);
        return NULL;
    }
    return kv;
}

int pl_kv_copy_prefix(pl_kv *dst, const pl_kv *src, int n_tokens, char *err) {
    if (dst == src) return 0;
    if (dst->n_layers != src->n_layers || dst->kv_dim != src->kv_dim || dst->type != src->type) {
        snprintf(err, PL_ERRMSG_LEN, "KV caches differ in layers, width or type");
        return -1;
    }
    if (n_tokens < 0 || n_tokens > src->n_ctx || n_tokens > dst->n_ctx) {
        snprintf(err, PL_ERRMSG_LEN, "cannot copy %d positions between caches of %d and %d", n_tokens, src->n_ctx,
                 dst->n_ctx);
        return -1;
    }
    const size_t row = (size_t)src->kv_dim * src->elt, n = (size_t)n_tokens * row;
    for (int l = 0; l < src->n_layers; l++) {
        memcpy((char *)dst->k + (size_t)l * dst->n_ctx * row, (const char *)src->k + (size_t)l * src->n_ctx * row, n);
        memcpy((char *)dst->v + (size_t)l * dst->n_ctx * row, (const char *)src->v + (size_t)l * src->n_ctx * row, n);
    }
    return 0;
}

void pl_kv_free(pl_kv *kv) {
    if (!kv) return;
    free(kv->k);
    free(kv->v);
    free(kv);
}
