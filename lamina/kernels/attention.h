// The softmax and weighted sum of one query's attention over cached rows, in float32 lanes: shared
// by attention_cpu.cpp's `decode_attention` and decode_cpu.cpp's native decode step.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "lanes.h"

namespace lamina {

// p ← softmax(p) over `count` scores.
inline void softmax(float* p, int64_t count) {
  using L = FloatLanes;
  L::Vector top_lanes = L::fill(-INFINITY);
  int64_t i = 0;
  for (; i + L::kWidth <= count; i += L::kWidth) top_lanes = L::max(top_lanes, L::load(p + i));
  float top = L::largest(top_lanes);
  for (; i < count; ++i) top = std::max(top, p[i]);
  L::Vector total_lanes = L::zero();
  i = 0;
  for (; i + L::kWidth <= count; i += L::kWidth) {
    const L::Vector e = L::exp(L::add(L::load(p + i), L::fill(-top)));
    L::store(p + i, e);
    total_lanes = L::add(total_lanes, e);
  }
  float total = L::sum(total_lanes);
  for (; i < count; ++i) total += (p[i] = std::exp(p[i] - top));
  const float inverse = 1.f / total;
  for (i = 0; i < count; ++i) p[i] *= inverse;
}

// out (dim) = sum over i of p[i] * rows[i], four vectors of lanes at a time in registers.
inline void weighted_sum(const float* p, const float* const* rows, int64_t count, int64_t dim, float* out) {
  using L = FloatLanes;
  int64_t d = 0;
  for (; d + 4 * L::kWidth <= dim; d += 4 * L::kWidth) {
    L::Vector acc[4] = {L::zero(), L::zero(), L::zero(), L::zero()};
    for (int64_t i = 0; i < count; ++i) {
      const L::Vector weight = L::fill(p[i]);
      for (int j = 0; j < 4; ++j) acc[j] = L::fma(weight, L::load(rows[i] + d + j * L::kWidth), acc[j]);
    }
    for (int j = 0; j < 4; ++j) L::store(out + d + j * L::kWidth, acc[j]);
  }
  for (; d + L::kWidth <= dim; d += L::kWidth) {
    L::Vector acc = L::zero();
    for (int64_t i = 0; i < count; ++i) acc = L::fma(L::fill(p[i]), L::load(rows[i] + d), acc);
    L::store(out + d, acc);
  }
  for (; d < dim; ++d) {
    float acc = 0.f;
    for (int64_t i = 0; i < count; ++i) acc += p[i] * rows[i][d];
    out[d] = acc;
  }
}

}  // namespace lamina
