/* tensor_types.h: weight storage types (numbered as GGUF's ggml_type), their block layouts,
 * and the per-ISA kernel table. A type is a row in a table, not a code path: the matmul
 * driver only asks pl_kernels for to_float / from_float / vec_dot / gemm of a type. */
#ifndef PYLLM_TENSOR_TYPES_H
#define PYLLM_TENSOR_TYPES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    PL_TYPE_F32 = 0,
    PL_TYPE_F16 = 1,
    PL_TYPE_Q4_0 = 2,
    PL_TYPE_Q4_1 = 3,
    PL_TYPE_Q5_0 = 6,
    PL_TYPE_Q5_1 = 7,
    PL_TYPE_Q8_0 = 8,
    PL_TYPE_Q2_K = 10,
    PL_TYPE_Q3_K = 11,
    PL_TYPE_Q4_K = 12,
    PL_TYPE_Q5_K = 13,
    PL_TYPE_Q6_K = 14,
    PL_TYPE_Q8_K = 15, /* activations only: what Q4_K / Q6_K weights are multiplied with */
    PL_TYPE_IQ4_NL = 20,
    PL_TYPE_IQ4_XS = 23,
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
/* Q8_K (ggml's layout): 256 activations, fp32 scale d = max|x| / 127, q = round(x / d), and the sums
 * of each 16 q (for the K-quants' minimums and Q6_K's offset). Activations only. */
#define PL_QK_K 256
typedef struct {
    float d;
    int8_t qs[PL_QK_K];
    int16_t bsums[PL_QK_K / 16];
} pl_block_q8_k;
_Static_assert(sizeof(pl_block_q8_k) == 292, "q8_K block must be 292 bytes");
_Static_assert(sizeof(pl_block_q4_0) == 18, "q4_0 block must be 18 bytes");

/* out[j*out_stride + i] = dot(w row i, a row j) for i < nr, j < nc (out is token-major).
 * w rows are w_stride bytes apart, activation rows a_stride bytes apart (in the type's act_type). */
typedef void (*pl_gemm_fn)(int n, int nr, int nc, const void *w, size_t w_stride, const void *a,
                           size_t a_stride, float *out, size_t out_stride);
/* one dot product: *s = dot(w row, activation row), n elements */
typedef void (*pl_vec_dot_fn)(int n, float *s, const void *w, const void *a);
typedef void (*pl_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*pl_from_float_fn)(const float *x, void *y, int64_t n);

/* ---- Repacked ("packed") weights: rows interleaved for SIMD, built once at model load ----
 * A type has a packed layout when its table row sets repack / gemm_packed / packed_group_bytes (the
 * same layout in every table: the table can change after a model is loaded). repack.c packs every
 * matmul weight of such a type; the matmul driver then calls gemm_packed, with activation rows built
 * by the row's pack_act (or plain act_type rows when pack_act is NULL). Rows are taken PL_PACK_ROWS
 * (16) at a time: a group of 16 rows is packed_group_bytes(n) bytes (a multiple of 64), read front
 * to back as one stream (what decode's bandwidth depends on). In every layout a 32-bit lane of a
 * 64-byte vector is one row (lane r = row r of the group), so a VNNI u8 x s8 dot of a weight vector
 * with a broadcast dword of activations adds 4 products of each of the 16 rows at once, and per-row
 * scales are one load. Rows past the end of the tensor (the last group) are zero (scale 0).
 *
 * Q4_0 / Q8_0 (32-weight blocks, nb = n/32): ceil(nb/2) * 64 + nb * 16 * QB bytes (QB = 16 for Q4_0,
 * 32 for Q8_0; equal to the unpacked bytes when rows % 16 == 0). Blocks go in pairs (2p, 2p+1):
 *   [64 bytes: fp16 d of rows 0..15 of block 2p, then of block 2p+1 (zero if nb is odd and 2p+1 = nb)]
 *   [16 * QB bytes: quants of block 2p][16 * QB bytes: quants of block 2p+1]
 *   (offsets: pl_pk_d / pl_pk_q below). The quants of a block are QB/4 64-byte vectors: bytes
 *             4r..4r+3 of vector v = qs bytes 4v..4v+3 of row r of that block.
 *             Q4_0: the qs bytes as stored (low nibble: weight j, high nibble: weight j + 16);
 *             Q8_0: qs ^ 0x80, i.e. w + 128 as an unsigned byte.
 * Their activations ("q8x" rows, pl_packed_act_row_bytes(n) apart, built by pl_pack_act_row):
 *   [0, nb*34): the Q8_0 row (exactly the act_type's from_float), so the unpacked gemm reads it too
 *   then, each array starting on a 64-byte boundary: float d[nb] (fp32 of the block scales),
 *   int32 c4[nb] = -8 * sum(qs of block), int32 c8[nb] = -128 * sum(qs of block) (the exact
 *   corrections for the Q4_0 nibble offset and the Q8_0 +128 offset).
 *
 * K-quants (256-weight super-blocks, nb = n/256; activations: plain Q8_K rows): a group is nb records,
 * one per super-block, each a multiple of 64 bytes ("[j][r]" = 16 bytes per j, byte r = row r):
 *   Q4_K, 2368 bytes: [32: fp16 d of rows 0..15][32: fp16 dmin][128: u8 scale [j][r] of sub-block j
 *         (32 weights)][128: u8 min [j][r]][2048: quants: for c = 0..3 (64 weights), 8 vectors v, lane r
 *         = qs bytes 32c + 4v .. +3 of row r (low nibbles: weights 64c + 4v + i, high: 64c + 32 + 4v + i)]
 *   Q5_K, 2880 bytes: Q4_K's first 320 bytes, then [2560: 5 planes t = 0..4 of 8 vectors v; byte i of
 *         lane r: bits 0-4 = row r's value (0..31) of weight 32t + 4v + i (sub-block t), bits 5-7 = bits
 *         3t .. 3t + 2 of the 15-bit q5 | q6 << 5 | q7 << 10 (qj: the value of weight 32j + 4v + i)]: a
 *         vector of sub-blocks 0..4 decodes in one AND, one of 5..7 in 5-8 operations (ggml's nibbles
 *         and fifth bits: 3-4 each; one thread of a Zen 5, decode matmul: AVX2 +20%, AVX-512 +5-10%)
 *   IQ4_XS, 2240 bytes: [32: fp16 d][32: zero][128: int8 scale - 32 [j][r] of sub-block j (32 weights)]
 *         [2048: for j = 0..7, 4 vectors v, lane r = qs bytes 16j + 4v .. +3 of row r (low nibbles: the
 *          table indices of weights 32j + 4v + i, high: 32j + 16 + 4v + i)]
 *   Q3_K, 1856 bytes: [32: fp16 d][32: zero][256: int8 scale [g][r] of group g (16 weights), the -32
 *         applied][1024: for h = 0, 1 (128 weights): 8 vectors of qs bytes 32h + 4v .. +3 (lane r = row r)]
 *         [512: 8 vectors of hmask bytes 4v .. +3]
 *   Q2_K, 1600 bytes: [32: fp16 d][32: fp16 dmin][256: u8 scale [g][r]][256: u8 min [g][r]][1024: the qs
 *         vectors as Q3_K's]
 *   Q6_K, 3392 bytes: [32: fp16 d][32: zero][256: int8 scale [g][r] of group g (16 weights)]
 *         [3072: for h = 0, 1 (128 weights): for plane p = 0, 1, 2: 8 vectors v, byte i of lane r = the
 *          6-bit value (as stored, + 32) of weight 128h + 32p + 4v + i of row r | bits 2p, 2p + 1 of the
 *          value of weight 128h + 96 + 4v + i << 6] (one AND per value for three of the four, the
 *          fourth from the top bits of the three planes: 11 vector operations per 4 vectors on AVX2
 *          against 17 for ggml's low 4 / high 2 bit split; measured in one process, one thread of a
 *          Zen 5, 5632 x 2048 gemv: AVX2 +18%, AVX-512 +8%)
 * Q4_1, Q5_0, Q5_1, IQ4_NL (32-weight blocks, q8x activations as Q4_0's): legacy_packed.h.
 *   (ggml's bit positions are kept except in Q5_K's and Q6_K's quants: elsewhere only whole 4-byte words
 *   move, and the 6-bit scales / mins of Q4_K / Q5_K are unpacked to bytes.) Each row's result is the
 *   unpacked reference's integer sums and float operations in its order, so packed = unpacked bit for bit. */
#define PL_PACK_ROWS 16
#define PL_PK_Q4_K_REC 2368
#define PL_PK_Q5_K_REC 2880
#define PL_PK_Q6_K_REC 3392
#define PL_PK_IQ4_XS_REC 2240
#define PL_PK_Q3_K_REC 1856
#define PL_PK_Q2_K_REC 1600
/* byte offsets, inside a packed Q4_0 / Q8_0 group, of block b's 16 scales and of its quants (qb = QB) */
static inline size_t pl_pk_pair_bytes(int qb) { return 64 + 32 * (size_t)qb; }
static inline size_t pl_pk_d(int64_t b, int qb) { return (size_t)(b >> 1) * pl_pk_pair_bytes(qb) + 32 * (size_t)(b & 1); }
static inline size_t pl_pk_q(int64_t b, int qb) {
    return (size_t)(b >> 1) * pl_pk_pair_bytes(qb) + 64 + (size_t)(b & 1) * 16 * (size_t)qb;
}
/* packs rows r < nrows (<= PL_PACK_ROWS; missing rows are zero) of src (row stride src_stride) into
 * one group at dst (packed_group_bytes bytes) */
typedef void (*pl_repack_fn)(const void *src, size_t src_stride, int nrows, int64_t n, void *dst);
/* out[j*out_stride + i] = dot(weight row i, activation row j) for i < nr, j < nc: w is the first
 * packed group of the rows (ceil(nr/16) groups of packed_group_bytes), a the packed activation rows,
 * a_stride bytes apart. Only rows i < nr are written. */
typedef void (*pl_gemm_packed_fn)(int n, int nr, int nc, const void *w, const void *a, size_t a_stride, float *out,
                                  size_t out_stride);
/* bytes of one packed group / one packed activation row for rows of n; 0 if n cannot be packed */
typedef size_t (*pl_packed_bytes_fn)(int64_t n);
/* builds one packed activation row from x: q8_from_float (the active table's from_float of the act_type)
 * writes the act_type row at the start of dst (so an unpacked kernel of that act_type reads it too),
 * then what the packed kernels add */
typedef void (*pl_pack_act_fn)(pl_from_float_fn q8_from_float, const float *x, void *dst, int64_t n);

typedef struct {
    const char *name;
    int blck;            /* elements per block */
    size_t blck_bytes;   /* bytes per block */
    pl_type act_type;    /* what activations are converted to before vec_dot (F32 for float weights) */
    pl_to_float_fn to_float;
    pl_from_float_fn from_float; /* quantize/convert a row; n must be a multiple of blck */
    pl_vec_dot_fn vec_dot;
    pl_gemm_fn gemm;     /* may be NULL: the driver then loops over vec_dot */
    pl_repack_fn repack; /* NULL: no packed layout. The same function in every table (one layout) */
    pl_gemm_packed_fn gemm_packed; /* set in every table that has repack */
    pl_packed_bytes_fn packed_group_bytes; /* set with repack */
    pl_pack_act_fn pack_act;     /* NULL: packed weights read plain act_type rows */
    pl_packed_bytes_fn packed_act_bytes; /* the stride of pack_act's rows (set with pack_act) */
} pl_type_traits;

typedef struct {
    const char *isa; /* "scalar", "avx2", "avx512" */
    pl_type_traits types[PL_TYPE_COUNT];
    /* fp32 dot and y += alpha * x: not used by the forward any more (attention runs on the types'
     * gemm and gemm_nn_f32); kept per ISA for tests/test_kernels.py and tools */
    float (*dot_f32)(int n, const float *a, const float *b);
    void (*axpy_f32)(int n, float alpha, const float *x, float *y);
    /* attention / MLP helpers (fp32). gemm_nn: c[i*ldc + j] = sum_p a[i*lda + p] * b[p*ldb + j] for
     * i < m, j < n, p < k (row-major; attention's probabilities x the cached values, read in place) */
    void (*gemm_nn_f32)(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                        size_t ldc);
    void (*softmax_f32)(float *x, int n, float scale); /* x = softmax(scale * x) */
    void (*swiglu_f32)(float *gate, const float *up, int n); /* gate = silu(gate) * up */
} pl_kernels;

/* Kernel tables; the SIMD ones start as a copy of the scalar table and override what they speed up. */
void pl_kernels_init_scalar(pl_kernels *k);
/* types_kquants.c: the rows of the types added to the scalar table (and so to every table): Q4_1,
 * Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K, IQ4_XS (written by quantize_kquants.c) and Q8_K (activations) */
void pl_kernels_add_read_only_types(pl_kernels *k);
/* quantize_kquants.c: the from_float of Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K, IQ4_XS (NULL for others) */
pl_from_float_fn pl_kq_from_float(int type);
/* shared by the reference and the SIMD kernels: Q3_K's 16 scales (the -32 applied) from its 12 scale
 * bytes, and IQ4_NL / IQ4_XS's non-linear table of 16 values */
void pl_q3_k_scales(const uint8_t *s12, int8_t *scales);
extern const int8_t pl_iq4nl_values[16];
void pl_kernels_init_avx2(pl_kernels *k);   /* defined only on x86-64 builds */
void pl_kernels_init_avx512(pl_kernels *k); /* defined only on x86-64 builds */

/* The active table (chosen on first use from CPUID, or PYLLM_ISA). Tables are built once and never
 * change, so the pointer stays valid; read it once per computation that must use one ISA throughout
 * (pl_forward does), since another thread may pl_set_isa at any time. Thread-safe. */
const pl_kernels *pl_kernels_active(void);
/* Force an ISA by name: returns 0 on success, -1 if unknown, -2 if this CPU/build lacks it.
 * Thread-safe (an atomic switch of the active table; running forwards keep the one they started with). */
int pl_set_isa(const char *name);
/* 1 if the ISA is usable on this CPU and build. */
int pl_isa_supported(const char *name);

/* 0 if t unknown, n negative or not a multiple of the block, or the bytes overflow a size_t */
size_t pl_type_row_bytes(pl_type t, int64_t n);

/* packed layout helpers (types_scalar.c). All return 0 for n <= 0, n not whole blocks, or a size_t
 * overflow. */
size_t pl_packed_group_bytes(pl_type t, int64_t n); /* the table row's packed_group_bytes; 0 if t has none */
/* stride of the activation rows a packed weight of type t reads: its packed_act_bytes, else act_type rows */
size_t pl_packed_act_bytes(pl_type t, int64_t n);
/* builds one such row with the table K (its act_type's from_float, then the row's pack_act if any) */
void pl_pack_acts_row(const pl_kernels *K, pl_type t, const float *x, void *dst, int64_t n);
size_t pl_packed_act_row_bytes(int64_t n);           /* q8x activation row stride (a multiple of 64) */
/* kquant_packed.c: adds the packed layouts of Q2_K..Q6_K and IQ4_XS (repack, group bytes, reference
 * gemm_packed) to a table (pl_kernels_init_scalar calls it) */
void pl_kernels_add_packed_kquants(pl_kernels *k);
/* legacy_packed.c: the same for Q4_1, Q5_0, Q5_1 and IQ4_NL (layouts in legacy_packed.h; activations: q8x
 * rows); legacy_packed_avx2.c / _avx512.c: their SIMD gemm_packed entries (x86-64 builds only) */
void pl_kernels_add_packed_legacy(pl_kernels *k);
void pl_kernels_add_packed_legacy_avx2(pl_kernels *k);
void pl_kernels_add_packed_legacy_avx512(pl_kernels *k);
/* kquant_panel_avx2.c: AVX2 Q6_K / Q3_K prefill from decoded super-blocks (after kquant_packed_simd.h's) */
void pl_kernels_add_kquant_panel_avx2(pl_kernels *k);
/* Q4_0 / Q8_0's pack_act: quantizes one row with q8_from_float (the active Q8_0 from_float), adds d/c4/c8 */
void pl_pack_act_row(pl_from_float_fn q8_from_float, const float *x, void *dst, int64_t n);
static inline size_t pl_round64(size_t x) { return (x + 63) & ~(size_t)63; }
int pl_type_valid(int t);

/* Weight and activation rows may sit at any byte offset (a GGUF / safetensors file's data, the kernel
 * tests' unaligned copies): scalar multi-byte values are loaded and stored through memcpy (one plain
 * load or store on x86), never through a cast pointer. Every kernel file uses these. */
static inline uint16_t pl_ld_u16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline uint32_t pl_ld_u32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline float pl_ld_f32(const void *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}
static inline void pl_st_u16(void *p, uint16_t v) { memcpy(p, &v, 2); }

/* fp16 / bf16 <-> fp32 (scalar, exact IEEE rounding to nearest even) */
float pl_fp16_to_fp32(uint16_t h);
uint16_t pl_fp32_to_fp16(float f);
static inline float pl_ld_fp16(const void *p) { return pl_fp16_to_fp32(pl_ld_u16(p)); } /* an fp16 field, any alignment */
static inline float pl_bf16_to_fp32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
uint16_t pl_fp32_to_bf16(float f);

#endif
