/* legacy_packed_avx512.c: the AVX-512 VNNI packed gemms of Q4_1 / Q5_0 / Q5_1 / IQ4_NL:
 * legacy_packed_simd.h over one zmm per 16-row vector. vpdpbusd adds the 4 u8 x s8 products of a lane
 * exactly (weights < 32; IQ4_NL's table values + 128 < 256 from one vpshufb of the biased table).
 * Compiled with the AVX-512 flags of kernels_avx512.c; pl_kernels_init_avx512 calls the register
 * function. Empty on other processors. */
#if defined(PYLLM_X86_SIMD) && (defined(__x86_64__) || defined(_M_X64))
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels_x86_shared.h"
#include "tensor_types.h"
#include "zmm_lanes.h"

#define LV_LANES 16
#define LV_MAXC 6 /* as the packed Q4_0 tiles: more activation rows per pass spill registers */
typedef __m512i lv_i;
typedef __m512 lv_f;
AI lv_i lv_load(const uint8_t *p) { return _mm512_load_si512((const void *)p); }
AI lv_i lv_set1(int32_t x) { return _mm512_set1_epi32(x); }
AI lv_i lv_and(lv_i a, lv_i b) { return _mm512_and_si512(a, b); }
AI lv_i lv_srli16(lv_i a, const int k) { return _mm512_srli_epi16(a, k); }
AI lv_i lv_slli16(lv_i a, const int k) { return _mm512_slli_epi16(a, k); }
AI lv_i lv_or_and(lv_i a, lv_i b, lv_i m) { return _mm512_ternarylogic_epi32(a, b, m, 0xF8); }
AI lv_i lv_bcast32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}
/* two vpdpbusd chains (even / odd vectors) */
AI lv_i lv_dot(const lv_i *w, const uint8_t *q8, int32_t init, const int wbits) {
    (void)wbits;
    lv_i a0 = _mm512_set1_epi32(init), a1 = _mm512_setzero_si512();
    UNROLL for (int v = 0; v < 8; v += 2) {
        a0 = _mm512_dpbusd_epi32(a0, w[v], lv_bcast32(q8 + 4 * v));
        a1 = _mm512_dpbusd_epi32(a1, w[v + 1], lv_bcast32(q8 + 4 * v + 4));
    }
    return _mm512_add_epi32(a0, a1);
}
AI lv_i lv_dot_nl(const lv_i *x, const uint8_t *q8, int32_t init) {
    const lv_i table = _mm512_broadcast_i32x4(
        _mm_xor_si128(_mm_loadu_si128((const __m128i *)pl_iq4nl_values), _mm_set1_epi8((char)0x80))); /* value + 128 */
    lv_i w[8];
    UNROLL for (int v = 0; v < 8; v++) w[v] = _mm512_shuffle_epi8(table, x[v]);
    return lv_dot(w, q8, init, 8);
}
#define lv_fp16 zmm_load_fp16 /* the fp32 ops: zmm_lanes.h */
#define lv_cvt zmm_from_i32
#define lv_fset1 zmm_set1
#define lv_fadd zmm_add
#define lv_fmul zmm_mul
#define lv_store zmm_store_rows
#include "legacy_packed_simd.h"

PL_BASELINE_FN void pl_kernels_add_packed_legacy_avx512(pl_kernels *k) { lp_register(k); }
#endif
