/* legacy_packed_avx2.c: the AVX2 packed gemms of Q4_1 / Q5_0 / Q5_1 / IQ4_NL: legacy_packed_simd.h over
 * one ymm per 8 rows. vpmaddubsw products are summed in int16 only as far as they cannot overflow (8
 * vectors of 4-bit weights, 4 of 5-bit: pair sums <= 2 x 31 x 128), then widened by vpmaddwd; IQ4_NL's
 * table values + 128 are looked up as two nibble tables (16 x high + low), so every product is exact
 * for any int8 activation (-128 too). Compiled with -mavx2 -mfma -mf16c; pl_kernels_init_avx2 calls
 * the register function. Empty on other processors. */
#if defined(PYLLM_X86_SIMD) && (defined(__x86_64__) || defined(_M_X64))
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels_x86_shared.h"
#include "tensor_types.h"
#include "ymm_lanes.h"

#define LV_LANES 8
#define LV_MAXC 4 /* as the packed Q4_0 tiles */
typedef __m256i lv_i;
typedef __m256 lv_f;
AI lv_i lv_load(const uint8_t *p) { return _mm256_load_si256((const __m256i *)p); }
AI lv_i lv_set1(int32_t x) { return _mm256_set1_epi32(x); }
AI lv_i lv_and(lv_i a, lv_i b) { return _mm256_and_si256(a, b); }
AI lv_i lv_srli16(lv_i a, const int k) { return _mm256_srli_epi16(a, k); }
AI lv_i lv_slli16(lv_i a, const int k) { return _mm256_slli_epi16(a, k); }
AI lv_i lv_or_and(lv_i a, lv_i b, lv_i m) { return _mm256_or_si256(a, _mm256_and_si256(b, m)); }
AI lv_i lv_bcast32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
/* int16 sums of vpmaddubsw over runs of vectors that cannot overflow, widened to int32 */
AI lv_i lv_dot(const lv_i *w, const uint8_t *q8, int32_t init, const int wbits) {
    const int run = wbits <= 4 ? 8 : 4;
    const lv_i ones = _mm256_set1_epi16(1);
    lv_i acc = _mm256_set1_epi32(init);
    UNROLL for (int v0 = 0; v0 < 8; v0 += run) {
        lv_i s = _mm256_maddubs_epi16(w[v0], lv_bcast32(q8 + 4 * v0));
        UNROLL for (int v = v0 + 1; v < v0 + run; v++) s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[v], lv_bcast32(q8 + 4 * v)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s, ones));
    }
    return acc;
}
AI lv_i lv_dot_nl(const lv_i *x, const uint8_t *q8, int32_t init) {
    const __m128i t = _mm_xor_si128(_mm_loadu_si128((const __m128i *)pl_iq4nl_values), _mm_set1_epi8((char)0x80));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const lv_i tl = _mm256_broadcastsi128_si256(_mm_and_si128(t, m4));
    const lv_i th = _mm256_broadcastsi128_si256(_mm_and_si128(_mm_srli_epi16(t, 4), m4));
    lv_i sl = _mm256_setzero_si256(), sh = _mm256_setzero_si256();
    UNROLL for (int v = 0; v < 8; v++) { /* pair sums <= 2 x 15 x 128: 8 vectors fit int16 */
        const lv_i a = lv_bcast32(q8 + 4 * v);
        sl = _mm256_add_epi16(sl, _mm256_maddubs_epi16(_mm256_shuffle_epi8(tl, x[v]), a));
        sh = _mm256_add_epi16(sh, _mm256_maddubs_epi16(_mm256_shuffle_epi8(th, x[v]), a));
    }
    const lv_i ones = _mm256_set1_epi16(1);
    return _mm256_add_epi32(_mm256_add_epi32(_mm256_set1_epi32(init), _mm256_madd_epi16(sl, ones)),
                            _mm256_slli_epi32(_mm256_madd_epi16(sh, ones), 4));
}
#define lv_fp16 ymm_load_fp16 /* the fp32 ops: ymm_lanes.h */
#define lv_cvt ymm_from_i32
#define lv_fset1 ymm_set1
#define lv_fadd ymm_add
#define lv_fmul ymm_mul
#define lv_store ymm_store_rows
#include "legacy_packed_simd.h"

PL_BASELINE_FN void pl_kernels_add_packed_legacy_avx2(pl_kernels *k) { lp_register(k); }
#endif
