/* cpu_dispatch.c: picks the kernel table at run time. On first use it reads PYLLM_ISA
 * (scalar|avx2|avx512) or else takes the best ISA this CPU and build support.
 * Thread safety: the tables are built exactly once (the first caller builds them, any concurrent
 * caller waits for it), and the active table is an atomic pointer, so pl_set_isa may run while a
 * forward runs on other threads. Whoever needs one ISA throughout a computation reads
 * pl_kernels_active() once and keeps the pointer (pl_forward does: every matmul and attention call of
 * one forward gets that table); the tables themselves are never changed or freed once built. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tensor_types.h"

/* PYLLM_X86_SIMD is set by the build when the AVX2/AVX-512 files are compiled in */
#if defined(PYLLM_X86_SIMD) && (defined(__x86_64__) || defined(_M_X64))
#define PL_X86 1
#endif

enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512, N_ISA };
static const char *const g_names[N_ISA] = {"scalar", "avx2", "avx512"};

static pl_kernels g_tables[N_ISA];
static int g_supported[N_ISA];
static atomic_int g_state = 0; /* 0: not built, 1: being built, 2: ready */
static _Atomic(const pl_kernels *) g_active = NULL;

static int isa_index(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < N_ISA; i++)
        if (strcmp(name, g_names[i]) == 0) return i;
    return -1;
}

/* what the CPU offers (and the build has compiled in) */
static int cpu_supports(int idx) {
    if (idx == ISA_SCALAR) return 1;
#ifdef PL_X86
    __builtin_cpu_init();
    if (idx == ISA_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (idx == ISA_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return 0;
}

/* builds the tables and picks the first active one (PYLLM_ISA if usable, else the best), once */
static void ensure_init(void) {
    if (atomic_load_explicit(&g_state, memory_order_acquire) == 2) return;
    int expected = 0;
    if (atomic_compare_exchange_strong_explicit(&g_state, &expected, 1, memory_order_acq_rel, memory_order_acquire)) {
        for (int i = 0; i < N_ISA; i++) g_supported[i] = cpu_supports(i);
        pl_kernels_init_scalar(&g_tables[ISA_SCALAR]);
#ifdef PL_X86
        /* only tables this CPU can run are built (the rest stay zeroed and are never selected) */
        if (g_supported[ISA_AVX2]) pl_kernels_init_avx2(&g_tables[ISA_AVX2]);
        if (g_supported[ISA_AVX512]) pl_kernels_init_avx512(&g_tables[ISA_AVX512]);
#endif
        /* An unusable PYLLM_ISA falls through to the best available; the Python layer reports it. */
        int pick = isa_index(getenv("PYLLM_ISA"));
        if (pick < 0 || !g_supported[pick]) pick = g_supported[ISA_AVX512] ? ISA_AVX512 : g_supported[ISA_AVX2] ? ISA_AVX2 : ISA_SCALAR;
        atomic_store_explicit(&g_active, &g_tables[pick], memory_order_release);
        atomic_store_explicit(&g_state, 2, memory_order_release);
        return;
    }
    /* another thread is building them (a few microseconds) */
    while (atomic_load_explicit(&g_state, memory_order_acquire) != 2) {
    }
}

int pl_isa_supported(const char *name) {
    const int idx = isa_index(name);
    if (idx < 0) return 0;
    ensure_init();
    return g_supported[idx];
}

int pl_set_isa(const char *name) {
    const int idx = isa_index(name);
    if (idx < 0) return -1;
    ensure_init();
    if (!g_supported[idx]) return -2;
    atomic_store_explicit(&g_active, &g_tables[idx], memory_order_release);
    return 0;
}

const pl_kernels *pl_kernels_active(void) {
    ensure_init();
    return atomic_load_explicit(&g_active, memory_order_acquire);
}

int pl_type_valid(int t) {
    switch (t) {
    case PL_TYPE_F32: case PL_TYPE_F16: case PL_TYPE_BF16: case PL_TYPE_Q8_0: case PL_TYPE_Q4_0:
    case PL_TYPE_Q4_1: case PL_TYPE_Q5_0: case PL_TYPE_Q5_1: case PL_TYPE_IQ4_NL: case PL_TYPE_Q2_K:
    case PL_TYPE_Q3_K: case PL_TYPE_Q4_K: case PL_TYPE_Q5_K: case PL_TYPE_Q6_K: case PL_TYPE_IQ4_XS: case PL_TYPE_Q8_K:
        return 1;
    default:
        return 0;
    }
}

/* 0 if t is unknown, n is negative or not whole blocks, or the byte count does not fit a size_t */
size_t pl_type_row_bytes(pl_type t, int64_t n) {
    if (!pl_type_valid((int)t) || n < 0) return 0;
    ensure_init();
    const pl_type_traits *tt = &g_tables[ISA_SCALAR].types[t];
    if (n % tt->blck) return 0;
    const uint64_t nb = (uint64_t)(n / tt->blck);
    if (nb > SIZE_MAX / tt->blck_bytes) return 0;
    return (size_t)nb * tt->blck_bytes;
}
