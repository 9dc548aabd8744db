/* attention_prefill.cu: grouped-query attention for prefill, in tiles (flash-attention style), and the host's
 * plan saying which tokens of a batch take it. One block per (query tile, KV head): a tile is up to BQ
 * consecutive tokens of ONE sequence at consecutive positions, and its rows are those tokens x the G query
 * heads sharing the KV head (R = BQ x G <= 32 or 64 rows, in shared memory). The block walks the tile's keys
 * (from the first token's window start to the last token's position) in tiles of BK keys staged in shared
 * memory (fp32, from an fp32 or fp16 cache) and read by every row: scores S = Q K^T x scale (a row masks the
 * keys outside its own [start, p]), then an online softmax per row in fp32 (running max m and sum l, the
 * accumulator rescaled by exp(m_old - m_new) when the max grows) and O += P V; at the end O / l is written
 * over the rows' q (no partials, no combine pass). The result is the CPU's softmax-then-P x V up to fp32
 * rounding. 128 threads as 16 x 8: a thread holds RPT rows x KPT keys of S (keys tx + 16u) and RPT rows x
 * DPT elements of O (float4 groups 4 tx + 64 i); a tile's rows live in one warp each, so their reductions
 * over keys are shuffles within a half-warp. Shared memory is read as float4. The tile shapes are per
 * head_dim class (<= 64, <= 128, <= 256). */
#include <math.h>
#include <stdlib.h>

#include "model_internal.cuh"

#define PF_THREADS 128 /* 16 (tx: keys, head elements) x 8 (ty: query rows) */

/* the tile shape of a head_dim class: DPT head elements per thread (head_dim <= 16 x DPT, as DPT / 4 float4
 * groups), RPT query rows per thread (R = 8 x RPT rows per tile), KPT keys per thread (BK = 16 x KPT keys per
 * key tile) */
template <int DPT> struct pf_shape {
    static constexpr int RPT = DPT == 16 ? 4 : 8, KPT = DPT == 4 ? 4 : DPT == 8 ? 2 : 1;
    static constexpr int R = 8 * RPT, BK = 16 * KPT, V4 = DPT / 4;
};

static int pf_dpt(int head_dim) { return head_dim <= 64 ? 4 : head_dim <= 128 ? 8 : 16; }
static int pf_rows(int head_dim) {
    const int d = pf_dpt(head_dim);
    return d == 4 ? pf_shape<4>::R : d == 8 ? pf_shape<8>::R : pf_shape<16>::R;
}
static int pf_keys(int head_dim) {
    const int d = pf_dpt(head_dim);
    return d == 4 ? pf_shape<4>::BK : d == 8 ? pf_shape<8>::BK : pf_shape<16>::BK;
}
/* the row stride (floats) of Q and K in shared memory: head_dim rounded up to 4 (zeros past head_dim), then 1
 * or 2 float4 more so that it is an odd number of float4s: 8 threads reading the same element of 8
 * consecutive rows as float4 hit 8 different bank quadruples */
static __host__ __device__ __forceinline__ int pf_ld(int hd) {
    const int h4 = (hd + 3) / 4;
    return 4 * (h4 + (h4 % 2 ? 2 : 1));
}
/* shared memory: Q (R rows) and K (BK rows) of pf_ld floats, V (BK rows of head_dim rounded up to 4), P (R rows
 * of BK + 4) */
static size_t pf_smem(const pl_cuda_config *c) {
    const size_t ld = (size_t)pf_ld(c->head_dim), ldv = 4 * (size_t)((c->head_dim + 3) / 4);
    const size_t R = (size_t)pf_rows(c->head_dim), BK = (size_t)pf_keys(c->head_dim);
    return (R * ld + BK * ld + BK * ldv + R * (BK + 4)) * sizeof(float);
}

/* tokens per query tile for this config */
static int tile_tokens(const pl_cuda_config *c) { return pf_rows(c->head_dim) / (c->n_heads / c->n_kv_heads); }

static __device__ __forceinline__ float pf_load(const void *base, int type, size_t i) {
    return type ? pl_h2f(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

/* the keys a token at position p sees: [start, p] */
static __device__ __forceinline__ int pf_key_start(int p, int sw) { return sw > 0 && p - sw + 1 > 0 ? p - sw + 1 : 0; }

/* q and out may be the same rows (the forward writes the output over q): a block reads its rows' q before
 * it writes them, and no other block touches them */
template <int DPT>
__global__ void __launch_bounds__(PF_THREADS)
attention_prefill_kernel(const pl_cuda_config c, int l, const float *q, float *out, const int32_t *__restrict__ tiles,
                         const int32_t *__restrict__ pos, const int32_t *__restrict__ seq,
                         const pl_cuda_kv_view *__restrict__ views) {
    constexpr int RPT = pf_shape<DPT>::RPT, KPT = pf_shape<DPT>::KPT, R = pf_shape<DPT>::R, BK = pf_shape<DPT>::BK;
    constexpr int V4 = pf_shape<DPT>::V4;
    PL_DYNAMIC_SHARED(float, smem);
    const int hd = c.head_dim, G = c.n_heads / c.n_kv_heads, kvd = c.n_kv_heads * hd, qd = c.n_heads * hd;
    /* the tiles in reverse: a run's last tiles (the most keys) start first, the short ones fill in after */
    const int tile = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y, t0 = tiles[2 * tile], nq = tiles[2 * tile + 1], rows = nq * G;
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4, sw = c.sliding_window;
    const int h4 = (hd + 3) / 4, ld = pf_ld(hd), ldv = 4 * h4, ldp = BK + 4;
    float *qs = smem, *ks = qs + R * ld, *vs = ks + BK * ld, *ps = vs + BK * ldv; /* all 16-byte aligned */
    const pl_cuda_kv_view kv = views[seq[t0]];

    /* the tile's rows: row r = token i x G + head g, q at (t0 + i) x q_dim + (h G + g) x head_dim */
    for (int e = threadIdx.x; e < R * 4 * h4; e += PF_THREADS) {
        const int r = e / (4 * h4), d = e % (4 * h4);
        qs[r * ld + d] = r < rows && d < hd ? q[(size_t)(t0 + r / G) * qd + (size_t)(h * G + r % G) * hd + d] : 0.0f;
    }
    /* the keys of the whole tile, and this thread's rows' own ranges (an empty one for the padding rows) */
    int kmin = 0x7fffffff, kmax = -1;
    for (int i = 0; i < nq; i++) {
        const int p = pos[t0 + i], s0 = pf_key_start(p, sw);
        kmin = s0 < kmin ? s0 : kmin;
        kmax = p > kmax ? p : kmax;
    }
    int lo[RPT], hi[RPT];
    float m[RPT], lsum[RPT], acc[RPT][DPT];
#pragma unroll
    for (int k = 0; k < RPT; k++) {
        const int r = ty * RPT + k;
        const int p = r < rows ? pos[t0 + r / G] : -1;
        lo[k] = r < rows ? pf_key_start(p, sw) : 0;
        hi[k] = p;
        m[k] = -INFINITY;
        lsum[k] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPT; i++) acc[k][i] = 0.0f;
    }
    /* this thread's float4 groups of O (elements 4 tx + 64 i .. + 3) that lie within the head */
    bool own[V4];
#pragma unroll
    for (int i = 0; i < V4; i++) own[i] = 4 * tx + 64 * i < ldv;
    const size_t head0 = (size_t)l * kv.n_ctx * kvd + (size_t)h * hd; /* layer l, key 0, head h */

    for (int kb = kmin; kb <= kmax; kb += BK) {
        const int nk = kmax + 1 - kb < BK ? kmax + 1 - kb : BK;
        __syncthreads(); /* the previous key tile's readers are done (and, the first time, Q is in) */
        for (int e = threadIdx.x; e < BK * 4 * h4; e += PF_THREADS) {
            const int j = e / (4 * h4), d = e % (4 * h4);
            const size_t at = head0 + (size_t)(kb + j) * kvd + d;
            const bool in = j < nk && d < hd; /* zeros elsewhere: no garbage times a zero weight */
            ks[j * ld + d] = in ? pf_load(kv.k, kv.type, at) : 0.0f;
            vs[j * ldv + d] = in ? pf_load(kv.v, kv.type, at) : 0.0f;
        }
        __syncthreads();
        /* S for rows ty RPT + k, keys kb + tx + 16 u */
        float s[RPT][KPT];
#pragma unroll
        for (int k = 0; k < RPT; k++)
#pragma unroll
            for (int u = 0; u < KPT; u++) s[k][u] = 0.0f;
        for (int d4 = 0; d4 < h4; d4++) {
            float4 qv[RPT], kk[KPT];
#pragma unroll
            for (int k = 0; k < RPT; k++) qv[k] = *(const float4 *)(qs + (ty * RPT + k) * ld + 4 * d4);
#pragma unroll
            for (int u = 0; u < KPT; u++) kk[u] = *(const float4 *)(ks + (tx + 16 * u) * ld + 4 * d4);
#pragma unroll
            for (int k = 0; k < RPT; k++)
#pragma unroll
                for (int u = 0; u < KPT; u++) {
                    s[k][u] += qv[k].x * kk[u].x;
                    s[k][u] += qv[k].y * kk[u].y;
                    s[k][u] += qv[k].z * kk[u].z;
                    s[k][u] += qv[k].w * kk[u].w;
                }
        }
        /* online softmax per row: the 16 threads of a row (one half-warp) reduce by shuffles */
#pragma unroll
        for (int k = 0; k < RPT; k++) {
            float mx = -INFINITY;
#pragma unroll
            for (int u = 0; u < KPT; u++) {
                const int j = kb + tx + 16 * u;
                s[k][u] = j >= lo[k] && j <= hi[k] ? s[k][u] * c.attn_scale : -INFINITY;
                mx = fmaxf(mx, s[k][u]);
            }
            for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_new = fmaxf(m[k], mx);
            const float ref = m_new == -INFINITY ? 0.0f : m_new; /* no key yet: every p is 0, not nan */
            const float corr = expf(m[k] - ref);
            float psum = 0.0f;
#pragma unroll
            for (int u = 0; u < KPT; u++) {
                const float p = expf(s[k][u] - ref); /* 0 for the masked keys, those past nk too */
                ps[(ty * RPT + k) * ldp + tx + 16 * u] = p;
                psum += p;
            }
            for (int o = 8; o > 0; o >>= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
            lsum[k] = lsum[k] * corr + psum;
            m[k] = m_new;
#pragma unroll
            for (int i = 0; i < DPT; i++) acc[k][i] *= corr;
        }
        __syncwarp(); /* a row's P is written and read by its own half-warp */
        /* O += P V for rows ty RPT + k, keys in fours (P and V are zero past nk, up to BK) */
        for (int j4 = 0; j4 < (nk + 3) / 4; j4++) {
            float4 pv[RPT];
#pragma unroll
            for (int k = 0; k < RPT; k++) pv[k] = *(const float4 *)(ps + (ty * RPT + k) * ldp + 4 * j4);
#pragma unroll
            for (int jj = 0; jj < 4; jj++) {
                float4 vv[V4];
#pragma unroll
                for (int i = 0; i < V4; i++)
                    vv[i] = own[i] ? *(const float4 *)(vs + (4 * j4 + jj) * ldv + 4 * tx + 64 * i)
                                   : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
                for (int k = 0; k < RPT; k++) {
                    const float p = jj == 0 ? pv[k].x : jj == 1 ? pv[k].y : jj == 2 ? pv[k].z : pv[k].w;
#pragma unroll
                    for (int i = 0; i < V4; i++) {
                        acc[k][4 * i] += p * vv[i].x;
                        acc[k][4 * i + 1] += p * vv[i].y;
                        acc[k][4 * i + 2] += p * vv[i].z;
                        acc[k][4 * i + 3] += p * vv[i].w;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < RPT; k++) {
        const int r = ty * RPT + k;
        if (r >= rows) continue;
        const float inv = 1.0f / lsum[k]; /* > 0: a row always sees its own key */
        float *o = out + (size_t)(t0 + r / G) * qd + (size_t)(h * G + r % G) * hd;
#pragma unroll
        for (int i = 0; i < V4; i++)
#pragma unroll
            for (int u = 0; u < 4; u++)
                if (4 * tx + 64 * i + u < hd) o[4 * tx + 64 * i + u] = acc[k][4 * i + u] * inv;
    }
}

int pl_cuda_attention_prefill(const pl_cuda_model *m, int l, const float *q, float *out, const int32_t *pos,
                              const int32_t *seq, const pl_cuda_kv_view *views, char *err) {
    const pl_cuda_config *c = &m->c;
    const int n_tiles = m->s.n_tiles;
    if (n_tiles <= 0) return 0;
    const dim3 grid((unsigned)n_tiles, (unsigned)c->n_kv_heads);
    const size_t smem = pf_smem(c);
    const int dpt = pf_dpt(c->head_dim);
    if (dpt == 4)
        PL_LAUNCH(grid, PF_THREADS, smem, m->stream, attention_prefill_kernel<4>)(*c, l, q, out, m->s.tiles, pos, seq, views);
    else if (dpt == 8)
        PL_LAUNCH(grid, PF_THREADS, smem, m->stream, attention_prefill_kernel<8>)(*c, l, q, out, m->s.tiles, pos, seq, views);
    else
        PL_LAUNCH(grid, PF_THREADS, smem, m->stream, attention_prefill_kernel<16>)(*c, l, q, out, m->s.tiles, pos, seq, views);
    return PL_CUDA_LAUNCHED("attention (prefill tiles)");
}

int pl_cuda_attention_prefill_setup(const pl_cuda_model *m, char *err) {
    const size_t smem = pf_smem(&m->c);
    if (smem <= 48 * 1024) return 0; /* the default limit */
    int dev = 0, optin = 0;
    if (pl_cuda_fail(cudaGetDevice(&dev), "attention (prefill tiles): the device", err) ||
        pl_cuda_fail(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
                     "attention (prefill tiles): the device's shared memory", err))
        return -1;
    if (smem > (size_t)optin)
        return PL_CUDA_ERR("attention (prefill tiles): head_dim %d needs %zu bytes of shared memory per block, the "
                           "device allows %d", m->c.head_dim, smem, optin);
    const int dpt = pf_dpt(m->c.head_dim);
    const cudaError_t e =
        dpt == 4 ? cudaFuncSetAttribute(attention_prefill_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
        : dpt == 8 ? cudaFuncSetAttribute(attention_prefill_kernel<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem)
                   : cudaFuncSetAttribute(attention_prefill_kernel<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    return pl_cuda_fail(e, "attention (prefill tiles): shared memory", err);
}

/* tokens from which a run (consecutive batch rows of one sequence at consecutive positions) takes the tiled
 * kernel; PYLLM_CUDA_PREFILL_MIN_RUN=n overrides it (0: never, every token on the split kernel) */
#define PF_MIN_RUN 16

static int min_run(void) {
    const char *e = getenv("PYLLM_CUDA_PREFILL_MIN_RUN");
    if (!e || !*e) return PF_MIN_RUN;
    const long v = atol(e);
    return v <= 0 ? 0x7fffffff : v > (1 << 30) ? (1 << 30) : (int)v;
}

int pl_cuda_attention_plan(pl_cuda_model *m, int nt, const int32_t *pos, const int32_t *seq, int tiles_allowed,
                           char *err) {
    pl_cuda_scratch *s = &m->s;
    const int bq = tile_tokens(&m->c), least = tiles_allowed ? min_run() : 0x7fffffff;
    int32_t *tiles = s->plan_host, *ranges = s->plan_host + 2 * (size_t)s->cap_tokens;
    int n_tiles = 0, n_ranges = 0;
    for (int t = 0; t < nt;) {
        int e = t + 1;
        while (e < nt && seq[e] == seq[t] && pos[e] == pos[e - 1] + 1) e++;
        if (e - t >= least) {
            for (int a = t; a < e; a += bq) {
                tiles[2 * n_tiles] = a;
                tiles[2 * n_tiles + 1] = e - a < bq ? e - a : bq;
                n_tiles++;
            }
        } else if (n_ranges && ranges[2 * n_ranges - 1] == t) {
            ranges[2 * n_ranges - 1] = e; /* continues the previous range */
        } else {
            ranges[2 * n_ranges] = t;
            ranges[2 * n_ranges + 1] = e;
            n_ranges++;
        }
        t = e;
    }
    s->n_tiles = n_tiles;
    s->n_split_ranges = n_ranges;
    s->split_ranges = ranges;
    if (!n_tiles) return 0;
    return pl_cuda_fail(cudaMemcpyAsync(s->tiles, tiles, (size_t)n_tiles * 2 * sizeof(int32_t), cudaMemcpyHostToDevice,
                                        m->stream),
                        "CUDA forward: the attention tiles to the device", err);
}
