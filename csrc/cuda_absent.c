/* cuda_absent.c: the CPU build's side of csrc/cuda/pl_cuda.h (compiled only without PYLLM_CUDA, in place
 * of the .cu files of csrc/cuda/): every call that could do GPU work fails with PL_CUDA_NOT_BUILT, which names the
 * reinstall command; sizes are 0 (nothing can be uploaded). _engine checks PL_HAVE_CUDA first, so these
 * answers are a second line, and the extension links the same way in both builds. */
#include <stdio.h>

#include "pl_cuda_build.h"

static int not_built(char *err) {
    if (err) snprintf(err, PL_ERRMSG_LEN, "%s", PL_CUDA_NOT_BUILT);
    return -1;
}

int pl_cuda_device_count(int *count, char *err) {
    *count = 0;
    return not_built(err);
}
int pl_cuda_device_props(int device, pl_cuda_props *p, char *err) {
    (void)device;
    *p = (pl_cuda_props){{0}};
    return not_built(err);
}
void pl_cuda_versions(int *runtime, int *driver) { *runtime = *driver = 0; }
int pl_cuda_sync(char *err) { return not_built(err); }
int pl_cuda_alloc(void **dev, size_t nbytes, char *err) {
    (void)nbytes;
    *dev = NULL;
    return not_built(err);
}
void pl_cuda_free(void *dev) { (void)dev; }
int pl_cuda_to_device(void *dev, const void *host, size_t nbytes, char *err) {
    (void)dev, (void)host, (void)nbytes;
    return not_built(err);
}
int pl_cuda_to_host(void *host, const void *dev, size_t nbytes, char *err) {
    (void)dev, (void)host, (void)nbytes;
    return not_built(err);
}
size_t pl_cuda_weight_bytes(int type, int64_t ne0, int64_t ne1) {
    (void)type, (void)ne0, (void)ne1;
    return 0;
}
int pl_cuda_weight_upload(pl_cuda_weight *w, int type, int64_t ne0, int64_t ne1, const void *host, size_t host_bytes,
                          char *err) {
    (void)host, (void)host_bytes;
    *w = (pl_cuda_weight){.type = type, .ne0 = ne0, .ne1 = ne1};
    return not_built(err);
}
void pl_cuda_weight_free(pl_cuda_weight *w) {
    w->data = NULL;
    w->nbytes = 0;
}
int pl_cuda_quantize_q8_0(const float *x, int64_t n, void *q, char *err) {
    (void)x, (void)n, (void)q;
    return not_built(err);
}
int pl_cuda_quantize_q8_k(const float *x, int64_t n, void *q, char *err) {
    (void)x, (void)n, (void)q;
    return not_built(err);
}
size_t pl_cuda_act_bytes(int type, int64_t ne0) {
    (void)type, (void)ne0;
    return 0;
}
int pl_cuda_gemv(const pl_cuda_weight *w, const float *x, float *y, void *act, char *err) {
    (void)w, (void)x, (void)y, (void)act;
    return not_built(err);
}
int pl_cuda_gemv_time(const pl_cuda_weight *w, const float *x, float *y, void *act, int iters, double *seconds,
                      char *err) {
    (void)w, (void)x, (void)y, (void)act, (void)iters;
    *seconds = 0.0;
    return not_built(err);
}
int pl_cuda_gemm_time(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, int iters,
                      double *seconds, char *err) {
    (void)w, (void)x, (void)nt, (void)y, (void)act, (void)path, (void)iters;
    *seconds = 0.0;
    return not_built(err);
}
pl_cuda_model *pl_cuda_model_new(const pl_cuda_config *c, const float *rope_cos, const float *rope_sin, char *err) {
    (void)c, (void)rope_cos, (void)rope_sin;
    not_built(err);
    return NULL;
}
int pl_cuda_model_set(pl_cuda_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                      const void *host, size_t nbytes, char *err) {
    (void)m, (void)name, (void)layer, (void)type, (void)ne0, (void)ne1, (void)host, (void)nbytes;
    return not_built(err);
}
int pl_cuda_model_check(const pl_cuda_model *m, char *err) {
    (void)m;
    return not_built(err);
}
size_t pl_cuda_model_bytes(const pl_cuda_model *m) {
    (void)m;
    return 0;
}
int pl_cuda_model_set_attention_split(pl_cuda_model *m, int keys, char *err) {
    (void)m, (void)keys;
    return not_built(err);
}
int pl_cuda_model_set_mma_min_tokens(pl_cuda_model *m, int n, char *err) {
    (void)m, (void)n;
    return not_built(err);
}
int pl_cuda_model_set_fused(pl_cuda_model *m, int on) {
    (void)m, (void)on;
    return 0;
}
void pl_cuda_model_free(pl_cuda_model *m) { (void)m; }
pl_cuda_kv *pl_cuda_kv_new(const pl_cuda_model *m, int n_ctx, int type, char *err) {
    (void)m, (void)n_ctx, (void)type;
    not_built(err);
    return NULL;
}
void pl_cuda_kv_free(pl_cuda_kv *kv) { (void)kv; }
size_t pl_cuda_kv_bytes(const pl_cuda_kv *kv) {
    (void)kv;
    return 0;
}
int pl_cuda_kv_copy_prefix(pl_cuda_kv *dst, const pl_cuda_kv *src, int n_tokens, char *err) {
    (void)dst, (void)src, (void)n_tokens;
    return not_built(err);
}
int pl_cuda_forward(pl_cuda_model *m, pl_cuda_kv *const *kvs, int n_kv, int n_tokens, const int32_t *token,
                    const int32_t *pos, const int32_t *seq, int n_out, const int32_t *out, float *logits, char *err) {
    (void)m, (void)kvs, (void)n_kv, (void)n_tokens, (void)token, (void)pos, (void)seq, (void)n_out, (void)out,
        (void)logits;
    return not_built(err);
}
int pl_cuda_gemm(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, char *err) {
    (void)w, (void)x, (void)nt, (void)y, (void)act, (void)path;
    return not_built(err);
}
int pl_cuda_mma_s8_check(const int8_t *a, const int8_t *b, const int32_t *c, int32_t *d, char *err) {
    (void)a, (void)b, (void)c, (void)d;
    return not_built(err);
}
