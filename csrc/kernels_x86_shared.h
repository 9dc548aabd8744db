/* kernels_x86_shared.h: what kernels_avx2.c and kernels_avx512.c share whatever their vector width:
 * the inlining / unrolling macros, the baseline target of the table init functions, the scalar Q8_0
 * block used for a block holding a NaN, and the q8x activation row offsets of the packed Q4_0 / Q8_0
 * gemms. (They also share kquant_dots_avx2.h, and kquant_packed_simd.h over their own vector ops.) */
#ifndef PYLLM_KERNELS_X86_SHARED_H
#define PYLLM_KERNELS_X86_SHARED_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tensor_types.h"

#define AI static inline __attribute__((always_inline))
#define UNROLL _Pragma("GCC unroll 16")

/* cpu_dispatch.c builds every table on any CPU, so the init functions themselves must not use their
 * file's ISA (the compiler would otherwise vectorize the pointer stores with AVX/AVX-512). */
#if defined(__GNUC__) && !defined(__clang__)
#define PL_BASELINE_FN __attribute__((target("arch=x86-64")))
#else
#define PL_BASELINE_FN
#endif

/* A block holding a NaN takes the scalar reference's own code: glibc's fmaxf turns a signalling NaN
 * into a quiet NaN that resets the running max, an order-dependent rule the vector max cannot mimic. */
static void q8_0_block_ref(const float *xb, uint8_t *y) {
    float amax = 0.0f;
    for (int j = 0; j < PL_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = pl_fp32_to_fp16(d);
    memcpy(y, &dh, 2);
    for (int j = 0; j < PL_QK; j++) y[2 + j] = (uint8_t)(int8_t)roundf(xb[j] * id);
}

/* packed Q4_0 / Q8_0: which type a kernel is instantiated for, and the offsets of the d and correction
 * arrays in a q8x activation row (tensor_types.h) */
enum { QT_q4_0 = 0, QT_q8_0 = 1 };
#define Q8B ((int)sizeof(pl_block_q8_0))
AI size_t pk_d_off(int nb) { return pl_round64((size_t)nb * Q8B); }
AI size_t pk_c_off(const int qt, int nb) { return pk_d_off(nb) + (qt == QT_q4_0 ? 1 : 2) * pl_round64((size_t)nb * 4); }

#endif
