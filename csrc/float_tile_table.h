/* float_tile_table.h: the float-weight (F32 / F16 / BF16) gemm and vec_dot entries of a SIMD kernel
 * table, shared by kernels_avx2.c, kernels_avx512.c and kernels_neon.c. The including file defines, for
 * its own vector width: FMR 4 x FNC 2 or 4 (the largest tile: weight rows x activation rows; 4 x 2 on
 * AVX2 and NEON, 4 x 4 on AVX-512; the tables below are written for those two shapes), AI (always-inline),
 * fl_tile(ft, R, C, n, w, ws, a, as, out, os) (an R x C tile of dot products, out[c*os + r]) and
 * fl_dot(ft, n, w, a) (one dot product), both for ft = FT_f32 / FT_f16 / FT_bf16. This header
 * instantiates the tiles for every R <= FMR, C <= FNC, walks a matrix in those tiles (fl_gemm) and
 * defines f32/f16/bf16 _vec_dot and _gemm with the table's signatures. */
#ifndef PYLLM_FLOAT_TILE_TABLE_H
#define PYLLM_FLOAT_TILE_TABLE_H

#if FMR != 4 || (FNC != 2 && FNC != 4)
#error "float_tile_table.h instantiates 4 x 2 or 4 x 4 tiles: define FMR 4 and FNC 2 or 4"
#endif

typedef void (*fl_tile_fn)(int n, const char *w, size_t ws, const char *a, size_t as, float *out, size_t os);
#define FL_DEF(ft, R, C)                                                                                          \
    static void fl_tile_##ft##_##R##_##C(int n, const char *w, size_t ws, const char *a, size_t as, float *out,    \
                                         size_t os) {                                                             \
        fl_tile(FT_##ft, R, C, n, w, ws, a, as, out, os);                                                         \
    }
#if FNC == 2
#define FL_DEF_R(ft, R) FL_DEF(ft, R, 1) FL_DEF(ft, R, 2)
#define FL_ROW(ft, R) {fl_tile_##ft##_##R##_1, fl_tile_##ft##_##R##_2}
#else
#define FL_DEF_R(ft, R) FL_DEF(ft, R, 1) FL_DEF(ft, R, 2) FL_DEF(ft, R, 3) FL_DEF(ft, R, 4)
#define FL_ROW(ft, R) {fl_tile_##ft##_##R##_1, fl_tile_##ft##_##R##_2, fl_tile_##ft##_##R##_3, fl_tile_##ft##_##R##_4}
#endif
#define FL_DEF_ALL(ft) FL_DEF_R(ft, 1) FL_DEF_R(ft, 2) FL_DEF_R(ft, 3) FL_DEF_R(ft, 4)
#define FL_TAB(ft) static const fl_tile_fn fl_tab_##ft[FMR][FNC] = {FL_ROW(ft, 1), FL_ROW(ft, 2), FL_ROW(ft, 3), FL_ROW(ft, 4)};
FL_DEF_ALL(f32)
FL_DEF_ALL(f16)
FL_DEF_ALL(bf16)
FL_TAB(f32)
FL_TAB(f16)
FL_TAB(bf16)

static void fl_gemm(const fl_tile_fn (*tab)[FNC], int n, int nr, int nc, const void *w, size_t ws, const void *a,
                    size_t as, float *out, size_t os) {
    for (int i0 = 0; i0 < nr; i0 += FMR) {
        const int R = nr - i0 < FMR ? nr - i0 : FMR;
        for (int j0 = 0; j0 < nc; j0 += FNC) {
            const int C = nc - j0 < FNC ? nc - j0 : FNC;
            tab[R - 1][C - 1](n, (const char *)w + (size_t)i0 * ws, ws, (const char *)a + (size_t)j0 * as, as,
                              out + (size_t)j0 * os + i0, os);
        }
    }
}

static void f32_vec_dot(int n, float *s, const void *w, const void *a) { *s = fl_dot(FT_f32, n, w, (const float *)a); }
static void f16_vec_dot(int n, float *s, const void *w, const void *a) { *s = fl_dot(FT_f16, n, w, (const float *)a); }
static void bf16_vec_dot(int n, float *s, const void *w, const void *a) { *s = fl_dot(FT_bf16, n, w, (const float *)a); }
static void f32_gemm(int n, int nr, int nc, const void *w, size_t ws, const void *a, size_t as, float *out, size_t os) {
    fl_gemm(fl_tab_f32, n, nr, nc, w, ws, a, as, out, os);
}
static void f16_gemm(int n, int nr, int nc, const void *w, size_t ws, const void *a, size_t as, float *out, size_t os) {
    fl_gemm(fl_tab_f16, n, nr, nc, w, ws, a, as, out, os);
}
static void bf16_gemm(int n, int nr, int nc, const void *w, size_t ws, const void *a, size_t as, float *out, size_t os) {
    fl_gemm(fl_tab_bf16, n, nr, nc, w, ws, a, as, out, os);
}

#endif
