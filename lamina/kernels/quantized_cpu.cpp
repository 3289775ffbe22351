// Weight-only quantized matrix products for a few rows (decoding), on x86-64 with AVX2 and FMA.
//
// Both kernels quantize the activations first, per block of 32 inputs, to int8 with one float
// scale a block (symmetric, round half to even), then take integer dot products 32 at a time:
// `_mm256_maddubs_epi16` multiplies unsigned by signed bytes into int16 pairs, `_mm256_madd_epi16`
// sums the pairs into eight int32 lanes, and each block's sum is scaled in float32.
//
// lamina::int4_linear(x (M, K), weight (N, K/2) uint8, scale (N, G) float32, minimum (N, G) float32)
//   -> (M, N) float32
//   Two 4-bit codes a byte, even inputs in the low nibble; groups of K/G inputs (a multiple of
//   32) share a scale and a minimum: w = code * scale + minimum. This is `Int4Linear`'s own layout,
//   so the kernel reads the layer's parameters as they are. Unpacking 16 bytes yields the even
//   inputs' codes, then the odd ones': the activations are quantized in that order. Since the
//   codes are unsigned, sum(w * x) over a block is
//   scale * x_scale * sum(code * x_code) + minimum * x_scale * sum(x_code).
//
// lamina::int8_linear(x (M, K), weight (N, K) int8, weight_scale (N,) float32) -> (M, N) float32
//   Symmetric codes in [-127, 127], one scale per output channel. maddubs needs an unsigned
//   operand: |w| times x with w's sign moved onto it gives the same products.
//
// Rows of the output are split across ATen's threads (torch.set_num_threads).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;

// Activations quantized per block of 32: the codes, and per block the scale and scale * sum of
// codes.
struct QuantizedActivations {
  at::Tensor codes;  // (M, K) int8
  at::Tensor scales;  // (M, K / 32) float32
  at::Tensor sums;  // (M, K / 32) float32
};

// `even_then_odd`: within each block, store the codes of the even inputs first, then the odd ones'
// (the order in which `unpack_int4` yields a block's weights).
QuantizedActivations quantize_activations(const at::Tensor& x, bool even_then_odd) {
  const int64_t rows = x.size(0), width = x.size(1), blocks = width / kBlock;
  QuantizedActivations q{
      at::empty({rows, width}, x.options().dtype(at::kChar)),
      at::empty({rows, blocks}, x.options().dtype(at::kFloat)),
      at::empty({rows, blocks}, x.options().dtype(at::kFloat)),
  };
  const float* in = x.data_ptr<float>();
  int8_t* codes = q.codes.data_ptr<int8_t>();
  float* scales = q.scales.data_ptr<float>();
  float* sums = q.sums.data_ptr<float>();
  for (int64_t b = 0; b < rows * blocks; ++b) {
    const float* values = in + b * kBlock;
    float amax = 0.f;
    for (int64_t i = 0; i < kBlock; ++i) amax = std::fmax(amax, std::fabs(values[i]));
    const float scale = amax / 127.f;
    int32_t total = 0;
    for (int64_t i = 0; i < kBlock; ++i) {
      const int32_t code = scale == 0.f ? 0 : static_cast<int32_t>(std::nearbyint(values[i] / scale));
      const int64_t slot = even_then_odd ? (i % 2) * (kBlock / 2) + i / 2 : i;
      codes[b * kBlock + slot] = static_cast<int8_t>(code);
      total += code;
    }
    scales[b] = scale;
    sums[b] = scale * static_cast<float>(total);
  }
  return q;
}

// Eight int32 partial sums of 32 unsigned-by-signed byte products, as floats.
inline __m256 block_dot(__m256i unsigned_bytes, __m256i signed_bytes) {
  const __m256i pairs = _mm256_maddubs_epi16(unsigned_bytes, signed_bytes);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

inline float horizontal_sum(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_movehdup_ps(half));
  return _mm_cvtss_f32(half);
}

// The 32 codes of 16 packed bytes: the low nibbles (even inputs) as bytes 0..15, then the high
// nibbles (odd inputs) as bytes 16..31.
inline __m256i unpack_int4(const uint8_t* packed) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(packed)));
  const __m256i shifted = _mm256_srlv_epi64(both, _mm256_set_epi64x(4, 4, 0, 0));  // the high half's nibbles down
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

at::Tensor activations_as_float(const at::Tensor& x, int64_t width, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (rows, in_features), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be on the CPU, got ", x.device());
  TORCH_CHECK(x.size(1) == width, op, ": x has ", x.size(1), " columns, the weight expects ", width);
  TORCH_CHECK(width % kBlock == 0, op, ": in_features must be a multiple of 32, got ", width);
  return x.to(at::kFloat).contiguous();
}

void check_matrix(const at::Tensor& t, at::ScalarType dtype, int64_t rows, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == dtype && t.is_contiguous() && t.device().is_cpu(), op, ": ", name,
              " must be a contiguous 2-D ", c10::toString(dtype), " CPU tensor, got ", t.sizes(), " ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.size(0) == rows, op, ": ", name, " has ", t.size(0), " rows, expected ", rows);
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                       const at::Tensor& minimum) {
  const int64_t out_features = weight.size(0), width = 2 * weight.size(1);
  check_matrix(weight, at::kByte, out_features, "int4_linear", "weight");
  check_matrix(scale, at::kFloat, out_features, "int4_linear", "scale");
  check_matrix(minimum, at::kFloat, out_features, "int4_linear", "minimum");
  const int64_t groups = scale.size(1);
  TORCH_CHECK(minimum.size(1) == groups, "int4_linear: scale has ", groups, " groups a row, minimum ", minimum.size(1));
  TORCH_CHECK(groups > 0 && width % (groups * kBlock) == 0, "int4_linear: ", groups, " groups do not split ", width,
              " inputs into multiples of 32");
  const int64_t block_count = width / kBlock, blocks_per_group = block_count / groups;
  const at::Tensor input = activations_as_float(x, width, "int4_linear");
  const QuantizedActivations act = quantize_activations(input, /*even_then_odd=*/true);
  const int64_t rows = input.size(0);
  at::Tensor out = at::empty({rows, out_features}, input.options());

  // sum(x) over each group, shared by every output row
  std::vector<float> group_sums(rows * groups, 0.f);
  const float* block_sums = act.sums.data_ptr<float>();
  for (int64_t i = 0; i < rows * block_count; ++i) group_sums[i / blocks_per_group] += block_sums[i];

  const uint8_t* w = weight.data_ptr<uint8_t>();
  const float* w_scale = scale.data_ptr<float>();
  const float* w_min = minimum.data_ptr<float>();
  const int8_t* codes = act.codes.data_ptr<int8_t>();
  const float* x_scale = act.scales.data_ptr<float>();
  const float* x_group_sum = group_sums.data();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, out_features, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const uint8_t* row = w + n * width / 2;
      for (int64_t m = 0; m < rows; ++m) {
        const int8_t* x_codes = codes + m * width;
        const float* scales = x_scale + m * block_count;
        const float* sums = x_group_sum + m * groups;
        __m256 acc = _mm256_setzero_ps();
        float offset = 0.f;  // sum over groups of minimum * sum(x)
        for (int64_t g = 0; g < groups; ++g) {
          __m256 group_acc = _mm256_setzero_ps();  // sum(code * x) over the group's blocks
          for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
            const __m256i x_block = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_codes + b * kBlock));
            const __m256 dot = block_dot(unpack_int4(row + b * kBlock / 2), x_block);
            group_acc = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(scales + b), group_acc);
          }
          acc = _mm256_fmadd_ps(group_acc, _mm256_set1_ps(w_scale[n * groups + g]), acc);
          offset += w_min[n * groups + g] * sums[g];
        }
        result[m * out_features + n] = horizontal_sum(acc) + offset;
      }
    }
  });
  return out;
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale) {
  const int64_t out_features = weight.size(0), width = weight.size(1), block_count = width / kBlock;
  check_matrix(weight, at::kChar, out_features, "int8_linear", "weight");
  TORCH_CHECK(weight_scale.dim() == 1 && weight_scale.scalar_type() == at::kFloat && weight_scale.is_contiguous() &&
                  weight_scale.size(0) == out_features,
              "int8_linear: weight_scale must be a contiguous float32 vector of ", out_features, " scales");
  const at::Tensor input = activations_as_float(x, width, "int8_linear");
  const QuantizedActivations act = quantize_activations(input, /*even_then_odd=*/false);
  const int64_t rows = input.size(0);
  at::Tensor out = at::empty({rows, out_features}, input.options());

  const int8_t* w = weight.data_ptr<int8_t>();
  const float* w_scale = weight_scale.data_ptr<float>();
  const int8_t* codes = act.codes.data_ptr<int8_t>();
  const float* x_scale = act.scales.data_ptr<float>();
  float* result = out.data_ptr<float>();
  at::parallel_for(0, out_features, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int8_t* row = w + n * width;
      for (int64_t m = 0; m < rows; ++m) {
        const int8_t* x_codes = codes + m * width;
        const float* scales = x_scale + m * block_count;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t b = 0; b < block_count; ++b) {
          const __m256i w_block = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * kBlock));
          const __m256i x_block = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_codes + b * kBlock));
          const __m256 dot = block_dot(_mm256_sign_epi8(w_block, w_block), _mm256_sign_epi8(x_block, w_block));
          acc = _mm256_fmadd_ps(dot, _mm256_set1_ps(scales[b]), acc);
        }
        result[m * out_features + n] = horizontal_sum(acc) * w_scale[n];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(lamina, m) {
  m.def("int4_linear(Tensor x, Tensor weight, Tensor scale, Tensor minimum) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor weight, Tensor weight_scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lamina, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
}
