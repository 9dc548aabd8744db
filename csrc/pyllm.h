/* pyllm.h: the C engine's public interface, used by the Cython layer. A model is a config plus
 * weight tensors that point into memory the caller owns (an mmapped file); a KV cache holds one
 * sequence; a batch mixes tokens of several sequences, each with its own position and cache. */
#ifndef PYLLM_H
#define PYLLM_H

#include <stddef.h>
#include <stdint.h>

#include "tensor_types.h"
#include "thread_pool.h"

#define PL_ERRMSG_LEN 256 /* bytes of every err buffer */
#define PL_MAX_THREADS 4096 /* most threads pl_forward takes (more is a mistake, not a request) */
#define PL_MAX_EXPERTS 256  /* most experts per MoE layer (the router's scratch is sized by it) */
#define PL_MAX_LORA_RANK 4096 /* largest summed rank of the LoRA adapters on one weight */

typedef struct {
    int type;          /* pl_type */
    int64_t ne0;       /* elements per row (input features) */
    int64_t ne1;       /* rows (output features) */
    const void *data;  /* borrowed; NULL until set */
    size_t row_bytes;
    int flags;                 /* PL_TENSOR_* (pl_model_set_tensor_flags) */
    const void *packed;        /* repacked copy made by finalize (csrc/repack.c) or NULL; matmuls prefer it */
    size_t packed_group_bytes; /* bytes per 16-row group of packed */
    float *f32;                /* vectors (norms, biases; ne1 == 1): an fp32 copy made by finalize */
    /* optional LoRA side product (pl_model_set_lora): y += lora_b (lora_a x), borrowed fp32 */
    const float *lora_a;       /* [lora_rank][ne0] */
    const float *lora_b;       /* [ne1][lora_rank], the adapter's scale folded in */
    int lora_rank;             /* 0: none */
    int64_t stats_off;         /* matmul weights: where its calibration statistics start (finalize) */
} pl_tensor;
/* data is a read-only file mapping (mmap of a GGUF/safetensors file): once the tensor is repacked,
 * finalize drops its pages from memory (madvise MADV_DONTNEED; they would be re-read from the file) */
#define PL_TENSOR_MMAPPED 1

/* The tensors of one layer, listed once: X(field, is_matmul, ne0, ne1, needed, stacked). The shapes
 * are expressions in dim, q (n_heads * head_dim), kv (n_kv_heads * head_dim), hd (head_dim), hid
 * (hidden_dim: the MLP's, or each expert's) and nexp (n_expert); `needed` is an expression in the
 * config flags qkv_bias, o_bias, qk_norm, dense (n_expert == 0) and moe (n_expert > 0): a tensor
 * is required exactly when it is true, and refused otherwise. `stacked`: the rows are n_expert
 * experts one after the other (GGUF's ffn_*_exps: expert e is rows [e * rows/nexp, (e+1) * rows/nexp)).
 * Lookup by name, the shape checks, finalize's completeness check, the fp32 vector copies, scratch
 * sizing and repacking all iterate this list; the forward uses the fields by name. */
#define PL_LAYER_TENSORS(X)                          \
    X(attn_norm, 0, dim, 1, 1, 0)                    \
    X(wq, 1, dim, q, 1, 0)                           \
    X(wk, 1, dim, kv, 1, 0)                          \
    X(wv, 1, dim, kv, 1, 0)                          \
    X(bq, 0, q, 1, qkv_bias, 0)                      \
    X(bk, 0, kv, 1, qkv_bias, 0)                     \
    X(bv, 0, kv, 1, qkv_bias, 0)                     \
    X(q_norm, 0, hd, 1, qk_norm, 0)                  \
    X(k_norm, 0, hd, 1, qk_norm, 0)                  \
    X(wo, 1, q, dim, 1, 0)                           \
    X(bo, 0, dim, 1, o_bias, 0)                      \
    X(ffn_norm, 0, dim, 1, 1, 0)                     \
    X(ffn_gate, 1, dim, hid, dense, 0)               \
    X(ffn_up, 1, dim, hid, dense, 0)                 \
    X(ffn_down, 1, hid, dim, dense, 0)               \
    X(ffn_gate_inp, 1, dim, nexp, moe, 0)            \
    X(ffn_gate_exps, 1, dim, nexp * hid, moe, 1)     \
    X(ffn_up_exps, 1, dim, nexp * hid, moe, 1)       \
    X(ffn_down_exps, 1, hid, nexp * dim, moe, 1)

/* the config values PL_LAYER_TENSORS' expressions use, for a block that iterates it */
#define PL_LAYER_SHAPE_VARS(c)                                                                         \
    const int64_t dim = (c)->dim, q = (int64_t)(c)->n_heads * (c)->head_dim,                            \
                  kv = (int64_t)(c)->n_kv_heads * (c)->head_dim, hd = (c)->head_dim, hid = (c)->hidden_dim, \
                  nexp = (c)->n_expert;                                                                 \
    const int qkv_bias = (c)->qkv_bias, o_bias = (c)->o_bias, qk_norm = (c)->qk_norm,                  \
              moe = (c)->n_expert > 0, dense = !moe;                                                    \
    (void)dim; (void)q; (void)kv; (void)hd; (void)hid; (void)nexp;                                     \
    (void)qkv_bias; (void)o_bias; (void)qk_norm; (void)moe; (void)dense

typedef struct {
#define PL_LAYER_FIELD(f, mm, w0, w1, need, stk) pl_tensor f;
    PL_LAYER_TENSORS(PL_LAYER_FIELD)
#undef PL_LAYER_FIELD
} pl_layer;

typedef struct {
    int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim;
    int max_ctx;          /* longest position the rope tables cover */
    float norm_eps;
    int rope_interleaved; /* 0: Hugging Face halves layout (rotate_half); 1: GGUF/Meta pairs (2i, 2i+1) */
    int sliding_window;   /* 0: none; else a query at p sees keys at p-W+1..p */
    int qkv_bias;         /* q, k, v projections add a bias (Qwen2; attention_bias) */
    int o_bias;           /* the output projection adds a bias (attention_bias of Llama / Qwen3) */
    int qk_norm;          /* per-head RMSNorm of q and k before RoPE (Qwen3) */
    int n_expert;         /* 0: dense SwiGLU MLP; else a mixture of n_expert SwiGLU experts (Mixtral) */
    int n_expert_used;    /* experts per token (top-k of the router's softmax, renormalized) */
    int rope_long_after;  /* 0, or LongRoPE's original context: the tokens of a sequence whose largest
                           * position in the batch is >= this use the long rope table (as transformers
                           * picks long factors once seq_len > original_max_position_embeddings) */
} pl_config;

typedef struct {
    pl_config cfg;
    pl_tensor tok_embd, output_norm, output;
    pl_layer *layers;
    float *rope_cos, *rope_sin; /* [max_ctx][head_dim/2] */
    float *rope_cos_long, *rope_sin_long; /* LongRoPE's long-factor tables (cfg.rope_long_after), or NULL */
    float attn_scale;
    int finalized;
    int repack_off;     /* set before finalize: keep every weight in its source layout (the CUDA upload reads it) */
    size_t stats_len;   /* doubles of calibration statistics (pl_stats_len) */
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
/* name: tok_embd, output_norm, output, or per layer one of PL_LAYER_TENSORS (those the config needs) */
int pl_model_set_tensor(pl_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                        const void *data, size_t nbytes, char *err);
int pl_model_set_tensor_flags(pl_model *m, const char *name, int layer, int flags, char *err);
/* inv_freq: head_dim/2 rope inverse frequencies; inv_freq_long: LongRoPE's long-factor frequencies
 * (required when cfg.rope_long_after > 0, else ignored); attn_factor scales cos/sin (1 unless rope
 * says so). Also repacks the matmul weights (all but tok_embd) of the types with a packed layout
 * unless PYLLM_REPACK=0: see repack.c. */
int pl_model_finalize(pl_model *m, const float *inv_freq, const float *inv_freq_long, float attn_factor, char *err);
/* A second finalize is an error (the model is left as it was); a failed one allocates nothing, so it
 * may be retried. */
/* bytes of a tensor's packed copy, 0 if it has none (or the name is unknown) */
size_t pl_model_packed_bytes(const pl_model *m, const char *name, int layer);
/* A LoRA adapter kept beside a (quantized) matmul weight, not merged into it: every matmul with it
 * adds b (a x). a: rank x ne0, b: ne1 x rank fp32 (row-major; the adapter's scale folded into b),
 * borrowed like tensor data. Set after the tensor, before finalize; not for stacked experts. */
int pl_model_set_lora(pl_model *m, const char *name, int layer, int rank, const float *a, const float *b, char *err);
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
/* Calibration: while stats is set, every forward adds, for each per-layer matmul weight, the squares
 * of its input activations per column and the number of rows it multiplied: at
 * pl_model_stats_offset(m, name, layer), ne0 sums then the row count (a stacked MoE tensor: that
 * per expert, expert e at offset + e * (ne0 + 1), counting only the tokens routed to it).
 * pl_stats_len(m) doubles in all; NULL turns it off. */
void pl_scratch_set_stats(pl_scratch *s, double *stats);
size_t pl_stats_len(const pl_model *m);
/* -1 for a tensor without statistics (vectors, embeddings, the LM head, unknown names) */
int64_t pl_model_stats_offset(const pl_model *m, const char *name, int layer);

/* Runs the batch through every layer; writes n_out x n_vocab logits. n_threads: 1..PL_MAX_THREADS,
 * or 0 for all the CPUs the process may use (pl_default_threads). Returns 0 or an error code with a message in err. Never touches Python;
 * safe to call without the GIL. The kernel table is read once per call (pl_set_isa from another
 * thread takes effect at the next call). */
int pl_forward(const pl_model *m, pl_scratch *s, pl_kv *const *kvs, int n_kv, const pl_batch *b, float *logits,
               int n_threads, char *err);

/* matmul driver: y[t*ldy + r] = dot(W row r, x row t) (+ its LoRA side product) for t < nt,
 * r < W->ne1, with the kernels of table K (the caller reads pl_kernels_active() once, so a pl_set_isa on another thread cannot mix
 * two ISAs in one forward). act_buf holds the activations converted to W's act_type
 * (pl_matmul_act_bytes(K, W, nt) bytes; unused for float weights).
 * Called by every thread of a pl_par_run (P: the thread's view): rows are split over the threads,
 * and all of them return after a barrier, the result complete. */
size_t pl_matmul_act_bytes(const pl_kernels *K, const pl_tensor *w, int nt);
void pl_matmul(pl_par *P, const pl_kernels *K, const pl_tensor *w, const float *x, int nt, int ldx, float *y, int ldy,
               void *act_buf);
/* the same for nw weights sharing one input (q/k/v, gate/up; same ne0 and act_type): one pass, one
 * barrier. nw <= 0 does nothing. With act_ready the activations are already converted in act_buf (in
 * the pack_act form of the first packed weight that has one, as the call itself would build them). */
void pl_matmul_multi(pl_par *P, const pl_kernels *K, const pl_tensor *const *ws, float *const *ys, const int *ldys, int nw,
                     const float *x, int nt, int ldx, void *act_buf, int act_ready);

/* converts rows x n float32 values to type (whole rows; n a multiple of the block) with n_threads
 * (<= 0: one, at most PL_MAX_THREADS); 0 or -1 */
int pl_quantize_rows(int type, const float *src, void *dst, int64_t rows, int64_t n, int n_threads);
/* the same blocks with error-minimizing scales (quantize.c): Q4_0/Q8_0 rows whose every block has
 * the least importance-weighted squared error found, never more than the reference's (Q4_1, Q5_0,
 * Q5_1, IQ4_NL, Q2_K..Q6_K, IQ4_XS: quantize_kquants.c's search). importance:
 * n per-column weights >= 0, or NULL for plain squared error. Other types: as pl_quantize_rows.
 * Returns 0, -1 (bad type/size) or -2 (negative or non-finite importance). */
int pl_quantize_rows_weighted(int type, const float *src, void *dst, int64_t rows, int64_t n,
                              const float *importance, int n_threads);
/* quantize_kquants.c: 1 for the types its search writes (Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K, IQ4_XS) */
int pl_kq_searchable(int type);
/* one row of such a type (n whole blocks, unchecked) with the least importance-weighted squared error
 * found (imp: n per-column weights >= 0, or NULL for plain squared error) */
void pl_kq_quantize_row(int type, const float *x, void *y, int64_t n, const float *imp);

#endif
