/* zmm_lanes.h: the 16-lane fp32 ops (one __m512, lane r = row r) that the AVX-512 packed gemms run over:
 * kernels_avx512.c maps kquant_packed_simd.h's kv_f ops onto them, legacy_packed_avx512.c
 * legacy_packed_simd.h's lv_f ops (ymm_lanes.h is the AVX2 twin). Include after kernels_x86_shared.h
 * (AI); needs -mavx512f. */
#ifndef PYLLM_ZMM_LANES_H
#define PYLLM_ZMM_LANES_H

#include <immintrin.h>
#include <stdint.h>

#include "kernels_x86_shared.h"

/* 16 fp16 at a 32-byte aligned p, widened */
AI __m512 zmm_load_fp16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)p)); }
AI __m512 zmm_from_i32(__m512i a) { return _mm512_cvtepi32_ps(a); }
AI __m512 zmm_set1(float x) { return _mm512_set1_ps(x); }
AI __m512 zmm_zero(void) { return _mm512_setzero_ps(); }
AI __m512 zmm_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
AI __m512 zmm_sub(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
AI __m512 zmm_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
/* the mask of lanes < rows (rows >= 16: all) */
AI __mmask16 zmm_row_mask(int rows) { return rows >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << rows) - 1u); }
/* lanes < rows to out[0 .. rows), nothing past them */
AI void zmm_store_rows(float *out, __m512 v, int rows) { _mm512_mask_storeu_ps(out, zmm_row_mask(rows), v); }

#endif
