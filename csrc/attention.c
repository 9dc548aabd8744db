/* attention.c: grouped-query attention over per-sequence KV caches. Each (token, kv head) is one
 * work item: the query heads that share a KV head read each cached key/value row once. */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops.h"

void pl_attention(const pl_model *m, int l, pl_kv *const *kvs, const pl_batch *b, const float *q, int ldq,
                  float *out, int ldo, float *scores, size_t scores_stride) {
    const pl_config *c = &m->cfg;
    const pl_kernels *K = pl_kernels_active();
    const int hd = c->head_dim, G = c->n_heads / c->n_kv_heads, nkv = c->n_kv_heads;
    const int kv_dim = nkv * hd, sw = c->sliding_window;
    const int total = b->n_tokens * nkv;
#pragma omp for schedule(static, 1)
    for (int w = 0; w < total; w++) {
        const int t = w / nkv, h = w % nkv;
        const pl_kv *kv = kvs[b->seq[t]];
        const int pos = b->pos[t];
        const int start = (sw > 0 && pos - sw + 1 > 0) ? pos - sw + 1 : 0;
        const int len = pos - start + 1;
#ifdef _OPENMP
        float *sc = scores + (size_t)omp_get_thread_num() * scores_stride;
#else
        float *sc = scores;
#endif
        const size_t layer_off = (size_t)l * kv->n_ctx * kv_dim + (size_t)h * hd;
        const float *kb = kv->k + layer_off + (size_t)start * kv_dim;
        const float *vb = kv->v + layer_off + (size_t)start * kv_dim;
        const float *qh = q + (size_t)t * ldq + (size_t)h * G * hd;
        for (int p = 0; p < len; p++) {
            const float *krow = kb + (size_t)p * kv_dim;
            for (int g = 0; g < G; g++) sc[(size_t)g * len + p] = K->dot_f32(hd, qh + (size_t)g * hd, krow) * m->attn_scale;
        }
        float *oh = out + (size_t)t * ldo + (size_t)h * G * hd;
        for (int g = 0; g < G; g++) {
            pl_softmax(sc + (size_t)g * len, len);
            memset(oh + (size_t)g * hd, 0, (size_t)hd * sizeof(float));
        }
        for (int p = 0; p < len; p++) {
            const float *vrow = vb + (size_t)p * kv_dim;
            for (int g = 0; g < G; g++) K->axpy_f32(hd, sc[(size_t)g * len + p], vrow, oh + (size_t)g * hd);
        }
    }
}
