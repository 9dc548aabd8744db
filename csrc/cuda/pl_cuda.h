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
#define PL_CUDA_F16 1
#define PL_CUDA_Q4_0 2
#define PL_CUDA_Q8_0 8
#define PL_CUDA_BF16 30
#define PL_CUDA_QK 32 /* weights per Q4_0 / Q8_0 block */

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
 * back to back). F16 / BF16 keep their layout. Q4_0 / Q8_0 are split on the device into
 *   [quants: row r at r * nb * QB bytes, block b's QB bytes at b * QB in it (QB = 16 Q4_0, 32 Q8_0),
 *    as ggml stores them]  then  [fp16 scales: ne1 * nb, row-major]   (nb = ne0 / 32)
 * so every row's quants start on a 16-byte boundary and are read with 16-byte loads. */
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

/* ---- gemv_quant.cu (Q4_0, Q8_0) and gemv_float16.cu (F16, BF16): y = W x for one token ----
 * x: ne0 floats, y: ne1 floats (device). act: device scratch of pl_cuda_act_bytes(w->type, ne0) bytes
 * (Q4_0 / Q8_0 quantize x to Q8_0 there first, as the CPU path does; NULL for F16 / BF16, which read
 * x as fp32). x, y and act must be 16-byte aligned (cudaMalloc's are). */
size_t pl_cuda_act_bytes(int type, int64_t ne0); /* 0: the type reads fp32 activations, or bad sizes */
int pl_cuda_gemv(const pl_cuda_weight *w, const float *x, float *y, void *act, char *err);

/* ---- gemv_timing.cu: seconds per pl_cuda_gemv call (CUDA events, iters calls after 3 warm-up calls) ---- */
int pl_cuda_gemv_time(const pl_cuda_weight *w, const float *x, float *y, void *act, int iters, double *seconds,
                      char *err);

/* ---- mma_check.cu (tests only): D = A B + C by one pl_mma_s8_m16n8k32 (cuda_common.cuh) in one warp ----
 * a: 16x32 int8, b: 32x8 int8, c, d: 16x8 int32, all row-major host arrays (int32 sums wrap) */
int pl_cuda_mma_s8_check(const int8_t *a, const int8_t *b, const int32_t *c, int32_t *d, char *err);

#ifdef __cplusplus
}
#endif
#endif
