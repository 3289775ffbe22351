// Float32 vectors of the widest width compiled for (16 lanes with AVX-512, else 8 with AVX2 and
// FMA), for the kernels that work in float32 whatever the width.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace lamina {

inline float horizontal_sum(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_movehdup_ps(half));
  return _mm_cvtss_f32(half);
}

struct FloatLanes {
#ifdef __AVX512F__
  using Vector = __m512;
  static constexpr int64_t kWidth = 16;
  static Vector zero() { return _mm512_setzero_ps(); }
  static Vector fill(float v) { return _mm512_set1_ps(v); }
  static Vector load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vector v) { _mm512_storeu_ps(p, v); }
  static Vector add(Vector a, Vector b) { return _mm512_add_ps(a, b); }
  static Vector mul(Vector a, Vector b) { return _mm512_mul_ps(a, b); }
  static Vector div(Vector a, Vector b) { return _mm512_div_ps(a, b); }
  static Vector max(Vector a, Vector b) { return _mm512_max_ps(a, b); }
  static Vector min(Vector a, Vector b) { return _mm512_min_ps(a, b); }
  static Vector fma(Vector a, Vector b, Vector c) { return _mm512_fmadd_ps(a, b, c); }
  static Vector round(Vector v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n: 0 below float's range
  static Vector scale_by_power_of_two(Vector p, Vector n) { return _mm512_scalef_ps(p, n); }
  static float sum(Vector v) { return _mm512_reduce_add_ps(v); }
  static float largest(Vector v) { return _mm512_reduce_max_ps(v); }
  static Vector abs(Vector v) { return _mm512_abs_ps(v); }
  static Vector load_int32(const int32_t* p) { return _mm512_cvtepi32_ps(_mm512_loadu_si512(p)); }
  // integral values in [-128, 127] as bytes
  static void store_int8(int8_t* p, Vector v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v)));
  }
#else
  using Vector = __m256;
  static constexpr int64_t kWidth = 8;
  static Vector zero() { return _mm256_setzero_ps(); }
  static Vector fill(float v) { return _mm256_set1_ps(v); }
  static Vector load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vector v) { _mm256_storeu_ps(p, v); }
  static Vector add(Vector a, Vector b) { return _mm256_add_ps(a, b); }
  static Vector mul(Vector a, Vector b) { return _mm256_mul_ps(a, b); }
  static Vector div(Vector a, Vector b) { return _mm256_div_ps(a, b); }
  static Vector max(Vector a, Vector b) { return _mm256_max_ps(a, b); }
  static Vector min(Vector a, Vector b) { return _mm256_min_ps(a, b); }
  static Vector fma(Vector a, Vector b, Vector c) { return _mm256_fmadd_ps(a, b, c); }
  static Vector round(Vector v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n ≥ -126 (the caller keeps n there), through the exponent bits
  static Vector scale_by_power_of_two(Vector p, Vector n) {
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
  }
  static float sum(Vector v) { return horizontal_sum(v); }
  static float largest(Vector v) {
    __m128 half = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_max_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_max_ss(half, _mm_movehdup_ps(half)));
  }
  static Vector abs(Vector v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }
  static Vector load_int32(const int32_t* p) {
    return _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // integral values in [-128, 127] as bytes
  static void store_int8(int8_t* p, Vector v) {
    const __m256i words = _mm256_cvtps_epi32(v);
    const __m128i halves = _mm_packs_epi32(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(halves, halves));
  }
#endif

  // e^x, within ~2 ulp of float32's: x = n ln2 + r with |r| ≤ ln2 / 2, e^r from Cephes' expf
  // polynomial, then times 2^n. Inputs below -87.3 (where e^x leaves float's normal range) give
  // e^-87.3 without AVX-512, 0 or a subnormal with it.
  static Vector exp(Vector x) {
#ifdef __AVX512F__
    x = max(x, fill(-104.f));
#else
    x = max(x, fill(-87.3f));
#endif
    x = min(x, fill(88.7f));
    const Vector n = round(mul(x, fill(1.44269504089f)));
    Vector r = fma(n, fill(-0.693359375f), x);
    r = fma(n, fill(2.12194440e-4f), r);
    Vector p = fill(1.9875691500e-4f);
    p = fma(p, r, fill(1.3981999507e-3f));
    p = fma(p, r, fill(8.3334519073e-3f));
    p = fma(p, r, fill(4.1665795894e-2f));
    p = fma(p, r, fill(1.6666665459e-1f));
    p = fma(p, r, fill(5.0000001201e-1f));
    p = fma(p, mul(r, r), add(r, fill(1.f)));
    return scale_by_power_of_two(p, n);
  }
};

// sum(a[i] * b[i]) over `count` floats
inline float dot(const float* a, const float* b, int64_t count) {
  using L = FloatLanes;
  L::Vector acc = L::zero();
  int64_t i = 0;
  for (; i + L::kWidth <= count; i += L::kWidth) acc = L::fma(L::load(a + i), L::load(b + i), acc);
  float total = L::sum(acc);
  for (; i < count; ++i) total += a[i] * b[i];
  return total;
}

}  // namespace lamina
