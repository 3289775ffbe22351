// Attention of one query per sequence over a preallocated cache, for a decoding step on the CPU.
//
// lamina::decode_attention(query (B, H, D) float32, key (B, KVH, S, D), value (B, KVH, S, D),
//                          mask (1 or B, S) float32, scale float) -> (B, H, D) float32
//   key and value float32 or bfloat16 (read as float32); H a multiple of KVH (grouped queries:
//   query head h reads key head h / (H / KVH)). `mask` is additive, as the maths it replaces:
//   softmax(scale * q.k + mask) over the slots, then the probabilities times the values, in
//   float32. A slot whose mask is below -1e30 (finfo.min or -inf: padding, a slot not yet written,
//   a key outside the window or after the query) is skipped without reading its key or value,
//   which is exact: its probability underflows to 0. So a step reads the slots written so far,
//   not the cache's whole capacity. A row with every slot masked averages all S values, as the
//   softmax of equal scores does.
//
// Scores, softmax (with a vectorised exp within ~2 ulp of float32's) and the weighted sum of the
// values run in float32 lanes (lanes.h). Each (sequence, key head) pair is one task over ATen's
// threads, when there is work enough.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention.h"
#include "lanes.h"

namespace {

using L = lamina::FloatLanes;
using lamina::dot;
using lamina::softmax;
using lamina::weighted_sum;

constexpr float kMasked = -1e30f;

// The rows of one (sequence, key head) of a float32 or bfloat16 cache as float32: the cache's own
// rows, or bf16 ones widened into `scratch`.
void float_rows(const at::Tensor& cache, int64_t offset, const std::vector<int64_t>& slots, int64_t dim,
                std::vector<float>& scratch, std::vector<const float*>& rows) {
  rows.resize(slots.size());
  if (cache.scalar_type() == at::kFloat) {
    const float* base = cache.data_ptr<float>() + offset;
    for (size_t i = 0; i < slots.size(); ++i) rows[i] = base + slots[i] * dim;
    return;
  }
  const uint16_t* base = reinterpret_cast<const uint16_t*>(cache.data_ptr<at::BFloat16>()) + offset;
  scratch.resize(slots.size() * dim);
  for (size_t i = 0; i < slots.size(); ++i) {
    const uint16_t* source = base + slots[i] * dim;
    float* target = scratch.data() + i * dim;
    for (int64_t d = 0; d < dim; ++d) {
      const uint32_t bits = static_cast<uint32_t>(source[d]) << 16;
      std::memcpy(target + d, &bits, sizeof(float));
    }
    rows[i] = target;
  }
}

at::Tensor decode_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const at::Tensor& mask, double scale) {
  TORCH_CHECK(query.dim() == 3 && query.scalar_type() == at::kFloat && query.is_contiguous() && query.device().is_cpu(),
              "decode_attention: query must be a contiguous (batch, heads, dim) float32 CPU tensor, got ",
              query.sizes(), " ", c10::toString(query.scalar_type()));
  const int64_t batch = query.size(0), heads = query.size(1), dim = query.size(2);
  for (const at::Tensor* t : {&key, &value}) {
    TORCH_CHECK(t->dim() == 4 && t->is_contiguous() && t->device().is_cpu() &&
                    (t->scalar_type() == at::kFloat || t->scalar_type() == at::kBFloat16),
                "decode_attention: key and value must be contiguous (batch, kv_heads, slots, dim) float32 or ",
                "bfloat16 CPU tensors, got ", t->sizes(), " ", c10::toString(t->scalar_type()));
  }
  TORCH_CHECK(key.sizes() == value.sizes() && key.scalar_type() == value.scalar_type(),
              "decode_attention: key ", key.sizes(), " and value ", value.sizes(), " differ");
  const int64_t kv_heads = key.size(1), slots = key.size(2);
  TORCH_CHECK(key.size(0) == batch && key.size(3) == dim && kv_heads > 0 && heads % kv_heads == 0,
              "decode_attention: query ", query.sizes(), " does not match key ", key.sizes());
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kFloat && mask.is_contiguous() &&
                  (mask.size(0) == 1 || mask.size(0) == batch) && mask.size(1) == slots,
              "decode_attention: mask must be a contiguous float32 (1 or ", batch, ", ", slots, ") tensor, got ",
              mask.sizes(), " ", c10::toString(mask.scalar_type()));
  const int64_t groups = heads / kv_heads;
  at::Tensor out = at::empty({batch, heads, dim}, query.options());
  const float* q = query.data_ptr<float>();
  const float* masks = mask.data_ptr<float>();
  float* result = out.data_ptr<float>();
  const float factor = static_cast<float>(scale);

  // a task of a few hundred slots takes microseconds: threads only for many (waking them costs more)
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, slots * dim * groups));
  at::parallel_for(0, batch * kv_heads, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> live;
    std::vector<float> probs, key_scratch, value_scratch;
    std::vector<const float*> key_rows, value_rows;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads;
      const float* row_mask = masks + (mask.size(0) == 1 ? 0 : b * slots);
      live.clear();
      for (int64_t s = 0; s < slots; ++s) {
        if (row_mask[s] >= kMasked) live.push_back(s);
      }
      const bool uniform = live.empty();  // every slot masked: equal scores over all of them
      if (uniform) {
        for (int64_t s = 0; s < slots; ++s) live.push_back(s);
      }
      const int64_t count = static_cast<int64_t>(live.size());
      probs.assign(groups * count, 1.f / static_cast<float>(count));
      if (!uniform) {
        float_rows(key, task * slots * dim, live, dim, key_scratch, key_rows);
        for (int64_t g = 0; g < groups; ++g) {
          const float* q_row = q + (task * groups + g) * dim;
          float* p = probs.data() + g * count;
          for (int64_t i = 0; i < count; ++i) p[i] = dot(q_row, key_rows[i], dim) * factor + row_mask[live[i]];
          softmax(p, count);
        }
      }
      float_rows(value, task * slots * dim, live, dim, value_scratch, value_rows);
      for (int64_t g = 0; g < groups; ++g) {
        weighted_sum(probs.data() + g * count, value_rows.data(), count, dim, result + (task * groups + g) * dim);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lamina, m) {
  m.def("decode_attention(Tensor query, Tensor key, Tensor value, Tensor mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lamina, CPU, m) { m.impl("decode_attention", &decode_attention); }
