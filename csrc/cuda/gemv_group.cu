/* gemv_group.cu: the launchers of the integer-dot GEMVs (Q4_0 / Q8_0: gemv_quant.cu, Q4_K / Q5_K / Q6_K:
 * gemv_kquant.cu, both gemv_rows.cuh's kernels): one weight, a group of up to 3 weights of one type and
 * width reading the same activations in one launch (a decode step's q / k / v), and a gate / up pair with
 * SwiGLU in one launch. Host code: which blocks take which weight's rows. */
#include <string.h>

#include "cuda_common.cuh"

/* the row dots' activation form, or 0 for a type without them here (the types with row dots are those with a
 * tensor-core kernel) */
static int rows_form(int type) { return pl_cuda_has_mma(type) ? pl_cuda_act_form(type) : 0; }

int pl_cuda_gemv_group_ok(const pl_cuda_weight *const *ws, int n) {
    if (n < 1 || n > PL_GEMV_GROUP_MAX || !rows_form(ws[0]->type)) return 0;
    for (int i = 1; i < n; i++)
        if (ws[i]->type != ws[0]->type || ws[i]->ne0 != ws[0]->ne0) return 0;
    return 1;
}

static int launch(const pl_cuda_weight *const *ws, float *const *ys, const int *ldy, int n, const void *act, int nt,
                  int swiglu, cudaStream_t st, char *err) {
    if (!pl_cuda_gemv_group_ok(ws, n)) return PL_CUDA_ERR("grouped matmul: weights of different types or widths");
    pl_gemv_group g;
    memset(&g, 0, sizeof g);
    g.type = ws[0]->type;
    g.ne0 = ws[0]->ne0;
    g.n = n;
    int blocks = 0;
    for (int i = 0; i < n; i++) {
        pl_cuda_weight_parts(ws[i], &g.wq[i], &g.wd[i]);
        g.y[i] = ys[i];
        g.ldy[i] = ldy[i];
        g.nr[i] = (int)ws[i]->ne1;
        g.first_block[i] = blocks;
        blocks += (int)((ws[i]->ne1 + PL_GEMV_ROWS_PER_CTA - 1) / PL_GEMV_ROWS_PER_CTA);
    }
    g.first_block[n] = blocks;
    if (rows_form(g.type) == PL_CUDA_Q8_0) return pl_cuda_gemv_rows_q8_0(&g, act, nt, swiglu, st, err);
    return pl_cuda_gemv_rows_q8_k(&g, act, nt, swiglu, st, err);
}

int pl_cuda_matmul_quant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                char *err) {
    return launch(&w, &y, &ldy, 1, act, nt, 0, st, err);
}

int pl_cuda_matmul_kquant_launch(const pl_cuda_weight *w, const void *act, int nt, float *y, int ldy, cudaStream_t st,
                                 char *err) {
    return launch(&w, &y, &ldy, 1, act, nt, 0, st, err);
}

int pl_cuda_gemv_group_launch(const pl_cuda_weight *const *ws, float *const *ys, const int *ldy, int n, const void *act,
                              int nt, cudaStream_t st, char *err) {
    return launch(ws, ys, ldy, n, act, nt, 0, st, err);
}

int pl_cuda_gemv_swiglu_launch(const pl_cuda_weight *gate, const pl_cuda_weight *up, const void *act, int nt, float *y,
                               int ldy, cudaStream_t st, char *err) {
    const pl_cuda_weight *ws[2] = {gate, up};
    float *ys[2] = {y, y};
    const int ld[2] = {ldy, ldy};
    if (gate->ne1 != up->ne1) return PL_CUDA_ERR("gate / up matmul: %lld and %lld rows", (long long)gate->ne1, (long long)up->ne1);
    return launch(ws, ys, ld, 2, act, nt, 1, st, err);
}
