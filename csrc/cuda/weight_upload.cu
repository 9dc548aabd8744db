/* weight_upload.cu: a weight matrix onto the device, once, in the layout the GEMV kernels read
 * (pl_cuda.h): F32 / F16 / BF16 rows as they are; Q4_0 / Q8_0 rows of ggml blocks (an fp16 scale, then the
 * quants) split on the device into all quants (16-byte aligned rows) then all scales, so the GEMV reads
 * quants with 16-byte loads; Q4_1 / Q5_0 / Q5_1 split the same way into nibbles, fifth bits, d's and m's;
 * Q4_K / Q5_K as they are (their super-blocks are multiples of 16 bytes); Q6_K
 * split into its 208 bytes of quants and scales per super-block, then all its fp16 d's. The host rows are
 * copied as they are and split by a kernel. */
#include "cuda_common.cuh"

static int quant_bytes(int type) { return type == PL_CUDA_Q4_0 ? 16 : type == PL_CUDA_Q8_0 ? 32 : 0; }
/* bytes of a Q4_1 / Q5_0 / Q5_1 block (ggml's), 0 for other types */
static int legacy_bytes(int type) {
    return type == PL_CUDA_Q4_1 ? 20 : type == PL_CUDA_Q5_0 ? 22 : type == PL_CUDA_Q5_1 ? 24 : 0;
}
/* bytes of a K-quant super-block (ggml's), 0 for other types */
static int kquant_bytes(int type) {
    return type == PL_CUDA_Q4_K ? 144 : type == PL_CUDA_Q5_K ? 176 : type == PL_CUDA_Q6_K ? 210 : 0;
}

size_t pl_cuda_weight_bytes(int type, int64_t ne0, int64_t ne1) {
    if (ne0 <= 0 || ne1 <= 0 || ne0 > INT32_MAX || ne1 > INT32_MAX) return 0;
    size_t per;        /* bytes per unit */
    int64_t units;     /* units per row */
    if (type == PL_CUDA_F16 || type == PL_CUDA_BF16 || type == PL_CUDA_F32) {
        per = type == PL_CUDA_F32 ? 4 : 2;
        units = ne0;
    } else if (quant_bytes(type)) {
        if (ne0 % PL_CUDA_QK) return 0;
        per = 2 + (size_t)quant_bytes(type);
        units = ne0 / PL_CUDA_QK;
    } else if (legacy_bytes(type)) {
        if (ne0 % PL_CUDA_QK) return 0;
        per = (size_t)legacy_bytes(type);
        units = ne0 / PL_CUDA_QK;
    } else if (kquant_bytes(type)) {
        if (ne0 % PL_CUDA_QK_K) return 0;
        per = (size_t)kquant_bytes(type);
        units = ne0 / PL_CUDA_QK_K;
    } else {
        return 0;
    }
    const size_t row = per * (size_t)units; /* < 2^37: no overflow */
    if ((size_t)ne1 > SIZE_MAX / row) return 0;
    return row * (size_t)ne1;
}

/* block g (of nblocks, rows back to back) of raw, 2 + qb bytes, -> quants at q + g * qb, scale at d[g] */
__global__ void split_blocks(const uint16_t *__restrict__ raw, int64_t nblocks, int qb, uint16_t *__restrict__ q,
                             uint16_t *__restrict__ d) {
    const int hw = qb / 2 + 1; /* 16-bit words per block (blocks are 18 or 34 bytes: 2-byte aligned) */
    for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < nblocks; g += (int64_t)gridDim.x * blockDim.x) {
        const uint16_t *src = raw + g * hw;
        d[g] = src[0];
        uint16_t *dst = q + g * (qb / 2);
        for (int i = 1; i < hw; i++) dst[i - 1] = src[i];
    }
}

/* Q6_K super-block g (of nblocks, 210 bytes: ql, qh, scales, then d) -> its first 208 bytes at q + g * 208,
 * d at d[g] (blocks are 2-byte aligned: 16-bit copies) */
__global__ void split_q6_k(const uint16_t *__restrict__ raw, int64_t nblocks, uint16_t *__restrict__ q,
                           uint16_t *__restrict__ d) {
    for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < nblocks; g += (int64_t)gridDim.x * blockDim.x) {
        const uint16_t *src = raw + g * 105;
        uint16_t *dst = q + g * 104;
        for (int i = 0; i < 104; i++) dst[i] = src[i];
        d[g] = src[104];
    }
}

/* Q4_1 / Q5_0 / Q5_1 block g (of nblocks, bb bytes: d, [m,] [qh 4,] qs 16) -> its nibbles at q + g * 16, its
 * fifth bits at qh[g] (has_qh), d at d[g], m at m[g] (has_m) */
__global__ void split_legacy(const uint8_t *__restrict__ raw, int64_t nblocks, int bb, int has_m, int has_qh,
                             uint8_t *__restrict__ q, uint32_t *__restrict__ qh, uint16_t *__restrict__ d,
                             uint16_t *__restrict__ m) {
    for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < nblocks; g += (int64_t)gridDim.x * blockDim.x) {
        const uint8_t *src = raw + g * bb;
        d[g] = (uint16_t)(src[0] | (src[1] << 8));
        int o = 2;
        if (has_m) {
            m[g] = (uint16_t)(src[2] | (src[3] << 8));
            o = 4;
        }
        if (has_qh) {
            qh[g] = (uint32_t)src[o] | ((uint32_t)src[o + 1] << 8) | ((uint32_t)src[o + 2] << 16) | ((uint32_t)src[o + 3] << 24);
            o += 4;
        }
        for (int i = 0; i < 16; i++) q[g * 16 + i] = src[o + i];
    }
}

int pl_cuda_weight_upload(pl_cuda_weight *w, int type, int64_t ne0, int64_t ne1, const void *host, size_t host_bytes,
                          char *err) {
    w->type = type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->nbytes = 0;
    w->data = NULL;
    const size_t nbytes = pl_cuda_weight_bytes(type, ne0, ne1);
    if (nbytes == 0)
        return PL_CUDA_ERR("cannot upload a weight of type %d with %lld x %lld elements: the GPU reads F32, F16, BF16, "
                           "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 rows of whole 32-element blocks, Q4_K (12), Q5_K (13), Q6_K (14) of "
                           "whole 256-element super-blocks, < 2^31 rows and columns", type, (long long)ne1,
                           (long long)ne0);
    if (host_bytes != nbytes)
        return PL_CUDA_ERR("weight of type %d, %lld x %lld: expected %zu bytes, got %zu", type, (long long)ne1,
                           (long long)ne0, nbytes, host_bytes);
    if (!host) return PL_CUDA_ERR("weight upload: NULL host pointer");
    void *data = NULL;
    if (pl_cuda_alloc(&data, nbytes, err)) return -1;
    const int qb = type == PL_CUDA_Q6_K || legacy_bytes(type) ? -1 : quant_bytes(type);
    if (!qb) { /* F32 / F16 / BF16, Q4_K / Q5_K: as they are */
        if (pl_cuda_to_device(data, host, nbytes, err)) {
            pl_cuda_free(data);
            return -1;
        }
    } else {
        void *raw = NULL;
        if (pl_cuda_alloc(&raw, nbytes, err)) {
            pl_cuda_free(data);
            return -1;
        }
        const int64_t nblocks = ne1 * (ne0 / (type == PL_CUDA_Q6_K ? PL_CUDA_QK_K : PL_CUDA_QK));
        int rc = pl_cuda_to_device(raw, host, nbytes, err);
        if (rc == 0) {
            const int threads = 256;
            const int64_t want = (nblocks + threads - 1) / threads;
            const int grid = (int)(want < 65535 ? want : 65535);
            if (qb > 0) {
                PL_LAUNCH(grid, threads, 0, 0, split_blocks)((const uint16_t *)raw, nblocks, qb, (uint16_t *)data,
                                                (uint16_t *)((char *)data + (size_t)nblocks * qb));
                rc = PL_CUDA_LAUNCHED("weight upload: split_blocks");
            } else if (legacy_bytes(type)) {
                const int has_m = type != PL_CUDA_Q5_0, has_qh = type != PL_CUDA_Q4_1;
                uint8_t *q = (uint8_t *)data;
                uint32_t *qh = (uint32_t *)(q + (size_t)nblocks * 16);
                uint16_t *d = (uint16_t *)(qh + (has_qh ? nblocks : 0));
                PL_LAUNCH(grid, threads, 0, 0, split_legacy)((const uint8_t *)raw, nblocks, legacy_bytes(type), has_m,
                                                has_qh, q, qh, d, d + nblocks);
                rc = PL_CUDA_LAUNCHED("weight upload: split_legacy");
            } else {
                PL_LAUNCH(grid, threads, 0, 0, split_q6_k)((const uint16_t *)raw, nblocks, (uint16_t *)data,
                                              (uint16_t *)((char *)data + (size_t)nblocks * 208));
                rc = PL_CUDA_LAUNCHED("weight upload: split_q6_k");
            }
            if (rc == 0) rc = pl_cuda_sync(err);
        }
        pl_cuda_free(raw);
        if (rc) {
            pl_cuda_free(data);
            return -1;
        }
    }
    w->nbytes = nbytes;
    w->data = data;
    return 0;
}

void pl_cuda_weight_free(pl_cuda_weight *w) {
    pl_cuda_free(w->data);
    w->data = NULL;
    w->nbytes = 0;
}
