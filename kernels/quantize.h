// Blockwise 8-bit quantization (Dettmers et al., "8-bit Optimizers via Block-wise Quantization"):
// a tensor is cut into blocks of `block` elements; each block keeps its absolute maximum in fp32
// and every element as the index of the nearest value of a 256-entry map to x / absmax. The
// dynamic (tree) maps are bitsandbytes' create_dynamic_map, value for value.
#pragma once

#include <array>
#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

using QuantMap = std::array<float, 256>;

// The dynamic map, sorted ascending: signed (first moments; [-0.993, 1], 0 included) or unsigned
// (second moments; [0, 1]). Values are those of bitsandbytes.functional.create_dynamic_map(signed)
// with max_exponent_bits 7 and 8 bits, computed in the same fp32 steps.
QuantMap dynamic_map(bool is_signed);

// Index of the map value nearest to x (x already scaled into [-1, 1]): the first index whose
// midpoint to the next value is ≥ x, as torch.bucketize over the midpoints gives it.
uint8_t quantize_value(const QuantMap& map, float x);

// codes (n), absmax (ceil(n / block)) from x (n): absmax of each block, codes of x · (1/absmax)
// clamped to [-1, 1] (an all-zero block has absmax 0 and the code of 0).
void quantize_blockwise(uint8_t* codes, float* absmax, const float* x, int64_t n, int64_t block,
                        const QuantMap& map, Stream stream = {});

// x (n) = map[codes] · absmax of the block.
void dequantize_blockwise(float* x, const uint8_t* codes, const float* absmax, int64_t n,
                          int64_t block, const QuantMap& map, Stream stream = {});

}  // namespace keel::kernels::cpu
