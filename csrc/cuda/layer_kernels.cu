/* layer_kernels.cu: the elementwise and per-row steps of a layer on the device, written as the CPU's
 * formulas (csrc/ops.c, forward.c) in fp32 with the same operation order where it matters: embedding
 * lookup (dequantizing the row), RMSNorm (sum of squares in double, as pl_rmsnorm), residual adds, the
 * q / k / v finish (biases, per-head norms, RoPE, the KV-cache write) and SwiGLU. One block per token
 * row for the per-row steps. The norms can also write their output's Q8_0 or Q8_K form (the next
 * matmuls' input) in the same pass, saving the quantization kernel. */
#include "model_internal.cuh"

#define ROW_THREADS 256

/* the 6-bit scale (sc) and min (m) of sub-block j of Q4_K / Q5_K from its 12 scale bytes */
static __device__ __forceinline__ void kq_scale_min(const uint8_t *q, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* element i of row r of a weight in weight_upload.cu's layout, as fp32 (the CPU's to_float, the same
 * float operations unfused) */
static __device__ __forceinline__ float weight_at(const pl_cuda_weight w, int64_t r, int64_t i) {
    switch (w.type) {
    case PL_CUDA_Q4_1:
    case PL_CUDA_Q5_0:
    case PL_CUDA_Q5_1: { /* split: nibbles [16 per block], Q5_*: fifth bits [uint32], d [fp16], Q4_1 / Q5_1: m */
        const int64_t nb = w.ne0 / PL_CUDA_QK, nblocks = w.ne1 * nb, g = r * nb + i / PL_CUDA_QK;
        const int j = (int)(i % PL_CUDA_QK), has_qh = w.type != PL_CUDA_Q4_1;
        const uint8_t *q = (const uint8_t *)w.data;
        const uint32_t *qh = (const uint32_t *)(q + nblocks * 16);
        const uint16_t *d = (const uint16_t *)(qh + (has_qh ? nblocks : 0));
        const uint8_t byte = q[g * 16 + (j & 15)];
        int v = j < 16 ? byte & 0x0F : byte >> 4;
        if (has_qh) v |= (int)((qh[g] >> j) & 1u) << 4;
        if (w.type == PL_CUDA_Q5_0) return pl_fmul((float)(v - 16), pl_h2f(d[g]));
        return pl_fadd(pl_fmul((float)v, pl_h2f(d[g])), pl_h2f(d[nblocks + g]));
    }
    case PL_CUDA_Q4_K:
    case PL_CUDA_Q5_K: { /* super-block: d, dmin, 12 scale bytes, (Q5_K: qh 32), qs 128 */
        const int q5 = w.type == PL_CUDA_Q5_K;
        const int64_t nb = w.ne0 / PL_CUDA_QK_K, j = i % PL_CUDA_QK_K;
        const uint8_t *b = (const uint8_t *)w.data + (r * nb + i / PL_CUDA_QK_K) * (q5 ? 176 : 144);
        const int sub = (int)(j / 32), l = (int)(j % 32); /* sub-block 2c: low nibbles of qs[32c + l], 2c + 1: high */
        const uint8_t byte = b[(q5 ? 48 : 16) + 32 * (sub / 2) + l];
        int q = (sub & 1) ? byte >> 4 : byte & 0x0F;
        if (q5) q += ((b[16 + l] >> sub) & 1) << 4;
        int sc, m;
        kq_scale_min(b + 4, sub, &sc, &m);
        const uint16_t *dd = (const uint16_t *)b;
        const float d1 = pl_fmul(pl_h2f(dd[0]), (float)sc), m1 = pl_fmul(pl_h2f(dd[1]), (float)m);
        return pl_fsub(pl_fmul(d1, (float)q), m1);
    }
    case PL_CUDA_Q6_K: { /* split: [ql 128, qh 64, scales 16] per super-block, then the fp16 d's */
        const int64_t nb = w.ne0 / PL_CUDA_QK_K, sbi = r * nb + i / PL_CUDA_QK_K;
        const int j = (int)(i % PL_CUDA_QK_K), hh = j / 128, k = (j % 128) / 32, l = j % 32;
        const uint8_t *b = (const uint8_t *)w.data + sbi * 208;
        const uint8_t ql = b[64 * hh + 32 * (k & 1) + l], qh = b[128 + 32 * hh + l];
        const int q = ((k < 2 ? ql & 0x0F : ql >> 4) | (((qh >> (2 * k)) & 3) << 4)) - 32;
        const float d = pl_h2f(((const uint16_t *)((const uint8_t *)w.data + w.ne1 * nb * 208))[sbi]);
        return pl_fmul(pl_fmul(d, (float)(int8_t)b[192 + 8 * hh + 2 * k + l / 16]), (float)q);
    }
    case PL_CUDA_F32: return ((const float *)w.data)[r * w.ne0 + i];
    case PL_CUDA_F16: return pl_h2f(((const uint16_t *)w.data)[r * w.ne0 + i]);
    case PL_CUDA_BF16: return pl_bf2f(((const uint16_t *)w.data)[r * w.ne0 + i]);
    case PL_CUDA_Q8_0: {
        const int64_t nb = w.ne0 / PL_CUDA_QK;
        const int8_t *q = (const int8_t *)w.data;
        const uint16_t *d = (const uint16_t *)(q + w.ne1 * nb * 32);
        return (float)q[r * w.ne0 + i] * pl_h2f(d[r * nb + i / PL_CUDA_QK]);
    }
    default: { /* Q4_0: byte j of a block holds elements j (low nibble) and j + 16 (high) */
        const int64_t nb = w.ne0 / PL_CUDA_QK, b = i / PL_CUDA_QK, j = i % PL_CUDA_QK;
        const uint8_t *q = (const uint8_t *)w.data;
        const uint16_t *d = (const uint16_t *)(q + w.ne1 * nb * 16);
        const uint8_t byte = q[(r * nb + b) * 16 + (j & 15)];
        const int v = (j < 16 ? (byte & 0x0F) : (byte >> 4)) - 8;
        return (float)v * pl_h2f(d[r * nb + b]);
    }
    }
}

__global__ void embed_kernel(const pl_cuda_weight w, const int32_t *__restrict__ ids, float *__restrict__ x) {
    const int t = blockIdx.x;
    const int64_t r = ids[t];
    for (int i = threadIdx.x; i < w.ne0; i += blockDim.x) x[(size_t)t * w.ne0 + i] = weight_at(w, r, i);
}

int pl_cuda_embed(const pl_cuda_model *m, const int32_t *ids, int nt, float *x, char *err) {
    PL_LAUNCH(nt, ROW_THREADS, 0, m->stream, embed_kernel)(m->tok_embd, ids, x);
    return PL_CUDA_LAUNCHED("embedding lookup");
}

/* the sum over the block of each thread's v (every thread gets it); red: ROW_THREADS doubles of shared */
static __device__ double block_sum(double v, double *red) {
    red[threadIdx.x] = v;
    __syncthreads();
    for (int o = ROW_THREADS / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    const double s = red[0];
    __syncthreads();
    return s;
}

/* one Q8_K super-block (256 values) quantized by the ROW_THREADS = 256 threads of a block, thread j holding
 * value j, with quantize_q8_k.cu's arithmetic (the same bits): d = max|x| / 127 in fp32, q = roundf(x / d),
 * the exact sum of each 16 quants. wmax: ROW_THREADS / 32 floats of shared memory. Every thread calls it. */
static __device__ void q8_k_block_store(float v, int8_t *q, float *d, int16_t *bsum, float *wmax) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float amax = fabsf(v);
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if (lane == 0) wmax[warp] = amax;
    __syncthreads();
    amax = wmax[0];
    for (int w = 1; w < ROW_THREADS / 32; w++) amax = fmaxf(amax, wmax[w]);
    __syncthreads(); /* wmax is free for the next block */
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    const int qi = (int)roundf(v * id);
    *q = (int8_t)qi;
    int s = qi; /* the 16-quant groups: half warps */
    for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((lane & 15) == 0) *bsum = (int16_t)s;
    if (threadIdx.x == 0) *d = dd;
}

/* where a norm writes its output's quantized form: row t of nrows rows of n values in pl_cuda.h's layout
 * (all quants, then all scales; Q8_K: then all 16-sums) */
typedef struct {
    int8_t *q;   /* NULL: not wanted */
    int form;    /* PL_CUDA_Q8_0 or PL_CUDA_Q8_K */
    int nrows;
} act_out;

/* out = w * (x * 1/sqrt(mean(x^2) + eps)), pl_rmsnorm's formula; with a.q, also out's Q8_0 or Q8_K form (row
 * t of a). A warp's 32 consecutive values are one Q8_0 block, the block's 256 one Q8_K super-block (n is a
 * multiple of 32 or 256 then: the caller checks) */
static __device__ void rmsnorm_row(const float *x, const float *__restrict__ w, float *out, int n, float eps,
                                   double *red, float *wmax, act_out a, int t) {
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += ROW_THREADS) ss += (double)x[i] * x[i];
    ss = block_sum(ss, red);
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    int8_t *qr = a.q ? a.q + (size_t)t * n : NULL;
    float *dbase = a.q ? (float *)(a.q + (size_t)a.nrows * n) : NULL;
    const int per = a.form == PL_CUDA_Q8_K ? PL_CUDA_QK_K : PL_CUDA_QK; /* values per scale */
    for (int i = threadIdx.x; i < n; i += ROW_THREADS) {
        const float o = w[i] * (x[i] * scale);
        out[i] = o;
        if (!qr) continue;
        const size_t blk = ((size_t)t * n + i) / per; /* the batch's block index */
        if (a.form == PL_CUDA_Q8_0) pl_q8_0_warp_block(o, qr + i, dbase + blk);
        else
            q8_k_block_store(o, qr + i, dbase + blk,
                             (int16_t *)(dbase + (size_t)a.nrows * (n / PL_CUDA_QK_K)) + ((size_t)t * n + i) / 16, wmax);
    }
}

__global__ void __launch_bounds__(ROW_THREADS)
rmsnorm_kernel(const float *x, const int32_t *__restrict__ rows, int n, const float *__restrict__ w, float *out, float eps,
               act_out a) {
    __shared__ double red[ROW_THREADS];
    __shared__ float wmax[ROW_THREADS / 32];
    const int t = blockIdx.x;
    const int r = rows ? rows[t] : t;
    rmsnorm_row(x + (size_t)r * n, w, out + (size_t)t * n, n, eps, red, wmax, a, t);
}

/* the quantized form wanted beside a norm's nt rows of n, or none where n is not whole blocks of it */
static act_out act_out_for(void *q, int form, int nt, int n) {
    act_out a = {NULL, form, nt};
    if (q && ((form == PL_CUDA_Q8_0 && n % PL_CUDA_QK == 0) || (form == PL_CUDA_Q8_K && n % PL_CUDA_QK_K == 0)))
        a.q = (int8_t *)q;
    return a;
}

int pl_cuda_rmsnorm(const pl_cuda_model *m, const float *x, const int32_t *rows, int nt, int n, const float *w,
                    float *out, void *q, int form, char *err) {
    PL_LAUNCH(nt, ROW_THREADS, 0, m->stream, rmsnorm_kernel)(x, rows, n, w, out, m->c.norm_eps, act_out_for(q, form, nt, n));
    return PL_CUDA_LAUNCHED("rmsnorm");
}

__global__ void __launch_bounds__(ROW_THREADS)
residual_kernel(float *x, const float *__restrict__ y, const float *__restrict__ bias, int n,
                const float *__restrict__ norm_w, float *xb, float eps, act_out a) {
    __shared__ double red[ROW_THREADS];
    __shared__ float wmax[ROW_THREADS / 32];
    const int t = blockIdx.x;
    float *xr = x + (size_t)t * n;
    const float *yr = y + (size_t)t * n;
    for (int i = threadIdx.x; i < n; i += ROW_THREADS) xr[i] += bias ? yr[i] + bias[i] : yr[i];
    if (norm_w) {
        __syncthreads();
        rmsnorm_row(xr, norm_w, xb + (size_t)t * n, n, eps, red, wmax, a, t);
    }
}

int pl_cuda_residual(const pl_cuda_model *m, float *x, const float *y, const float *bias, int nt, const float *norm_w,
                     float *xb, void *q, int form, char *err) {
    PL_LAUNCH(nt, ROW_THREADS, 0, m->stream, residual_kernel)(x, y, bias, m->c.dim, norm_w, xb, m->c.norm_eps,
                                                              act_out_for(norm_w ? q : NULL, form, nt, m->c.dim));
    return PL_CUDA_LAUNCHED("residual add");
}

/* per-head RMSNorm of nh heads of hd values in v (in place), one warp per head at a time: lane partial
 * sums in double, added up by lane 0 in lane order through shared memory */
static __device__ void head_norms(float *v, int nh, int hd, const float *__restrict__ w, float eps, double *part) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = ROW_THREADS / 32;
    for (int h = warp; h < nh; h += nwarps) {
        float *x = v + (size_t)h * hd;
        double ss = 0.0;
        for (int i = lane; i < hd; i += 32) ss += (double)x[i] * x[i];
        part[threadIdx.x] = ss;
        __syncwarp();
        double tot = 0.0;
        for (int j = 0; j < 32; j++) tot += part[warp * 32 + j];
        const float scale = 1.0f / sqrtf((float)(tot / hd) + eps);
        __syncwarp();
        for (int i = lane; i < hd; i += 32) x[i] = w[i] * (x[i] * scale);
        __syncwarp();
    }
}

/* RoPE of nh heads at table row cs / sn (pl_rope) */
static __device__ void rope_heads(float *v, int nh, int hd, const float *cs, const float *sn, int interleaved) {
    const int half = hd / 2;
    for (int p = threadIdx.x; p < nh * half; p += ROW_THREADS) {
        const int h = p / half, i = p % half;
        float *x = v + (size_t)h * hd;
        const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const float x0 = x[a], x1 = x[b];
        x[a] = x0 * cs[i] - x1 * sn[i];
        x[b] = x1 * cs[i] + x0 * sn[i];
    }
}

__global__ void __launch_bounds__(ROW_THREADS)
qkv_finish_kernel(const pl_cuda_config c, int l, float *q, float *k, const float *v, const float *__restrict__ bq,
                  const float *__restrict__ bk, const float *__restrict__ bv, const float *__restrict__ qn,
                  const float *__restrict__ kn, const float *__restrict__ rc, const float *__restrict__ rs,
                  const int32_t *__restrict__ pos, const int32_t *__restrict__ seq, const pl_cuda_kv_view *views) {
    __shared__ double part[ROW_THREADS];
    const int t = blockIdx.x, hd = c.head_dim, qd = c.n_heads * hd, kvd = c.n_kv_heads * hd;
    float *qt = q + (size_t)t * qd, *kt = k + (size_t)t * kvd;
    const float *vt = v + (size_t)t * kvd;
    const int p = pos[t];
    const pl_cuda_kv_view kv = views[seq[t]];
    const size_t off = ((size_t)l * kv.n_ctx + p) * kvd;
    if (bq) {
        for (int i = threadIdx.x; i < qd; i += ROW_THREADS) qt[i] += bq[i];
        for (int i = threadIdx.x; i < kvd; i += ROW_THREADS) kt[i] += bk[i];
    }
    /* v is final once its bias is in: straight into the cache */
    for (int i = threadIdx.x; i < kvd; i += ROW_THREADS) {
        const float x = bv ? vt[i] + bv[i] : vt[i];
        if (kv.type) ((uint16_t *)kv.v)[off + i] = pl_f2h(x);
        else ((float *)kv.v)[off + i] = x;
    }
    __syncthreads();
    if (qn) {
        head_norms(qt, c.n_heads, hd, qn, c.norm_eps, part);
        __syncthreads();
        head_norms(kt, c.n_kv_heads, hd, kn, c.norm_eps, part);
        __syncthreads();
    }
    const size_t ro = (size_t)p * (hd / 2);
    rope_heads(qt, c.n_heads, hd, rc + ro, rs + ro, c.rope_interleaved);
    rope_heads(kt, c.n_kv_heads, hd, rc + ro, rs + ro, c.rope_interleaved);
    __syncthreads();
    for (int i = threadIdx.x; i < kvd; i += ROW_THREADS) {
        if (kv.type) ((uint16_t *)kv.k)[off + i] = pl_f2h(kt[i]);
        else ((float *)kv.k)[off + i] = kt[i];
    }
}

int pl_cuda_qkv_finish(const pl_cuda_model *m, const pl_cuda_layer *L, int l, float *q, float *k, const float *v, int nt,
                       const int32_t *pos, const int32_t *seq, const pl_cuda_kv_view *views, char *err) {
    const pl_cuda_config *c = &m->c;
    PL_LAUNCH(nt, ROW_THREADS, 0, m->stream, qkv_finish_kernel)(*c, l, q, k, v, c->qkv_bias ? L->bq : NULL,
                                                                 c->qkv_bias ? L->bk : NULL, c->qkv_bias ? L->bv : NULL,
                                                                 c->qk_norm ? L->q_norm : NULL,
                                                                 c->qk_norm ? L->k_norm : NULL, m->rope_cos,
                                                                 m->rope_sin, pos, seq, views);
    return PL_CUDA_LAUNCHED("q/k/v biases, norms, RoPE and the KV-cache write");
}

__global__ void swiglu_kernel(float *hb, const float *__restrict__ hb2, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float g = hb[i];
        hb[i] = g / (1.0f + expf(-g)) * hb2[i];
    }
}

int pl_cuda_swiglu(const pl_cuda_model *m, float *hb, const float *hb2, int64_t n, char *err) {
    const int64_t want = (n + 255) / 256;
    PL_LAUNCH((unsigned)(want < 65535 ? want : 65535), 256, 0, m->stream, swiglu_kernel)(hb, hb2, n);
    return PL_CUDA_LAUNCHED("SwiGLU");
}
