/* ops.h: the small per-token operations of a transformer layer (norm, rotary embedding,
 * softmax, SwiGLU) and attention over the KV cache. */
#ifndef PYLLM_OPS_H
#define PYLLM_OPS_H

#include "pyllm.h"

void pl_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
/* rotates n_heads heads of head_dim in place with one position's cos/sin rows (head_dim/2 each) */
void pl_rope(float *v, int n_heads, int head_dim, const float *cos, const float *sin, int interleaved);
void pl_softmax(float *x, int n);
/* gate[i] = silu(gate[i]) * up[i] */
void pl_swiglu(float *gate, const float *up, int n);

/* Causal (optionally sliding-window) grouped-query attention for every token of the batch at
 * layer l, reading keys/values from each token's own sequence cache. q rows are ldq apart, out
 * rows ldo apart. scores: per-thread scratch, scores_stride floats per thread. Called by every
 * thread of the forward's pl_par_run (P); ends with a barrier. K: the forward's kernel table. */
/* per-thread scratch floats pl_attention needs for keys up to max_len long */
size_t pl_attention_scratch_floats(const pl_model *m, int max_len);
void pl_attention(pl_par *P, const pl_kernels *K, const pl_model *m, int l, pl_kv *const *kvs, const pl_batch *b, const float *q,
                  int ldq, float *out, int ldo, float *scores, size_t scores_stride);

#endif
