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
// Each (sequence, key head) pair is one task over ATen's threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr float kMasked = -1e30f;

// Slot `s`'s row of a float32 or bfloat16 cache, as float32 into `row` (bf16), or in place.
struct CacheRows {
  const float* f32;
  const uint16_t* bf16;
  int64_t dim;

  const float* row(int64_t index, float* scratch) const {
    if (f32 != nullptr) return f32 + index * dim;
    const uint16_t* source = bf16 + index * dim;
    int64_t d = 0;
#ifdef __AVX512F__
    for (; d + 16 <= dim; d += 16) {
      const __m256i halves = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(source + d));
      _mm512_storeu_ps(scratch + d, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16)));
    }
#endif
    for (; d < dim; ++d) {
      const uint32_t bits = static_cast<uint32_t>(source[d]) << 16;
      std::memcpy(scratch + d, &bits, sizeof(float));
    }
    return scratch;
  }
};

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float sum = 0.f;
#ifdef __AVX512F__
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  sum = _mm512_reduce_add_ps(acc);
#else
  __m256 acc = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  sum = _mm_cvtss_f32(_mm_add_ss(half, _mm_movehdup_ps(half)));
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

CacheRows cache_rows(const at::Tensor& t, int64_t offset) {
  if (t.scalar_type() == at::kFloat) return {t.data_ptr<float>() + offset, nullptr, t.size(3)};
  return {nullptr, reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()) + offset, t.size(3)};
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

  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> live;
    std::vector<float> probs, scratch(dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads;
      const float* row_mask = masks + (mask.size(0) == 1 ? 0 : b * slots);
      const CacheRows keys = cache_rows(key, task * slots * dim), values = cache_rows(value, task * slots * dim);
      live.clear();
      for (int64_t s = 0; s < slots; ++s) {
        if (row_mask[s] >= kMasked) live.push_back(s);
      }
      const bool uniform = live.empty();  // every slot masked: equal scores
      const int64_t count = uniform ? slots : static_cast<int64_t>(live.size());
      probs.assign(groups * count, uniform ? 1.f / static_cast<float>(slots) : 0.f);
      if (!uniform) {
        for (int64_t i = 0; i < count; ++i) {
          const float* k_row = keys.row(live[i], scratch.data());
          for (int64_t g = 0; g < groups; ++g) {
            probs[g * count + i] = dot(q + (task * groups + g) * dim, k_row, dim) * factor + row_mask[live[i]];
          }
        }
        for (int64_t g = 0; g < groups; ++g) {
          float* p = probs.data() + g * count;
          float top = p[0];
          for (int64_t i = 1; i < count; ++i) top = std::max(top, p[i]);
          float total = 0.f;
          for (int64_t i = 0; i < count; ++i) total += (p[i] = std::exp(p[i] - top));
          const float inverse = 1.f / total;
          for (int64_t i = 0; i < count; ++i) p[i] *= inverse;
        }
      }
      float* o = result + task * groups * dim;
      std::fill(o, o + groups * dim, 0.f);
      for (int64_t i = 0; i < count; ++i) {
        const float* v_row = values.row(uniform ? i : live[i], scratch.data());
        for (int64_t g = 0; g < groups; ++g) {
          const float p = probs[g * count + i];
          float* og = o + g * dim;
          for (int64_t d = 0; d < dim; ++d) og[d] += p * v_row[d];
        }
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
