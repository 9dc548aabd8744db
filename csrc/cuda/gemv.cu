/* gemv.cu: pl_cuda_gemv, decode's y = W x on the device: checks the weight, the pointers and their
 * alignment, quantizes x to Q8_0 for Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 weights and to Q8_K for Q4_K / Q5_K / Q6_K (as the CPU
 * path does), and launches the weight type's kernel (gemv_quant.cu, gemv_legacy.cu, gemv_kquant.cu, gemv_float16.cu:
 * F32 / F16 / BF16); pl_cuda_gemm, the same for nt tokens, on the batched GEMV or the tensor cores (the
 * path asked for, or by the token count). */
#include "model_internal.cuh"

int pl_cuda_gemv(const pl_cuda_weight *w, const float *x, float *y, void *act, char *err) {
    if (!w || !w->data) return PL_CUDA_ERR("gemv: no weight (not uploaded, or freed)");
    if (pl_cuda_weight_bytes(w->type, w->ne0, w->ne1) != w->nbytes || w->nbytes == 0)
        return PL_CUDA_ERR("gemv: weight of type %d, %lld x %lld, %zu bytes is inconsistent", w->type,
                           (long long)w->ne1, (long long)w->ne0, w->nbytes);
    if (!x || !y) return PL_CUDA_ERR("gemv: NULL input or output");
    if ((uintptr_t)x % 16 || (uintptr_t)y % 16) return PL_CUDA_ERR("gemv: input and output must be 16-byte aligned");
    if (pl_cuda_act_form(w->type) == PL_CUDA_Q8_0) {
        if (!act) return PL_CUDA_ERR("gemv: Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 weights need an activation scratch of %zu bytes",
                                     pl_cuda_act_bytes(w->type, w->ne0));
        if ((uintptr_t)act % 16) return PL_CUDA_ERR("gemv: the activation scratch must be 16-byte aligned");
        if (pl_cuda_quantize_q8_0(x, w->ne0, act, err)) return -1;
        if (w->type != PL_CUDA_Q4_0 && w->type != PL_CUDA_Q8_0)
            return pl_cuda_matmul_legacy_launch(w, act, 1, y, (int)w->ne1, 0, err);
        return pl_cuda_matmul_quant_launch(w, act, 1, y, (int)w->ne1, 0, err);
    }
    if (pl_cuda_act_form(w->type) == PL_CUDA_Q8_K) {
        if (!act) return PL_CUDA_ERR("gemv: Q4_K / Q5_K / Q6_K weights need an activation scratch of %zu bytes",
                                     pl_cuda_act_bytes(w->type, w->ne0));
        if ((uintptr_t)act % 16) return PL_CUDA_ERR("gemv: the activation scratch must be 16-byte aligned");
        if (pl_cuda_quantize_q8_k_on(x, w->ne0, act, 0, err)) return -1;
        return pl_cuda_matmul_kquant_launch(w, act, 1, y, (int)w->ne1, 0, err);
    }
    return pl_cuda_matmul_float_launch(w, x, 1, (int)w->ne0, y, (int)w->ne1, 0, err);
}

int pl_cuda_gemm(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, char *err) {
    if (path != PL_CUDA_PATH_AUTO && path != PL_CUDA_PATH_GEMV && path != PL_CUDA_PATH_MMA)
        return PL_CUDA_ERR("gemm: path %d; PL_CUDA_PATH_AUTO (0), _GEMV (1) or _MMA (2)", path);
    if (!w || !w->data) return PL_CUDA_ERR("gemm: no weight (not uploaded, or freed)");
    if (path == PL_CUDA_PATH_MMA && !pl_cuda_has_mma(w->type))
        return PL_CUDA_ERR("gemm: %s weights have no tensor-core kernel (Q4_0, Q8_0, Q4_K, Q5_K and Q6_K have)",
                           pl_cuda_type_name(w->type) ? pl_cuda_type_name(w->type) : "unknown");
    if (nt == 1 && path != PL_CUDA_PATH_MMA) return pl_cuda_gemv(w, x, y, act, err);
    if (nt < 1) return PL_CUDA_ERR("gemm: %d tokens", nt);
    if (!x || !y) return PL_CUDA_ERR("gemm: NULL input or output");
    if ((uintptr_t)x % 16 || (uintptr_t)y % 16) return PL_CUDA_ERR("gemm: input and output must be 16-byte aligned");
    const int mma = path == PL_CUDA_PATH_MMA || (path == PL_CUDA_PATH_AUTO && nt >= PL_MMA_MIN_TOKENS);
    if (pl_cuda_act_form(w->type) == PL_CUDA_Q8_0) {
        if (!act || (uintptr_t)act % 16)
            return PL_CUDA_ERR("gemm: Q4_0 / Q8_0 / Q4_1 / Q5_0 / Q5_1 weights need a 16-byte aligned activation scratch");
        if (pl_cuda_quantize_q8_0_on(x, (int64_t)nt * w->ne0, act, 0, err)) return -1;
        if (w->type != PL_CUDA_Q4_0 && w->type != PL_CUDA_Q8_0)
            return pl_cuda_matmul_legacy_launch(w, act, nt, y, (int)w->ne1, 0, err);
        if (mma) return pl_cuda_gemm_mma_launch(w, act, nt, y, (int)w->ne1, 0, err);
        return pl_cuda_matmul_quant_launch(w, act, nt, y, (int)w->ne1, 0, err);
    }
    if (pl_cuda_act_form(w->type) == PL_CUDA_Q8_K) {
        if (!act || (uintptr_t)act % 16)
            return PL_CUDA_ERR("gemm: Q4_K / Q5_K / Q6_K weights need a 16-byte aligned activation scratch");
        if (pl_cuda_quantize_q8_k_on(x, (int64_t)nt * w->ne0, act, 0, err)) return -1;
        if (mma) return pl_cuda_gemm_mma_kquant_launch(w, act, nt, y, (int)w->ne1, 0, err);
        return pl_cuda_matmul_kquant_launch(w, act, nt, y, (int)w->ne1, 0, err);
    }
    return pl_cuda_matmul_float_launch(w, x, nt, (int)w->ne0, y, (int)w->ne1, 0, err);
}
