/* tensor_types.h: weight storage types (numbered as GGUF's ggml_type), their block layouts,
 * and the per-ISA kernel table. A type is a row in a table, not a code path: the matmul
 * driver only asks pl_kernels for to_float / from_float / vec_dot / gemm of a type. */
#ifndef PYLLM_TENSOR_TYPES_H
#define PYLLM_TENSOR_TYPES_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    PL_TYPE_F32 = 0,
    PL_TYPE_F16 = 1,
    PL_TYPE_Q4_0 = 2,
    PL_TYPE_Q8_0 = 8,
    PL_TYPE_BF16 = 30,
    PL_TYPE_COUNT = 31 /* size of per-type tables (ids are sparse) */
} pl_type;

/* 32-weight blocks, bit-exact with ggml's definitions. d is an IEEE fp16 scale. */
#define PL_QK 32
typedef struct {
    uint16_t d;
    int8_t qs[PL_QK];
} pl_block_q8_0;
typedef struct {
    uint16_t d;
    uint8_t qs[PL_QK / 2]; /* low nibbles: weights 0..15, high nibbles: 16..31; value = (q - 8) * d */
} pl_block_q4_0;
_Static_assert(sizeof(pl_block_q8_0) == 34, "q8_0 block must be 34 bytes");
_Static_assert(sizeof(pl_block_q4_0) == 18, "q4_0 block must be 18 bytes");

/* out[j*out_stride + i] = dot(w row i, a row j) for i < nr, j < nc (out is token-major).
 * w rows are w_stride bytes apart, activation rows a_stride bytes apart (in the type's act_type). */
typedef void (*pl_gemm_fn)(int n, int nr, int nc, const void *w, size_t w_stride, const void *a,
                           size_t a_stride, float *out, size_t out_stride);
/* one dot product: *s = dot(w row, activation row), n elements */
typedef void (*pl_vec_dot_fn)(int n, float *s, const void *w, const void *a);
typedef void (*pl_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*pl_from_float_fn)(const float *x, void *y, int64_t n);

typedef struct {
    const char *name;
    int blck;            /* elements per block */
    size_t blck_bytes;   /* bytes per block */
    pl_type act_type;    /* what activations are converted to before vec_dot (F32 for float weights) */
    pl_to_float_fn to_float;
    pl_from_float_fn from_float; /* quantize/convert a row; n must be a multiple of blck */
    pl_vec_dot_fn vec_dot;
    pl_gemm_fn gemm;     /* may be NULL: the driver then loops over vec_dot */
} pl_type_traits;

typedef struct {
    const char *isa; /* "scalar", "avx2", "avx512" */
    pl_type_traits types[PL_TYPE_COUNT];
    float (*dot_f32)(int n, const float *a, const float *b);
    void (*axpy_f32)(int n, float alpha, const float *x, float *y); /* y += alpha * x */
} pl_kernels;

/* Kernel tables; the SIMD ones start as a copy of the scalar table and override what they speed up. */
void pl_kernels_init_scalar(pl_kernels *k);
void pl_kernels_init_avx2(pl_kernels *k);   /* defined only on x86-64 builds */
void pl_kernels_init_avx512(pl_kernels *k); /* defined only on x86-64 builds */

/* The active table (chosen on first use from CPUID, or PYLLM_ISA). */
const pl_kernels *pl_kernels_active(void);
/* Force an ISA by name: returns 0 on success, -1 if unknown, -2 if this CPU/build lacks it. */
int pl_set_isa(const char *name);
/* 1 if the ISA is usable on this CPU and build. */
int pl_isa_supported(const char *name);

size_t pl_type_row_bytes(pl_type t, int64_t n); /* 0 if t unknown or n not a multiple of the block */
int pl_type_valid(int t);

/* fp16 / bf16 <-> fp32 (scalar, exact IEEE rounding to nearest even) */
float pl_fp16_to_fp32(uint16_t h);
uint16_t pl_fp32_to_fp16(float f);
static inline float pl_bf16_to_fp32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
uint16_t pl_fp32_to_bf16(float f);

#endif
