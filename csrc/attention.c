/* attention.c: grouped-query attention over per-sequence KV caches. Each (token, kv head) is one
 * work item: the query heads that share a KV head are handled together, so each cached key and
 * value row is read once. Scores run on the f32 gemm kernel of the forward's table K: scores =
 * Q_group x K^T (keys are the "weight rows", f32 or f16 as the cache holds them); softmax and
 * output = P x V (the ISA's gemm_nn over the value rows where they lie in an f32 cache, or over an
 * f16 cache's rows widened into scratch) use the table's fp32 helpers. */
#include <string.h>

#include "ops.h"

size_t pl_attention_scratch_floats(const pl_model *m, int max_len) {
    const pl_config *c = &m->cfg;
    /* scores (G x len), then an f16 cache's value block widened to f32 (len x head_dim) */
    return (size_t)(c->n_heads / c->n_kv_heads + c->head_dim) * max_len;
}

void pl_attention(pl_par *P, const pl_kernels *K, const pl_model *m, int l, pl_kv *const *kvs, const pl_batch *b, const float *q,
                  int ldq, float *out, int ldo, float *scores, size_t scores_stride) {
    const pl_config *c = &m->cfg;
    const int hd = c->head_dim, G = c->n_heads / c->n_kv_heads, nkv = c->n_kv_heads;
    const int kv_dim = nkv * hd, sw = c->sliding_window;
    const int total = b->n_tokens * nkv;
    PL_PAR_FOR_STRIDED(P, w, total) {
        const int t = w / nkv, h = w % nkv;
        const pl_kv *kv = kvs[b->seq[t]];
        const int pos = b->pos[t];
        const int start = (sw > 0 && pos - sw + 1 > 0) ? pos - sw + 1 : 0;
        const int len = pos - start + 1;
        float *sc = scores + (size_t)P->ith * scores_stride;
        const size_t layer_off = (size_t)l * kv->n_ctx * kv_dim + (size_t)h * hd;
        const size_t row = (size_t)kv_dim * kv->elt; /* bytes from one position to the next */
        const char *kb = (const char *)kv->k + (layer_off + (size_t)start * kv_dim) * kv->elt;
        const char *vb = (const char *)kv->v + (layer_off + (size_t)start * kv_dim) * kv->elt;
        const pl_type_traits *kt = &K->types[kv->type];
        const float *qh = q + (size_t)t * ldq + (size_t)h * G * hd;
        float *oh = out + (size_t)t * ldo + (size_t)h * G * hd;
        /* scores[g][p] = q_g . k_p */
        if (kt->gemm)
            kt->gemm(hd, len, G, kb, row, qh, (size_t)hd * sizeof(float), sc, (size_t)len);
        else
            for (int g = 0; g < G; g++)
                for (int p = 0; p < len; p++) kt->vec_dot(hd, sc + (size_t)g * len + p, kb + (size_t)p * row, qh + (size_t)g * hd);
        for (int g = 0; g < G; g++) K->softmax_f32(sc + (size_t)g * len, len, m->attn_scale);
        /* out[g][d] = sum_p scores[g][p] * v_p[d], the values read where they lie in the cache */
        if (kv->type == PL_TYPE_F32) {
            K->gemm_nn_f32(G, hd, len, sc, (size_t)len, (const float *)vb, (size_t)kv_dim, oh, (size_t)hd);
        } else { /* widen the value rows first (sequential reads, no transpose) */
            float *vf = sc + (size_t)G * len;
            for (int p = 0; p < len; p++) kt->to_float(vb + (size_t)p * row, vf + (size_t)p * hd, hd);
            K->gemm_nn_f32(G, hd, len, sc, (size_t)len, vf, (size_t)hd, oh, (size_t)hd);
        }
    }
    pl_par_barrier(P);
}
