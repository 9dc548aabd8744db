/* model_internal.cuh: what model.cu, kv_cache.cu, forward.cu and the layer kernels share: the device-side
 * model (weights, fp32 vectors, rope tables), a KV cache, the forward's scratch, and the layer kernels'
 * launchers (layer_kernels.cu, attention.cu). Internal to csrc/cuda/. */
#ifndef PYLLM_CUDA_MODEL_INTERNAL_CUH
#define PYLLM_CUDA_MODEL_INTERNAL_CUH

#include "cuda_common.cuh"

typedef struct {
    float *attn_norm, *ffn_norm, *bq, *bk, *bv, *bo, *q_norm, *k_norm; /* fp32 vectors (device), or NULL */
    pl_cuda_weight wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down;
} pl_cuda_layer;

/* where one batch row's sequence keeps its keys and values (a copy per forward, on the device) */
typedef struct {
    void *k, *v; /* [n_layers][n_ctx][kv_dim] */
    int n_ctx;
    int type;    /* 0 fp32, 1 fp16 */
} pl_cuda_kv_view;

struct pl_cuda_kv {
    const pl_cuda_model *m;
    int n_ctx, type;
    size_t bytes; /* of k (and of v) */
    void *k, *v;
};

/* the forward's device scratch, sized for cap_tokens rows and cap_seqs sequences, grown on demand */
typedef struct {
    int cap_tokens, cap_seqs;
    int64_t cap_att;                       /* (token, split) pairs att_o / att_ml hold */
    float *x, *xb, *q, *k, *v, *hb, *hb2; /* [tokens][dim | q_dim | kv_dim | hidden] */
    void *act;                             /* Q8_0 or Q8_K activations of the widest input */
    float *att_o, *att_ml;                 /* attention's per-split partial outputs, (max, sum) pairs */
    float *logits;                         /* [tokens][n_vocab] */
    int32_t *ids;                          /* token, pos, seq, out: 4 x cap_tokens (device) */
    pl_cuda_kv_view *views;                /* cap_seqs (device) */
    void *host;                            /* pinned staging of ids + views */
    /* this forward's attention plan (pl_cuda_attention_plan): n_tiles query tiles for the tiled prefill kernel,
     * (first token, tokens) pairs in tiles (device, 2 x cap_tokens); the other tokens as n_split_ranges [a, b)
     * ranges of the batch for the split kernel (split_ranges, host); plan_host: pinned, 4 x cap_tokens */
    int32_t *tiles, *plan_host, *split_ranges;
    int n_tiles, n_split_ranges;
} pl_cuda_scratch;

/* a captured decode forward (forward.cu) */
typedef struct {
    cudaGraphExec_t exec; /* NULL: free slot */
    int n_tokens, n_out, n_splits;
    unsigned long long last_use;
} pl_cuda_graph;
#define PL_CUDA_GRAPH_SLOTS 8

struct pl_cuda_model {
    pl_cuda_config c;
    pl_cuda_weight tok_embd, output;
    float *output_norm;
    float *rope_cos, *rope_sin; /* [max_ctx][head_dim/2] (device) */
    pl_cuda_layer *layers;      /* host array of n_layers */
    size_t bytes;
    cudaStream_t stream;
    pl_cuda_scratch s;
    pl_cuda_graph graphs[PL_CUDA_GRAPH_SLOTS];
    unsigned long long graph_clock;
    int fuse; /* kernels that write their output's Q8_0 form, q/k/v and gate/up+SwiGLU launches merged
               * (forward.cu); pl_cuda_model_set_fused */
    int att_split; /* keys per split of the split-key attention (pl_cuda_model_set_attention_split) */
    int mma_min_tokens; /* tokens from which quantized matmuls take the tensor cores, below which the fused
                         * q/k/v and gate/up launches (forward.cu); pl_cuda_model_set_mma_min_tokens */
};

/* keys per split of the split-key attention (a block's share of one query's keys): the default, and the
 * most (its shared memory is sized for it) */
#define PL_ATT_SPLIT 256

/* ---- layer_kernels.cu (all on m->stream; 0 or -1 with err) ---- */
/* x[t] = the embedding row of ids[t] (fp32), t < nt */
int pl_cuda_embed(const pl_cuda_model *m, const int32_t *ids, int nt, float *x, char *err);
/* out[t] = w * (x[t] * 1 / sqrt(mean(x[t]^2) + eps)) for nt rows of n; rows[t] (if not NULL) picks x's row.
 * q (or NULL): also out's form `form` (PL_CUDA_Q8_0 or PL_CUDA_Q8_K) there (nt rows, pl_cuda.h's layout);
 * ignored unless n is whole blocks of it, which the input width of a weight reading that form (the only
 * reason to ask) always is */
int pl_cuda_rmsnorm(const pl_cuda_model *m, const float *x, const int32_t *rows, int nt, int n, const float *w,
                    float *out, void *q, int form, char *err);
/* x += y (+ bias) over nt rows of dim; then, with norm_w, xb = rmsnorm(x) (and its quantized form in q, as
 * pl_cuda_rmsnorm) */
int pl_cuda_residual(const pl_cuda_model *m, float *x, const float *y, const float *bias, int nt,
                     const float *norm_w, float *xb, void *q, int form, char *err);
/* q, k, v of nt tokens: biases, per-head q / k norms, RoPE at each token's position, and k, v written
 * into the token's sequence's cache at layer l */
int pl_cuda_qkv_finish(const pl_cuda_model *m, const pl_cuda_layer *L, int l, float *q, float *k, const float *v,
                       int nt, const int32_t *pos, const int32_t *seq, const pl_cuda_kv_view *views, char *err);
/* hb = silu(hb) * hb2 over n values */
int pl_cuda_swiglu(const pl_cuda_model *m, float *hb, const float *hb2, int64_t n, char *err);
/* ---- attention.cu: out (nt x q_dim) = attention of q over each token's cache at layer l; n_splits
 * splits of m->att_split keys per (token, kv head), enough for the longest row of the batch. q8 (or NULL):
 * out's Q8_0 form too, these nt rows being rows t_base.. of nrows (ignored unless head_dim is a multiple of
 * 32) ---- */
int pl_cuda_attention(const pl_cuda_model *m, int l, const float *q, float *out, int nt, int n_splits,
                      const int32_t *pos, const int32_t *seq, const pl_cuda_kv_view *views, void *q8, int t_base,
                      int nrows, char *err);
/* once per model (before any capture): the attention kernel's shared memory limit for this config */
int pl_cuda_attention_setup(const pl_cuda_model *m, char *err);
/* ---- attention_prefill.cu: the tiled (flash-attention style) kernel for prefill runs ---- */
/* the plan of a batch of nt tokens (in m->s, tiles copied to the device on m->stream): every run of consecutive
 * rows of one sequence at consecutive positions of at least a minimum length goes to the tiled kernel (when
 * tiles_allowed), the other tokens to the split kernel */
int pl_cuda_attention_plan(pl_cuda_model *m, int nt, const int32_t *pos, const int32_t *seq, int tiles_allowed,
                           char *err);
/* out (rows of q_dim) = attention of q over the cache at layer l for the plan's tiles (out may be q) */
int pl_cuda_attention_prefill(const pl_cuda_model *m, int l, const float *q, float *out, const int32_t *pos,
                              const int32_t *seq, const pl_cuda_kv_view *views, char *err);
/* once per model: the tiled kernel's shared memory for this config, or an error saying it does not fit */
int pl_cuda_attention_prefill_setup(const pl_cuda_model *m, char *err);
/* ---- model.cu: grows m->s to nt tokens, n_seq sequences and att (token, split) pairs of attention
 * partials ---- */
int pl_cuda_scratch_reserve(pl_cuda_model *m, int nt, int n_seq, int64_t att, char *err);
/* bytes of attention partials a forward may hold at once: a long prompt's attention runs in chunks of
 * tokens that fit (each token needs n_splits x q_dim floats) */
#define PL_ATT_BUDGET_BYTES ((size_t)64 << 20)
/* ---- gemm_mma.cu: pl_cuda_matmul_quant_launch's contract on the tensor cores (sm_80+), for many tokens */
int pl_cuda_gemm_mma_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                            char *err);
/* ---- gemm_mma_kquant.cu: pl_cuda_matmul_kquant_launch's contract (Q4_K / Q5_K / Q6_K weights, Q8_K
 * activations) on the tensor cores (sm_80+), for many tokens */
int pl_cuda_gemm_mma_kquant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy,
                                   cudaStream_t st, char *err);
/* tokens from which a quantized matmul runs on the tensor cores rather than the batched GEMV: the GEMV
 * reads the weights once per 8 tokens, the tensor-core kernel once per 64 (a first guess, to be measured:
 * bench/bench_cuda_gemv.py's crossover). The default of a model's mma_min_tokens and pl_cuda_gemm's
 * PL_CUDA_PATH_AUTO; PL_MMA_NEVER, the most mma_min_tokens takes, is more tokens than any batch holds */
#define PL_MMA_MIN_TOKENS 16
#define PL_MMA_NEVER (1 << 20)
/* ---- forward.cu ---- */
void pl_cuda_graphs_free(pl_cuda_model *m); /* drops the captured decode graphs */

#endif
