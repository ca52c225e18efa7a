// ZeRO's per-parameter sharding: every parameter is split across the N ranks of the data-parallel
// group along its longer dimension (rows of a matrix with rows >= cols, else columns; a vector
// along its length) unless it names one, in N equal chunks, the last padded. A rank's shard of
// every parameter, packed one after another, is its region; the N regions side by side form the
// staging layout that reduce_scatter and all_gather work on, so each collective is one call over
// all parameters.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/device.h"

namespace keel::parallel {

// A parameter as ZeRO sees it: its name and global shape (rows × cols; a vector is n × 1).
struct ZeroParamSpec {
  std::string name;
  int64_t rows = 0;
  int64_t cols = 1;
  // Whether Σ g² (the gradient norm) counts it on this rank. Tensor parallelism holds some
  // tensors alike on several ranks (norms, a shared key/value head) and counts them on one.
  bool counted = true;
  // The dimension ZeRO splits (0 rows, 1 columns), or -1 for the longer one (rows on a tie).
  // Tensor parallelism names its own split's, so that its slice and ZeRO's rectangle of it cut the
  // global tensor along one dimension (what Adafactor's and GaLore's reductions rely on).
  int dim = -1;
};

struct ZeroShard {
  int dim = 0;         // 0: split rows, 1: split columns
  int64_t chunk = 0;   // rows (dim 0) or columns (dim 1) per rank, padding included
  int64_t offset = 0;  // start of this parameter's shard inside a rank's region
  int64_t elems = 0;   // floats of the shard, padding included: chunk × the other dimension
};

// Where a shard lies in its full parameter: rows [row0, row0 + rows) × columns [col0, col0 + cols),
// stored row-major with ld floats per row (ld ≥ cols; the rest of a row, and any rows past
// `rows`, are padding). A checkpoint stores shards with their rectangles, so any layout can read
// what any other wrote.
struct ShardRect {
  int64_t row0 = 0, col0 = 0, rows = 0, cols = 0, ld = 0;
};

class ZeroLayout {
 public:
  ZeroLayout(std::vector<ZeroParamSpec> params, int ranks);

  int ranks() const { return ranks_; }
  const std::vector<ZeroParamSpec>& params() const { return params_; }
  const ZeroShard& shard(size_t i) const { return shards_[i]; }
  // Floats of one rank's region (every shard, padded); the staging buffer is ranks() regions.
  int64_t region_elems() const { return region_; }
  // Real (unpadded) floats of parameter i on rank k.
  int64_t real_elems(size_t i, int k) const;
  // The rectangle of parameter i that rank k's shard holds.
  ShardRect rect(size_t i, int k) const;

  // Copies rank k's chunk of every full parameter into region (padding zeroed).
  void pack(float* region, int k, const std::vector<const float*>& full) const;
  // pack() for every rank: staging holds ranks() regions.
  void pack_all(float* staging, const std::vector<const float*>& full) const;
  // Copies rank k's region back into its chunk of every full parameter (padding dropped).
  void unpack(const float* region, int k, const std::vector<float*>& full) const;
  // unpack() for every rank's region of staging.
  void unpack_all(const float* staging, const std::vector<float*>& full) const;

 private:
  std::vector<ZeroParamSpec> params_;
  std::vector<ZeroShard> shards_;
  int ranks_;
  int64_t region_ = 0;
};

// Σ g² over the parameters this rank counts (ZeroParamSpec::counted) of a buffer of `total`
// floats holding parameter i at span(i) = (offset, floats), padding zero: the whole buffer at once
// when every parameter counts. A ZeRO region and a whole unit's gradients both are such buffers.
double counted_sum_squares(const std::vector<ZeroParamSpec>& params, const float* g, int64_t total,
                           const std::function<std::pair<int64_t, int64_t>(size_t)>& span,
                           Device device);

}  // namespace keel::parallel
