/* cpu_dispatch.c: picks the kernel table at run time. On first use it reads PYLLM_ISA
 * (scalar|avx2|avx512|neon|neon-dotprod|neon-i8mm) or else takes the best ISA this CPU and build
 * support: x86-64 from CPUID; aarch64 from the kernel's HWCAP bits (Linux: getauxval, dot product in
 * AT_HWCAP, i8mm in AT_HWCAP2) or sysctl (macOS: hw.optional.arm.FEAT_DotProd / FEAT_I8MM).
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
/* PYLLM_NEON is set by the build when kernels_neon*.c are compiled in (aarch64); PYLLM_NEON_I8MM when
 * the compiler could build the i8mm file too */
#if defined(PYLLM_NEON) && (defined(__aarch64__) || defined(_M_ARM64))
#define PL_NEON 1
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef AT_HWCAP2 /* C libraries older than Linux 3.15's second HWCAP word */
#define AT_HWCAP2 26
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
/* kernels_neon.c: Advanced SIMD (any Armv8-A), plus Armv8.2 dot products, plus i8mm (FEAT_I8MM) */
void pl_kernels_init_neon(pl_kernels *k);
void pl_kernels_init_neon_dotprod(pl_kernels *k);
void pl_kernels_init_neon_i8mm(pl_kernels *k);
#endif

enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512, ISA_NEON, ISA_NEON_DOTPROD, ISA_NEON_I8MM, N_ISA };
static const char *const g_names[N_ISA] = {"scalar", "avx2", "avx512", "neon", "neon-dotprod", "neon-i8mm"};
/* the automatic choice: the first of these this CPU and build support */
static const int g_preference[N_ISA] = {ISA_AVX512, ISA_AVX2, ISA_NEON_I8MM, ISA_NEON_DOTPROD, ISA_NEON, ISA_SCALAR};

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

#if defined(PL_NEON) && defined(__APPLE__)
static int apple_feature(const char *name) {
    int v = 0;
    size_t len = sizeof(v);
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v == 1;
}
#endif

/* what the CPU offers (and the build has compiled in) */
static int cpu_supports(int idx) {
    if (idx == ISA_SCALAR) return 1;
#ifdef PL_NEON
    /* Advanced SIMD is part of every AArch64 CPU; dotprod is Armv8.2's optional FEAT_DotProd, i8mm
     * FEAT_I8MM (the neon-i8mm table also uses dot products) */
    if (idx == ISA_NEON) return 1;
#if defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    const int dot = (hw & HWCAP_ASIMDDP) != 0, i8mm = (hw2 & HWCAP2_I8MM) != 0;
#elif defined(__APPLE__)
    const int dot = apple_feature("hw.optional.arm.FEAT_DotProd"), i8mm = apple_feature("hw.optional.arm.FEAT_I8MM");
#else
    const int dot = 0, i8mm = 0;
#endif
    if (idx == ISA_NEON_DOTPROD) return dot;
#ifdef PYLLM_NEON_I8MM
    if (idx == ISA_NEON_I8MM) return dot && i8mm;
#else
    (void)i8mm;
#endif
#endif
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
#ifdef PL_NEON
        if (g_supported[ISA_NEON]) pl_kernels_init_neon(&g_tables[ISA_NEON]);
        if (g_supported[ISA_NEON_DOTPROD]) pl_kernels_init_neon_dotprod(&g_tables[ISA_NEON_DOTPROD]);
#ifdef PYLLM_NEON_I8MM
        if (g_supported[ISA_NEON_I8MM]) pl_kernels_init_neon_i8mm(&g_tables[ISA_NEON_I8MM]);
#endif
#endif
        /* An unusable PYLLM_ISA falls through to the best available; the Python layer reports it. */
        int pick = isa_index(getenv("PYLLM_ISA"));
        if (pick < 0 || !g_supported[pick]) {
            pick = ISA_SCALAR;
            for (int i = 0; i < N_ISA; i++)
                if (g_supported[g_preference[i]]) {
                    pick = g_preference[i];
                    break;
                }
        }
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
