/* attention.cu: grouped-query attention over the device KV caches, split over the keys (flash-decoding), for
 * decode tokens and short runs (a batch's prompt runs take the tiled kernel of attention_prefill.cu):
 * one block per (split of m->att_split keys, KV head, token) computes, for the G query heads that share
 * the KV head, the scores q.k x scale of its keys, their max m, the sum l of exp(score - m) and the
 * exp-weighted sum of the value rows; a second kernel combines a query head's splits (rescaled to the
 * largest max) and divides by the total (writing the output's Q8_0 form too when asked, for the output
 * projection). The CPU's order is softmax first, then P x V: the same values
 * up to fp32 rounding. A token at position p sees keys start..p (start = p - W + 1 with a sliding window
 * of W, else 0), from its own sequence's cache. */
#include <math.h>

#include "model_internal.cuh"

#define ATT_THREADS 128
#define MAX_HD_PER_LANE 8 /* head_dim <= 256 */

static __device__ __forceinline__ float load_kv(const void *base, int type, size_t i) {
    return type ? pl_h2f(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* the keys a token sees: [start, p] */
static __device__ __forceinline__ int key_start(int p, int sw) { return sw > 0 && p - sw + 1 > 0 ? p - sw + 1 : 0; }

__global__ void __launch_bounds__(ATT_THREADS)
attention_split_kernel(const pl_cuda_config c, int l, const float *__restrict__ q, int n_splits, int split,
                       const int32_t *__restrict__ pos, const int32_t *__restrict__ seq,
                       const pl_cuda_kv_view *__restrict__ views, float *__restrict__ att_o, float *__restrict__ att_ml) {
    PL_DYNAMIC_SHARED(float, smem);
    const int s = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const int hd = c.head_dim, G = c.n_heads / c.n_kv_heads, kvd = c.n_kv_heads * hd;
    const int p = pos[t], start = key_start(p, c.sliding_window);
    const int j0 = start + s * split;
    if (j0 > p) return; /* past this token's keys: the combine reads only the splits it has */
    const int n = p + 1 - j0 < split ? p + 1 - j0 : split;
    const pl_cuda_kv_view kv = views[seq[t]];
    const size_t row0 = ((size_t)l * kv.n_ctx + j0) * kvd + (size_t)h * hd; /* element of key j0, head h */
    float *qs = smem, *sc = smem + G * hd;
    const float *qt = q + (size_t)t * c.n_heads * hd + (size_t)h * G * hd;
    for (int i = threadIdx.x; i < G * hd; i += ATT_THREADS) qs[i] = qt[i];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = ATT_THREADS / 32;
    /* scores: a warp per key, the lanes across head_dim */
    for (int j = warp; j < n; j += nwarps) {
        float kr[MAX_HD_PER_LANE];
#pragma unroll
        for (int u = 0; u < MAX_HD_PER_LANE; u++) {
            const int d = lane + 32 * u;
            kr[u] = d < hd ? load_kv(kv.k, kv.type, row0 + (size_t)j * kvd + d) : 0.0f;
        }
        for (int g = 0; g < G; g++) {
            float a = 0.0f;
#pragma unroll
            for (int u = 0; u < MAX_HD_PER_LANE; u++) {
                const int d = lane + 32 * u;
                if (d < hd) a += qs[g * hd + d] * kr[u];
            }
            a = pl_warp_sum(a);
            if (lane == 0) sc[g * split + j] = a * c.attn_scale;
        }
    }
    __syncthreads();
    /* per query head: max, exp, sum (a warp per head) */
    for (int g = warp; g < G; g += nwarps) {
        float *sg = sc + g * split;
        float mx = -INFINITY;
        for (int j = lane; j < n; j += 32) mx = fmaxf(mx, sg[j]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < n; j += 32) {
            const float e = expf(sg[j] - mx);
            sg[j] = e;
            sum += e;
        }
        sum = pl_warp_sum(sum);
        if (lane == 0) {
            float *ml = att_ml + (((size_t)t * c.n_heads + h * G + g) * n_splits + s) * 2;
            ml[0] = mx;
            ml[1] = sum;
        }
    }
    __syncthreads();
    /* the exp-weighted value rows: a thread per (head, element), consecutive elements across threads */
    for (int i = threadIdx.x; i < G * hd; i += ATT_THREADS) {
        const int g = i / hd, d = i % hd;
        const float *sg = sc + g * split;
        float a = 0.0f;
        for (int j = 0; j < n; j++) a += sg[j] * load_kv(kv.v, kv.type, row0 + (size_t)j * kvd + d);
        att_o[(((size_t)t * c.n_heads + h * G + g) * n_splits + s) * hd + d] = a;
    }
}

/* out row t, head hq = the splits' partials rescaled to the largest max and divided by the total; with q8,
 * also the row's Q8_0 form (row t_base + t of nrows: the batch's, pl_cuda.h's layout), a warp per block
 * (head_dim a multiple of 32, a thread per element) */
__global__ void attention_combine_kernel(const pl_cuda_config c, int n_splits, int split, const int32_t *__restrict__ pos,
                                         const float *__restrict__ att_o, const float *__restrict__ att_ml,
                                         float *__restrict__ out, int8_t *__restrict__ q8, int t_base, int nrows) {
    const int hq = blockIdx.x, t = blockIdx.y, hd = c.head_dim;
    const int p = pos[t], len = p + 1 - key_start(p, c.sliding_window);
    const int ns = (len + split - 1) / split;
    const size_t base = ((size_t)t * c.n_heads + hq) * n_splits;
    float mx = -INFINITY;
    for (int s = 0; s < ns; s++) mx = fmaxf(mx, att_ml[(base + s) * 2]);
    float tot = 0.0f;
    for (int s = 0; s < ns; s++) tot += expf(att_ml[(base + s) * 2] - mx) * att_ml[(base + s) * 2 + 1];
    const float inv = 1.0f / tot;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < ns; s++) a += expf(att_ml[(base + s) * 2] - mx) * att_o[(base + s) * hd + d];
        const float o = a * inv;
        out[(size_t)t * c.n_heads * hd + (size_t)hq * hd + d] = o;
        if (q8) {
            const size_t qd = (size_t)c.n_heads * hd, e = (size_t)(t_base + t) * qd + (size_t)hq * hd + d;
            pl_q8_0_warp_block(o, q8 + e, (float *)(q8 + (size_t)nrows * qd) + e / PL_CUDA_QK);
        }
    }
}

int pl_cuda_attention(const pl_cuda_model *m, int l, const float *q, float *out, int nt, int n_splits,
                      const int32_t *pos, const int32_t *seq, const pl_cuda_kv_view *views, void *q8, int t_base,
                      int nrows, char *err) {
    const pl_cuda_config *c = &m->c;
    const int G = c->n_heads / c->n_kv_heads;
    const size_t smem = (size_t)G * (c->head_dim + m->att_split) * sizeof(float);
    const dim3 grid((unsigned)n_splits, (unsigned)c->n_kv_heads, (unsigned)nt);
    PL_LAUNCH(grid, ATT_THREADS, smem, m->stream, attention_split_kernel)(*c, l, q, n_splits, m->att_split, pos, seq, views,
                                                                          m->s.att_o, m->s.att_ml);
    if (PL_CUDA_LAUNCHED("attention")) return -1;
    const int th = c->head_dim < 32 ? 32 : c->head_dim;
    PL_LAUNCH(dim3((unsigned)c->n_heads, (unsigned)nt), th, 0, m->stream, attention_combine_kernel)(
        *c, n_splits, m->att_split, pos, m->s.att_o, m->s.att_ml, out, c->head_dim % PL_CUDA_QK ? NULL : (int8_t *)q8, t_base,
        nrows);
    return PL_CUDA_LAUNCHED("attention: combining the splits");
}

int pl_cuda_attention_setup(const pl_cuda_model *m, char *err) {
    const pl_cuda_config *c = &m->c;
    const size_t smem = (size_t)(c->n_heads / c->n_kv_heads) * (c->head_dim + PL_ATT_SPLIT) * sizeof(float);
    if (smem <= 48 * 1024) return 0; /* the default limit */
    return pl_cuda_fail(cudaFuncSetAttribute(attention_split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
                        "attention: shared memory", err);
}
