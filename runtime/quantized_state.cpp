#include "runtime/quantized_state.h"

#include <limits>
#include <vector>

#include "kernels/error.h"
#include "kernels/quantize.h"
#include "runtime/memory_report.h"

namespace keel::runtime {

QuantizedLayout quantized_layout(const Config& config, int data_parallel_size) {
  // fp32 AdamW quantizes nothing: as if every tensor were under min_8bit_size.
  const int64_t min_8bit = config.optimizer.type == "adamw_8bit"
                               ? config.optimizer.min_8bit_size
                               : std::numeric_limits<int64_t>::max();
  return {config.parallel.zero_stage > 0 ? data_parallel_size : 1, config.optimizer.block_size,
          min_8bit};
}

void read_moment_f32(const std::string& dir, const CheckpointInfo& info,
                     const QuantizedLayout& saved, const std::string& param, int64_t rows,
                     int64_t cols, const parallel::ShardRect& rect, const std::string& moment,
                     float* out, int64_t elems) {
  const std::string name = optimizer_state_name(moment, param);
  // The shards that wrote it (one parameter's sharding does not depend on the others).
  const parallel::ZeroLayout old({{param, rows, cols}}, saved.shards);
  const parallel::ZeroShard& shard = old.shard(0);
  if (!quantize_state(param) || shard.elems < saved.min_8bit_size) {  // kept in fp32
    read_state(dir, info, {{name, rows, cols, rect, out, elems}});
    return;
  }
  std::vector<uint8_t> codes(static_cast<size_t>(elems));
  read_state(dir, info, {{name, rows, cols, rect, nullptr, elems, codes.data()}});
  const int64_t blocks = (shard.elems + saved.block_size - 1) / saved.block_size;
  std::vector<float> absmax(static_cast<size_t>(saved.shards * blocks));
  const int64_t all = static_cast<int64_t>(absmax.size());
  read_state(dir, info,
             {{optimizer_state_name(moment + "_absmax", param),
               all,
               1,
               {0, 0, all, 1, 1},
               absmax.data(),
               all}});
  const kernels::cpu::QuantMap map = kernels::cpu::dynamic_map(moment == "exp_avg");
  std::vector<parallel::ShardRect> saved_rects;
  for (int k = 0; k < saved.shards; ++k) saved_rects.push_back(old.rect(0, k));
  std::fill(out, out + elems, 0.0f);
  for (int64_t r = 0; r < rect.rows; ++r) {
    for (int64_t c = 0; c < rect.cols; ++c) {
      const int64_t row = rect.row0 + r, col = rect.col0 + c;
      // The saving rank, and the element's place in its shard.
      const int k = static_cast<int>((shard.dim == 0 ? row : col) / shard.chunk);
      const parallel::ShardRect& o = saved_rects[static_cast<size_t>(k)];
      const int64_t at = (row - o.row0) * o.ld + (col - o.col0);
      const int64_t here = r * rect.ld + c;
      out[here] = map[codes[static_cast<size_t>(here)]] *
                  absmax[static_cast<size_t>(k * blocks + at / saved.block_size)];
    }
  }
}

}  // namespace keel::runtime
