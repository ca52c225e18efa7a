#include "runtime/model/tp_gather.h"

#include <algorithm>

namespace keel::runtime {

void gather_whole(const Parameter& p, const float* local, float* whole,
                  const parallel::TpMappings& tp) {
  const int64_t n = p.global_shape.numel();
  const int64_t gcols = p.global_shape.rank() > 1 ? n / p.global_shape[0] : 1;
  const int64_t rows = p.value.rank() > 1 ? p.value.shape()[0] : p.value.numel();
  const int64_t cols = p.value.numel() / std::max<int64_t>(rows, 1);
  const int64_t row0 = p.shard.row0(), col0 = p.shard.col0();
  std::fill_n(whole, n, 0.0f);
  if (p.tp_counted)
    for (int64_t r = 0; r < rows; ++r)
      std::copy_n(local + r * cols, cols, whole + (row0 + r) * gcols + col0);
  tp.reduce(whole, n);
}

}  // namespace keel::runtime
