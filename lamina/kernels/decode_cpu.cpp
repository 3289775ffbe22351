// lamina's native decode step: one token of a Llama-architecture decoder (RMSNorm, rotary attention
// over a static cache, SwiGLU MLP, no biases) in one call and one parallel region.
//
// A compiled step runs the same kernels, but each of its products and attentions is a call through
// the dispatcher that opens and joins its own parallel region, with inductor's kernels, the
// wrapper's bookkeeping and Python between them, the second thread waiting. Here the threads stay
// in one region for the whole step and meet at a barrier after each phase (five a layer); each
// computes the small element-wise parts it needs itself (norms, rotary, SiLU, quantizing a
// product's input) instead of waiting for one thread to.
//
// torch.classes.lamina.DecodeStep(tensors, kinds, sizes, scales, windows, eps)
//   The order of `tensors` and `sizes` and the numbering of `kinds` are declared once, in `Layout`
//   below; `DecodeStep.layout()` hands that declaration to Python (`native_step.py`), which builds
//   its arguments from it, and the constructor reads them in the same order. A product is the
//   tensors of its kind (`kinds`, one per product in order):
//   float32 [weight (N, K)], int8 [weight (N, K) int8, scale (N,) float32] (`Int8Linear`),
//   int4 [weight (N, K/2) uint8, scale, minimum (N, groups) float16] (`Int4Linear`).
//   qkv's rows are the queries' then the keys' then the values' (`DecoderAttention.qkv_proj`),
//   gate_up's the gate's then the up projection's. scales: each layer's attention scale; windows:
//   each layer's sliding window, 0 for none. The step holds these tensors: changes made to them in
//   place are seen.
//
// .step(input_ids (B,) int64, cos (B, D), sin (B, D) float32, slot, padding (B, >slot) int64 or
//       None, caches [keys 0, values 0, keys 1, ...] float32, trace (layers + 1, B, hidden) float32 or
//       None) -> logits (B, vocab)
//   A full-attention layer's cache is static, (B, kv_heads, S, D) with S > slot: the token's keys
//   and values go to `slot`, and the query attends the slots up to it that `padding` does not
//   mark 0 (and its own). A sliding layer's is a ring of its window's W slots, (B, kv_heads, W, D)
//   (`RollingLayerCache`): the token goes to slot % W, over the key of position slot - W, and the
//   query attends the positions in (slot - W, slot] that are not padding. The maths and the row
//   kernels are those of the layers' own path (rows.h, attention.h). `trace`, where given, receives
//   the hidden state entering each layer and the last layer's output (before the final norm): the
//   per-layer comparison with the eager step (`native_step.hidden_states`).
//
// .step_paged(input_ids (B,), cos, sin, positions (B,) int64, tables [per layer (B, blocks) int64],
//             firsts [per layer (B,) int64], block_size, caches [keys 0, values 0, ...]) -> logits (B, vocab)
//   The same step over the server's block pool: each layer's cache is (blocks * block_size,
//   kv_heads, D), shared by the rows; row b is at positions[b] and its layer-l keys of position p
//   are in block tables[l][b][p / block_size - firsts[l][b]] (`PagedCaches`). The token's keys and
//   values are written in its block, and the query reads the blocks in place: every position up to
//   its own, or those of the layer's window. Every block a row reads must be in its table.

#include <ATen/Parallel.h>
#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <omp.h>

#include <cmath>
#include <cstring>
#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "attention.h"
#include "lanes.h"
#include "rows.h"

// SLEEF's exp within 1 ulp, as libtorch exports it (the one `Vectorized<float>::exp` calls)
extern "C" {
#ifdef __AVX512F__
__m512 Sleef_expf16_u10(__m512);
#else
__m256 Sleef_expf8_u10(__m256);
#endif
}

namespace {

using namespace lamina;

#ifdef __AVX512F__
inline __m512 sleef_exp(__m512 x) { return Sleef_expf16_u10(x); }
#else
inline __m256 sleef_exp(__m256 x) { return Sleef_expf8_u10(x); }
#endif
using L = FloatLanes;

// The one declaration of the constructor's arguments: a product's kind is its index in `kinds`;
// `tensors` holds the model's operands in `model` order, then each layer's in `layer` order;
// `sizes` holds the sizes in `sizes` order.
namespace Layout {
constexpr std::array<std::string_view, 3> kinds{"float32", "int8", "int4"};
constexpr std::array<std::string_view, 3> model{"embedding", "final_norm", "head"};
constexpr std::array<std::string_view, 6> layer{"input_norm", "post_norm", "qkv", "o", "gate_up", "down"};
constexpr std::array<std::string_view, 7> sizes{"hidden", "heads", "kv_heads", "head_dim", "intermediate", "layers",
                                                "vocab"};
}  // namespace Layout

enum Kind : int64_t { kFloat32 = 0, kInt8 = 1, kInt4 = 2 };
static_assert(Layout::kinds[kFloat32] == "float32" && Layout::kinds[kInt8] == "int8" && Layout::kinds[kInt4] == "int4",
              "Kind must number the products as Layout::kinds lists them");

// Where `name` stands in `names` (a name not declared there fails the build where it is a constant).
template <size_t N>
consteval size_t index_of(const std::array<std::string_view, N>& names, std::string_view name) {
  for (size_t i = 0; i < N; ++i) {
    if (names[i] == name) return i;
  }
  throw "not in the layout";
}

struct Product {
  int64_t kind, rows, width;
  const float* f32;
  Int8Weights int8;
  Int4Weights int4;
};

// One thread's working buffers.
struct Scratch {
  Int8Inputs int8;
  Int4Inputs int4;
  std::vector<float> normed, gated, keys, query, probs;
  std::vector<const float*> key_rows, value_rows;
};

// Thread t's share [begin, end) of n items, in whole groups of `align`.
inline std::pair<int64_t, int64_t> share(int64_t n, int t, int threads, int64_t align) {
  const int64_t chunk = ((n + threads - 1) / threads + align - 1) / align * align;
  const int64_t begin = std::min(n, t * chunk);
  return {begin, std::min(n, begin + chunk)};
}

// Thread t's outputs of product `p` over `x (rows, p.width)`, each handed to store(m, n, value).
template <typename Store>
void product_share(const Product& p, const float* x, int64_t rows, Scratch& s, int t, int threads,
                   const Store& store) {
  const auto [begin, end] = share(p.rows, t, threads, kRows);
  if (begin >= end) return;
  const Routing all{nullptr, p.rows};
  if (p.kind == kFloat32) {
    f32_outputs(p.f32, p.width, x, rows, begin, end, store);
  } else if (p.kind == kInt8) {
    prepare_int8(p.int8, x, rows, s.int8);
    int8_outputs(p.int8, s.int8, rows, all, begin, end, store);
  } else {
    prepare_int4(p.int4, x, rows, s.int4);
    int4_outputs(p.int4, s.int4, rows, all, begin, end, store);
  }
}

// The sum of x[i]^2 over a row of n >= 8 floats, each square rounded first (as `x.pow(2)`) and
// summed in the order of ATen's float32 sum over a contiguous row (SumKernel.cpp's inner sum,
// which runs 8-lane vectors here: four interleaved accumulators, folded into a cascade every 16
// vectors each, then the 8 lanes added in turn). Another order moves the norm by an ulp, which an
// int8-rounded activation turns into another token at a near-tie.
float sum_of_squares_as_aten(const float* x, int64_t n) {
  constexpr int64_t kLanes = 8, kInterleave = 4, kLevels = 4;
  const int64_t vectors = n / kLanes, rows = vectors / kInterleave;
  const int64_t ceil_log2 = rows <= 2 ? 1 : 64 - __builtin_clzll(static_cast<uint64_t>(rows - 1));
  const int64_t power = std::max<int64_t>(4, ceil_log2 / kLevels), step = int64_t{1} << power;
  float acc[kLevels][kInterleave][kLanes] = {};
  auto add_row = [&](int64_t row) {
    for (int64_t k = 0; k < kInterleave; ++k) {
      const float* v = x + (row * kInterleave + k) * kLanes;
      for (int64_t l = 0; l < kLanes; ++l) {
        const float square = v[l] * v[l];
        acc[0][k][l] += square;
      }
    }
  };
  auto fold = [&](int64_t into, int64_t from) {
    for (int64_t k = 0; k < kInterleave; ++k) {
      for (int64_t l = 0; l < kLanes; ++l) acc[into][k][l] += acc[from][k][l];
    }
  };
  int64_t row = 0;
  while (row + step <= rows) {
    for (int64_t j = 0; j < step; ++j) add_row(row++);
    for (int64_t level = 1; level < kLevels; ++level) {
      fold(level, level - 1);
      std::memset(acc[level - 1], 0, sizeof(acc[level - 1]));
      if ((row & ((step - 1) << (level * power))) != 0) break;
    }
  }
  for (; row < rows; ++row) add_row(row);
  for (int64_t level = 1; level < kLevels; ++level) fold(0, level);
  float* lanes = acc[0][0];
  for (int64_t v = rows * kInterleave; v < vectors; ++v) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const float square = x[v * kLanes + l] * x[v * kLanes + l];
      lanes[l] += square;
    }
  }
  for (int64_t k = 1; k < kInterleave; ++k) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += acc[0][k][l];
  }
  float total = 0.f;
  for (int64_t i = vectors * kLanes; i < n; ++i) {
    const float square = x[i] * x[i];
    total += square;
  }
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// out = weight * (x * rsqrt(mean(x^2) + eps)), rounded in that order (as `RMSNorm`).
void rms_norm(const float* x, const float* weight, int64_t width, float eps, float* out) {
  const float inverse = 1.f / std::sqrt(sum_of_squares_as_aten(x, width) / static_cast<float>(width) + eps);
  for (int64_t i = 0; i < width; ++i) out[i] = weight[i] * (x[i] * inverse);
}

// out = x * cos + rotate_half(x) * sin over one head (`apply_rotary` with the whole head rotated).
void rotate(const float* x, const float* cos, const float* sin, int64_t dim, float* out) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] + -x[i + half] * sin[i];
  for (int64_t i = half; i < dim; ++i) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up, with the exp PyTorch's SiLU takes (SLEEF's
// within 1 ulp, which libtorch exports), so that each value rounds as `F.silu(gate) * up` does.
void silu_times(const float* gate, const float* up, int64_t count, float* out) {
  int64_t i = 0;
  for (; i + L::kWidth <= count; i += L::kWidth) {
    const L::Vector g = L::load(gate + i);
    const L::Vector silu = L::div(g, L::add(L::fill(1.f), sleef_exp(L::mul(g, L::fill(-1.f)))));
    L::store(out + i, L::mul(silu, L::load(up + i)));
  }
  for (; i < count; ++i) out[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

// Where each layer's keys and values are for one step of `DecodeStep::run`, with the same three
// questions answered for each kind of cache: `head_stride(l)`, the floats between two key heads of
// one token; `own_offset(l, window, b)`, where row b's new token goes (head 0); and
// `visit(l, window, b, f)`, which calls f with the offset (head 0) of every key row b's query
// attends, in the order the sums run, and -1 for the new token itself.

// generate's caches: a static (B, kv_heads, S, D) buffer per full-attention layer, written at
// `slot`, and a ring of a sliding layer's window's W slots, written at slot % W; keys are summed in
// slot order (ring order for a ring), as the layers' own step sums them.
struct DenseCaches {
  int64_t slot;
  const int64_t* mask;  // (B, mask_width), 0: a padding slot; or null
  int64_t mask_width, kv_heads, dim;
  std::vector<std::pair<float*, float*>> buffers;  // per layer: keys, values
  std::vector<int64_t> slots;                      // per layer: S

  int64_t head_stride(int64_t l) const { return slots[l] * dim; }
  int64_t own_slot(int64_t l, int64_t window) const { return window > 0 ? slot % slots[l] : slot; }
  int64_t own_offset(int64_t l, int64_t window, int64_t b) const {
    return (b * kv_heads * slots[l] + own_slot(l, window)) * dim;
  }
  template <typename Visit>
  void visit(int64_t l, int64_t window, int64_t b, const Visit& visit) const {
    const int64_t count = slots[l], own = own_slot(l, window);
    for (int64_t i = 0; i < (window > 0 ? count : slot + 1); ++i) {
      if (i == own) {
        visit(-1);
        continue;
      }
      // the position in slot i: i itself, or in a ring the last position before `slot` landing on i
      const int64_t position = window > 0 ? slot - (own - i + count) % count : i;
      if (position < 0 || (mask != nullptr && mask[b * mask_width + position] == 0)) continue;
      visit((b * kv_heads * count + i) * dim);
    }
  }
};

// The server's block pool (lamina/serving/kv.py): per layer one (blocks * block_size, kv_heads, D)
// buffer of fixed-size blocks; row b at its own position, whose layer-l keys for position p are in
// slot table[b][p / block_size - first[b]] * block_size + p % block_size. The keys are read there in
// place and summed in the order generate's cache holds them: positions in order for a
// full-attention layer, ring order for a sliding layer (position p where a ring of the window's W
// slots puts it, p % W), so a row's logits are the bits of generate's on its sequence alone.
struct PagedCaches {
  const int64_t* positions;  // (B,)
  int64_t block_size, kv_heads, dim;
  std::vector<std::pair<float*, float*>> buffers;  // per layer: keys, values
  std::vector<const int64_t*> tables;              // per layer: (B, widths[l]) block ids
  std::vector<int64_t> widths;
  std::vector<const int64_t*> firsts;  // per layer: (B,) the logical index of each row's first block

  int64_t head_stride(int64_t) const { return dim; }
  int64_t offset(int64_t l, int64_t b, int64_t position) const {
    const int64_t block = tables[l][b * widths[l] + position / block_size - firsts[l][b]];
    return (block * block_size + position % block_size) * kv_heads * dim;
  }
  int64_t own_offset(int64_t l, int64_t, int64_t b) const { return offset(l, b, positions[b]); }
  template <typename Visit>
  void visit(int64_t l, int64_t window, int64_t b, const Visit& visit) const {
    const int64_t position = positions[b];
    if (window == 0) {
      for (int64_t p = 0; p < position; ++p) visit(offset(l, b, p));
      visit(-1);
      return;
    }
    for (int64_t i = 0; i < std::min(window, position + 1); ++i) {
      // the position ring slot i holds: the last one up to `position` with p % window == i
      const int64_t p = position - ((position - i) % window + window) % window;
      visit(p == position ? -1 : offset(l, b, p));
    }
  }
};

class DecodeStep : public torch::CustomClassHolder {
 public:
  DecodeStep(std::vector<at::Tensor> tensors, std::vector<int64_t> kinds, std::vector<int64_t> sizes,
             std::vector<double> scales, std::vector<int64_t> windows, double eps)
      : tensors_(std::move(tensors)), eps_(static_cast<float>(eps)) {
    TORCH_CHECK(sizes.size() == Layout::sizes.size(), "DecodeStep: sizes must be ", Layout::sizes.size(),
                " values (DecodeStep.layout()), got ", sizes.size());
    hidden_ = sizes[index_of(Layout::sizes, "hidden")], heads_ = sizes[index_of(Layout::sizes, "heads")];
    kv_heads_ = sizes[index_of(Layout::sizes, "kv_heads")], head_dim_ = sizes[index_of(Layout::sizes, "head_dim")];
    intermediate_ = sizes[index_of(Layout::sizes, "intermediate")], layers_ = sizes[index_of(Layout::sizes, "layers")];
    vocab_ = sizes[index_of(Layout::sizes, "vocab")];
    TORCH_CHECK(hidden_ > 0 && kv_heads_ > 0 && heads_ % kv_heads_ == 0 && head_dim_ % 2 == 0 && layers_ > 0,
                "DecodeStep: inconsistent sizes ", at::IntArrayRef(sizes));
    TORCH_CHECK(static_cast<int64_t>(scales.size()) == layers_, "DecodeStep: ", layers_, " layers need as many ",
                "attention scales, got ", scales.size());
    TORCH_CHECK(static_cast<int64_t>(kinds.size()) == 1 + 4 * layers_, "DecodeStep: expected ", 1 + 4 * layers_,
                " product kinds, got ", kinds.size());
    TORCH_CHECK(static_cast<int64_t>(windows.size()) == layers_, "DecodeStep: ", layers_, " layers need as many ",
                "windows, got ", windows.size());
    for (int64_t window : windows) TORCH_CHECK(window >= 0, "DecodeStep: a window of ", window, " slots");
    scales_.assign(scales.begin(), scales.end());
    size_t next = 0, kind = 0;
    auto vector = [&](int64_t length, const std::string& name) {
      TORCH_CHECK(next < tensors_.size(), "DecodeStep: too few tensors (", name, ")");
      const at::Tensor& t = tensors_[next++];
      TORCH_CHECK(t.dim() == 1 && t.size(0) == length && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                      t.device().is_cpu(),
                  "DecodeStep: ", name, " must be a contiguous float32 CPU vector of ", length, ", got ", t.sizes(),
                  " ", c10::toString(t.scalar_type()));
      return t.data_ptr<float>();
    };
    auto product = [&](int64_t rows, int64_t width, const char* name) {
      TORCH_CHECK(kind < kinds.size(), "DecodeStep: too few product kinds (", name, ")");
      Product p{kinds[kind++], rows, width, nullptr, {}, {}};
      auto matrix = [&](at::ScalarType dtype, int64_t columns, const char* part) {
        TORCH_CHECK(next < tensors_.size(), "DecodeStep: too few tensors (", name, " ", part, ")");
        const at::Tensor& t = tensors_[next++];
        TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && (columns < 0 || t.size(1) == columns) &&
                        t.scalar_type() == dtype && t.is_contiguous() && t.device().is_cpu(),
                    "DecodeStep: ", name, " ", part, " must be a contiguous ", c10::toString(dtype), " (", rows, ", ",
                    columns < 0 ? std::string("groups") : std::to_string(columns), ") CPU tensor, got ", t.sizes(), " ",
                    c10::toString(t.scalar_type()));
        return t;
      };
      if (p.kind == kFloat32) {
        p.f32 = matrix(at::kFloat, width, "weight").data_ptr<float>();
      } else if (p.kind == kInt8) {
        TORCH_CHECK(width % kBlock == 0, "DecodeStep: ", name, ": int8 inputs must be a multiple of 32, got ", width);
        const int8_t* codes = matrix(at::kChar, width, "weight").data_ptr<int8_t>();
        p.int8 = Int8Weights{codes, vector(rows, std::string(name) + " scale"), width};
      } else if (p.kind == kInt4) {
        const uint8_t* codes = matrix(at::kByte, width / 2, "weight").data_ptr<uint8_t>();
        const at::Tensor& scale = matrix(at::kHalf, -1, "scale");
        const int64_t groups = scale.size(1);
        TORCH_CHECK(groups > 0 && width % (groups * kBlock) == 0, "DecodeStep: ", name, ": ", groups,
                    " groups do not split ", width, " inputs into multiples of 32");
        const at::Tensor& minimum = matrix(at::kHalf, groups, "minimum");
        p.int4 = Int4Weights{codes, scale.data_ptr<at::Half>(), minimum.data_ptr<at::Half>(), width, groups};
      } else {
        TORCH_CHECK(false, "DecodeStep: ", name, " has kind ", p.kind, ", expected 0 (float32), 1 (int8) or 2 (int4), "
                    "the index of its name in DecodeStep.layout()'s kinds");
      }
      return p;
    };
    const int64_t attention_width = heads_ * head_dim_, kv_width = kv_heads_ * head_dim_;
    for (std::string_view name : Layout::model) {
      if (name == "embedding") {
        TORCH_CHECK(next < tensors_.size(), "DecodeStep: too few tensors (the embedding)");
        const at::Tensor& embedding = tensors_[next++];
        TORCH_CHECK(embedding.dim() == 2 && embedding.size(0) == vocab_ && embedding.size(1) == hidden_ &&
                        embedding.scalar_type() == at::kFloat && embedding.is_contiguous() && embedding.device().is_cpu(),
                    "DecodeStep: the embedding must be a contiguous float32 (", vocab_, ", ", hidden_,
                    ") CPU tensor, got ", embedding.sizes(), " ", c10::toString(embedding.scalar_type()));
        embedding_ = embedding.data_ptr<float>();
      } else if (name == "final_norm") {
        final_norm_ = vector(hidden_, "the final norm");
      } else {
        TORCH_CHECK(name == "head", "DecodeStep: the layout's model operand ", std::string(name), " has no reader");
        head_ = product(vocab_, hidden_, "the head");
      }
    }
    for (int64_t l = 0; l < layers_; ++l) {
      Layer layer;
      layer.window = windows[l];
      for (std::string_view name : Layout::layer) {
        if (name == "input_norm") {
          layer.input_norm = vector(hidden_, "an input norm");
        } else if (name == "post_norm") {
          layer.post_norm = vector(hidden_, "a post-attention norm");
        } else if (name == "qkv") {
          layer.qkv = product(attention_width + 2 * kv_width, hidden_, "a qkv projection");
        } else if (name == "o") {
          layer.o = product(hidden_, attention_width, "an output projection");
        } else if (name == "gate_up") {
          layer.gate_up = product(2 * intermediate_, hidden_, "a gate/up projection");
        } else {
          TORCH_CHECK(name == "down", "DecodeStep: the layout's layer operand ", std::string(name), " has no reader");
          layer.down = product(hidden_, intermediate_, "a down projection");
        }
      }
      layer_.push_back(layer);
    }
    TORCH_CHECK(next == tensors_.size(), "DecodeStep: ", tensors_.size() - next, " tensors left over");
  }

  // `Layout` for Python: {"kinds": [...], "model": [...], "layer": [...], "sizes": [...]}.
  static c10::Dict<std::string, std::vector<std::string>> layout() {
    c10::Dict<std::string, std::vector<std::string>> out;
    auto add = [&](const char* key, const auto& names) {
      out.insert(key, std::vector<std::string>(names.begin(), names.end()));
    };
    add("kinds", Layout::kinds);
    add("model", Layout::model);
    add("layer", Layout::layer);
    add("sizes", Layout::sizes);
    return out;
  }

  at::Tensor step(const at::Tensor& input_ids, const at::Tensor& cos, const at::Tensor& sin, int64_t slot,
                  const std::optional<at::Tensor>& padding, const std::vector<at::Tensor>& caches,
                  const std::optional<at::Tensor>& trace) {
    const int64_t batch = check_inputs(input_ids, cos, sin);
    check_cache_count(caches, "DecodeStep.step");
    TORCH_CHECK(slot >= 0, "DecodeStep.step: slot ", slot, " is negative");
    DenseCaches view{slot, nullptr, 0, kv_heads_, head_dim_, {}, {}};
    for (int64_t l = 0; l < layers_; ++l) {
      const int64_t window = layer_[l].window;
      for (const at::Tensor& c : {caches[2 * l], caches[2 * l + 1]}) {
        TORCH_CHECK(c.dim() == 4 && c.size(0) == batch && c.size(1) == kv_heads_ && c.size(3) == head_dim_ &&
                        c.scalar_type() == at::kFloat && c.is_contiguous() && c.device().is_cpu(),
                    "DecodeStep.step: layer ", l, "'s cache must be a contiguous float32 (", batch, ", ", kv_heads_,
                    ", slots, ", head_dim_, ") CPU tensor, got ", c.sizes(), " ", c10::toString(c.scalar_type()));
        if (window > 0) {
          // a ring shorter than the window holds a whole run that never wraps (RollingLayerCache)
          TORCH_CHECK(c.size(2) == window || (c.size(2) < window && c.size(2) > slot), "DecodeStep.step: layer ", l,
                      "'s cache has ", c.size(2), " slots, expected its window of ", window, " or more than slot ",
                      slot);
        } else {
          TORCH_CHECK(c.size(2) > slot, "DecodeStep.step: slot ", slot, " is outside layer ", l, "'s cache of ",
                      c.size(2), " slots");
        }
      }
      view.buffers.push_back({caches[2 * l].data_ptr<float>(), caches[2 * l + 1].data_ptr<float>()});
      view.slots.push_back(caches[2 * l].size(2));
    }
    if (padding.has_value()) {
      const at::Tensor& p = *padding;
      TORCH_CHECK(p.dim() == 2 && p.size(0) == batch && p.size(1) > slot && p.scalar_type() == at::kLong &&
                      p.is_contiguous() && p.device().is_cpu(),
                  "DecodeStep.step: padding must be a contiguous int64 (", batch, ", > ", slot, ") CPU tensor, got ",
                  p.sizes(), " ", c10::toString(p.scalar_type()));
      view.mask = p.data_ptr<int64_t>();
      view.mask_width = p.size(1);
    }
    return run(view, input_ids, cos, sin, checked_trace(trace, batch));
  }

  at::Tensor step_paged(const at::Tensor& input_ids, const at::Tensor& cos, const at::Tensor& sin,
                        const at::Tensor& positions, const std::vector<at::Tensor>& tables,
                        const std::vector<at::Tensor>& firsts, int64_t block_size,
                        const std::vector<at::Tensor>& caches) {
    const int64_t batch = check_inputs(input_ids, cos, sin);
    check_cache_count(caches, "DecodeStep.step_paged");
    TORCH_CHECK(block_size > 0, "DecodeStep.step_paged: block_size ", block_size, " is not positive");
    TORCH_CHECK(positions.dim() == 1 && positions.size(0) == batch && positions.scalar_type() == at::kLong &&
                    positions.is_contiguous() && positions.device().is_cpu(),
                "DecodeStep.step_paged: positions must be a contiguous int64 (", batch, ",) CPU tensor, got ",
                positions.sizes());
    TORCH_CHECK(static_cast<int64_t>(tables.size()) == layers_ && static_cast<int64_t>(firsts.size()) == layers_,
                "DecodeStep.step_paged: expected a block table and a first-block vector for each of the ", layers_,
                " layers, got ", tables.size(), " and ", firsts.size());
    const int64_t* at_position = positions.data_ptr<int64_t>();
    PagedCaches view{at_position, block_size, kv_heads_, head_dim_, {}, {}, {}, {}};
    for (int64_t l = 0; l < layers_; ++l) {
      const at::Tensor& keys = caches[2 * l];
      for (const at::Tensor& c : {keys, caches[2 * l + 1]}) {
        TORCH_CHECK(c.dim() == 3 && c.size(0) % block_size == 0 && c.size(1) == kv_heads_ && c.size(2) == head_dim_ &&
                        c.sizes() == keys.sizes() && c.scalar_type() == at::kFloat && c.is_contiguous() &&
                        c.device().is_cpu(),
                    "DecodeStep.step_paged: layer ", l, "'s pool must be a contiguous float32 (blocks * ", block_size,
                    ", ", kv_heads_, ", ", head_dim_, ") CPU tensor, got ", c.sizes(), " ",
                    c10::toString(c.scalar_type()));
      }
      const at::Tensor& table = tables[l];
      const at::Tensor& first = firsts[l];
      TORCH_CHECK(table.dim() == 2 && table.size(0) == batch && table.scalar_type() == at::kLong &&
                      table.is_contiguous() && table.device().is_cpu() && first.dim() == 1 && first.size(0) == batch &&
                      first.scalar_type() == at::kLong && first.is_contiguous() && first.device().is_cpu(),
                  "DecodeStep.step_paged: layer ", l, "'s block table must be a contiguous int64 (", batch,
                  ", blocks) CPU tensor and its first blocks (", batch, ",), got ", table.sizes(), " and ",
                  first.sizes());
      const int64_t* rows = table.data_ptr<int64_t>();
      const int64_t* first_block = first.data_ptr<int64_t>();
      const int64_t width = table.size(1), blocks = keys.size(0) / block_size, window = layer_[l].window;
      for (int64_t b = 0; b < batch; ++b) {
        const int64_t position = at_position[b];
        const int64_t lowest = window > 0 ? std::max<int64_t>(0, position - window + 1) : 0;
        TORCH_CHECK(position >= 0 && lowest / block_size >= first_block[b] &&
                        position / block_size - first_block[b] < width,
                    "DecodeStep.step_paged: row ", b, " at position ", position, " needs layer ", l, "'s blocks ",
                    lowest / block_size, "..", position / block_size, "; its table holds ", first_block[b], "..",
                    first_block[b] + width - 1);
        for (int64_t k = lowest / block_size; k <= position / block_size; ++k) {
          const int64_t block = rows[b * width + k - first_block[b]];
          TORCH_CHECK(block >= 0 && block < blocks, "DecodeStep.step_paged: row ", b, "'s logical block ", k,
                      " of layer ", l, " is block ", block, ", outside the pool's ", blocks);
        }
      }
      view.buffers.push_back({keys.data_ptr<float>(), caches[2 * l + 1].data_ptr<float>()});
      view.tables.push_back(rows);
      view.widths.push_back(width);
      view.firsts.push_back(first_block);
    }
    return run(view, input_ids, cos, sin, nullptr);
  }

 private:
  // The batch size of a step's input_ids, cos and sin, checked.
  int64_t check_inputs(const at::Tensor& input_ids, const at::Tensor& cos, const at::Tensor& sin) const {
    TORCH_CHECK(input_ids.dim() == 1 && input_ids.scalar_type() == at::kLong && input_ids.is_contiguous() &&
                    input_ids.device().is_cpu(),
                "DecodeStep: input_ids must be a contiguous int64 CPU vector, got ", input_ids.sizes());
    const int64_t batch = input_ids.size(0);
    for (const at::Tensor* t : {&cos, &sin}) {
      TORCH_CHECK(t->dim() == 2 && t->size(0) == batch && t->size(1) == head_dim_ && t->scalar_type() == at::kFloat &&
                      t->is_contiguous() && t->device().is_cpu(),
                  "DecodeStep: cos and sin must be contiguous float32 (", batch, ", ", head_dim_, ") CPU tensors, got ",
                  t->sizes(), " ", c10::toString(t->scalar_type()));
    }
    const int64_t* ids = input_ids.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      TORCH_CHECK(ids[b] >= 0 && ids[b] < vocab_, "DecodeStep: token ", ids[b], " is outside the vocabulary of ",
                  vocab_);
    }
    return batch;
  }

  void check_cache_count(const std::vector<at::Tensor>& caches, const char* where) const {
    TORCH_CHECK(static_cast<int64_t>(caches.size()) == 2 * layers_, where, ": expected ", 2 * layers_,
                " cache tensors (keys and values a layer), got ", caches.size());
  }

  float* checked_trace(const std::optional<at::Tensor>& trace, int64_t batch) const {
    if (!trace.has_value()) return nullptr;
    const at::Tensor& h = *trace;
    TORCH_CHECK(h.dim() == 3 && h.size(0) == layers_ + 1 && h.size(1) == batch && h.size(2) == hidden_ &&
                    h.scalar_type() == at::kFloat && h.is_contiguous() && h.device().is_cpu(),
                "DecodeStep.step: trace must be a contiguous float32 (", layers_ + 1, ", ", batch, ", ", hidden_,
                ") CPU tensor, got ", h.sizes(), " ", c10::toString(h.scalar_type()));
    return h.data_ptr<float>();
  }

  // The step over checked operands; `Caches` says where each layer's keys and values are
  // (`DenseCaches`, `PagedCaches`).
  template <typename Caches>
  at::Tensor run(const Caches& caches, const at::Tensor& input_ids, const at::Tensor& cos, const at::Tensor& sin,
                 float* hidden_states) {
    const int64_t batch = input_ids.size(0), dim = head_dim_;
    const int64_t* ids = input_ids.data_ptr<int64_t>();
    const int64_t hidden = hidden_, groups = heads_ / kv_heads_, qkv_width = (heads_ + 2 * kv_heads_) * dim;
    const int64_t attention_width = heads_ * dim, intermediate = intermediate_;
    std::vector<float> x(batch * hidden), qkv(batch * qkv_width), attention(batch * attention_width),
        gate_up(batch * 2 * intermediate);
    for (int64_t b = 0; b < batch; ++b) std::memcpy(&x[b * hidden], embedding_ + ids[b] * hidden, hidden * sizeof(float));
    at::Tensor logits = at::empty({batch, vocab_}, input_ids.options().dtype(at::kFloat));
    float* out = logits.data_ptr<float>();
    const float* cos_rows = cos.data_ptr<float>();
    const float* sin_rows = sin.data_ptr<float>();
    auto add_into_x = [&](int64_t m, int64_t n, float value) { x[m * hidden + n] += value; };

#pragma omp parallel num_threads(at::get_num_threads())
    {
      const int t = omp_get_thread_num(), threads = omp_get_num_threads();
      Scratch s;
      s.normed.resize(batch * hidden);
      s.gated.resize(batch * intermediate);
      s.keys.resize(batch * kv_heads_ * dim);
      s.query.resize(dim);
      for (int64_t l = 0; l < layers_; ++l) {
        const Layer& layer = layer_[l];
        // every thread only reads x until the barrier after the qkv product
        if (hidden_states != nullptr && t == 0) std::memcpy(hidden_states + l * batch * hidden, x.data(), x.size() * 4);
        const auto [keys, values] = caches.buffers[l];
        const int64_t head_stride = caches.head_stride(l);
        for (int64_t b = 0; b < batch; ++b) rms_norm(&x[b * hidden], layer.input_norm, hidden, eps_, &s.normed[b * hidden]);
        product_share(layer.qkv, s.normed.data(), batch, s, t, threads, into(qkv.data(), qkv_width));
#pragma omp barrier
        // the token's keys, rotated, by every thread (it reads them from here, not from the cache,
        // which thread 0 writes meanwhile)
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t own = t == 0 ? caches.own_offset(l, layer.window, b) : 0;
          for (int64_t h = 0; h < kv_heads_; ++h) {
            float* key = &s.keys[(b * kv_heads_ + h) * dim];
            rotate(&qkv[b * qkv_width + (heads_ + h) * dim], cos_rows + b * dim, sin_rows + b * dim, dim, key);
            if (t == 0) {
              std::memcpy(keys + own + h * head_stride, key, dim * sizeof(float));
              std::memcpy(values + own + h * head_stride, &qkv[b * qkv_width + (heads_ + kv_heads_ + h) * dim],
                          dim * sizeof(float));
            }
          }
        }
        const auto [first_task, last_task] = share(batch * heads_, t, threads, 1);
        for (int64_t task = first_task; task < last_task; ++task) {
          const int64_t b = task / heads_, h = task % heads_, kv = h / groups;
          rotate(&qkv[b * qkv_width + h * dim], cos_rows + b * dim, sin_rows + b * dim, dim, s.query.data());
          const float* own_key = &s.keys[(b * kv_heads_ + kv) * dim];
          const float* own_value = &qkv[b * qkv_width + (heads_ + kv_heads_ + kv) * dim];
          s.key_rows.clear();
          s.value_rows.clear();
          caches.visit(l, layer.window, b, [&](int64_t offset) {
            const bool own = offset < 0;
            s.key_rows.push_back(own ? own_key : keys + offset + kv * head_stride);
            s.value_rows.push_back(own ? own_value : values + offset + kv * head_stride);
          });
          const int64_t count = static_cast<int64_t>(s.key_rows.size());
          s.probs.resize(count);
          for (int64_t i = 0; i < count; ++i) s.probs[i] = dot(s.query.data(), s.key_rows[i], dim) * scales_[l];
          softmax(s.probs.data(), count);
          weighted_sum(s.probs.data(), s.value_rows.data(), count, dim, &attention[b * attention_width + h * dim]);
        }
#pragma omp barrier
        product_share(layer.o, attention.data(), batch, s, t, threads, add_into_x);
#pragma omp barrier
        for (int64_t b = 0; b < batch; ++b) rms_norm(&x[b * hidden], layer.post_norm, hidden, eps_, &s.normed[b * hidden]);
        product_share(layer.gate_up, s.normed.data(), batch, s, t, threads, into(gate_up.data(), 2 * intermediate));
#pragma omp barrier
        for (int64_t b = 0; b < batch; ++b) {
          const float* row = &gate_up[b * 2 * intermediate];
          silu_times(row, row + intermediate, intermediate, &s.gated[b * intermediate]);
        }
        product_share(layer.down, s.gated.data(), batch, s, t, threads, add_into_x);
#pragma omp barrier
      }
      if (hidden_states != nullptr && t == 0) {
        std::memcpy(hidden_states + layers_ * batch * hidden, x.data(), x.size() * 4);
      }
      for (int64_t b = 0; b < batch; ++b) rms_norm(&x[b * hidden], final_norm_, hidden, eps_, &s.normed[b * hidden]);
      product_share(head_, s.normed.data(), batch, s, t, threads, into(out, vocab_));
    }
    return logits;
  }

  struct Layer {
    int64_t window;  // 0: full attention over a static cache
    const float* input_norm;
    const float* post_norm;
    Product qkv, o, gate_up, down;
  };

  std::vector<at::Tensor> tensors_;  // held: the pointers below are theirs
  float eps_;
  int64_t hidden_, heads_, kv_heads_, head_dim_, intermediate_, layers_, vocab_;
  std::vector<float> scales_;
  const float* embedding_;
  const float* final_norm_;
  Product head_;
  std::vector<Layer> layer_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(lamina, m) {
  m.class_<DecodeStep>("DecodeStep")
      .def(torch::init<std::vector<at::Tensor>, std::vector<int64_t>, std::vector<int64_t>, std::vector<double>,
                       std::vector<int64_t>, double>())
      .def_static("layout", &DecodeStep::layout)
      .def("step", &DecodeStep::step, "",
           {torch::arg("input_ids"), torch::arg("cos"), torch::arg("sin"), torch::arg("slot"), torch::arg("padding"),
            torch::arg("caches"), torch::arg("trace") = c10::IValue()})
      .def("step_paged", &DecodeStep::step_paged, "",
           {torch::arg("input_ids"), torch::arg("cos"), torch::arg("sin"), torch::arg("positions"),
            torch::arg("tables"), torch::arg("firsts"), torch::arg("block_size"), torch::arg("caches")});
}
