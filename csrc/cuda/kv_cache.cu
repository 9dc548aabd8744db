/* kv_cache.cu: one sequence's keys and values on the device, [n_layers][n_ctx][kv_dim] each, fp32 or fp16
 * (pl_cuda.h), zeroed when made; and the copy of a cached prompt prefix into another sequence's cache. */
#include <stdlib.h>

#include "model_internal.cuh"

pl_cuda_kv *pl_cuda_kv_new(const pl_cuda_model *m, int n_ctx, int type, char *err) {
    if (!m) {
        (void)PL_CUDA_ERR("KV cache: no model");
        return NULL;
    }
    if (n_ctx <= 0 || n_ctx > m->c.max_ctx) {
        (void)PL_CUDA_ERR("KV cache: n_ctx %d outside 1..%d (the model's rope tables)", n_ctx, m->c.max_ctx);
        return NULL;
    }
    if (type != 0 && type != 1) {
        (void)PL_CUDA_ERR("KV cache: type %d is neither 0 (f32) nor 1 (f16)", type);
        return NULL;
    }
    pl_cuda_kv *kv = (pl_cuda_kv *)calloc(1, sizeof(pl_cuda_kv));
    if (!kv) {
        (void)PL_CUDA_ERR("KV cache: out of host memory");
        return NULL;
    }
    kv->m = m;
    kv->n_ctx = n_ctx;
    kv->type = type;
    kv->bytes = (size_t)m->c.n_layers * n_ctx * m->c.n_kv_heads * m->c.head_dim * (type ? 2 : 4);
    if (pl_cuda_alloc(&kv->k, kv->bytes, err) || pl_cuda_alloc(&kv->v, kv->bytes, err) ||
        /* on the model's stream, so the zeroing is ordered before every forward that writes the cache (the
         * stream does not wait for the legacy default stream's work) */
        pl_cuda_fail(cudaMemsetAsync(kv->k, 0, kv->bytes, m->stream), "KV cache: zeroing", err) ||
        pl_cuda_fail(cudaMemsetAsync(kv->v, 0, kv->bytes, m->stream), "KV cache: zeroing", err)) {
        pl_cuda_kv_free(kv);
        return NULL;
    }
    return kv;
}

void pl_cuda_kv_free(pl_cuda_kv *kv) {
    if (!kv) return;
    /* cudaFree waits for the device's work, a forward still writing the cache included (kv->m is not
     * touched: the model may be gone already) */
    pl_cuda_free(kv->k);
    pl_cuda_free(kv->v);
    free(kv);
}

size_t pl_cuda_kv_bytes(const pl_cuda_kv *kv) { return kv ? 2 * kv->bytes : 0; }

int pl_cuda_kv_copy_prefix(pl_cuda_kv *dst, const pl_cuda_kv *src, int n_tokens, char *err) {
    if (!dst || !src) return PL_CUDA_ERR("KV copy: NULL cache");
    if (dst->m != src->m || dst->type != src->type) return PL_CUDA_ERR("KV copy: the caches belong to different models or types");
    if (n_tokens < 0 || n_tokens > src->n_ctx || n_tokens > dst->n_ctx)
        return PL_CUDA_ERR("KV copy: %d tokens do not fit (source %d, destination %d positions)", n_tokens, src->n_ctx,
                           dst->n_ctx);
    if (n_tokens == 0 || dst == src) return 0;
    const size_t row = (size_t)src->m->c.n_kv_heads * src->m->c.head_dim * (src->type ? 2 : 4);
    cudaStream_t st = src->m->stream;
    for (int l = 0; l < src->m->c.n_layers; l++) {
        const size_t so = (size_t)l * src->n_ctx * row, doff = (size_t)l * dst->n_ctx * row;
        if (pl_cuda_fail(cudaMemcpyAsync((char *)dst->k + doff, (const char *)src->k + so, n_tokens * row,
                                         cudaMemcpyDeviceToDevice, st), "KV copy", err) ||
            pl_cuda_fail(cudaMemcpyAsync((char *)dst->v + doff, (const char *)src->v + so, n_tokens * row,
                                         cudaMemcpyDeviceToDevice, st), "KV copy", err))
            return -1;
    }
    return pl_cuda_fail(cudaStreamSynchronize(st), "KV copy", err);
}
