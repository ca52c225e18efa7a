// Blockwise quantization on the CPU: one OpenMP task per block.
#include "kernels/quantize.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/error.h"

namespace keel::kernels::cpu {

namespace {

// torch.linspace(start, end, steps) in fp32, as PyTorch's CPU kernel computes it: the first half
// from start upwards, the second from end downwards, with the step in fp32.
std::vector<float> linspace(float start, float end, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    out[static_cast<size_t>(i)] = i < half ? start + step * static_cast<float>(i)
                                           : end - step * static_cast<float>(steps - i - 1);
  return out;
}

}  // namespace

QuantMap dynamic_map(bool is_signed) {
  constexpr int kExponentBits = 7, kNonSignBits = 7;
  std::vector<float> data;
  for (int i = 0; i < kExponentBits; ++i) {
    // Each decade [10^(i-6)·0.1, 10^(i-6)] holds the midpoints of an even split of [0.1, 1]:
    // 2^i of them signed (each with its negative), 2^(i+1) unsigned.
    const int64_t items =
        (int64_t{1} << (i + kNonSignBits - kExponentBits + (is_signed ? 0 : 1))) + 1;
    const std::vector<float> b = linspace(0.1f, 1.0f, items);
    const auto scale = static_cast<float>(std::pow(10.0, -(kExponentBits - 1) + i));
    for (size_t k = 0; k + 1 < b.size(); ++k) {
      const float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  KEEL_CHECK(data.size() == 256, "dynamic map of {} values", data.size());
  std::sort(data.begin(), data.end());
  QuantMap map;
  std::copy(data.begin(), data.end(), map.begin());
  return map;
}

QuantBounds midpoints(const QuantMap& map) {
  QuantBounds b;
  for (size_t i = 0; i < b.size(); ++i) b[i] = (map[i] + map[i + 1]) / 2.0f;
  return b;
}

namespace {

// The number of midpoints below x, by eight halvings.
uint8_t search(const QuantBounds& bounds, float x) {
  int i = 0;
  for (int step = 128; step > 0; step >>= 1)
    i += x > bounds[static_cast<size_t>(i + step - 1)] ? step : 0;
  return static_cast<uint8_t>(i);
}

}  // namespace

uint8_t quantize_value(const QuantMap& map, float x) { return search(midpoints(map), x); }

QuantTable::QuantTable(const QuantMap& map) : map_(map), lut_(size_t{1} << (32 - kShift)) {
  const QuantBounds bounds = midpoints(map);
  std::copy(bounds.begin(), bounds.end(), above_.begin());
  above_[255] = std::numeric_limits<float>::infinity();
  const uint32_t low = (uint32_t{1} << kShift) - 1;
  for (uint32_t k = 0; k < lut_.size(); ++k) {
    // The bucket's numerically smallest and largest x: its lowest bits for positive numbers, its
    // highest for negative ones (larger magnitude).
    const bool negative = k >> (31 - kShift);
    const float lo = std::bit_cast<float>((k << kShift) | (negative ? low : 0));
    const float hi = std::bit_cast<float>((k << kShift) | (negative ? 0 : low));
    if (std::isnan(lo) || std::isnan(hi)) continue;  // NaN buckets: any code
    const uint8_t c = search(bounds, lo);
    lut_[k] = c;
    KEEL_CHECK(search(bounds, hi) <= c + 1,
               "quantization table: more than one midpoint between {} and {}", lo, hi);
  }
}

void quantize_blockwise(uint8_t* codes, float* absmax, const float* x, int64_t n, int64_t block,
                        const QuantTable& table, Stream) {
  KEEL_CHECK(block > 0, "quantize_blockwise: block size {} must be positive", block);
  const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    float amax = 0.0f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::abs(x[i]));
    absmax[b] = amax;
    const float inv = 1.0f / std::max(amax, 1e-38f);
    for (int64_t i = begin; i < end; ++i)
      codes[i] = table.quantize(std::clamp(x[i] * inv, -1.0f, 1.0f));
  }
}

void dequantize_blockwise(float* x, const uint8_t* codes, const float* absmax, int64_t n,
                          int64_t block, const QuantMap& map, Stream) {
  KEEL_CHECK(block > 0, "dequantize_blockwise: block size {} must be positive", block);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = map[codes[i]] * absmax[i / block];
}

}  // namespace keel::kernels::cpu
