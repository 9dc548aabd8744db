/* ymm_lanes.h: the 8-lane fp32 ops (one __m256, lane r = row r) that the AVX2 packed gemms run over:
 * kernels_avx2.c maps kquant_packed_simd.h's kv_f ops onto them, legacy_packed_avx2.c
 * legacy_packed_simd.h's lv_f ops (zmm_lanes.h is the AVX-512 twin). Include after
 * kernels_x86_shared.h (AI); needs -mavx2 -mf16c. */
#ifndef PYLLM_YMM_LANES_H
#define PYLLM_YMM_LANES_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels_x86_shared.h"

/* 8 fp16 at a 16-byte aligned p, widened */
AI __m256 ymm_load_fp16(const uint8_t *p) { return _mm256_cvtph_ps(_mm_load_si128((const __m128i *)p)); }
AI __m256 ymm_from_i32(__m256i a) { return _mm256_cvtepi32_ps(a); }
AI __m256 ymm_set1(float x) { return _mm256_set1_ps(x); }
AI __m256 ymm_zero(void) { return _mm256_setzero_ps(); }
AI __m256 ymm_add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
AI __m256 ymm_sub(__m256 a, __m256 b) { return _mm256_sub_ps(a, b); }
AI __m256 ymm_mul(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
/* lanes < rows to out[0 .. rows), nothing past them */
AI void ymm_store_rows(float *out, __m256 v, int rows) {
    if (rows >= 8) {
        _mm256_storeu_ps(out, v);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, v);
    memcpy(out, t, (size_t)rows * sizeof(float));
}

#endif
