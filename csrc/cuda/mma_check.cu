/* mma_check.cu: a test-only entry point for pl_mma_s8_m16n8k32 (cuda_common.cuh): one warp loads A, B and C
 * from ordinary row-major matrices into the fragment registers of mma.m16n8k32 (.s8) as the PTX ISA lays
 * them out, issues the instruction once and stores D back the same way. tests/test_cuda.py compares the
 * result with numpy, on a GPU (the hardware's layout) and on the CPU emulation (its gather / scatter). */
#include "cuda_common.cuh"

/* a: 16x32 int8, b: 32x8 int8, c and d: 16x8 int32, all row-major (device) */
__global__ void mma_check_kernel(const int8_t *__restrict__ a, const int8_t *__restrict__ b,
                                 const int32_t *__restrict__ c, int32_t *__restrict__ d) {
    const int lane = threadIdx.x & 31;
    const int grp = lane >> 2, tig = lane & 3; /* the ISA's groupID and threadID_in_group */
    unsigned fa[4], fb[2];
    int fc[4];
    for (int r = 0; r < 4; r++) { /* registers 0, 1: k 0..15; 2, 3: k 16..31; odd registers: rows + 8 */
        const int row = grp + ((r & 1) ? 8 : 0), k0 = tig * 4 + ((r & 2) ? 16 : 0);
        unsigned v = 0;
        for (int j = 0; j < 4; j++) v |= (unsigned)(uint8_t)a[row * 32 + k0 + j] << (8 * j);
        fa[r] = v;
    }
    for (int r = 0; r < 2; r++) { /* B is column-major for the instruction: 4 consecutive k of column grp */
        const int k0 = tig * 4 + r * 16;
        unsigned v = 0;
        for (int j = 0; j < 4; j++) v |= (unsigned)(uint8_t)b[(k0 + j) * 8 + grp] << (8 * j);
        fb[r] = v;
    }
    for (int i = 0; i < 4; i++) fc[i] = c[(grp + (i >> 1) * 8) * 8 + tig * 2 + (i & 1)];
    pl_mma_s8_m16n8k32(fc, fa, fb);
    for (int i = 0; i < 4; i++) d[(grp + (i >> 1) * 8) * 8 + tig * 2 + (i & 1)] = fc[i];
}

int pl_cuda_mma_s8_check(const int8_t *a, const int8_t *b, const int32_t *c, int32_t *d, char *err) {
    if (!a || !b || !c || !d) return PL_CUDA_ERR("mma check: NULL pointer");
    void *buf = NULL;
    const size_t na = 16 * 32, nb = 32 * 8, nc = 16 * 8 * sizeof(int32_t);
    if (pl_cuda_alloc(&buf, na + nb + 2 * nc, err)) return -1;
    int8_t *da = (int8_t *)buf, *db = da + na;
    int32_t *dc = (int32_t *)(db + nb), *dd = dc + 16 * 8;
    int rc = pl_cuda_to_device(da, a, na, err);
    if (rc == 0) rc = pl_cuda_to_device(db, b, nb, err);
    if (rc == 0) rc = pl_cuda_to_device(dc, c, nc, err);
    if (rc == 0) {
        PL_LAUNCH(1, 32, 0, 0, mma_check_kernel)(da, db, dc, dd);
        rc = PL_CUDA_LAUNCHED("mma check: mma_check_kernel");
    }
    if (rc == 0) rc = pl_cuda_to_host(d, dd, nc, err);
    pl_cuda_free(buf);
    return rc;
}
