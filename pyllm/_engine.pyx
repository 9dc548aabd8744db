# cython: language_level=3, boundscheck=False, wraparound=False
# _engine.pyx: the thin Cython layer over the C engine (csrc/pyllm.h). It owns C objects
# (model, KV caches, scratch), checks what Python hands over, and releases the GIL for compute.
# Kernel-level entry points (set_isa, vec_dot, gemm, convert) exist for tests and tools.
from libc.stdint cimport int8_t, int32_t, int64_t, uint16_t
from libc.stdlib cimport malloc, free

import operator

import numpy as np

cdef extern from "pyllm.h" nogil:
    # the header's sizes (array dimensions below and the checks), never repeated as numbers here
    enum: PL_TYPE_COUNT
    enum: PL_ERRMSG_LEN
    enum: PL_MAX_THREADS
    ctypedef void (*pl_gemm_fn)(int n, int nr, int nc, const void *w, size_t w_stride, const void *a,
                                size_t a_stride, float *out, size_t out_stride)
    ctypedef void (*pl_vec_dot_fn)(int n, float *s, const void *w, const void *a)
    ctypedef void (*pl_to_float_fn)(const void *x, float *y, int64_t n)
    ctypedef void (*pl_from_float_fn)(const float *x, void *y, int64_t n)
    ctypedef void (*pl_repack_fn)(const void *src, size_t src_stride, int nrows, int64_t n, void *dst)
    ctypedef void (*pl_gemm_packed_fn)(int n, int nr, int nc, const void *w, const void *a, size_t a_stride,
                                       float *out, size_t out_stride)
    ctypedef struct pl_type_traits:
        const char *name
        int blck
        size_t blck_bytes
        int act_type
        pl_to_float_fn to_float
        pl_from_float_fn from_float
        pl_vec_dot_fn vec_dot
        pl_gemm_fn gemm
        pl_repack_fn repack
        pl_gemm_packed_fn gemm_packed
        size_t (*packed_group_bytes)(int64_t n)
        void (*pack_act)(pl_from_float_fn q8_from_float, const float *x, void *dst, int64_t n)
        size_t (*packed_act_bytes)(int64_t n)
    ctypedef struct pl_kernels:
        const char *isa
        pl_type_traits types[PL_TYPE_COUNT]
        float (*dot_f32)(int n, const float *a, const float *b)
        void (*axpy_f32)(int n, float alpha, const float *x, float *y)
        void (*gemm_nn_f32)(int m, int n, int k, const float *a, size_t lda, const float *b, size_t ldb, float *c,
                            size_t ldc) nogil
        void (*softmax_f32)(float *x, int n, float scale) nogil
        void (*swiglu_f32)(float *gate, const float *up, int n) nogil
    const pl_kernels *pl_kernels_active()
    int pl_set_isa(const char *name)
    int pl_isa_supported(const char *name)
    size_t pl_type_row_bytes(int t, int64_t n)
    int pl_type_valid(int t)
    int PL_PACK_ROWS
    size_t pl_packed_group_bytes(int t, int64_t n)
    size_t pl_packed_act_row_bytes(int64_t n)
    size_t pl_packed_act_bytes(int t, int64_t n)
    void pl_pack_acts_row(const pl_kernels *K, int t, const float *x, void *dst, int64_t n)
    void pl_pack_act_row(pl_from_float_fn q8_from_float, const float *x, void *dst, int64_t n)

    ctypedef struct pl_config:
        int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim
        int max_ctx
        float norm_eps
        int rope_interleaved
        int sliding_window
        int qkv_bias, o_bias, qk_norm, n_expert, n_expert_used, rope_long_after
    ctypedef struct pl_tensor:
        int type
        int64_t ne0, ne1
        const void *data
        size_t row_bytes
        const void *packed
        float *f32
        int lora_rank
    ctypedef struct pl_layer:
        pl_tensor attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, bo, ffn_norm, ffn_gate, ffn_up, ffn_down
    ctypedef struct pl_model:
        pl_config cfg
        pl_tensor tok_embd, output_norm, output
        pl_layer *layers
        float *rope_cos
        float *rope_sin
        float attn_scale
        int finalized
        int repack_off
        void (*release)(void *ctx, const char *name, int layer) noexcept with gil
        void *release_ctx
    ctypedef struct pl_kv:
        int n_ctx, n_layers, kv_dim, type
        size_t elt
    ctypedef struct pl_batch:
        int n_tokens
        const int32_t *token
        const int32_t *pos
        const int32_t *seq
        int n_out
        const int32_t *out
    ctypedef struct pl_scratch:
        pass
    pl_model *pl_model_new(const pl_config *cfg, char *err)
    int pl_model_set_tensor(pl_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                            const void *data, size_t nbytes, char *err)
    int pl_model_finalize(pl_model *m, const float *inv_freq, const float *inv_freq_long, float attn_factor,
                          char *err)
    int PL_TENSOR_MMAPPED
    int pl_model_set_tensor_flags(pl_model *m, const char *name, int layer, int flags, char *err)
    size_t pl_model_packed_bytes(const pl_model *m, const char *name, int layer)
    int pl_model_set_lora(pl_model *m, const char *name, int layer, int rank, const float *a, const float *b,
                          char *err)
    void pl_model_free(pl_model *m)
    pl_kv *pl_kv_new(const pl_model *m, int n_ctx, int type, char *err)
    void pl_kv_free(pl_kv *kv)
    int pl_kv_copy_prefix(pl_kv *dst, const pl_kv *src, int n_tokens, char *err)
    pl_scratch *pl_scratch_new()
    void pl_scratch_free(pl_scratch *s)
    void pl_scratch_set_stats(pl_scratch *s, double *stats)
    size_t pl_stats_len(const pl_model *m)
    int64_t pl_model_stats_offset(const pl_model *m, const char *name, int layer)
    int pl_quantize_rows(int type, const float *src, void *dst, int64_t rows, int64_t n, int n_threads)
    int pl_quantize_rows_weighted(int type, const float *src, void *dst, int64_t rows, int64_t n,
                                  const float *importance, int n_threads)
    int pl_forward(const pl_model *m, pl_scratch *s, pl_kv *const *kvs, int n_kv, const pl_batch *b,
                   float *logits, int n_threads, char *err)

cdef extern from "thread_pool.h" nogil:
    int pl_default_threads()
    int pl_par_selftest(int nth, int64_t n, int *distinct)
    int pl_par_spin_us(int us, int job_us, int cpu_check)

TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}
# the other ggml block types pyllm reads, runs (csrc/types_kquants.c) and writes (csrc/quantize_kquants.c):
# llama.cpp's legacy 4/5-bit types, its K-quants and the IQ4 non-linear types
BLOCK_TYPE_IDS = {"q4_1": 3, "q5_0": 6, "q5_1": 7, "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14,
                  "iq4_nl": 20, "iq4_xs": 23}

cdef class _Err:
    cdef char buf[PL_ERRMSG_LEN]

MAX_THREADS = PL_MAX_THREADS

cdef int _check_threads(n_threads, str what) except -1:
    """n_threads as a C int: 0 (the default: all) or 1..PL_MAX_THREADS; anything else a ValueError
    (not Cython's OverflowError for a huge int, nor a silent truncation of a float)."""
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise TypeError(f"{what}: n_threads must be an integer, got {n_threads!r}")
    if not 0 <= n_threads <= PL_MAX_THREADS:
        raise ValueError(f"{what}: n_threads must be in 1..{PL_MAX_THREADS} (0: all CPUs), got {n_threads}")
    return <int>n_threads

cdef bint _fits(size_t length, size_t offset, size_t row_bytes, size_t rows):
    """True if rows rows of row_bytes bytes starting at offset lie inside a buffer of length bytes,
    computed without overflow (offset first, then the rows against what is left)."""
    if offset > length:
        return False
    if rows == 0 or row_bytes == 0:
        return True
    return rows <= (length - offset) // row_bytes

def _int32_array(x, str what):
    """x as a contiguous int32 array: integer values only (a float or bool array, or a value past
    int32, is an error instead of a silent cast)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-d sequence of integers")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, got {arr.dtype} values")
    if arr.dtype != np.int32 and (arr.min() < -2**31 or arr.max() > 2**31 - 1):
        raise ValueError(f"{what}: value outside the int32 range")
    return np.ascontiguousarray(arr, dtype=np.int32)

# ---------------------------------------------------------------- ISA selection
def isa_supported(str name) -> bool:
    return bool(pl_isa_supported(name.encode()))

def set_isa(str name):
    """Force the kernel set (scalar, avx2, avx512 on x86-64; neon, neon-dotprod, neon-i8mm on aarch64)."""
    r = pl_set_isa(name.encode())
    if r == -1:
        raise ValueError(f"unknown ISA {name!r}: expected scalar, avx2, avx512, neon, neon-dotprod or neon-i8mm")
    if r == -2:
        raise RuntimeError(f"ISA {name!r} is not supported by this CPU or build")

def get_isa() -> str:
    return pl_kernels_active().isa.decode()

# ---------------------------------------------------------------- kernels (tests, tools)
cdef const pl_type_traits *_traits(int t) except NULL:
    if not pl_type_valid(t):
        raise ValueError(f"unknown tensor type id {t}")
    return &pl_kernels_active().types[t]

def row_bytes(int type_id, int64_t n) -> int:
    r = pl_type_row_bytes(type_id, n)
    if r == 0:
        raise ValueError(f"type {type_id} cannot hold rows of {n} elements")
    return r

def act_type(int type_id) -> int:
    return _traits(type_id).act_type

def from_float(int type_id, const float[:, ::1] x) -> bytes:
    """Convert/quantize rows of float32 to type_id with the active ISA; returns the packed bytes."""
    cdef const pl_type_traits *tt = _traits(type_id)
    if tt.from_float == NULL:
        raise ValueError(f"type {type_id} ({tt.name.decode()}) can be read but not written")
    cdef int64_t n = x.shape[1], rows = x.shape[0], r
    cdef size_t rb = row_bytes(type_id, n)
    out = bytearray(rb * rows)
    cdef unsigned char[::1] o = out
    if rows and n:
        with nogil:
            for r in range(rows):
                tt.from_float(&x[r, 0], &o[r * rb], n)
    return bytes(out)

cdef size_t _quant_row_bytes(int type_id, int64_t n, str what) except 0:
    """row bytes of type_id for rows of n, or a ValueError naming the type and its block"""
    cdef const pl_type_traits *tt = _traits(type_id)
    if tt.from_float == NULL:
        raise ValueError(f"{what}: type {type_id} ({tt.name.decode()}) can be read but not written")
    if n <= 0 or n % tt.blck:
        raise ValueError(f"{what}: {tt.name.decode()} rows must be a positive multiple of {tt.blck} elements, got {n}")
    return row_bytes(type_id, n)

def default_threads():
    """The CPUs this process may use (its affinity mask where the system has one), as n_threads=0 means."""
    return pl_default_threads()


def pool_selftest(int n_threads, int64_t n_items):
    """Runs the C thread pool (csrc/thread_pool.c) on n_threads threads over n_items items with each
    of its loop splits and 200 barrier rounds; returns (errors, distinct OS threads that ran items)."""
    _check_threads(n_threads, "pool_selftest()")
    if n_items < 0:
        raise ValueError(f"pool_selftest(): n_items must be >= 0, got {n_items}")
    cdef int distinct = 0, errors
    with nogil:
        errors = pl_par_selftest(n_threads if n_threads > 0 else pl_default_threads(), n_items, &distinct)
    if errors < 0:
        raise MemoryError("pool_selftest()")
    return errors, distinct


def pool_spin_us(int us=-1, int job_us=-1, int cpu_check=-1):
    """How long (microseconds) a pool thread waiting at a barrier (us) or for its next job (job_us)
    spins before it sleeps, and whether one that shares its CPU with a partner sleeps at once
    (cpu_check 1 / 0); sets those >= 0 (for benchmarks). Returns the previous barrier spin."""
    return pl_par_spin_us(us, job_us, cpu_check)


def quantize(int type_id, x, n_threads=0):
    """Convert a float32 (rows, n) array to type_id with n_threads (0: all); returns a uint8 array of
    rows * row_bytes bytes. This is the path files are written and quantized-on-load with."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError("quantize() takes a 2-D float32 array (rows, n)")
    cdef const float[:, ::1] a = arr
    cdef int64_t rows = a.shape[0], n = a.shape[1]
    cdef size_t rb = _quant_row_bytes(type_id, n, "quantize()")
    out = np.empty(rb * rows, dtype=np.uint8)
    cdef unsigned char[::1] o = out
    cdef int nth = _check_threads(n_threads, "quantize()")
    if nth == 0:
        nth = min(pl_default_threads(), PL_MAX_THREADS)
    cdef int r = 0
    if rows:
        with nogil:
            r = pl_quantize_rows(type_id, &a[0, 0], &o[0], rows, n, nth)
    if r:
        raise ValueError(f"pl_quantize_rows failed ({r})")
    return out

def quantize_weighted(int type_id, x, importance=None, n_threads=0):
    """Like quantize(), but the blocks get error-minimizing scales (pl_quantize_rows_weighted): Q4_0,
    Q8_0 (quantize.c), Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K..Q6_K, IQ4_XS (quantize_kquants.c). importance
    is None (plain squared error) or n float32 per-column weights >= 0. Other types are converted as
    quantize() does. Returns a uint8 array of rows * row_bytes bytes."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError("quantize_weighted() takes a 2-D float32 array (rows, n)")
    cdef const float[:, ::1] a = arr
    cdef int64_t rows = a.shape[0], n = a.shape[1]
    cdef size_t rb = _quant_row_bytes(type_id, n, "quantize_weighted()")
    cdef const float[::1] imp
    cdef const float *ip = NULL
    if importance is not None:
        iarr = np.ascontiguousarray(importance, dtype=np.float32)
        if iarr.ndim != 1 or iarr.shape[0] != n:
            raise ValueError(f"importance must have shape ({n},), got {tuple(iarr.shape)}")
        if not np.all(np.isfinite(iarr)) or np.any(iarr < 0):
            raise ValueError("importance must be finite and >= 0")
        imp = iarr
        if n:
            ip = &imp[0]
    out = np.empty(rb * rows, dtype=np.uint8)
    cdef unsigned char[::1] o = out
    cdef int r = 0
    cdef int nth = _check_threads(n_threads, "quantize_weighted()")
    if nth == 0:
        nth = min(pl_default_threads(), PL_MAX_THREADS)
    if rows:
        with nogil:
            r = pl_quantize_rows_weighted(type_id, &a[0, 0], &o[0], rows, n, ip, nth)
    if r:
        raise ValueError(f"pl_quantize_rows_weighted failed ({r})")
    return out

def to_float(int type_id, const unsigned char[::1] data, int64_t n):
    """Unpack rows of type_id (len(data) must be whole rows of n elements) to float32 (rows, n)."""
    cdef const pl_type_traits *tt = _traits(type_id)
    cdef size_t rb = row_bytes(type_id, n)
    if n <= 0 or data.shape[0] % rb:
        raise ValueError("data is not a whole number of rows")
    cdef int64_t rows = data.shape[0] // rb, r
    out = np.empty((rows, n), dtype=np.float32)
    cdef float[:, ::1] o = out
    with nogil:
        for r in range(rows):
            tt.to_float(&data[r * rb], &o[r, 0], n)
    return out

def gemm(int type_id, const unsigned char[::1] w, const unsigned char[::1] a, int n, int nr, int nc,
         size_t w_offset=0, size_t a_offset=0):
    """out[j, i] = dot(weight row i, activation row j) with the active ISA's gemm (or vec_dot loop).
    w holds nr rows of type_id, a holds nc rows in the type's act_type, each starting at the offsets
    (to test unaligned data)."""
    cdef const pl_type_traits *tt = _traits(type_id)
    cdef size_t ws = row_bytes(type_id, n), as_ = row_bytes(tt.act_type, n)
    if nr <= 0 or nc <= 0:
        raise ValueError(f"nr and nc must be positive, got {nr} and {nc}")
    if not _fits(w.shape[0], w_offset, ws, nr) or not _fits(a.shape[0], a_offset, as_, nc):
        raise ValueError("buffers too small for the requested shapes and offsets")
    out = np.zeros((nc, nr), dtype=np.float32)
    cdef float[:, ::1] o = out
    cdef int i, j
    with nogil:
        if tt.gemm != NULL:
            tt.gemm(n, nr, nc, &w[w_offset], ws, &a[a_offset], as_, &o[0, 0], nr)
        else:
            for j in range(nc):
                for i in range(nr):
                    tt.vec_dot(n, &o[j, i], &w[w_offset + i * ws], &a[a_offset + j * as_])
    return out

def vec_dot(int type_id, const unsigned char[::1] w, const unsigned char[::1] a, int n) -> float:
    cdef const pl_type_traits *tt = _traits(type_id)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not _fits(w.shape[0], 0, row_bytes(type_id, n), 1) or not _fits(a.shape[0], 0, row_bytes(tt.act_type, n), 1):
        raise ValueError("buffers too small")
    cdef float s = 0
    tt.vec_dot(n, &s, &w[0], &a[0])
    return s

# packed (repacked) weights, see csrc/tensor_types.h; for tests and tools
def packed_group_bytes(int type_id, int64_t n) -> int:
    return pl_packed_group_bytes(type_id, n)

def repack(int type_id, const unsigned char[::1] w, int nr, int64_t n, size_t w_offset=0):
    """The packed layout of nr rows of type_id (n elements each) at w[w_offset:]; a uint8 array of
    ceil(nr/16) groups, 64-byte aligned."""
    cdef const pl_type_traits *tt = _traits(type_id)
    cdef size_t gb = pl_packed_group_bytes(type_id, n), rb = row_bytes(type_id, n)
    if tt.repack == NULL or gb == 0:
        raise ValueError(f"type {type_id} has no packed layout for rows of {n}")
    if nr <= 0:
        raise ValueError(f"nr must be positive, got {nr}")
    if not _fits(w.shape[0], w_offset, rb, nr):
        raise ValueError("buffer too small for the requested shape and offset")
    cdef int ng = (<int64_t>nr + PL_PACK_ROWS - 1) // PL_PACK_ROWS, g  # 64-bit: nr + 15 may pass INT_MAX
    raw = np.zeros(ng * gb + 64, dtype=np.uint8)
    cdef size_t off = (-raw.ctypes.data) % 64
    out = raw[off:off + ng * gb]
    cdef unsigned char[::1] o = out
    with nogil:
        for g in range(ng):
            tt.repack(&w[w_offset + g * PL_PACK_ROWS * rb], rb, min(PL_PACK_ROWS, nr - g * PL_PACK_ROWS), n, &o[g * gb])
    return out

def pack_acts(x, int type_id=8):
    """float32 (rows, n) -> the activation rows a packed gemm of type_id reads (default Q8_0: q8x rows,
    Q8_0 with the active ISA plus scales and corrections; K-quants: Q8_K rows), a 64-byte aligned
    uint8 array of rows * packed_act_bytes(type_id, n)."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    cdef const pl_type_traits *tt = _traits(type_id)
    if arr.ndim != 2 or arr.shape[1] == 0 or pl_packed_act_bytes(type_id, arr.shape[1]) == 0:
        raise ValueError(f"pack_acts() takes a (rows, n) float32 array with n whole blocks of type {type_id}'s activations")
    if tt.gemm_packed == NULL:
        raise ValueError(f"type {type_id} has no packed layout")
    cdef const float[:, ::1] a = arr
    cdef int64_t rows = a.shape[0], n = a.shape[1], r
    cdef size_t rb = pl_packed_act_bytes(type_id, n)
    raw = np.zeros(rb * rows + 64, dtype=np.uint8)
    cdef size_t off = (-raw.ctypes.data) % 64
    out = raw[off:off + rb * rows]
    cdef unsigned char[::1] o = out
    cdef const pl_kernels *K = pl_kernels_active()
    with nogil:
        for r in range(rows):
            pl_pack_acts_row(K, type_id, &a[r, 0], &o[r * rb], n)
    return out

def packed_act_bytes(int type_id, int64_t n) -> int:
    """stride of the activation rows a packed gemm of type_id reads (0: n not whole blocks)"""
    return pl_packed_act_bytes(type_id, n) if pl_type_valid(type_id) else 0

def packed_act_row_bytes(int64_t n) -> int:
    return pl_packed_act_row_bytes(n)

def gemm_packed(int type_id, const unsigned char[::1] wp, const unsigned char[::1] a, int n, int nr, int nc):
    """out[j, i] = dot(weight row i, activation row j) with the active ISA's packed gemm: wp from
    repack(), a from pack_acts()."""
    cdef const pl_type_traits *tt = _traits(type_id)
    cdef size_t gb = pl_packed_group_bytes(type_id, n), as_ = pl_packed_act_bytes(type_id, n)
    if tt.gemm_packed == NULL or gb == 0:
        raise ValueError(f"type {type_id} has no packed layout for rows of {n}")
    if nr <= 0 or nc <= 0:
        raise ValueError(f"nr and nc must be positive, got {nr} and {nc}")
    if (not _fits(wp.shape[0], 0, gb, (<size_t>nr + PL_PACK_ROWS - 1) // PL_PACK_ROWS)
            or not _fits(a.shape[0], 0, as_, nc)):
        raise ValueError("buffers too small for the requested shapes")
    if <size_t>&wp[0] % 64 or <size_t>&a[0] % 64:
        raise ValueError("packed weights and activations must be 64-byte aligned (as repack() and pack_acts() return them)")
    out = np.zeros((nc, nr), dtype=np.float32)
    cdef float[:, ::1] o = out
    with nogil:
        tt.gemm_packed(n, nr, nc, &wp[0], &a[0], as_, &o[0, 0], nr)
    return out

def dot_f32(const float[::1] a, const float[::1] b) -> float:
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError("length mismatch")
    return pl_kernels_active().dot_f32(<int>a.shape[0], &a[0], &b[0])

def axpy_f32(float alpha, const float[::1] x, float[::1] y):
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError("length mismatch")
    pl_kernels_active().axpy_f32(<int>x.shape[0], alpha, &x[0], &y[0])

def gemm_nn_f32(const float[:, :] a, const float[:, :] b):
    """a (m, k) x b (k, n) with the active ISA's gemm_nn (attention's P x V); rows of a and b may
    be strided (as values are in the KV cache), their elements must be contiguous."""
    if a.shape[1] != b.shape[0] or a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        raise ValueError("shapes do not chain")
    if a.strides[1] != 4 or b.strides[1] != 4 or a.strides[0] <= 0 or b.strides[0] <= 0:
        raise ValueError("rows must be contiguous and in increasing memory order")
    out = np.zeros((a.shape[0], b.shape[1]), dtype=np.float32)
    cdef float[:, ::1] o = out
    with nogil:
        pl_kernels_active().gemm_nn_f32(<int>a.shape[0], <int>b.shape[1], <int>a.shape[1], &a[0, 0],
                                        a.strides[0] // 4, &b[0, 0], b.strides[0] // 4, &o[0, 0], o.shape[1])
    return out

def softmax_f32(x, float scale=1.0):
    """softmax(scale * x) of a 1-d float32 array with the active ISA"""
    out = np.array(x, dtype=np.float32, copy=True).ravel()
    if out.shape[0] == 0:
        raise ValueError("empty input")
    cdef float[::1] o = out
    with nogil:
        pl_kernels_active().softmax_f32(&o[0], <int>o.shape[0], scale)
    return out

def swiglu_f32(gate, up):
    """silu(gate) * up of 1-d float32 arrays with the active ISA"""
    out = np.array(gate, dtype=np.float32, copy=True).ravel()
    cdef const float[::1] u = np.ascontiguousarray(up, dtype=np.float32).ravel()
    if out.shape[0] != u.shape[0] or out.shape[0] == 0:
        raise ValueError("length mismatch")
    cdef float[::1] o = out
    with nogil:
        pl_kernels_active().swiglu_f32(&o[0], &u[0], <int>o.shape[0])
    return out

# ---------------------------------------------------------------- model
def _is_readonly_mmap(data) -> bool:
    """True for a read-only view of an mmap.mmap (a file mapped with ACCESS_READ): its pages are
    clean copies of the file, so the engine may drop them once it has repacked the tensor."""
    import mmap
    try:
        mv = memoryview(data)
    except TypeError:
        return False
    return mv.readonly and isinstance(mv.obj, mmap.mmap)

cdef void _release_source(void *ctx, const char *name, int layer) noexcept with gil:
    # finalize repacked this tensor: its source buffer is no longer read (unless another tensor,
    # e.g. a tied token embedding, holds the same buffer under its own key)
    (<CModel>ctx)._keep.pop((name.decode(), layer), None)

cdef class CModel:
    """A C model whose weights point into buffers kept alive by this object (until finalize has
    repacked them: see csrc/repack.c)."""
    cdef pl_model *m
    cdef dict _keep
    cdef dict _lora
    cdef dict _shapes
    cdef readonly int n_vocab, max_ctx

    def __cinit__(self, *, int n_vocab, int dim, int n_layers, int n_heads, int n_kv_heads, int head_dim,
                  int hidden_dim, int max_ctx, float norm_eps, bint rope_interleaved, int sliding_window,
                  bint qkv_bias=False, bint o_bias=False, bint qk_norm=False, int n_expert=0,
                  int n_expert_used=0, int rope_long_after=0):
        cdef pl_config c
        cdef _Err e = _Err()
        c.n_vocab = n_vocab; c.dim = dim; c.n_layers = n_layers; c.n_heads = n_heads
        c.n_kv_heads = n_kv_heads; c.head_dim = head_dim; c.hidden_dim = hidden_dim
        c.max_ctx = max_ctx; c.norm_eps = norm_eps; c.rope_interleaved = rope_interleaved
        c.sliding_window = sliding_window
        c.qkv_bias = qkv_bias; c.o_bias = o_bias; c.qk_norm = qk_norm; c.n_expert = n_expert
        c.n_expert_used = n_expert_used; c.rope_long_after = rope_long_after
        self.m = pl_model_new(&c, e.buf)
        if self.m == NULL:
            raise ValueError(e.buf.decode())
        self._keep = {}
        self._lora = {}
        self._shapes = {}
        self.n_vocab = n_vocab
        self.max_ctx = max_ctx

    def __dealloc__(self):
        pl_model_free(self.m)

    def set_tensor(self, str name, int layer, int type_id, int64_t ne0, int64_t ne1, data, mmapped=None):
        """data: any contiguous buffer (memoryview of an mmap, numpy array, bytes) of exactly the tensor's bytes.
        mmapped: data is a read-only file mapping, whose pages finalize may drop once the tensor is
        repacked (default: detected, see _is_readonly_mmap)."""
        cdef const unsigned char[::1] buf = memoryview(data).cast("B")
        cdef _Err e = _Err()
        cdef const void *ptr = NULL
        if buf.shape[0]:
            ptr = &buf[0]
        if pl_model_set_tensor(self.m, name.encode(), layer, type_id, ne0, ne1, ptr, buf.shape[0], e.buf):
            raise ValueError(e.buf.decode())
        if mmapped is None:
            mmapped = _is_readonly_mmap(data)
        if mmapped and pl_model_set_tensor_flags(self.m, name.encode(), layer, PL_TENSOR_MMAPPED, e.buf):
            raise ValueError(e.buf.decode())
        self._keep[(name, layer)] = data
        self._shapes[(name, layer)] = (ne0, ne1)

    def set_lora(self, str name, int layer, a, b):
        """Keep a LoRA side product beside the weight: every matmul adds b @ (a @ x). a: [rank, ne0],
        b: [ne1, rank] float32 (the adapter's scale folded into b)."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        b = np.ascontiguousarray(b, dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] == 0:
            raise ValueError(f"{name} (layer {layer}): LoRA factors of shapes {a.shape} and {b.shape} do not pair")
        cdef const float[:, ::1] av = a
        cdef const float[:, ::1] bv = b
        cdef _Err e = _Err()
        key = (name, layer)
        if key not in self._shapes:
            raise ValueError(f"{name} (layer {layer}): LoRA set before the tensor")
        ne0, ne1 = self._shapes[key]
        if a.shape[1] != ne0 or b.shape[0] != ne1:
            raise ValueError(f"{name} (layer {layer}): LoRA factors {a.shape} x {b.shape} do not fit the weight's "
                             f"{ne1} x {ne0}")
        if pl_model_set_lora(self.m, name.encode(), layer, <int>a.shape[0], &av[0, 0], &bv[0, 0], e.buf):
            raise ValueError(e.buf.decode())
        self._lora[key] = (a, b)

    def stats_offset(self, str name, int layer) -> int:
        """Where the calibration statistics of a per-layer matmul weight start (Runner.collect_stats:
        ne0 sums of squares then the row count, per expert for stacked tensors), or -1."""
        return pl_model_stats_offset(self.m, name.encode(), layer)

    def lora_count(self) -> int:
        """How many weights keep a LoRA side product."""
        return len(self._lora)

    def packed_bytes(self, str name, int layer=-1) -> int:
        """Bytes of the tensor's repacked copy (0: not repacked)."""
        return pl_model_packed_bytes(self.m, name.encode(), layer)

    def finalize(self, inv_freq, float attn_factor=1.0, inv_freq_long=None, bint repack=True):
        """inv_freq_long: LongRoPE's long-factor frequencies (required with rope_long_after). repack=False
        keeps every weight in its source layout (no CPU-packed copies): what a CudaModel uploads."""
        cdef const float[::1] f = np.ascontiguousarray(inv_freq, dtype=np.float32)
        cdef const float[::1] fl = np.ascontiguousarray(inv_freq if inv_freq_long is None else inv_freq_long,
                                                        dtype=np.float32)
        cdef const float *long_ptr = NULL
        cdef _Err e = _Err()
        if f.shape[0] != self.m.cfg.head_dim // 2 or fl.shape[0] != f.shape[0]:
            raise ValueError(f"rope inv_freq needs {self.m.cfg.head_dim // 2} values, got {f.shape[0]}")
        if inv_freq_long is not None:
            long_ptr = &fl[0]
        self.m.repack_off = not repack
        self.m.release = _release_source
        self.m.release_ctx = <void *>self
        try:
            r = pl_model_finalize(self.m, &f[0], long_ptr, attn_factor, e.buf)
        finally:
            self.m.release = NULL
            self.m.release_ctx = NULL
        if r:
            raise ValueError(e.buf.decode())


cdef class KVCache:
    """The keys and values of one sequence, n_ctx positions per layer, stored as type_id (0: f32,
    1: f16)."""
    cdef pl_kv *kv
    cdef readonly int n_ctx
    cdef readonly int type_id
    cdef CModel model

    def __cinit__(self, CModel model, int n_ctx, int type_id=0):
        cdef _Err e = _Err()
        self.kv = pl_kv_new(model.m, n_ctx, type_id, e.buf)
        if self.kv == NULL:
            raise MemoryError(e.buf.decode()) if b"memory" in e.buf else ValueError(e.buf.decode())
        self.model = model
        self.n_ctx = n_ctx
        self.type_id = type_id

    @property
    def nbytes(self) -> int:
        """bytes held by the keys and values"""
        return 2 * <size_t>self.kv.n_layers * self.kv.n_ctx * self.kv.kv_dim * self.kv.elt

    def copy_prefix_from(self, KVCache src, int n_tokens):
        """Copy src's first n_tokens positions (every layer's keys and values) into this cache."""
        cdef _Err e = _Err()
        if src.model is not self.model:
            raise ValueError("KV cache belongs to another model")
        if pl_kv_copy_prefix(self.kv, src.kv, n_tokens, e.buf):
            raise ValueError(e.buf.decode())

    def __dealloc__(self):
        pl_kv_free(self.kv)


cdef class Runner:
    """Scratch buffers plus the forward call. One Runner must not be used by two threads at once."""
    cdef pl_scratch *s
    cdef CModel model
    cdef object _stats

    def __cinit__(self, CModel model):
        self.s = pl_scratch_new()
        if self.s == NULL:
            raise MemoryError("scratch")
        self.model = model
        self._stats = None

    def collect_stats(self, bint on):
        """Start (zeroed) or stop accumulating per-column sums of squares of every matmul input.
        Returns the float64 array being accumulated (per layer: qkv-in[dim], wo-in[q_dim],
        gate/up-in[dim], down-in[hidden])."""
        cdef double[::1] st
        if on:
            self._stats = np.zeros(pl_stats_len(self.model.m), dtype=np.float64)
            st = self._stats
            pl_scratch_set_stats(self.s, &st[0])
        else:
            pl_scratch_set_stats(self.s, NULL)
        return self._stats

    def __dealloc__(self):
        pl_scratch_free(self.s)

    def forward(self, list caches, tokens, positions, seqs, out_rows, n_threads=0):
        """Run a batch. tokens/positions/seqs: integers per token; out_rows: batch indices whose logits
        are returned as a float32 array (len(out_rows), n_vocab). n_threads: 1..MAX_THREADS, or 0 for
        all the CPUs the process may use."""
        cdef int nth = _check_threads(n_threads, "forward()")
        cdef const int32_t[::1] tok = _int32_array(tokens, "tokens")
        cdef const int32_t[::1] pos = _int32_array(positions, "positions")
        cdef const int32_t[::1] seq = _int32_array(seqs, "seqs")
        cdef const int32_t[::1] outr = _int32_array(out_rows, "out_rows")
        cdef int nt = tok.shape[0], n_kv = len(caches), i, r
        if nt == 0:
            raise ValueError("empty batch")
        if pos.shape[0] != nt or seq.shape[0] != nt:
            raise ValueError("tokens, positions and seqs must have the same length")
        logits = np.empty((outr.shape[0], self.model.n_vocab), dtype=np.float32)
        cdef float[:, ::1] lg = logits
        cdef pl_kv **kvs = <pl_kv **>malloc(max(n_kv, 1) * sizeof(pl_kv *))
        if kvs == NULL:
            raise MemoryError()
        cdef KVCache c
        cdef pl_batch b
        cdef _Err e = _Err()
        try:
            for i in range(n_kv):
                c = caches[i]
                if c.model is not self.model:
                    raise ValueError("KV cache belongs to another model")
                kvs[i] = c.kv
            b.n_tokens = nt
            b.token = &tok[0]
            b.pos = &pos[0]
            b.seq = &seq[0]
            b.n_out = outr.shape[0]
            b.out = &outr[0] if outr.shape[0] else NULL
            with nogil:
                r = pl_forward(self.model.m, self.s, kvs, n_kv, &b, &lg[0, 0] if b.n_out else NULL,
                               nth, e.buf)
        finally:
            free(kvs)
        if r == -5:
            raise MemoryError(e.buf.decode())
        if r:
            raise ValueError(e.buf.decode())
        return logits


# ---------------------------------------------------------------- CUDA (csrc/cuda/, in PYLLM_CUDA builds)
cdef extern from "pl_cuda_build.h" nogil:
    int PL_HAVE_CUDA
    const char *PL_CUDA_NOT_BUILT
    enum: PL_CUDA_NAME_LEN
    ctypedef struct pl_cuda_props:
        char name[PL_CUDA_NAME_LEN]
        int major, minor, sm_count
        size_t total_mem
    ctypedef struct pl_cuda_weight:
        int type
        int64_t ne0, ne1
        size_t nbytes
        void *data
    int pl_cuda_device_count(int *count, char *err)
    int pl_cuda_device_props(int device, pl_cuda_props *p, char *err)
    void pl_cuda_versions(int *runtime, int *driver)
    int pl_cuda_sync(char *err)
    int pl_cuda_alloc(void **dev, size_t nbytes, char *err)
    void pl_cuda_free(void *dev)
    int pl_cuda_to_device(void *dev, const void *host, size_t nbytes, char *err)
    int pl_cuda_to_host(void *host, const void *dev, size_t nbytes, char *err)
    size_t pl_cuda_weight_bytes(int type, int64_t ne0, int64_t ne1)
    int pl_cuda_weight_upload(pl_cuda_weight *w, int type, int64_t ne0, int64_t ne1, const void *host,
                              size_t host_bytes, char *err)
    void pl_cuda_weight_free(pl_cuda_weight *w)
    int pl_cuda_quantize_q8_0(const float *x, int64_t n, void *q, char *err)
    int pl_cuda_quantize_q8_k(const float *x, int64_t n, void *q, char *err)
    size_t pl_cuda_act_bytes(int type, int64_t ne0)
    int pl_cuda_gemv(const pl_cuda_weight *w, const float *x, float *y, void *act, char *err)
    int pl_cuda_gemm(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, char *err)
    int pl_cuda_gemv_time(const pl_cuda_weight *w, const float *x, float *y, void *act, int iters, double *seconds,
                          char *err)
    int pl_cuda_gemm_time(const pl_cuda_weight *w, const float *x, int nt, float *y, void *act, int path, int iters,
                          double *seconds, char *err)
    ctypedef struct pl_cuda_config:
        int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, hidden_dim, max_ctx
        float norm_eps, attn_scale
        int rope_interleaved, sliding_window, qkv_bias, o_bias, qk_norm
    ctypedef struct pl_cuda_model:
        pass
    ctypedef struct pl_cuda_kv:
        pass
    pl_cuda_model *pl_cuda_model_new(const pl_cuda_config *c, const float *rope_cos, const float *rope_sin, char *err)
    int pl_cuda_model_set(pl_cuda_model *m, const char *name, int layer, int type, int64_t ne0, int64_t ne1,
                          const void *host, size_t nbytes, char *err)
    int pl_cuda_model_check(const pl_cuda_model *m, char *err)
    size_t pl_cuda_model_bytes(const pl_cuda_model *m)
    int pl_cuda_model_set_fused(pl_cuda_model *m, int on)
    int pl_cuda_model_set_attention_split(pl_cuda_model *m, int keys, char *err)
    int pl_cuda_model_set_mma_min_tokens(pl_cuda_model *m, int n, char *err)
    void pl_cuda_model_free(pl_cuda_model *m)
    pl_cuda_kv *pl_cuda_kv_new(const pl_cuda_model *m, int n_ctx, int type, char *err)
    void pl_cuda_kv_free(pl_cuda_kv *kv)
    size_t pl_cuda_kv_bytes(const pl_cuda_kv *kv)
    int pl_cuda_kv_copy_prefix(pl_cuda_kv *dst, const pl_cuda_kv *src, int n_tokens, char *err)
    int pl_cuda_forward(pl_cuda_model *m, pl_cuda_kv *const *kvs, int n_kv, int n_tokens, const int32_t *token,
                        const int32_t *pos, const int32_t *seq, int n_out, const int32_t *out, float *logits,
                        char *err)
    int pl_cuda_mma_s8_check(const int8_t *a, const int8_t *b, const int32_t *c, int32_t *d, char *err)

CUDA_NOT_BUILT = PL_CUDA_NOT_BUILT.decode()

def cuda_info() -> dict:
    """What this build and machine offer for CUDA: built (the extension has the kernels), devices (how
    many the runtime sees), error (the runtime's message when it sees none, or why the build has none),
    runtime / driver (CUDA versions, e.g. 13000; 0 when unknown) and, per device, its name, compute
    capability, multiprocessors and memory."""
    cdef int n = 0, rt = 0, drv = 0, i
    cdef _Err e = _Err()
    cdef pl_cuda_props p
    info = {"built": bool(PL_HAVE_CUDA), "devices": 0, "error": None, "runtime": 0, "driver": 0, "device_list": []}
    if not PL_HAVE_CUDA:
        info["error"] = CUDA_NOT_BUILT
        return info
    pl_cuda_versions(&rt, &drv)
    info["runtime"], info["driver"] = rt, drv
    if pl_cuda_device_count(&n, e.buf):
        info["error"] = e.buf.decode()
        return info
    info["devices"] = n
    if n == 0:
        info["error"] = "the CUDA runtime found no device"
    for i in range(n):
        if pl_cuda_device_props(i, &p, e.buf):
            raise RuntimeError(e.buf.decode())
        info["device_list"].append({"name": p.name.decode(errors="replace"), "compute_capability": (p.major, p.minor),
                                    "sm_count": p.sm_count, "total_mem": p.total_mem})
    return info

cdef int _need_cuda_device() except -1:
    info = cuda_info()
    if not info["built"]:
        raise RuntimeError(CUDA_NOT_BUILT)
    if not info["devices"]:
        raise RuntimeError(f"no CUDA device: {info['error']}")
    return 0

cdef class _DeviceBuffer:
    """device memory of nbytes, freed with the object"""
    cdef void *p
    cdef size_t nbytes

    def __cinit__(self, size_t nbytes):
        cdef _Err e = _Err()
        self.p = NULL
        if pl_cuda_alloc(&self.p, nbytes, e.buf):
            raise MemoryError(e.buf.decode())
        self.nbytes = nbytes

    def __dealloc__(self):
        pl_cuda_free(self.p)

cdef _DeviceBuffer _to_device(arr):
    cdef const unsigned char[::1] b = memoryview(arr).cast("B")
    cdef _DeviceBuffer d = _DeviceBuffer(b.shape[0])
    cdef _Err e = _Err()
    if pl_cuda_to_device(d.p, &b[0], b.shape[0], e.buf):
        raise RuntimeError(e.buf.decode())
    return d

cdef _to_host(_DeviceBuffer d, out):
    cdef unsigned char[::1] b = memoryview(out).cast("B")
    cdef _Err e = _Err()
    if <size_t>b.shape[0] > d.nbytes:
        raise ValueError("device buffer smaller than the host array")
    if pl_cuda_to_host(&b[0], d.p, b.shape[0], e.buf):
        raise RuntimeError(e.buf.decode())
    return out

def cuda_quantize_q8_0(x):
    """float32 1-d x (a multiple of 32 values) quantized to Q8_0 on the GPU: (int8 quants, float32 scales),
    which should equal the CPU's scalar Q8_0 rows bit for bit (for tests)."""
    _need_cuda_device()
    a = np.ascontiguousarray(x, dtype=np.float32)
    cdef int64_t n = a.size
    if a.ndim != 1 or n == 0 or n % 32:
        raise ValueError(f"cuda_quantize_q8_0() takes a 1-d float32 array of a multiple of 32 values, got shape {a.shape}")
    cdef _DeviceBuffer dx = _to_device(a)
    cdef _DeviceBuffer dq = _DeviceBuffer(n + (n // 32) * 4)
    cdef _Err e = _Err()
    if pl_cuda_quantize_q8_0(<const float *>dx.p, n, dq.p, e.buf) or pl_cuda_sync(e.buf):
        raise RuntimeError(e.buf.decode())
    raw = _to_host(dq, np.empty(n + (n // 32) * 4, dtype=np.uint8))
    return raw[:n].view(np.int8).copy(), raw[n:].view(np.float32).copy()

def cuda_quantize_q8_k(x):
    """float32 1-d x (a multiple of 256 values) quantized to Q8_K on the GPU: (int8 quants, float32 scales,
    int16 sums of each 16 quants), which should equal the CPU's scalar Q8_K blocks bit for bit (for tests)."""
    _need_cuda_device()
    a = np.ascontiguousarray(x, dtype=np.float32)
    cdef int64_t n = a.size
    if a.ndim != 1 or n == 0 or n % 256:
        raise ValueError(f"cuda_quantize_q8_k() takes a 1-d float32 array of a multiple of 256 values, got shape {a.shape}")
    cdef size_t nbytes = n + (n // 256) * 4 + (n // 16) * 2
    cdef _DeviceBuffer dx = _to_device(a)
    cdef _DeviceBuffer dq = _DeviceBuffer(nbytes)
    cdef _Err e = _Err()
    if pl_cuda_quantize_q8_k(<const float *>dx.p, n, dq.p, e.buf) or pl_cuda_sync(e.buf):
        raise RuntimeError(e.buf.decode())
    raw = _to_host(dq, np.empty(nbytes, dtype=np.uint8))
    cdef int64_t o = n + (n // 256) * 4
    return raw[:n].view(np.int8).copy(), raw[n:o].view(np.float32).copy(), raw[o:].view(np.int16).copy()

def cuda_mma_s8_m16n8k32(a, b, c):
    """D = A B + C by one tensor-core mma.m16n8k32 (.s8) in one warp on the GPU, for tests: a 16x32 int8,
    b 32x8 int8, c 16x8 int32 (row-major arrays); returns d, 16x8 int32 (the sums wrap as int32 does)."""
    _need_cuda_device()
    ca = np.ascontiguousarray(a)
    cb = np.ascontiguousarray(b)
    cc = np.ascontiguousarray(c)
    if ca.dtype != np.int8 or ca.shape != (16, 32) or cb.dtype != np.int8 or cb.shape != (32, 8) \
            or cc.dtype != np.int32 or cc.shape != (16, 8):
        raise ValueError(f"cuda_mma_s8_m16n8k32() takes int8 16x32, int8 32x8 and int32 16x8 arrays, got "
                         f"{ca.dtype} {ca.shape}, {cb.dtype} {cb.shape}, {cc.dtype} {cc.shape}")
    d = np.empty((16, 8), dtype=np.int32)
    cdef const int8_t[:, ::1] va = ca
    cdef const int8_t[:, ::1] vb = cb
    cdef const int32_t[:, ::1] vc = cc
    cdef int32_t[:, ::1] vd = d
    cdef _Err e = _Err()
    if pl_cuda_mma_s8_check(&va[0, 0], &vb[0, 0], &vc[0, 0], &vd[0, 0], e.buf):
        raise RuntimeError(e.buf.decode())
    return d

# CudaWeight.gemm's path names (pl_cuda.h's PL_CUDA_PATH_*), and the weight types with a tensor-core kernel
_CUDA_GEMM_PATHS = {"auto": 0, "gemv": 1, "mma": 2}
_CUDA_MMA_TYPES = (2, 8, 12, 13, 14)  # Q4_0, Q8_0, Q4_K, Q5_K, Q6_K

cdef class CudaWeight:
    """A weight matrix uploaded to the GPU once (F32, F16, BF16, Q4_0, Q8_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or
    Q6_K rows as pyllm stores them: ne1 rows of ne0 elements), and decode's y = W x on it (gemv)."""
    cdef pl_cuda_weight w
    cdef readonly int type_id
    cdef readonly int64_t ne0, ne1

    def __cinit__(self, int type_id, int64_t ne0, int64_t ne1, data):
        cdef _Err e = _Err()
        self.w.data = NULL
        _need_cuda_device()
        cdef const unsigned char[::1] b = memoryview(data).cast("B")
        cdef const void *host = &b[0] if b.shape[0] else NULL
        cdef size_t nb = b.shape[0]
        cdef int r
        with nogil:
            r = pl_cuda_weight_upload(&self.w, type_id, ne0, ne1, host, nb, e.buf)
        if r:
            raise ValueError(e.buf.decode())
        self.type_id, self.ne0, self.ne1 = type_id, ne0, ne1

    def __dealloc__(self):
        pl_cuda_weight_free(&self.w)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def _buffers(self, x, str what):
        """x on the device, room for y, and the activation scratch the type needs (None for F16 / BF16)"""
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.ndim != 1 or a.size != self.ne0:
            raise ValueError(f"{what}() takes {self.ne0} float32 values, got shape {a.shape}")
        cdef size_t ab = pl_cuda_act_bytes(self.type_id, self.ne0)
        return _to_device(a), _DeviceBuffer(<size_t>self.ne1 * 4), (_DeviceBuffer(ab) if ab else None)

    def _gemm_buffers(self, x, str what):
        """nt, and the nt rows of x on the device, room for y, the activation scratch (None for float types)"""
        a = np.ascontiguousarray(x, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != self.ne0 or a.shape[0] < 1 or a.shape[0] > 1 << 20:
            raise ValueError(f"{what}() takes a float32 array of shape (nt, {self.ne0}), nt >= 1, got shape {a.shape}")
        cdef int nt = a.shape[0]
        cdef size_t ab = pl_cuda_act_bytes(self.type_id, self.ne0)
        return (nt, _to_device(a.reshape(-1)), _DeviceBuffer(<size_t>self.ne1 * nt * 4),
                (_DeviceBuffer(ab * nt) if ab else None))

    cdef int _path(self, path, str what) except -1:
        """pl_cuda_gemm's path id of "auto" / "gemv" / "mma"; a ValueError for another name, or "mma" on a type
        without a tensor-core kernel"""
        if not isinstance(path, str) or path not in _CUDA_GEMM_PATHS:
            raise ValueError(f"{what}(): path must be 'auto', 'gemv' or 'mma', got {path!r}")
        if path == "mma" and self.type_id not in _CUDA_MMA_TYPES:
            from .gguf_file import type_name
            raise ValueError(f"{what}(path='mma'): {type_name(self.type_id)} weights have no "
                             f"tensor-core kernel (Q4_0, Q8_0, Q4_K, Q5_K and Q6_K have)")
        return _CUDA_GEMM_PATHS[path]

    def gemv(self, x):
        """y = W x for one float32 vector x of ne0 values, on the GPU (the 32-weight block types: x quantized
        to Q8_0 there first, the K-quants to Q8_K, as the CPU path does); returns ne1 float32 values."""
        cdef _DeviceBuffer dx, dy, dact
        dx, dy, dact = self._buffers(x, "gemv")
        cdef _Err e = _Err()
        cdef void *act = dact.p if dact is not None else NULL
        cdef int r
        with nogil:
            r = pl_cuda_gemv(&self.w, <const float *>dx.p, <float *>dy.p, act, e.buf)
            if r == 0:
                r = pl_cuda_sync(e.buf)
        if r:
            raise RuntimeError(e.buf.decode())
        return _to_host(dy, np.empty(self.ne1, dtype=np.float32))

    def gemm(self, x, *, path="auto"):
        """Y = X W^T for a float32 array X of nt rows of ne0 values (row t of Y: W times row t of X), on the
        GPU; returns (nt, ne1). path "auto": the batched GEMV, or from 16 rows of Q4_0 / Q8_0 / Q4_K / Q5_K /
        Q6_K the tensor cores; "gemv": the batched GEMV for any nt; "mma": the tensor cores for any nt (a
        ValueError for a type without a tensor-core kernel)."""
        cdef _DeviceBuffer dx, dy, dact
        cdef int nt
        nt, dx, dy, dact = self._gemm_buffers(x, "gemm")
        cdef int cpath = self._path(path, "gemm")
        cdef void *act = dact.p if dact is not None else NULL
        cdef _Err e = _Err()
        cdef int r
        with nogil:
            r = pl_cuda_gemm(&self.w, <const float *>dx.p, nt, <float *>dy.p, act, cpath, e.buf)
            if r == 0:
                r = pl_cuda_sync(e.buf)
        if r:
            raise RuntimeError(e.buf.decode())
        return _to_host(dy, np.empty(self.ne1 * nt, dtype=np.float32)).reshape(nt, self.ne1)

    def time_gemv(self, x, int iters=100) -> float:
        """seconds per gemv on the device (CUDA events around iters back-to-back calls after 3 warm-ups;
        the host and the copies of x and y not included), for bench/bench_cuda_gemv.py"""
        cdef _DeviceBuffer dx, dy, dact
        if not 1 <= iters <= 1000000:
            raise ValueError(f"time_gemv(): iters must be in 1..1000000, got {iters}")
        dx, dy, dact = self._buffers(x, "time_gemv")
        cdef _Err e = _Err()
        cdef double sec = 0
        cdef void *act = dact.p if dact is not None else NULL
        cdef int r
        with nogil:
            r = pl_cuda_gemv_time(&self.w, <const float *>dx.p, <float *>dy.p, act, iters, &sec, e.buf)
        if r:
            raise RuntimeError(e.buf.decode())
        return sec

    def time_gemm(self, x, int iters=100, *, path="auto") -> float:
        """seconds per gemm of the nt rows of x (as gemm(), path included) on the device, timed as time_gemv:
        what a prefill matmul costs, for bench/bench_cuda_gemv.py"""
        cdef _DeviceBuffer dx, dy, dact
        cdef int nt
        nt, dx, dy, dact = self._gemm_buffers(x, "time_gemm")
        if not 1 <= iters <= 1000000:
            raise ValueError(f"time_gemm(): iters must be in 1..1000000, got {iters}")
        cdef int cpath = self._path(path, "time_gemm")
        cdef void *act = dact.p if dact is not None else NULL
        cdef _Err e = _Err()
        cdef double sec = 0
        cdef int r
        with nogil:
            r = pl_cuda_gemm_time(&self.w, <const float *>dx.p, nt, <float *>dy.p, act, cpath, iters, &sec, e.buf)
        if r:
            raise RuntimeError(e.buf.decode())
        return sec


# the per-layer tensors a dense model has on the GPU, in pl_layer's order
_CUDA_LAYER_TENSORS = ("attn_norm", "wq", "wk", "wv", "bq", "bk", "bv", "q_norm", "k_norm", "wo", "bo", "ffn_norm",
                       "ffn_gate", "ffn_up", "ffn_down")

cdef pl_tensor *_layer_tensor(pl_layer *L, int i) noexcept:
    cdef pl_tensor *ts[15]
    ts[:] = [&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.bq, &L.bk, &L.bv, &L.q_norm, &L.k_norm, &L.wo, &L.bo,
             &L.ffn_norm, &L.ffn_gate, &L.ffn_up, &L.ffn_down]
    return ts[i]

cdef class CudaModel:
    """A finalized CModel's weights on the GPU (uploaded once, in the types the CPU model holds them) and
    the whole forward there (csrc/cuda/forward.cu). The CModel must have been finalized with
    repack=False (pyllm.load(device="cuda") does), so every weight is still in its source layout."""
    cdef pl_cuda_model *m
    cdef readonly CModel cmodel
    cdef readonly int n_vocab

    def __cinit__(self, CModel cmodel):
        cdef _Err e = _Err()
        cdef pl_model *cm = cmodel.m
        cdef pl_config *c = &cm.cfg
        cdef pl_cuda_config cc
        cdef pl_tensor *t
        cdef int l, i, r
        self.m = NULL
        _need_cuda_device()
        if not cm.finalized:
            raise ValueError("CudaModel: the CPU model is not finalized")
        if c.n_expert > 0:
            raise ValueError(f"device='cuda': mixture-of-experts layers ({c.n_expert} experts) have no GPU kernels "
                             f"yet: use device='cpu'")
        if c.rope_long_after > 0:
            raise ValueError("device='cuda': LongRoPE (Phi-3 long-context rope scaling) has no GPU kernels yet: "
                             "use device='cpu'")
        cc.n_vocab = c.n_vocab; cc.dim = c.dim; cc.n_layers = c.n_layers; cc.n_heads = c.n_heads
        cc.n_kv_heads = c.n_kv_heads; cc.head_dim = c.head_dim; cc.hidden_dim = c.hidden_dim
        cc.max_ctx = c.max_ctx; cc.norm_eps = c.norm_eps; cc.attn_scale = cm.attn_scale
        cc.rope_interleaved = c.rope_interleaved; cc.sliding_window = c.sliding_window
        cc.qkv_bias = c.qkv_bias; cc.o_bias = c.o_bias; cc.qk_norm = c.qk_norm
        self.m = pl_cuda_model_new(&cc, cm.rope_cos, cm.rope_sin, e.buf)
        if self.m == NULL:
            raise RuntimeError(e.buf.decode())
        self.cmodel = cmodel
        self.n_vocab = c.n_vocab
        self._upload(b"tok_embd", -1, &cm.tok_embd)
        self._upload(b"output", -1, &cm.output)
        self._upload(b"output_norm", -1, &cm.output_norm)
        for l in range(c.n_layers):
            for i in range(15):
                t = _layer_tensor(&cm.layers[l], i)
                if t.data != NULL or t.f32 != NULL:
                    self._upload(_CUDA_LAYER_TENSORS[i].encode(), l, t)
        if pl_cuda_model_check(self.m, e.buf):
            raise ValueError(e.buf.decode())

    cdef _upload(self, bytes name, int layer, pl_tensor *t):
        cdef _Err e = _Err()
        cdef int r
        cdef const char *cname = name
        where = f"{name.decode()}" + (f" (layer {layer})" if layer >= 0 else "")
        if t.lora_rank > 0:
            raise ValueError(f"device='cuda': {where} keeps an unmerged LoRA adapter, which has no GPU kernels yet: "
                             f"use device='cpu'")
        if t.ne1 == 1 and t.f32 != NULL:  # norms and biases: the fp32 copy finalize made
            with nogil:
                r = pl_cuda_model_set(self.m, cname, layer, 0, t.ne0, 1, t.f32, <size_t>t.ne0 * 4, e.buf)
        else:
            if t.packed != NULL or t.data == NULL:
                raise ValueError(f"CudaModel: {where} was repacked for the CPU (finalize(repack=False) keeps the "
                                 f"source layout the GPU reads)")
            with nogil:
                r = pl_cuda_model_set(self.m, cname, layer, t.type, t.ne0, t.ne1, t.data, t.row_bytes * <size_t>t.ne1,
                                      e.buf)
        if r:
            raise ValueError(e.buf.decode())

    def __dealloc__(self):
        pl_cuda_model_free(self.m)

    @property
    def nbytes(self) -> int:
        """device bytes of the weights and rope tables"""
        return pl_cuda_model_bytes(self.m)

    @property
    def fused(self) -> bool:
        """fused launches (default True): norms and attention also write the next matmul's Q8_0 input, and a
        decode step's q / k / v and gate / up + SwiGLU are one launch each. The same results either way;
        False only to measure what fusing saves."""
        return bool(pl_cuda_model_set_fused(self.m, -1))

    @fused.setter
    def fused(self, on):
        pl_cuda_model_set_fused(self.m, 1 if on else 0)

    @property
    def attention_split(self) -> int:
        """keys per split of the decode attention (default 256): a power of two from 32 to 256. Fewer keys
        give a short context's decode step more blocks at once; the results agree up to fp32 summation order."""
        return pl_cuda_model_set_attention_split(self.m, -1, NULL)

    @attention_split.setter
    def attention_split(self, keys):
        cdef _Err e = _Err()
        if pl_cuda_model_set_attention_split(self.m, operator.index(keys), e.buf) < 0:
            raise ValueError(e.buf.decode())

    @property
    def mma_min_tokens(self) -> int:
        """tokens from which a forward's quantized matmuls (Q4_0 / Q8_0 / Q4_K / Q5_K / Q6_K) run on the tensor
        cores rather than the batched GEMV (default 16), and below which q / k / v and gate / up take the fused
        launches: 1 to 1 << 20 (that many: never the tensor cores). For measuring the crossover; the results
        agree up to fp32 summation order."""
        return pl_cuda_model_set_mma_min_tokens(self.m, -1, NULL)

    @mma_min_tokens.setter
    def mma_min_tokens(self, n):
        cdef _Err e = _Err()
        n = operator.index(n)
        if not 1 <= n <= 1 << 20:
            raise ValueError(f"mma_min_tokens: {n}; from 1 to {1 << 20} (that many: never the tensor cores)")
        if pl_cuda_model_set_mma_min_tokens(self.m, n, e.buf) < 0:
            raise ValueError(e.buf.decode())

    def forward(self, list caches, tokens, positions, seqs, out_rows, n_threads=0):
        """Runner.forward's contract on the GPU: caches are CudaKVCache objects of this model; returns the
        logits of out_rows as a float32 array (len(out_rows), n_vocab). n_threads is ignored."""
        cdef const int32_t[::1] tok = _int32_array(tokens, "tokens")
        cdef const int32_t[::1] pos = _int32_array(positions, "positions")
        cdef const int32_t[::1] seq = _int32_array(seqs, "seqs")
        cdef const int32_t[::1] outr = _int32_array(out_rows, "out_rows")
        cdef int nt = tok.shape[0], n_kv = len(caches), i, r, n_out = outr.shape[0]
        if nt == 0:
            raise ValueError("empty batch")
        if pos.shape[0] != nt or seq.shape[0] != nt:
            raise ValueError("tokens, positions and seqs must have the same length")
        logits = np.empty((n_out, self.n_vocab), dtype=np.float32)
        cdef float[:, ::1] lg = logits
        cdef pl_cuda_kv **kvs = <pl_cuda_kv **>malloc(max(n_kv, 1) * sizeof(pl_cuda_kv *))
        if kvs == NULL:
            raise MemoryError()
        cdef CudaKVCache c
        cdef _Err e = _Err()
        try:
            for i in range(n_kv):
                c = caches[i]
                if c.model is not self:
                    raise ValueError("KV cache belongs to another model")
                kvs[i] = c.kv
            with nogil:
                r = pl_cuda_forward(self.m, kvs, n_kv, nt, &tok[0], &pos[0], &seq[0], n_out,
                                    &outr[0] if n_out else NULL, &lg[0, 0] if n_out else NULL, e.buf)
        finally:
            free(kvs)
        if r:
            msg = e.buf.decode()
            raise MemoryError(msg) if "out of memory" in msg else ValueError(msg)
        return logits


cdef class CudaKVCache:
    """One sequence's keys and values on the GPU, n_ctx positions per layer (type_id 0: f32, 1: f16)."""
    cdef pl_cuda_kv *kv
    cdef readonly int n_ctx
    cdef readonly int type_id
    cdef readonly CudaModel model

    def __cinit__(self, CudaModel model, int n_ctx, int type_id=0):
        cdef _Err e = _Err()
        self.kv = pl_cuda_kv_new(model.m, n_ctx, type_id, e.buf)
        if self.kv == NULL:
            msg = e.buf.decode()
            raise MemoryError(msg) if "out of memory" in msg else ValueError(msg)
        self.model = model
        self.n_ctx = n_ctx
        self.type_id = type_id

    @property
    def nbytes(self) -> int:
        """device bytes held by the keys and values"""
        return pl_cuda_kv_bytes(self.kv)

    def copy_prefix_from(self, CudaKVCache src, int n_tokens):
        """Copy src's first n_tokens positions (every layer's keys and values) into this cache."""
        cdef _Err e = _Err()
        if src.model is not self.model:
            raise ValueError("KV cache belongs to another model")
        if pl_cuda_kv_copy_prefix(self.kv, src.kv, n_tokens, e.buf):
            raise ValueError(e.buf.decode())

    def __dealloc__(self):
        pl_cuda_kv_free(self.kv)
