/* cpu_dispatch.c: picks the kernel table at run time. On first use it reads PYLLM_ISA
 * (scalar|avx2|avx512) or else takes the best ISA this CPU and build support. */
#include <stdlib.h>
#include <string.h>

#include "tensor_types.h"

/* PYLLM_X86_SIMD is set by the build when the AVX2/AVX-512 files are compiled in */
#if defined(PYLLM_X86_SIMD) && (defined(__x86_64__) || defined(_M_X64))
#define PL_X86 1
#endif

static pl_kernels g_tables[3];
static int g_tables_ready = 0;
static const pl_kernels *g_active = NULL;

static void build_tables(void) {
    if (g_tables_ready) return;
    pl_kernels_init_scalar(&g_tables[0]);
#ifdef PL_X86
    /* only tables this CPU can run are built (the rest stay zeroed and are never selected) */
    if (pl_isa_supported("avx2")) pl_kernels_init_avx2(&g_tables[1]);
    if (pl_isa_supported("avx512")) pl_kernels_init_avx512(&g_tables[2]);
#endif
    g_tables_ready = 1;
}

int pl_isa_supported(const char *name) {
    if (!name) return 0;
    if (strcmp(name, "scalar") == 0) return 1;
#ifdef PL_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    return 0;
}

int pl_set_isa(const char *name) {
    build_tables();
    int idx;
    if (strcmp(name, "scalar") == 0) idx = 0;
    else if (strcmp(name, "avx2") == 0) idx = 1;
    else if (strcmp(name, "avx512") == 0) idx = 2;
    else return -1;
    if (!pl_isa_supported(name)) return -2;
    g_active = &g_tables[idx];
    return 0;
}

const pl_kernels *pl_kernels_active(void) {
    if (g_active) return g_active;
    const char *env = getenv("PYLLM_ISA");
    if (env && *env && pl_set_isa(env) == 0) return g_active;
    /* An unusable PYLLM_ISA falls through to the best available; the Python layer reports it. */
    if (pl_set_isa("avx512") != 0 && pl_set_isa("avx2") != 0) pl_set_isa("scalar");
    return g_active;
}

int pl_type_valid(int t) {
    return t == PL_TYPE_F32 || t == PL_TYPE_F16 || t == PL_TYPE_BF16 || t == PL_TYPE_Q8_0 || t == PL_TYPE_Q4_0;
}

size_t pl_type_row_bytes(pl_type t, int64_t n) {
    if (!pl_type_valid((int)t) || n < 0) return 0;
    build_tables();
    const pl_type_traits *tt = &g_tables[0].types[t];
    if (n % tt->blck) return 0;
    return (size_t)(n / tt->blck) * tt->blck_bytes;
}
