// Blockwise 8-bit quantization (Dettmers et al., "8-bit Optimizers via Block-wise Quantization"):
// a tensor is cut into blocks of `block` elements; each block keeps its absolute maximum in fp32
// and every element as the index of the nearest value of a 256-entry map to x / absmax. The
// dynamic (tree) maps are bitsandbytes' create_dynamic_map, value for value.
#pragma once

#include <array>
#include <bit>
#include <cstdint>
#include <vector>

#include "kernels/device.h"

namespace keel::kernels::cpu {

using QuantMap = std::array<float, 256>;

// The dynamic map, sorted ascending: signed (first moments; [-0.993, 1], 0 included) or unsigned
// (second moments; [0, 1]). Values are those of bitsandbytes.functional.create_dynamic_map(signed)
// with max_exponent_bits 7 and 8 bits, computed in the same fp32 steps.
QuantMap dynamic_map(bool is_signed);

// The 255 midpoints (map[i] + map[i+1]) / 2 that separate the map's values.
using QuantBounds = std::array<float, 255>;
QuantBounds midpoints(const QuantMap& map);

// Index of the map value nearest to x (x already scaled into [-1, 1]): the number of midpoints
// below x, i.e. the first index whose midpoint to the next value is ≥ x, as torch.bucketize over
// the midpoints gives it (a tie goes to the lower value). A binary search: the reference.
uint8_t quantize_value(const QuantMap& map, float x);

// The same answer in one table load and one comparison: the top 17 bits of x (sign, exponent, 8
// mantissa bits) index a table holding the code of the smallest x with those bits; such a bucket
// is 2^-8 wide relative to x, narrower than the gap between any two midpoints of the dynamic maps
// (the constructor checks that at most one midpoint falls inside each), so one comparison with
// the next midpoint finishes. 128 KiB; build it once per map. Branch-free, so that a loop of
// quantize() calls vectorises (gathers from the table and the midpoints).
class QuantTable {
 public:
  explicit QuantTable(const QuantMap& map);
  const QuantMap& map() const { return map_; }
  uint8_t quantize(float x) const {
    const uint8_t c = lut_[std::bit_cast<uint32_t>(x) >> kShift];
    return static_cast<uint8_t>(c + (x > above_[c]));
  }

 private:
  static constexpr int kShift = 15;
  QuantMap map_;
  std::array<float, 256> above_;  // the midpoint above each code; +inf above the last
  std::vector<uint8_t> lut_;      // (2^17)
};

// codes (n), absmax (ceil(n / block)) from x (n): absmax of each block, codes of x · (1/absmax)
// clamped to [-1, 1] (an all-zero block has absmax 0 and the code of 0).
void quantize_blockwise(uint8_t* codes, float* absmax, const float* x, int64_t n, int64_t block,
                        const QuantTable& table, Stream stream = {});

// x (n) = map[codes] · absmax of the block.
void dequantize_blockwise(float* x, const uint8_t* codes, const float* absmax, int64_t n,
                          int64_t block, const QuantMap& map, Stream stream = {});

}  // namespace keel::kernels::cpu
