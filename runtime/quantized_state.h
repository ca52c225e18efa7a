// 8-bit optimizer state across layouts. adamw_8bit quantizes each moment in blocks of the tensor
// the optimizer holds, which under ZeRO is a rank's shard; a checkpoint keeps those codes
// (element-wise) and absmax (per block of each writing rank). Resuming on other shards reads the
// moments back as fp32 values of any rectangle, each element dequantized with the absmax of the
// block it was saved in, for the new layout to requantize in its own blocks.
#pragma once

#include <string>

#include "parallel/zero_layout.h"
#include "runtime/checkpoint.h"
#include "runtime/config.h"

namespace keel::runtime {

// The blocks a run cut optimizer state into: shards per parameter (the DP size under ZeRO 1-3,
// else 1), optimizer.block_size and optimizer.min_8bit_size (the largest int64 for fp32 AdamW,
// which quantizes nothing).
struct QuantizedLayout {
  int shards = 1;
  int64_t block_size = 256;
  int64_t min_8bit_size = 4096;
  bool operator==(const QuantizedLayout&) const = default;
};
QuantizedLayout quantized_layout(const Config& config, int data_parallel_size);

// The moment `moment` ("exp_avg" or "exp_avg_sq") of parameter `param` (rows × cols) as fp32,
// for the rectangle rect, into out (elems floats, rect.ld per row; padding zeroed), from
// checkpoint dir written under `saved` (an adamw or adamw_8bit run): dequantized from its codes
// and absmax where the saving run quantized that shard, read as stored where it kept fp32.
void read_moment_f32(const std::string& dir, const CheckpointInfo& info,
                     const QuantizedLayout& saved, const std::string& param, int64_t rows,
                     int64_t cols, const parallel::ShardRect& rect, const std::string& moment,
                     float* out, int64_t elems);

}  // namespace keel::runtime
