// Matrix products for a few rows (decoding) on x86-64 with AVX2 and FMA, and AVX-512 VNNI / BF16
// where the compiler targets them (`-march=native` on a CPU that has them): weight-only int8 and
// int4, bf16 and float32. Weight rows are streamed once a call, four at a time, prefetched ahead.
// And two for many rows (a prompt), float32 activations split into int8 pieces: by int8 weights through
// oneDNN's int8 GEMM, by int4 weights through AMX tiles.
//
// The quantized kernels quantize the activations first, per block of 32 inputs, to int8 with one float
// scale a block (symmetric: scale = max|x| / 127, code = x * (1 / scale) rounded half to even),
// then take integer dot products of unsigned by signed bytes 32 or 64 at a time (`vpdpbusd` with
// VNNI; `vpmaddubsw` + `vpmaddwd` without), and scale each block's sum in float32.
//
// lamina::int4_linear(x (M, K), weight (N, K/2) uint8, scale (N, G) float16, minimum (N, G) float16)
//   -> (M, N) float32
//   Two 4-bit codes a byte, even inputs in the low nibble; groups of K/G inputs (a multiple of
//   32) share a scale and a minimum: w = code * scale + minimum. This is `Int4Linear`'s own layout,
//   so the kernel reads the layer's parameters as they are. Unpacking 16 bytes yields the even
//   inputs' codes, then the odd ones': the activations are quantized in that order. Since the
//   codes are unsigned, sum(w * x) over a group is
//   scale * sum_blocks(x_scale * sum(code * x_code)) + minimum * sum(x).
//
// lamina::int8_linear(x (M, K), weight (N, K) int8, weight_scale (N,) float32) -> (M, N) float32
//   Symmetric codes in [-127, 127], one scale per output channel. The byte products need one
//   unsigned operand: with VNNI the weight is offset by 128 (w ^ 0x80) and 128 * sum(x) taken off
//   once a row; without, |w| multiplies x with w's sign moved onto it (`vpsignb`), since
//   `vpmaddubsw` would saturate on the offset form.
//
// lamina::int4_expert_linear(x, weight, scale, minimum, experts (M,) int64, out_features) and
// lamina::int8_expert_linear(x, weight, weight_scale, experts, out_features) -> (M, out_features)
//   The same products over experts' weights stacked in turn (expert e owns rows
//   [e * out_features, (e + 1) * out_features)): row m of x through expert experts[m]'s rows, so a
//   mixture-of-experts step picks its experts' weights without leaving the kernel.
//
// lamina::bf16_linear(x (M, K) bfloat16, weight (N, K) bfloat16) -> (M, N) float32
//   Products of bf16 pairs summed in float32 (`vdpbf16ps`; without AVX-512 BF16, widened to float32
//   and multiplied with FMA), as PyTorch's bf16 matmul does before its one rounding to bf16.
//
// lamina::f32_linear(x (M, K) float32, weight (N, K) float32) -> (M, N) float32
//   Float32 FMA sums, 16 inputs a lane group (8 without AVX-512). PyTorch's float32 matmul reads
//   the weight as fast from memory, but under `torch.compile` inductor hands it one-row inputs
//   with a zero stride, which it copies first (a clone before each of a decode step's matmuls).
//
// lamina::int8_split_linear(x (M, K) float32, weight (N, K) int8, weight_scale (N,) float32) -> (M, N) float32
//   The float32 product x @ (weight * weight_scale)^T for many rows (a prompt), through an integer
//   matrix product instead of a float one. Each row of x is written as three int8 pieces,
//   x = s * (a1 + a2 / 254 + a3 / 254^2) + e with s = max|x| / 127, each piece the rounded rest of
//   the one before (so |a_i| <= 127 and |e| <= s / (2 * 254^2), about max|x| * 6e-8: float32's own
//   rounding of the row's largest value). The pieces' rows go through one `at::_int_mm` (oneDNN's
//   AMX or VNNI int8 kernels) into exact int32 sums P_i, combined in float32 as
//   (254 * P1 + P2) * 254 + P3 (two fused multiply-adds, roundings far below the pieces' error):
//   out = that * s / 254^2 * weight_scale. A row
//   holding a non-finite value sends the call to the float product. Callers check that oneDNN's int8
//   GEMM is exact here (with VNNI or AMX; without, its 16-bit pair sums saturate).
//
// lamina::int4_split_linear(x (M, K) float32, weight (N, K/2) uint8, scale, minimum (N, G) float16)
//   -> (M, N) float32
//   The float32 product by `Int4Linear`'s weight (as int4_linear's operands) for many rows, on CPUs
//   with AMX-INT8: x split into pieces as above, laid out as the tiles' second operand; the weight's
//   codes (0..15) unpacked to bytes, 16 outputs at a time, as the first. Each group's three tile
//   products (16 outputs x 16 rows, int32, exact) are combined and scaled by the group's scale in
//   float32, plus the group's minimum times sum(x) over the group. Raises where the build has no
//   AMX or the system refuses its tile state (callers probe first).
//
// Rows of the output are split across ATen's threads (torch.set_num_threads).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include "lanes.h"
#include "rows.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__linux__)
#define LAMINA_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace {

using namespace lamina;

at::Tensor activations_as_float(const at::Tensor& x, int64_t width, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (rows, in_features), got ", x.dim(), " dimensions");
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be on the CPU, got ", x.device());
  TORCH_CHECK(x.size(1) == width, op, ": x has ", x.size(1), " columns, the weight expects ", width);
  TORCH_CHECK(width % kBlock == 0, op, ": in_features must be a multiple of 32, got ", width);
  return x.to(at::kFloat).contiguous();
}

// `x (rows, width)` of the weight's own dtype (`dtype`, named `dtype_name` in errors: the bf16 and
// float32 products), contiguous.
at::Tensor activations_of(const at::Tensor& x, at::ScalarType dtype, const char* dtype_name, int64_t width,
                          const char* op) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == dtype && x.device().is_cpu(), op, ": x must be a 2-D ", dtype_name,
              " CPU tensor, got ", x.sizes(), " ", c10::toString(x.scalar_type()));
  TORCH_CHECK(x.size(1) == width, op, ": x has ", x.size(1), " columns, the weight expects ", width);
  return x.contiguous();
}

void check_matrix(const at::Tensor& t, at::ScalarType dtype, int64_t rows, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.scalar_type() == dtype && t.is_contiguous() && t.device().is_cpu(), op, ": ", name,
              " must be a contiguous 2-D ", c10::toString(dtype), " CPU tensor, got ", t.sizes(), " ",
              c10::toString(t.scalar_type()));
  TORCH_CHECK(t.size(0) == rows, op, ": ", name, " has ", t.size(0), " rows, expected ", rows);
}

// The (rows, out_features) float32 product whose outputs [begin, end) of every activation row
// `outputs(begin, end, store)` computes (rows.h's `*_outputs`); the outputs are split across ATen's
// threads.
template <typename Outputs>
at::Tensor threaded_products(int64_t rows, int64_t out_features, const at::TensorOptions& options,
                             const Outputs& outputs) {
  at::Tensor out = at::empty({rows, out_features}, options.dtype(at::kFloat));
  float* result = out.data_ptr<float>();
  at::parallel_for(0, out_features, 16, [&](int64_t begin, int64_t end) {
    outputs(begin, end, into(result, out_features));
  });
  return out;
}

// No routing for a null `experts`; else `experts` (M,) int64 in [0, weight rows / out_features), checked.
Routing routing(const at::Tensor* experts_or_null, int64_t rows, int64_t weight_rows, int64_t out_features,
                const char* op) {
  if (experts_or_null == nullptr) return {nullptr, out_features};
  const at::Tensor& experts = *experts_or_null;
  TORCH_CHECK(experts.dim() == 1 && experts.scalar_type() == at::kLong && experts.is_contiguous() &&
                  experts.size(0) == rows,
              op, ": experts must be a contiguous int64 vector of ", rows, " indices, got ", experts.sizes(), " ",
              c10::toString(experts.scalar_type()));
  TORCH_CHECK(out_features > 0 && weight_rows % out_features == 0, op, ": ", weight_rows,
              " weight rows are no whole number of experts of ", out_features, " rows");
  const int64_t* index = experts.data_ptr<int64_t>();
  for (int64_t m = 0; m < rows; ++m) {
    TORCH_CHECK(index[m] >= 0 && index[m] < weight_rows / out_features, op, ": expert ", index[m], " of row ", m,
                " is outside [0, ", weight_rows / out_features, ")");
  }
  return {index, out_features};
}

at::Tensor int4_product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                        const at::Tensor& minimum, const at::Tensor* experts, int64_t out_features, const char* op) {
  const int64_t weight_rows = weight.size(0), width = 2 * weight.size(1);
  check_matrix(weight, at::kByte, weight_rows, op, "weight");
  check_matrix(scale, at::kHalf, weight_rows, op, "scale");
  check_matrix(minimum, at::kHalf, weight_rows, op, "minimum");
  const int64_t groups = scale.size(1);
  TORCH_CHECK(minimum.size(1) == groups, op, ": scale has ", groups, " groups a row, minimum ", minimum.size(1));
  TORCH_CHECK(groups > 0 && width % (groups * kBlock) == 0, op, ": ", groups, " groups do not split ", width,
              " inputs into multiples of 32");
  const at::Tensor input = activations_as_float(x, width, op);
  const int64_t rows = input.size(0);
  const Routing route = routing(experts, rows, weight_rows, out_features, op);
  const Int4Weights w{weight.data_ptr<uint8_t>(), scale.data_ptr<at::Half>(), minimum.data_ptr<at::Half>(), width,
                      groups};
  Int4Inputs in;
  prepare_int4(w, input.data_ptr<float>(), rows, in);
  return threaded_products(rows, out_features, input.options(), [&](int64_t begin, int64_t end, const auto& store) {
    int4_outputs(w, in, rows, route, begin, end, store);
  });
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                       const at::Tensor& minimum) {
  return int4_product(x, weight, scale, minimum, nullptr, weight.size(0), "int4_linear");
}

at::Tensor int4_expert_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                              const at::Tensor& minimum, const at::Tensor& experts, int64_t out_features) {
  return int4_product(x, weight, scale, minimum, &experts, out_features, "int4_expert_linear");
}

at::Tensor int8_product(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                        const at::Tensor* experts, int64_t out_features, const char* op) {
  const int64_t weight_rows = weight.size(0), width = weight.size(1);
  check_matrix(weight, at::kChar, weight_rows, op, "weight");
  TORCH_CHECK(weight_scale.dim() == 1 && weight_scale.scalar_type() == at::kFloat && weight_scale.is_contiguous() &&
                  weight_scale.size(0) == weight_rows,
              op, ": weight_scale must be a contiguous float32 vector of ", weight_rows, " scales");
  const at::Tensor input = activations_as_float(x, width, op);
  const int64_t rows = input.size(0);
  const Routing route = routing(experts, rows, weight_rows, out_features, op);
  const Int8Weights w{weight.data_ptr<int8_t>(), weight_scale.data_ptr<float>(), width};
  Int8Inputs in;
  prepare_int8(w, input.data_ptr<float>(), rows, in);
  return threaded_products(rows, out_features, input.options(), [&](int64_t begin, int64_t end, const auto& store) {
    int8_outputs(w, in, rows, route, begin, end, store);
  });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale) {
  return int8_product(x, weight, weight_scale, nullptr, weight.size(0), "int8_linear");
}

at::Tensor int8_expert_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                              const at::Tensor& experts, int64_t out_features) {
  return int8_product(x, weight, weight_scale, &experts, out_features, "int8_expert_linear");
}

// Pieces per activation row in the split products and the ratio between their scales.
constexpr int kPieces = 3;
constexpr float kPieceRatio = 254.f;
// Rows of x a call of `at::_int_mm` takes at most: its int32 output (3 pieces a row) stays near 32 MB.
constexpr int64_t kSplitOutputBytes = int64_t{32} << 20;

using L = lamina::FloatLanes;

// Each row's unit s / 254^2 (s = max|x| / 127), or NaN where the row holds a non-finite value;
// `rows_padded` - `rows` zeros after them.
std::vector<float> piece_units(const float* xs, int64_t rows, int64_t width, int64_t rows_padded) {
  std::vector<float> unit(rows_padded, 0.f);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float* row = xs + m * width;
      L::Vector largest = L::zero(), poison = L::zero();  // poison: NaN once any value is not finite
      int64_t k = 0;
      for (; k + L::kWidth <= width; k += L::kWidth) {
        const L::Vector v = L::load(row + k);
        largest = L::max(largest, L::abs(v));
        poison = L::add(poison, L::mul(v, L::zero()));
      }
      float top = L::largest(largest), bad = L::sum(poison);
      for (; k < width; ++k) top = std::max(top, std::fabs(row[k])), bad += row[k] * 0.f;
      unit[m] = std::isfinite(top) && !std::isnan(bad) ? top / float(127 * kPieceRatio * kPieceRatio) : NAN;
    }
  });
  return unit;
}

bool any_nan(const std::vector<float>& values) {
  return std::any_of(values.begin(), values.end(), [](float v) { return std::isnan(v); });
}

// 1 / (unit * 254^2): x times it is in [-127, 127]; 0 for a zero row
inline float piece_inverse(float unit) { return unit > 0 ? 1.f / (unit * float(kPieceRatio * kPieceRatio)) : 0.f; }

// The three pieces of values v in [-127, 127]: v = p1 + p2 / 254 + p3 / 254^2 + e, |e| <= 1 / (2 * 254^2).
// The rest after each piece is within half a unit of it, so every piece is in [-127, 127].
struct PieceLanes {
  L::Vector p1, p2, p3;
};

inline PieceLanes split_lanes(L::Vector v) {
  const L::Vector ratio = L::fill(kPieceRatio), minus_one = L::fill(-1.f);
  const L::Vector p1 = L::round(v);
  const L::Vector r1 = L::mul(L::fma(p1, minus_one, v), ratio);
  const L::Vector p2 = L::round(r1);
  return {p1, p2, L::round(L::mul(L::fma(p2, minus_one, r1), ratio))};
}

inline void split_value(float v, int8_t* p1, int8_t* p2, int8_t* p3) {
  const float q1 = std::nearbyintf(v), r1 = (v - q1) * kPieceRatio, q2 = std::nearbyintf(r1);
  *p1 = static_cast<int8_t>(q1);
  *p2 = static_cast<int8_t>(q2);
  *p3 = static_cast<int8_t>(std::nearbyintf((r1 - q2) * kPieceRatio));
}

// 254^2 P1 + 254 P2 + P3 for int32 sums of the pieces: one float32 rounding
inline L::Vector combine_lanes(L::Vector p1, L::Vector p2, L::Vector p3) {
  return L::fma(L::fma(p1, L::fill(kPieceRatio), p2), L::fill(kPieceRatio), p3);
}

at::Tensor int8_split_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale) {
  const char* op = "int8_split_linear";
  const int64_t out_features = weight.size(0), width = weight.size(1);
  check_matrix(weight, at::kChar, out_features, op, "weight");
  TORCH_CHECK(weight_scale.dim() == 1 && weight_scale.scalar_type() == at::kFloat && weight_scale.is_contiguous() &&
                  weight_scale.size(0) == out_features,
              op, ": weight_scale must be a contiguous float32 vector of ", out_features, " scales");
  const at::Tensor input = activations_of(x, at::kFloat, "float32", width, op);
  const int64_t rows = input.size(0);
  const float* xs = input.data_ptr<float>();
  const std::vector<float> unit = piece_units(xs, rows, width, rows);
  if (any_nan(unit)) return input.mm(weight.to(at::kFloat).t()).mul_(weight_scale);

  at::Tensor out = at::empty({rows, out_features}, input.options());
  const int64_t block = std::max<int64_t>(16, kSplitOutputBytes / (kPieces * 4 * std::max<int64_t>(out_features, 1)));
  const at::Tensor weight_t = weight.t();
  const float* w_scale = weight_scale.data_ptr<float>();
  for (int64_t first = 0; first < rows; first += block) {
    const int64_t count = std::min(block, rows - first);
    // pieces (3, count, K): piece i of row m at (i * count + m) * K
    at::Tensor pieces = at::empty({kPieces * count, width}, weight.options());
    int8_t* piece = pieces.data_ptr<int8_t>();
    at::parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const float inverse = piece_inverse(unit[first + m]);
        const float* row = xs + (first + m) * width;
        int8_t* a1 = piece + m * width;
        int8_t* a2 = a1 + count * width;
        int8_t* a3 = a2 + count * width;
        int64_t k = 0;
        for (; k + L::kWidth <= width; k += L::kWidth) {
          const PieceLanes split = split_lanes(L::mul(L::load(row + k), L::fill(inverse)));
          L::store_int8(a1 + k, split.p1);
          L::store_int8(a2 + k, split.p2);
          L::store_int8(a3 + k, split.p3);
        }
        for (; k < width; ++k) split_value(row[k] * inverse, a1 + k, a2 + k, a3 + k);
      }
    });
    const at::Tensor sums = at::_int_mm(pieces, weight_t);  // (3 * count, N) int32
    const int32_t* total = sums.data_ptr<int32_t>();
    float* result = out.data_ptr<float>() + first * out_features;
    at::parallel_for(0, count, 4, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const int32_t* p1 = total + m * out_features;
        const int32_t* p2 = p1 + count * out_features;
        const int32_t* p3 = p2 + count * out_features;
        const float u = unit[first + m];
        float* dst = result + m * out_features;
        int64_t n = 0;
        for (; n + L::kWidth <= out_features; n += L::kWidth) {
          const L::Vector sum = combine_lanes(L::load_int32(p1 + n), L::load_int32(p2 + n), L::load_int32(p3 + n));
          L::store(dst + n, L::mul(L::mul(sum, L::fill(u)), L::load(w_scale + n)));
        }
        for (; n < out_features; ++n) {
          const float sum = std::fma(std::fma(float(p1[n]), kPieceRatio, float(p2[n])), kPieceRatio, float(p3[n]));
          dst[n] = sum * u * w_scale[n];
        }
      }
    });
  }
  return out;
}

// The int4 layer's weight as float32 (N, K): code * scale + minimum, each rounded as
// `Int4Linear.dequantize` does.
at::Tensor int4_dequantized(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& minimum) {
  const int64_t out_features = weight.size(0), width = weight.size(1) * 2, groups = scale.size(1);
  const at::Tensor codes = at::stack({weight.bitwise_and(15), weight.bitwise_right_shift(4)}, -1).to(at::kFloat);
  return codes.view({out_features, groups, width / groups})
      .mul_(scale.to(at::kFloat).unsqueeze(-1))
      .add_(minimum.to(at::kFloat).unsqueeze(-1))
      .view({out_features, width});
}

#ifdef LAMINA_AMX
// Linux hands out AMX's tile state only on request, once a process.
bool amx_permitted() {
  static const bool permitted = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return permitted;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
#endif

at::Tensor int4_split_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                             const at::Tensor& minimum) {
  const char* op = "int4_split_linear";
  const int64_t out_features = weight.size(0), width = weight.size(1) * 2, groups = scale.dim() == 2 ? scale.size(1) : 0;
  check_matrix(weight, at::kByte, out_features, op, "weight");
  check_matrix(scale, at::kHalf, out_features, op, "scale");
  check_matrix(minimum, at::kHalf, out_features, op, "minimum");
  TORCH_CHECK(groups > 0 && minimum.size(1) == groups && width % groups == 0 && (width / groups) % kBlock == 0, op,
              ": ", groups, " groups do not split ", width, " inputs into multiples of 32");
  const at::Tensor input = activations_of(x, at::kFloat, "float32", width, op);
#ifndef LAMINA_AMX
  TORCH_CHECK(false, op, ": this build has no AMX-INT8 (the CPU or the compiler lacks it)");
  return input;
#else
  TORCH_CHECK(amx_permitted(), op, ": the system refused AMX tile state (arch_prctl)");
  const int64_t rows = input.size(0), group = width / groups, quads = width / 4;
  const int64_t m_blocks = (rows + 15) / 16, n_blocks = (out_features + 15) / 16;
  const float* xs = input.data_ptr<float>();
  const std::vector<float> unit = piece_units(xs, rows, width, m_blocks * 16);
  if (any_nan(unit)) return input.mm(int4_dequantized(weight, scale, minimum).t());

  // The activations' pieces in the layout of AMX's second operand: piece p, block b of 16 rows, row
  // q of 4 inputs, then 16 rows' 4 bytes; and each group's sum of x / unit, (block, group, 16).
  std::vector<int8_t> pieces(kPieces * m_blocks * quads * 64, 0);
  std::vector<float> group_sums(m_blocks * groups * 16, 0.f);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const L::Vector inverse = L::fill(piece_inverse(unit[m]));
      const float* row = xs + m * width;
      int8_t* first = pieces.data() + (m / 16) * quads * 64 + (m % 16) * 4;
      for (int64_t g = 0; g < groups; ++g) {
        L::Vector sum = L::zero();
        for (int64_t k = g * group; k < (g + 1) * group; k += L::kWidth) {
          const L::Vector v = L::mul(L::load(row + k), inverse);
          sum = L::add(sum, v);
          const PieceLanes split = split_lanes(v);
          const L::Vector parts[kPieces] = {split.p1, split.p2, split.p3};
          for (int p = 0; p < kPieces; ++p) {
            alignas(64) int8_t bytes[L::kWidth];
            L::store_int8(bytes, parts[p]);
            int8_t* dst = first + p * m_blocks * quads * 64 + (k / 4) * 64;
            for (int q = 0; q < L::kWidth / 4; ++q) std::memcpy(dst + q * 64, bytes + q * 4, 4);
          }
        }
        group_sums[((m / 16) * groups + g) * 16 + m % 16] = L::sum(sum) * kPieceRatio * kPieceRatio;  // x / unit
      }
    }
  });

  // scales and minimums as float32, (n_blocks * 16, groups), zero past the last output
  std::vector<float> scales(n_blocks * 16 * groups, 0.f), minimums(n_blocks * 16 * groups, 0.f);
  halves_to_floats(scale.data_ptr<at::Half>(), out_features * groups, scales.data());
  halves_to_floats(minimum.data_ptr<at::Half>(), out_features * groups, minimums.data());

  at::Tensor out = at::empty({rows, out_features}, input.options());
  float* result = out.data_ptr<float>();
  const uint8_t* packed = weight.data_ptr<uint8_t>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    TileConfig config;
    config.rows[0] = 16, config.bytes_per_row[0] = 32;  // weight codes: 16 outputs x 32 inputs
    for (int t = 1; t <= 3; ++t) config.rows[t] = 8, config.bytes_per_row[t] = 64;  // pieces: 32 inputs x 16 rows
    for (int t = 4; t <= 6; ++t) config.rows[t] = 16, config.bytes_per_row[t] = 64;  // sums: 16 outputs x 16 rows
    _tile_loadconfig(&config);
    std::vector<int8_t> codes(16 * width);
    alignas(64) int32_t sums[kPieces][16 * 16];
    alignas(64) float block_out[16 * 16];
    for (int64_t nb = begin; nb < end; ++nb) {
      const int64_t n0 = nb * 16, n_count = std::min<int64_t>(16, out_features - n0);
      // the 16 outputs' codes one byte an input, in input order (rows past the last output: zeros)
      std::fill(codes.begin() + n_count * width, codes.end(), 0);
      for (int64_t r = 0; r < n_count; ++r) {
        const uint8_t* src = packed + (n0 + r) * (width / 2);
        for (int64_t j = 0; j < width / 2; j += 16) {
          const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j));
          const __m128i low = _mm_and_si128(bytes, _mm_set1_epi8(15));
          const __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(15));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(codes.data() + r * width + 2 * j), _mm_unpacklo_epi8(low, high));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(codes.data() + r * width + 2 * j + 16),
                           _mm_unpackhi_epi8(low, high));
        }
      }
      const float* n_scales = scales.data() + n0 * groups;
      const float* n_minimums = minimums.data() + n0 * groups;
      for (int64_t mb = 0; mb < m_blocks; ++mb) {
        __m512 acc[16];
        for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t g = 0; g < groups; ++g) {
          _tile_zero(4);
          _tile_zero(5);
          _tile_zero(6);
          for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
            _tile_loadd(0, codes.data() + k, width);
            const int8_t* piece = pieces.data() + (mb * quads + k / 4) * 64;
            _tile_loadd(1, piece, 64);
            _tile_loadd(2, piece + m_blocks * quads * 64, 64);
            _tile_loadd(3, piece + 2 * m_blocks * quads * 64, 64);
            _tile_dpbssd(4, 0, 1);
            _tile_dpbssd(5, 0, 2);
            _tile_dpbssd(6, 0, 3);
          }
          _tile_stored(4, sums[0], 64);
          _tile_stored(5, sums[1], 64);
          _tile_stored(6, sums[2], 64);
          const __m512 x_sum = _mm512_loadu_ps(group_sums.data() + (mb * groups + g) * 16);
#pragma GCC unroll 16
          for (int r = 0; r < 16; ++r) {
            const __m512 total = combine_lanes(L::load_int32(sums[0] + r * 16), L::load_int32(sums[1] + r * 16),
                                               L::load_int32(sums[2] + r * 16));
            acc[r] = _mm512_fmadd_ps(total, _mm512_set1_ps(n_scales[r * groups + g]), acc[r]);
            acc[r] = _mm512_fmadd_ps(x_sum, _mm512_set1_ps(n_minimums[r * groups + g]), acc[r]);
          }
        }
        const __m512 units = _mm512_loadu_ps(unit.data() + mb * 16);
        for (int r = 0; r < 16; ++r) _mm512_store_ps(block_out + r * 16, _mm512_mul_ps(acc[r], units));
        const int64_t m_count = std::min<int64_t>(16, rows - mb * 16);
        for (int64_t i = 0; i < m_count; ++i) {
          float* dst = result + (mb * 16 + i) * out_features + n0;
          for (int64_t r = 0; r < n_count; ++r) dst[r] = block_out[r * 16 + i];
        }
      }
    }
    _tile_release();
  });
  return out;
#endif
}

// One output of the bf16 product for `count` (≤ kRows) weight rows and one row of activations.
template <int count>
inline void bf16_rows(const uint16_t* rows, int64_t width, const uint16_t* x, const float* x_float,
                      float* out) {
  int64_t k = 0;
  float tail[kRows] = {};
#ifdef LAMINA_AVX512_BF16
  __m512 wide[kRows];
  for (int r = 0; r < kRows; ++r) wide[r] = _mm512_setzero_ps();
  for (; k + 32 <= width; k += 32) {
    const __m512bh xs = (__m512bh)_mm512_loadu_si512(x + k);
    for (int r = 0; r < count; ++r) {
      prefetch(rows + (r + kPrefetchRows) * width + k);
      wide[r] = _mm512_dpbf16_ps(wide[r], (__m512bh)_mm512_loadu_si512(rows + r * width + k), xs);
    }
  }
  for (int r = 0; r < count; ++r) tail[r] = _mm512_reduce_add_ps(wide[r]);
#else
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  for (; k + 8 <= width; k += 8) {
    const __m256 xs = _mm256_loadu_ps(x_float + k);
    for (int r = 0; r < count; ++r) {
      prefetch(rows + (r + kPrefetchRows) * width + k);
      const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + r * width + k));
      const __m256 w = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
      acc[r] = _mm256_fmadd_ps(w, xs, acc[r]);
    }
  }
  for (int r = 0; r < count; ++r) tail[r] = horizontal_sum(acc[r]);
#endif
  for (int r = 0; r < count; ++r) {
    for (int64_t i = k; i < width; ++i) {
      const uint32_t bits = static_cast<uint32_t>(rows[r * width + i]) << 16;
      float w;
      std::memcpy(&w, &bits, sizeof(w));
      tail[r] += w * x_float[i];
    }
    out[r] = tail[r];
  }
}

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& weight) {
  const int64_t out_features = weight.size(0), width = weight.size(1);
  check_matrix(weight, at::kBFloat16, out_features, "bf16_linear", "weight");
  const at::Tensor input = activations_of(x, at::kBFloat16, "BFloat16", width, "bf16_linear");
  const at::Tensor input_float = input.to(at::kFloat);
  const auto* w = reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>());
  const auto* xs = reinterpret_cast<const uint16_t*>(input.data_ptr<at::BFloat16>());
  const float* xs_float = input_float.data_ptr<float>();
  const int64_t rows = input.size(0);
  return threaded_products(rows, out_features, input.options(), [&](int64_t begin, int64_t end, const auto& store) {
    row_range(rows, begin, end, [&](int64_t n, auto count, int64_t m, float* sums) {
      bf16_rows<count>(w + n * width, width, xs + m * width, xs_float + m * width, sums);
    }, store);
  });
}


at::Tensor f32_linear(const at::Tensor& x, const at::Tensor& weight) {
  const int64_t out_features = weight.size(0), width = weight.size(1);
  check_matrix(weight, at::kFloat, out_features, "f32_linear", "weight");
  const at::Tensor input = activations_of(x, at::kFloat, "float32", width, "f32_linear");
  const float* w = weight.data_ptr<float>();
  const float* xs = input.data_ptr<float>();
  const int64_t rows = input.size(0);
  return threaded_products(rows, out_features, input.options(), [&](int64_t begin, int64_t end, const auto& store) {
    f32_outputs(w, width, xs, rows, begin, end, store);
  });
}

}  // namespace

TORCH_LIBRARY(lamina, m) {
  m.def("int4_linear(Tensor x, Tensor weight, Tensor scale, Tensor minimum) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor weight, Tensor weight_scale) -> Tensor");
  m.def("int4_expert_linear(Tensor x, Tensor weight, Tensor scale, Tensor minimum, Tensor experts, int out_features) -> Tensor");
  m.def("int8_expert_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor experts, int out_features) -> Tensor");
  m.def("int8_split_linear(Tensor x, Tensor weight, Tensor weight_scale) -> Tensor");
  m.def("int4_split_linear(Tensor x, Tensor weight, Tensor scale, Tensor minimum) -> Tensor");
  m.def("bf16_linear(Tensor x, Tensor weight) -> Tensor");
  m.def("f32_linear(Tensor x, Tensor weight) -> Tensor");
}

TORCH_LIBRARY_IMPL(lamina, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("int4_expert_linear", &int4_expert_linear);
  m.impl("int8_expert_linear", &int8_expert_linear);
  m.impl("int8_split_linear", &int8_split_linear);
  m.impl("int4_split_linear", &int4_split_linear);
  m.impl("bf16_linear", &bf16_linear);
  m.impl("f32_linear", &f32_linear);
}
