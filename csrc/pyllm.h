/* pyllm.h: the C engine's public interface, used by the Cython layer. A model is a config plus
 * weight tensors that point into memory the caller owns (an mmapped file); a KV cache holds one
 * sequence; a batch mixes tokens of several sequences, each with its own position and cache. */
#ifndef PYLLM_H
#define PYLLM_H

#include <stddef.h>
#include <stdint.h>

#include "tensor_types.h"

#define PL_ERRMSG_LEN 256 /* bytes of every err buffer */
#define PL_MAX_THREADS 4096 /* most threads pl_forward takes (more is a mistake, not a request) */

typedef struct {
    int type;          /* pl_type */
    int64_t ne0;       /* elements per row (input features) */
    int64_t ne1;       /* rows (output features) */
    const void *data;  /* borrowed; NULL until set */
    size_t row_bytes;
    int flags;                 /* PL_TENSOR_* (pl_model_set_tensor_flags) */
    const void *packed;        /* repacked copy made by finalize (csrc/repack.c) or NULL; matmuls prefer it */
    size_t packed_group_bytes; /* bytes per 16-row group of packed */
} pl_tensor;
/* data is a read-only file mapping (mmap of a GGUF/safetensors file): once the tensor is repacked,
 * finalize drops its pages from memory (madvise MADV_DONTNEED; they would be re-read from the file) */
#define PL_TENSOR_MMAPPED 1

/* The tensors of one layer, listed once: X(field, is_matmul, ne0, ne1). The shapes are expressions
 * in dim, q (n_heads * head_dim), kv (n_kv_heads * head_dim) and hid (hidden_dim), which a user of
 * the list defines. Lookup by name, the shape checks, finalize's completeness check and repacking
 * all iterate this list; the forward uses the fields by name. */
#define PL_LAYER_TENSORS(X)            \
    X(attn_norm, 0, dim, 1)            \
    X(wq, 1, dim, q)                   \
    X(wk, 1, dim, kv)                  \
    X(wv, 1, dim, kv)                  \
    X(wo, 1, q, dim)                   \
    X(ffn_norm, 0, dim, 1)             \
    X(ffn_gate, 1, dim, hid)           \
    X(ffn_up, 1, dim, hid)             \
    X(ffn_down, 1, hid, dim)

typedef struct {
#define PL_LAYER_FIELD(f, mm, w0, w1) pl_tensor f;
    PL_LAYER_TENSORS(PL_LAYER_FIELD)
#undef PL_LAYER_FIELD
    float *attn_norm_f32, *ffn_norm_f32; /* norm weights converted once at finalize */
} pl_layer;

typedef struct {
    int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim;
    int max_ctx;          /* longest position the rope tables cover */
    float norm_eps;
    int rope_interleaved; /* 0: Hugging Face halves layout (rotate_half); 1: GGUF/Meta pairs (2i, 2i+1) */
    int sliding_window;   /* 0: none; else a query at p sees keys at p-W+1..p */
} pl_config;

typedef struct {
    pl_config cfg;
    pl_tensor tok_embd, output_norm, output;
    float *output_norm_f32;
    pl_layer *layers;
    float *rope_cos, *rope_sin; /* [max_ctx][head_dim/2] */
    float attn_scale;
    int finalized;
    void *packed_arena; /* all packed tensors (repack.c) */
    size_t packed_arena_bytes;
    /* optional: called by finalize once a tensor is repacked and its data will not be read again
     * (the caller may free a heap buffer; the same buffer may still back another tensor) */
    void (*release)(void *ctx, const char *name, int layer);
    void *release_ctx;
} pl_model;

typedef struct {
    int n_ctx, n_layers, kv_dim;
    int type;     /* PL_TYPE_F32 or PL_TYPE_F16 (half the memory; keys/values rounded to fp16 as written) */
    size_t elt;   /* bytes per element */
    void *k, *v;  /* [n_layers][n_ctx][kv_dim] of type */
} pl_kv;

typedef struct {
    int n_tokens;
    const int32_t *token;
    const int32_t *pos; /* position of each token in its sequence */
    const int32_t *seq; /* index into the kv array passed to pl_forward */
    int n_out;          /* rows whose logits are wanted */
    const int32_t *out; /* their batch indices */
} pl_batch;

/* Scratch buffers for forward passes of up to max_tokens tokens; grown on demand. Not shared
 * between concurrent calls. */
typedef struct pl_scratch pl_scratch;

/* model lifecycle; errors are written to err (PL_ERRMSG_LEN bytes) and signalled by NULL / nonzero */
pl_model *pl_model_new(const pl_config *cfg, char *err);
/* name: tok_embd, output_norm, output, or per layer attn_norm wq wk wv wo ffn_norm ffn_gate ffn_up ffn_down */
int pl_model_set_tensor(pl_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                        const void *data, size_t nbytes, char *err);
int pl_model_set_tensor_flags(pl_model *m, const char *name, int layer, int flags, char *err);
/* inv_freq: head_dim/2 rope inverse frequencies; attn_factor scales cos/sin (1 unless rope says so).
 * Also repacks the Q4_0/Q8_0 matmul weights (all but tok_embd) unless PYLLM_REPACK=0: see repack.c. */
int pl_model_finalize(pl_model *m, const float *inv_freq, float attn_factor, char *err);
/* A second finalize is an error (the model is left as it was); a failed one allocates nothing, so it
 * may be retried. */
/* bytes of a tensor's packed copy, 0 if it has none (or the name is unknown) */
size_t pl_model_packed_bytes(const pl_model *m, const char *name, int layer);
/* repack.c: called by pl_model_finalize; returns the number of tensors repacked */
int pl_model_repack(pl_model *m);
void pl_packed_arena_free(void *arena, size_t bytes);
void pl_model_free(pl_model *m);

pl_kv *pl_kv_new(const pl_model *m, int n_ctx, int type, char *err);
void pl_kv_free(pl_kv *kv);
/* copies the first n_tokens positions of every layer from src to dst (same model and type): a cached
 * prompt prefix handed to a new sequence. 0, or -1 with a message in err */
int pl_kv_copy_prefix(pl_kv *dst, const pl_kv *src, int n_tokens, char *err);

pl_scratch *pl_scratch_new(void);
void pl_scratch_free(pl_scratch *s);
/* Calibration: while stats is set, every forward adds the squares of each matmul's input
 * activations, per column, to stats (pl_stats_len(m) doubles; per layer: q/k/v input [dim],
 * output-projection input [n_heads*head_dim], gate/up input [dim], down input [hidden_dim]).
 * NULL turns it off. */
void pl_scratch_set_stats(pl_scratch *s, double *stats);
size_t pl_stats_len(const pl_model *m);

/* Runs the batch through every layer; writes n_out x n_vocab logits. n_threads: 1..PL_MAX_THREADS,
 * or 0 for OpenMP's default. Returns 0 or an error code with a message in err. Never touches Python;
 * safe to call without the GIL. The kernel table is read once per call (pl_set_isa from another
 * thread takes effect at the next call). */
int pl_forward(const pl_model *m, pl_scratch *s, pl_kv *const *kvs, int n_kv, const pl_batch *b, float *logits,
               int n_threads, char *err);

/* matmul driver: y[t*ldy + r] = dot(W row r, x row t) for t < nt, r < W->ne1, with the kernels of
 * table K (the caller reads pl_kernels_active() once, so a pl_set_isa on another thread cannot mix
 * two ISAs in one forward). act_buf holds the activations converted to W's act_type
 * (pl_matmul_act_bytes(K, W, nt) bytes; unused for float weights).
 * Uses orphaned OpenMP worksharing: call it inside a parallel region to split rows over threads. */
size_t pl_matmul_act_bytes(const pl_kernels *K, const pl_tensor *w, int nt);
void pl_matmul(const pl_kernels *K, const pl_tensor *w, const float *x, int nt, int ldx, float *y, int ldy,
               void *act_buf);
/* the same for nw weights sharing one input (q/k/v, gate/up; same ne0 and act_type): one pass, one
 * barrier. nw <= 0 does nothing. With act_ready the activations are already converted in act_buf (as
 * q8x rows when any weight is packed). */
void pl_matmul_multi(const pl_kernels *K, const pl_tensor *const *ws, float *const *ys, const int *ldys, int nw,
                     const float *x, int nt, int ldx, void *act_buf, int act_ready);

/* converts rows x n float32 values to type (whole rows; n a multiple of the block) with n_threads
 * (<= 0: one, at most PL_MAX_THREADS); 0 or -1 */
int pl_quantize_rows(int type, const float *src, void *dst, int64_t rows, int64_t n, int n_threads);
/* the same blocks with error-minimizing scales (quantize.c): Q4_0/Q8_0 rows whose every block has
 * the least importance-weighted squared error found, never more than the reference's. importance:
 * n per-column weights >= 0, or NULL for plain squared error. Other types: as pl_quantize_rows.
 * Returns 0, -1 (bad type/size) or -2 (negative or non-finite importance). */
int pl_quantize_rows_weighted(int type, const float *src, void *dst, int64_t rows, int64_t n,
                              const float *importance, int n_threads);

#endif
