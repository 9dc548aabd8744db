/* gemv_timing.cu: how long pl_cuda_gemv / pl_cuda_gemm take on the device, by CUDA events around back-to-back
 * calls (after warm-up calls), for bench/bench_cuda_gemv.py: time per call including the quantization of x
 * (Q8_0 / Q8_K), i.e. what one decode matmul (one token) or one prefill matmul (nt tokens) costs without the
 * host in the loop. */
#include "cuda_common.cuh"

int pl_cuda_gemm_time(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, int iters,
                      double *seconds, char *err) {
    *seconds = 0.0;
    if (iters < 1 || iters > 1000000) return PL_CUDA_ERR("gemm timing: iters must be in 1..1000000, got %d", iters);
    for (int i = 0; i < 3; i++) /* warm-up: clocks, caches, lazy module loading */
        if (pl_cuda_gemm(w, x, nt, y, act, path, err)) return -1;
    cudaEvent_t t0, t1;
    if (pl_cuda_fail(cudaEventCreate(&t0), "cudaEventCreate", err)) return -1;
    if (pl_cuda_fail(cudaEventCreate(&t1), "cudaEventCreate", err)) {
        cudaEventDestroy(t0);
        return -1;
    }
    int rc = pl_cuda_fail(cudaEventRecord(t0), "cudaEventRecord", err);
    for (int i = 0; i < iters && rc == 0; i++) rc = pl_cuda_gemm(w, x, nt, y, act, path, err);
    if (rc == 0) rc = pl_cuda_fail(cudaEventRecord(t1), "cudaEventRecord", err);
    if (rc == 0) rc = pl_cuda_fail(cudaEventSynchronize(t1), "a CUDA kernel failed", err);
    float ms = 0.0f;
    if (rc == 0) rc = pl_cuda_fail(cudaEventElapsedTime(&ms, t0, t1), "cudaEventElapsedTime", err);
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    if (rc == 0) *seconds = ms * 1e-3 / iters;
    return rc;
}

int pl_cuda_gemv_time(const pl_cuda_weight *w, const float *x, float *y, void *act, int iters, double *seconds,
                      char *err) {
    /* pl_cuda_gemm of one token: pl_cuda_gemv */
    return pl_cuda_gemm_time(w, x, 1, y, act, PL_CUDA_PATH_GEMV, iters, seconds, err);
}
