/* packed_gemm_driver.h: the loop every SIMD packed gemm runs over its weight groups (see the
 * packed layouts in tensor_types.h). Decode (one activation row): one 16-row group at a time, each
 * group read front to back as one stream. Prefill: per group, activation rows in passes of up to
 * max_c, through the ISA's tile for that count. Each ISA file passes its own kernels. */
#ifndef PYLLM_PACKED_GEMM_DRIVER_H
#define PYLLM_PACKED_GEMM_DRIVER_H

#include "tensor_types.h"

/* one group x one activation row; rows (<= 16) of the group are written */
typedef void (*pl_pk_gemv_fn)(int nb, const uint8_t *gp, const uint8_t *a, float *out, int rows);
/* one group x C activation rows (a_stride apart; the function is the table entry for C) */
typedef void (*pl_pk_tile_fn)(int nb, const uint8_t *gp, const uint8_t *a, size_t as, float *out, size_t os,
                              int rows);

/* blck: elements per block of type t (nb = n / blck blocks are passed to the kernels) */
static inline void pl_pk_gemm_drive(pl_type t, int blck, pl_pk_gemv_fn gemv, const pl_pk_tile_fn *tiles, int max_c, int n,
                                    int nr, int nc, const void *vw, const void *va, size_t as, float *out, size_t os) {
    const uint8_t *w = (const uint8_t *)vw, *a = (const uint8_t *)va;
    const int nb = n / blck, ng = (nr + PL_PACK_ROWS - 1) / PL_PACK_ROWS;
    const size_t gb = pl_packed_group_bytes(t, n);
    if (nc == 1) {
        for (int g = 0; g < ng; g++) gemv(nb, w + (size_t)g * gb, a, out + PL_PACK_ROWS * g, nr - PL_PACK_ROWS * g);
        return;
    }
    for (int g = 0; g < ng; g++)
        for (int c0 = 0; c0 < nc; c0 += max_c) {
            const int c = nc - c0 < max_c ? nc - c0 : max_c;
            tiles[c - 1](nb, w + (size_t)g * gb, a + (size_t)c0 * as, as, out + (size_t)c0 * os + PL_PACK_ROWS * g, os,
                         nr - PL_PACK_ROWS * g);
        }
}

#endif
