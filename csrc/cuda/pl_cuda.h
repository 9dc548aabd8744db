/* pl_cuda.h: the C API of the CUDA kernels in csrc/cuda/ (built only with -DPYLLM_CUDA=ON), callable from
 * C and Cython; the .cu files implement it. Plain C types only (no CUDA header needed to include it).
 * Every function that can fail returns 0 on success, or -1 with a message naming the problem in err
 * (PL_CUDA_ERRMSG_LEN bytes; the runtime's own words for a CUDA error). Pointers called "device" are
 * device memory (pl_cuda_alloc, pl_cuda_weight); kernels run on the current device's default stream and
 * are asynchronous: pl_cuda_to_host and pl_cuda_sync wait for them and report what went wrong there. */
#ifndef PYLLM_PL_CUDA_H
#define PYLLM_PL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PL_CUDA_ERRMSG_LEN 256 /* = PL_ERRMSG_LEN (checked in csrc/pl_cuda_build.h) */

/* weight types the kernels read: the pl_type ids of tensor_types.h (ggml's numbering; checked there) */
#define PL_CUDA_F32 0
#define PL_CUDA_F16 1
#define PL_CUDA_Q4_0 2
#define PL_CUDA_Q4_1 3
#define PL_CUDA_Q5_0 6
#define PL_CUDA_Q5_1 7
#define PL_CUDA_Q8_0 8
#define PL_CUDA_Q4_K 12
#define PL_CUDA_Q5_K 13
#define PL_CUDA_Q6_K 14
#define PL_CUDA_Q8_K 15 /* activations only: what Q4_K / Q5_K / Q6_K weights are multiplied with */
#define PL_CUDA_BF16 30
#define PL_CUDA_QK 32    /* weights per Q4_0 / Q8_0 block */
#define PL_CUDA_QK_K 256 /* weights per K-quant super-block */

/* ---- device.cu: the runtime, the devices ---- */
/* number of CUDA devices in *count; with no driver or no device, 0 devices and -1 with the runtime's
 * message ("no CUDA-capable device is detected", "CUDA driver version is insufficient ...") */
int pl_cuda_device_count(int *count, char *err);
#define PL_CUDA_NAME_LEN 256
typedef struct {
    char name[PL_CUDA_NAME_LEN];
    int major, minor;   /* compute capability */
    int sm_count;       /* multiprocessors */
    size_t total_mem;   /* bytes of device memory */
} pl_cuda_props;
int pl_cuda_device_props(int device, pl_cuda_props *p, char *err);
/* the runtime this build links (e.g. 13000 for 13.0) and the driver's CUDA version (0 with no driver) */
void pl_cuda_versions(int *runtime, int *driver);
/* waits for every kernel launched so far; reports an error any of them raised */
int pl_cuda_sync(char *err);

/* ---- memory.cu: device memory and copies (synchronous) ---- */
int pl_cuda_alloc(void **dev, size_t nbytes, char *err); /* nbytes > 0 */
void pl_cuda_free(void *dev);                            /* NULL is fine */
int pl_cuda_to_device(void *dev, const void *host, size_t nbytes, char *err);
int pl_cuda_to_host(void *host, const void *dev, size_t nbytes, char *err);

/* ---- weight_upload.cu: a weight matrix on the device, in the layout the GEMV kernels read ----
 * ne1 rows of ne0 elements, uploaded from the host rows as pyllm / GGUF store them (ggml blocks, rows
 * back to back). F32 / F16 / BF16 keep their layout. Q4_0 / Q8_0 are split on the device into
 *   [quants: row r at r * nb * QB bytes, block b's QB bytes at b * QB in it (QB = 16 Q4_0, 32 Q8_0),
 *    as ggml stores them]  then  [fp16 scales: ne1 * nb, row-major]   (nb = ne0 / 32)
 * so every row's quants start on a 16-byte boundary and are read with 16-byte loads. Q4_1 / Q5_0 / Q5_1
 * (32-weight blocks: the K-quant mixes' fallback for rows that are not whole super-blocks) likewise:
 *   [nibbles: 16 bytes per block, as ggml stores them][Q5_*: the 32 fifth bits, a uint32 per block]
 *   [fp16 d per block][Q4_1 / Q5_1: fp16 m per block]   (each array ne1 * nb, row-major)
 * K-quants (ne0 a multiple of 256; nb = ne0 / 256 super-blocks per row):
 *   Q4_K (144-byte super-blocks) and Q5_K (176) keep ggml's layout, rows back to back: every super-block
 *   then starts on a 16-byte boundary, and so do its parts (Q4_K: [d, dmin, 12 scale bytes][qs 128];
 *   Q5_K: [d, dmin, scales][qh 32][qs 128]), read with 16-byte loads.
 *   Q6_K (210 bytes: ql 128, qh 64, scales 16, d) is split into
 *     [ql, qh, scales of each super-block: 208 bytes at (r * nb + b) * 208]  then  [fp16 d: ne1 * nb]
 *   so its 208-byte parts start on 16-byte boundaries. */
typedef struct {
    int type;            /* PL_CUDA_* */
    int64_t ne0, ne1;    /* elements per row, rows */
    size_t nbytes;       /* bytes of data (equal to the host rows' bytes) */
    void *data;          /* device */
} pl_cuda_weight;
/* bytes of ne1 host rows of ne0 elements of type; 0 for an unsupported type, sizes <= 0, ne0 not whole
 * blocks, more than INT32_MAX rows or elements per row (kernel indices are 32-bit), or an overflow */
size_t pl_cuda_weight_bytes(int type, int64_t ne0, int64_t ne1);
/* host_bytes must be pl_cuda_weight_bytes(type, ne0, ne1); on failure *w is left empty (data NULL) */
int pl_cuda_weight_upload(pl_cuda_weight *w, int type, int64_t ne0, int64_t ne1, const void *host,
                          size_t host_bytes, char *err);
void pl_cuda_weight_free(pl_cuda_weight *w); /* frees data, leaves *w empty; an empty *w is fine */

/* ---- quantize_q8_0.cu: activations to Q8_0, as the CPU's scalar from_float does ----
 * n floats (a multiple of 32) at x (device) -> q (device, pl_cuda_act_bytes(PL_CUDA_Q8_0, n) bytes):
 * [int8 quants: n][fp32 scales: n / 32] (the scale is the fp16 d of the CPU's block, as a float:
 * d = fp16(max|x| / 127), q = round-half-away(x * (1 / (max|x| / 127)))), bit for bit the CPU rows. */
int pl_cuda_quantize_q8_0(const float *x, int64_t n, void *q, char *err);
/* ---- quantize_q8_k.cu: activations to Q8_K (for Q4_K / Q5_K / Q6_K weights), as the CPU's q8_K
 * from_float: n floats (a multiple of 256) -> q (pl_cuda_act_bytes(PL_CUDA_Q4_K, n) bytes):
 * [int8 quants: n][fp32 d: n / 256][int16 sums of each 16 quants: n / 16], bit for bit the CPU's blocks
 * (d = max|x| / 127 in fp32, q = round-half-away(x * (1 / d))). For nt rows (pl_cuda_gemm, the forward):
 * the nt rows' quants, then their d's, then their sums. */
int pl_cuda_quantize_q8_k(const float *x, int64_t n, void *q, char *err);

/* ---- gemv_quant.cu (Q4_0, Q8_0), gemv_legacy.cu (Q4_1, Q5_0, Q5_1), gemv_kquant.cu (Q4_K, Q5_K, Q6_K) and gemv_float16.cu (F16, BF16):
 * y = W x for one token ----
 * x: ne0 floats, y: ne1 floats (device). act: device scratch of pl_cuda_act_bytes(w->type, ne0) bytes
 * (Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 quantize x to Q8_0 there first, the K-quants to Q8_K, as the CPU path does; NULL for F32 /
 * F16 / BF16, which read x as fp32). x, y and act must be 16-byte aligned (cudaMalloc's are). */
size_t pl_cuda_act_bytes(int type, int64_t ne0); /* 0: the type reads fp32 activations, or bad sizes */
int pl_cuda_gemv(const pl_cuda_weight *w, const float *x, float *y, void *act, char *err);

/* the same for nt tokens: x is nt rows of ne0 floats, y nt rows of ne1 (row t of y: W times row t of x);
 * act: pl_cuda_act_bytes(w->type, ne0) * nt bytes (NULL for F32 / F16 / BF16). path PL_CUDA_PATH_AUTO:
 * Q4_0 / Q8_0 from 16 tokens (PL_MMA_MIN_TOKENS, the model's default mma_min_tokens) run on the tensor
 * cores (gemm_mma.cu, sm_80+), Q4_K / Q5_K / Q6_K likewise (gemm_mma_kquant.cu), else the batched GEMV (up
 * to 8 tokens a pass); Q4_1 / Q5_0 / Q5_1 always run the batched GEMV. PL_CUDA_PATH_GEMV: the batched GEMV
 * for any nt (one token: pl_cuda_gemv); PL_CUDA_PATH_MMA: the tensor-core kernel for any nt >= 1, refused
 * for a type without one. For measuring where one overtakes the other (bench/bench_cuda_gemv.py). */
#define PL_CUDA_PATH_AUTO 0
#define PL_CUDA_PATH_GEMV 1
#define PL_CUDA_PATH_MMA 2
int pl_cuda_gemm(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, char *err);

/* ---- gemv_timing.cu: seconds per pl_cuda_gemv / pl_cuda_gemm call (CUDA events, iters calls after 3 warm-up
 * calls; the gemm's arguments as pl_cuda_gemm's) ---- */
int pl_cuda_gemv_time(const pl_cuda_weight *w, const float *x, float *y, void *act, int iters, double *seconds,
                      char *err);
int pl_cuda_gemm_time(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, int iters,
                      double *seconds, char *err);

/* ---- model.cu, kv_cache.cu, forward.cu: the whole forward of a dense Llama-family model on the GPU ----
 * The model's weights are uploaded once (pl_cuda_model_set, in any order), its KV caches live on the
 * device, and pl_cuda_forward runs a batch of tokens (any mix of sequences and positions, as pl_forward)
 * through every layer on the device, copying back only the logits of the rows asked for. What the CPU
 * model supports beyond this (mixture-of-experts layers, LongRoPE, unmerged LoRA, weight types other than
 * F32 / F16 / BF16 / Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 / Q4_K / Q5_K / Q6_K) is refused by name when the model is built. */
typedef struct {
    int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim;
    int max_ctx;          /* positions the rope tables cover */
    float norm_eps;
    float attn_scale;     /* multiplies q.k before the softmax */
    int rope_interleaved; /* 0: halves (i, i + head_dim/2); 1: pairs (2i, 2i+1) */
    int sliding_window;   /* 0: none; else a query at p sees keys p-W+1..p */
    int qkv_bias, o_bias, qk_norm;
} pl_cuda_config;
typedef struct pl_cuda_model pl_cuda_model;
/* rope_cos / rope_sin: [max_ctx][head_dim / 2] host tables (the CPU model's, so both use the same values) */
pl_cuda_model *pl_cuda_model_new(const pl_cuda_config *c, const float *rope_cos, const float *rope_sin, char *err);
/* one tensor from host memory. name: tok_embd, output_norm, output, or per layer (0 <= layer < n_layers)
 * attn_norm wq wk wv bq bk bv q_norm k_norm wo bo ffn_norm ffn_gate ffn_up ffn_down (the ones the config
 * needs). Matmul weights and tok_embd: F32, F16, BF16, Q4_0, Q8_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K
 * or Q6_K rows of ne0 elements, ne1 rows, as the
 * CPU model holds them; norms and biases: F32 vectors (ne1 = 1). Shapes are checked against the config. */
int pl_cuda_model_set(pl_cuda_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                      const void *host, size_t nbytes, char *err);
/* 0 once every tensor the config needs is set, else -1 naming the first missing one */
int pl_cuda_model_check(const pl_cuda_model *m, char *err);
size_t pl_cuda_model_bytes(const pl_cuda_model *m); /* device bytes of the weights and tables */
/* fused launches (on by default): the norms and the attention also write their output's Q8_0 form for the
 * next matmuls, and a decode step's q / k / v and gate / up + SwiGLU take one launch each; the results are
 * the same bits either way (off: for A/B measurements). on < 0 only asks. Returns the setting before. */
int pl_cuda_model_set_fused(pl_cuda_model *m, int on);
/* keys per split of the decode attention (split over the keys, then combined: 256 by default), a power of
 * two from 32 to 256: fewer keys, more blocks at once for a short context. keys < 0 only asks. Returns the
 * setting before, or -1 with err for a value outside that. */
int pl_cuda_model_set_attention_split(pl_cuda_model *m, int keys, char *err);
/* tokens from which the forward's quantized matmuls (Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K) run on the tensor
 * cores rather than the batched GEMV, and below which the fused q / k / v and gate / up launches are used:
 * 1 to 1 << 20 (that many: never the tensor cores), default 16. n < 0 only asks. Returns the setting
 * before, or -1 with err for a value outside that. */
int pl_cuda_model_set_mma_min_tokens(pl_cuda_model *m, int n, char *err);
void pl_cuda_model_free(pl_cuda_model *m);          /* NULL is fine */

/* one sequence's keys and values on the device: [n_layers][n_ctx][n_kv_heads * head_dim] of type
 * (0: fp32, 1: fp16, rounded to nearest even as written) */
typedef struct pl_cuda_kv pl_cuda_kv;
pl_cuda_kv *pl_cuda_kv_new(const pl_cuda_model *m, int n_ctx, int type, char *err);
void pl_cuda_kv_free(pl_cuda_kv *kv);
size_t pl_cuda_kv_bytes(const pl_cuda_kv *kv);
/* copies src's first n_tokens positions of every layer into dst (same model, type; n_tokens <= both) */
int pl_cuda_kv_copy_prefix(pl_cuda_kv *dst, const pl_cuda_kv *src, int n_tokens, char *err);

/* n_tokens tokens: token[i] at position pos[i] of sequence seq[i] (an index into kvs); writes n_out rows
 * of n_vocab logits (host memory) for the batch rows out[0..n_out). Checks every index as pl_forward
 * does. Returns 0 or -1 with a message. */
int pl_cuda_forward(pl_cuda_model *m, pl_cuda_kv *const *kvs, int n_kv, int n_tokens, const int32_t *token,
                    const int32_t *pos, const int32_t *seq, int n_out, const int32_t *out, float *logits, char *err);

/* ---- mma_check.cu (tests only): D = A B + C by one pl_mma_s8_m16n8k32 (cuda_common.cuh) in one warp ----
 * a: 16x32 int8, b: 32x8 int8, c, d: 16x8 int32, all row-major host arrays (int32 sums wrap) */
int pl_cuda_mma_s8_check(const int8_t *a, const int8_t *b, const int32_t *c, int32_t *d, char *err);

#ifdef __cplusplus
}
#endif
#endif
