// The row kernels of lamina's decoding products (int4, int8 and float32 weights against a few rows
// of float32 activations; see linear_cpu.cpp's header for the maths), shared by the ops of
// linear_cpu.cpp and the native decode step of decode_cpu.cpp. Each `*_outputs` function computes
// the outputs [begin, end) of a product for every activation row and hands each to `store(m, n,
// value)`: the ops split the outputs across ATen's threads, the native step across its own.
#pragma once

#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "lanes.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define LAMINA_AVX512_VNNI 1
#endif
#if defined(__AVX512F__) && defined(__AVX512BF16__)
#define LAMINA_AVX512_BF16 1
#endif

namespace lamina {

constexpr int64_t kBlock = 32;

// Activations quantized per block of 32, for one call: the codes, each block's scale repeated 8
// and 4 times (vectors to multiply a block's eight or four int32 partial sums by) and sum(x) =
// scale * sum of codes per block.
struct QuantizedActivations {
  std::vector<int8_t> codes;  // (M, K)
  std::vector<float> scales8;  // (M, K / 32, 8)
  std::vector<float> scales4;  // (M, K / 32, 4)
  std::vector<float> sums;  // (M, K / 32)
};


inline int32_t horizontal_sum(__m256i v) {
  __m128i half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(1, 0, 3, 2)));
  half = _mm_add_epi32(half, _mm_shuffle_epi32(half, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(half);
}

// The order of a row's codes in memory:
// - natural (int8): as the inputs;
// - int4: per block, the 16 even inputs' codes, then the 16 odd ones' (the order in which
//   `unpack_int4` yields a block's weights); but the first `quad_blocks` blocks four at a time:
//   the four blocks' even codes (64 bytes), then their odd codes (64 bytes), matching the low and
//   high nibbles of 64 packed bytes (`int4_rows`' AVX-512 path).
struct CodeOrder {
  bool split;  // even inputs first
  int64_t quad_blocks;
};

// One block of 32 floats → 16 int8 codes at `first` and 16 at `second` (the first and second half
// in input order, or the even and odd inputs' with `even_then_odd`); returns the block's scale and
// sets the sum of its codes.
inline float quantize_block(const float* values, int8_t* first, int8_t* second, int32_t* code_sum, bool even_then_odd) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_loadu_ps(values + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
  }
  __m128 max4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
  max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
  max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
  const float scale = _mm_cvtss_f32(max4) / 127.f;
  const __m256 inverse = _mm256_set1_ps(scale == 0.f ? 0.f : 1.f / scale);
  __m256i q[4];
  for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));  // half to even
  *code_sum = horizontal_sum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
  // pack 4 x 8 int32 → 32 int8; the packs work per 128-bit lane, the permute restores input order
  const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
  __m256i codes = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  if (even_then_odd) {
    const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                           0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
    codes = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(codes, split), _MM_SHUFFLE(3, 1, 2, 0));
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(first), _mm256_castsi256_si128(codes));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(second), _mm256_extracti128_si256(codes, 1));
  return scale;
}

// `q` ← the activations `x (rows, width)` quantized per block in `order` (its buffers reused).
inline void quantize_activations_into(const float* x, int64_t rows, int64_t width, CodeOrder order,
                                      QuantizedActivations& q) {
  const int64_t row_blocks = width / kBlock, blocks = rows * row_blocks;
  q.codes.resize(rows * width);
  q.scales8.resize(blocks * 8);
  q.scales4.resize(blocks * 4);
  q.sums.resize(blocks);
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t in_row = b % row_blocks;
    int8_t* first = q.codes.data() + b * kBlock;
    int8_t* second = first + kBlock / 2;
    if (in_row < order.quad_blocks) {  // in a quad: evens with the quad's evens, odds after them
      first = q.codes.data() + (b - in_row % 4) * kBlock + (in_row % 4) * (kBlock / 2);
      second = first + 2 * kBlock;
    }
    int32_t code_sum;
    const float scale = quantize_block(x + b * kBlock, first, second, &code_sum, order.split);
    for (int i = 0; i < 8; ++i) q.scales8[8 * b + i] = scale;
    for (int i = 0; i < 4; ++i) q.scales4[4 * b + i] = scale;
    q.sums[b] = scale * static_cast<float>(code_sum);
  }
}

// Eight int32 partial sums of 32 unsigned-by-signed byte products.
inline __m256i dot_u8s8(__m256i unsigned_bytes, __m256i signed_bytes) {
#if defined(LAMINA_AVX512_VNNI)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), unsigned_bytes, signed_bytes);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), unsigned_bytes, signed_bytes);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(unsigned_bytes, signed_bytes), _mm256_set1_epi16(1));
#endif
}

// The 32 codes of one int4 block's 16 packed bytes: the low nibbles (even inputs) as bytes 0..15,
// then the high nibbles (odd inputs) as bytes 16..31.
inline __m256i unpack_int4(const uint8_t* packed) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed)));
  const __m256i shifted = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

// Rows of the weight are taken kRows at a time so that each block of activations, loaded once,
// feeds several independent accumulators.
constexpr int kRows = 4;
// Weight rows are streamed from memory once a product: prefetching the rows two passes ahead draws
// more bandwidth than the hardware prefetchers alone (bench/RESULTS.md).
constexpr int kPrefetchRows = 2 * kRows;

inline void prefetch(const void* address) { _mm_prefetch(static_cast<const char*>(address), _MM_HINT_T0); }

// How many of a row's blocks `int4_rows` takes four at a time (AVX-512): all but the last
// `blocks % 4`, where the blocks of a group are 1, 2 or a multiple of 4 (so that four blocks meet
// one, two or four groups in a fixed pattern); else none.
inline int64_t int4_quad_blocks(int64_t blocks, int64_t blocks_per_group) {
#ifdef LAMINA_AVX512_VNNI
  if (blocks_per_group == 1 || blocks_per_group == 2 || blocks_per_group % 4 == 0) return blocks - blocks % 4;
#endif
  return 0;
}

// Calls `kernel(std::integral_constant<int, count>{})`: the row loops of the kernels below take
// their row count as a constant, so that they unroll and keep their accumulators in registers (with
// a runtime count they went through memory: int4 on an AVX2 EPYC took 8.6 cycles a block and
// row, then 5.1).
template <typename Kernel>
inline void with_row_count(int64_t count, const Kernel& kernel) {
  static_assert(kRows == 4);
  switch (count) {
    case 4: return kernel(std::integral_constant<int, 4>{});
    case 3: return kernel(std::integral_constant<int, 3>{});
    case 2: return kernel(std::integral_constant<int, 2>{});
    default: return kernel(std::integral_constant<int, 1>{});
  }
}

// One output of the int4 product for `count` (≤ kRows) weight rows and one row of activations:
// sum over blocks of scale * x_scale * sum(code * x_code), without the minimum's part.
template <int count>
inline void int4_rows(const uint8_t* rows, int64_t width, const float* w_scale, int64_t groups,
                      const int8_t* x_codes, const QuantizedActivations& act, int64_t m, float* out) {
  const int64_t blocks = width / kBlock, blocks_per_group = blocks / groups;
  const int64_t quads = int4_quad_blocks(blocks, blocks_per_group);
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
#ifdef LAMINA_AVX512_VNNI
  if (quads > 0) {
    // 64 packed bytes are four blocks: their low nibbles the even inputs, high nibbles the odd
    // ones, each 128-bit lane one block. Two accumulating dot products give each block's sums in
    // four int32 lanes; the weight scales of the one, two or four groups met are spread to match.
    const int64_t per_group = std::min<int64_t>(blocks_per_group, 4);
    const __m512i spread = _mm512_srli_epi32(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                                             per_group == 1 ? 0 : per_group == 2 ? 1 : 2);
    const __mmask8 loaded = per_group == 1 ? 0xF : per_group == 2 ? 0x3 : 0x1;
    const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
    const float* x_scales = act.scales4.data() + m * blocks * 4;
    __m512 wide[kRows];
    for (int r = 0; r < kRows; ++r) wide[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < quads; b += 4) {
      const __m512i x_even = _mm512_loadu_si512(x_codes + b * kBlock);
      const __m512i x_odd = _mm512_loadu_si512(x_codes + b * kBlock + 2 * kBlock);
      const __m512 x_scale = _mm512_loadu_ps(x_scales + 4 * b);
      const int64_t g = b / blocks_per_group;
      for (int r = 0; r < count; ++r) {
        prefetch(rows + (r + kPrefetchRows) * width / 2 + b * 16);
        const __m512i packed = _mm512_loadu_si512(rows + r * width / 2 + b * 16);
        const __m512i even = _mm512_and_si512(packed, low_nibbles);
        const __m512i odd = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low_nibbles);
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), even, x_even), odd, x_odd);
        const __m512 scales = _mm512_permutexvar_ps(
            spread, _mm512_castps128_ps512(_mm_maskz_loadu_ps(loaded, w_scale + r * groups + g)));
        wide[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(x_scale, scales), wide[r]);
      }
    }
    for (int r = 0; r < count; ++r) acc[r] = _mm256_add_ps(_mm512_castps512_ps256(wide[r]), _mm512_extractf32x8_ps(wide[r], 1));
  }
#endif
  const float* x_scales = act.scales8.data() + m * blocks * 8;
  for (int64_t b = quads; b < blocks; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_codes + b * kBlock));
    const __m256 x_scale = _mm256_loadu_ps(x_scales + 8 * b);
    const int64_t g = b / blocks_per_group;
    for (int r = 0; r < count; ++r) {
      prefetch(rows + (r + kPrefetchRows) * width / 2 + b * 16);
      const __m256i dot = dot_u8s8(unpack_int4(rows + r * width / 2 + b * 16), x);
      const __m256 scale = _mm256_mul_ps(x_scale, _mm256_set1_ps(w_scale[r * groups + g]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) out[r] = horizontal_sum(acc[r]);
}

// `int4_rows` for two rows of activations at once (codes at x_codes and x_codes + width; the AVX2
// layout, no quads): each weight block is unpacked once for both, where the single-row loop
// unpacked it again for every row (a prompt's or a batch's rows are compute-bound). Kept apart from
// `int4_rows`: one loop templated on 1 or 2 activation rows made GCC spill the one-row loop's
// accumulators to the stack, and that loop is every decoding step's.
template <int count>
inline void int4_rows_pair(const uint8_t* rows, int64_t width, const float* w_scale, int64_t groups,
                           const int8_t* x_codes, const QuantizedActivations& act, int64_t m, float* out,
                           float* next_out) {
  const int64_t blocks = width / kBlock, blocks_per_group = blocks / groups;
  const float* x_scales = act.scales8.data() + m * blocks * 8;
  const float* next_scales = x_scales + blocks * 8;
  __m256 acc[kRows], next_acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = next_acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_codes + b * kBlock));
    const __m256i next_x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_codes + width + b * kBlock));
    const __m256 x_scale = _mm256_loadu_ps(x_scales + 8 * b), next_scale = _mm256_loadu_ps(next_scales + 8 * b);
    const int64_t g = b / blocks_per_group;
    for (int r = 0; r < count; ++r) {
      prefetch(rows + (r + kPrefetchRows) * width / 2 + b * 16);
      const __m256i w = unpack_int4(rows + r * width / 2 + b * 16);
      const __m256 scale = _mm256_set1_ps(w_scale[r * groups + g]);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(w, x)), _mm256_mul_ps(x_scale, scale), acc[r]);
      next_acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(w, next_x)), _mm256_mul_ps(next_scale, scale),
                                    next_acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) {
    out[r] = horizontal_sum(acc[r]);
    next_out[r] = horizontal_sum(next_acc[r]);
  }
}

// One output of the int8 product for `count` (≤ kRows) weight rows and one row of activations:
// sum over blocks of x_scale * sum(w * x_code), before the row's scale. `x_sum`: sum(x).
template <int count>
inline void int8_rows(const int8_t* rows, int64_t width, const int8_t* x_codes, const float* x_scales, float x_sum,
                      float* out) {
  const int64_t blocks = width / kBlock;
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  int64_t b = 0;
#ifdef LAMINA_AVX512_VNNI
  if (blocks % 2 == 0) {  // the offset form, two blocks at a time
    __m512 wide[kRows];
    for (int r = 0; r < kRows; ++r) wide[r] = _mm512_setzero_ps();
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (; b < blocks; b += 2) {
      const __m512i x = _mm512_loadu_si512(x_codes + b * kBlock);
      const __m512 x_scale = _mm512_loadu_ps(x_scales + 8 * b);
      for (int r = 0; r < count; ++r) {
        prefetch(rows + (r + kPrefetchRows) * width + b * kBlock);
        const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(rows + r * width + b * kBlock), flip);  // w + 128
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
        wide[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), x_scale, wide[r]);
      }
    }
    for (int r = 0; r < count; ++r) out[r] = _mm512_reduce_add_ps(wide[r]) - 128.f * x_sum;
    return;
  }
#endif
  for (; b < blocks; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_codes + b * kBlock));
    const __m256 x_scale = _mm256_loadu_ps(x_scales + 8 * b);
    for (int r = 0; r < count; ++r) {
      prefetch(rows + (r + kPrefetchRows) * width + b * kBlock);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * width + b * kBlock));
      const __m256i dot = dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), x_scale, acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) out[r] = horizontal_sum(acc[r]);
}

inline void halves_to_floats(const c10::Half* halves, int64_t count, float* out) {
  const auto* bits = reinterpret_cast<const uint16_t*>(halves);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + i))));
  for (; i < count; ++i) out[i] = _cvtsh_ss(bits[i]);
}

// One output of the float32 product for `count` (≤ kRows) weight rows and one row of activations.
template <int count>
inline void f32_rows(const float* rows, int64_t width, const float* x, float* out) {
  using L = FloatLanes;
  L::Vector acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = L::zero();
  int64_t k = 0;
  for (; k + L::kWidth <= width; k += L::kWidth) {
    const L::Vector xs = L::load(x + k);
    for (int r = 0; r < count; ++r) {
      prefetch(rows + (r + kPrefetchRows) * width + k);
      acc[r] = L::fma(L::load(rows + r * width + k), xs, acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) {
    float total = L::sum(acc[r]);
    for (int64_t i = k; i < width; ++i) total += rows[r * width + i] * x[i];
    out[r] = total;
  }
}

// Calls `store(m, n, value)` for the outputs n in [begin, end) of every activation row m < rows,
// `row_kernel(n, count, m, outputs)` computing outputs n..n+count-1 of row m (`count` ≤ kRows, a
// `std::integral_constant`).
template <typename RowKernel, typename Store>
inline void row_range(int64_t rows, int64_t begin, int64_t end, const RowKernel& row_kernel, const Store& store) {
  float outputs[kRows];
  for (int64_t n = begin; n < end; n += kRows) {
    const int64_t count = std::min<int64_t>(kRows, end - n);
    for (int64_t m = 0; m < rows; ++m) {
      with_row_count(count, [&](auto n_rows) { row_kernel(n, n_rows, m, outputs); });
      for (int64_t r = 0; r < count; ++r) store(m, n + r, outputs[r]);
    }
  }
}

// The `store` of outputs into a row-major (rows, out_features) buffer.
inline auto into(float* result, int64_t out_features) {
  return [=](int64_t m, int64_t n, float value) { result[m * out_features + n] = value; };
}

// The weight rows activation row m multiplies: all of them (no routing), or those of its expert,
// rows [expert[m] * out_features, (expert[m] + 1) * out_features) of experts stacked in turn.
struct Routing {
  const int64_t* experts;  // (M,), or nullptr
  int64_t out_features;

  int64_t first_row(int64_t m) const { return experts == nullptr ? 0 : experts[m] * out_features; }
};

// `Int4Linear`'s operands: codes (rows, width / 2), float16 scale and minimum (rows, groups).
struct Int4Weights {
  const uint8_t* codes;
  const c10::Half* scale;
  const c10::Half* minimum;
  int64_t width, groups;
};

// Activations ready for an int4 product: their codes in the order `int4_rows` reads and the sum of
// x over each (row, group).
struct Int4Inputs {
  QuantizedActivations act;
  std::vector<float> group_sums;
  int64_t quads = 0;
};

inline void prepare_int4(const Int4Weights& w, const float* x, int64_t rows, Int4Inputs& in) {
  const int64_t blocks = w.width / kBlock, blocks_per_group = blocks / w.groups;
  in.quads = int4_quad_blocks(blocks, blocks_per_group);
  quantize_activations_into(x, rows, w.width, CodeOrder{true, in.quads}, in.act);
  in.group_sums.assign(rows * w.groups, 0.f);
  for (int64_t b = 0; b < rows * blocks; ++b) in.group_sums[b / blocks_per_group] += in.act.sums[b];
}

// The int4 product's outputs [begin, end) for every activation row (routed: within its expert's rows).
template <typename Store>
inline void int4_outputs(const Int4Weights& w, const Int4Inputs& in, int64_t rows, const Routing& route,
                         int64_t begin, int64_t end, const Store& store) {
  const int64_t width = w.width, groups = w.groups;
  float sums[2][kRows];
  // the rows' float16 scales and minimums as float32, converted once for all their products
  // (once a product when each row has its expert)
  std::vector<float> row_scales(kRows * groups), row_mins(kRows * groups);
  for (int64_t n = begin; n < end; n += kRows) {
    const int64_t count = std::min<int64_t>(kRows, end - n);
    for (int64_t m = 0; m < rows;) {
      const int64_t row = route.first_row(m) + n;
      if (m == 0 || route.experts != nullptr) {
        halves_to_floats(w.scale + row * groups, count * groups, row_scales.data());
        halves_to_floats(w.minimum + row * groups, count * groups, row_mins.data());
      }
      // activation rows two at a time where they share their weight rows
      const int64_t taken = route.experts == nullptr && in.quads == 0 && m + 1 < rows ? 2 : 1;
      with_row_count(count, [&](auto n_rows) {
        const int8_t* x_codes = in.act.codes.data() + m * width;
        const uint8_t* codes = w.codes + row * width / 2;
        if (taken == 2) {
          int4_rows_pair<n_rows>(codes, width, row_scales.data(), groups, x_codes, in.act, m, sums[0], sums[1]);
        } else {
          int4_rows<n_rows>(codes, width, row_scales.data(), groups, x_codes, in.act, m, sums[0]);
        }
      });
      for (int64_t i = 0; i < taken; ++i, ++m) {
        for (int64_t r = 0; r < count; ++r) {
          // sum over groups of minimum * sum(x), as a vector product (a scalar loop, one add
          // waiting on the last, took about as long as the row's products)
          const float offset = dot(row_mins.data() + r * groups, in.group_sums.data() + m * groups, groups);
          store(m, n + r, sums[i][r] + offset);
        }
      }
    }
  }
}

// `Int8Linear`'s operands: codes (rows, width), one float32 scale a row.
struct Int8Weights {
  const int8_t* codes;
  const float* scale;
  int64_t width;
};

// Activations ready for an int8 product: their codes in input order and each row's sum of x.
struct Int8Inputs {
  QuantizedActivations act;
  std::vector<float> row_sums;
};

inline void prepare_int8(const Int8Weights& w, const float* x, int64_t rows, Int8Inputs& in) {
  const int64_t blocks = w.width / kBlock;
  quantize_activations_into(x, rows, w.width, CodeOrder{false, 0}, in.act);
  in.row_sums.assign(rows, 0.f);
  for (int64_t b = 0; b < rows * blocks; ++b) in.row_sums[b / blocks] += in.act.sums[b];
}

template <typename Store>
inline void int8_outputs(const Int8Weights& w, const Int8Inputs& in, int64_t rows, const Routing& route,
                         int64_t begin, int64_t end, const Store& store) {
  const int64_t width = w.width, blocks = width / kBlock;
  row_range(rows, begin, end, [&](int64_t n, auto count, int64_t m, float* sums) {
    const int64_t row = route.first_row(m) + n;
    int8_rows<count>(w.codes + row * width, width, in.act.codes.data() + m * width,
                     in.act.scales8.data() + m * blocks * 8, in.row_sums[m], sums);
    for (int64_t r = 0; r < count; ++r) sums[r] *= w.scale[row + r];
  }, store);
}

// The float32 product `x (rows, width) @ weight^T`'s outputs [begin, end).
template <typename Store>
inline void f32_outputs(const float* weight, int64_t width, const float* x, int64_t rows, int64_t begin, int64_t end,
                        const Store& store) {
  row_range(rows, begin, end, [&](int64_t n, auto count, int64_t m, float* sums) {
    f32_rows<count>(weight + n * width, width, x + m * width, sums);
  }, store);
}

}  // namespace lamina
