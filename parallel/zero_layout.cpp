#include "parallel/zero_layout.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/error.h"
#include "kernels/ops.h"

namespace keel::parallel {

namespace {
// Shards start on a 16-float (64-byte) boundary inside a region.
constexpr int64_t kAlign = 16;
int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// Below this many floats a copy stays on one thread.
constexpr int64_t kParallelFloats = int64_t{1} << 16;

// n floats, split across the OpenMP threads when it is worth it.
void copy_floats(float* dst, const float* src, int64_t n) {
  if (n < kParallelFloats) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
#pragma omp parallel
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    std::memcpy(dst + begin, src + begin, static_cast<size_t>(end - begin) * sizeof(float));
  }
}

// rows × width floats from a matrix with row stride src_stride into one with dst_stride.
void copy_rows(float* dst, int64_t dst_stride, const float* src, int64_t src_stride, int64_t rows,
               int64_t width) {
#pragma omp parallel for schedule(static) if (rows * width >= kParallelFloats)
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, static_cast<size_t>(width) * 4);
}

}  // namespace

ZeroLayout::ZeroLayout(std::vector<ZeroParamSpec> params, int ranks)
    : params_(std::move(params)), ranks_(ranks) {
  KEEL_CHECK(ranks >= 1, "ZeRO needs at least one rank, got {}", ranks);
  for (const ZeroParamSpec& p : params_) {
    KEEL_CHECK(p.rows >= 1 && p.cols >= 1, "parameter '{}' has an empty shape {}x{}", p.name,
               p.rows, p.cols);
    ZeroShard s;
    KEEL_CHECK(p.dim >= -1 && p.dim <= 1, "parameter '{}': ZeRO splits dimension 0 or 1, not {}",
               p.name, p.dim);
    s.dim = p.dim >= 0 ? p.dim : (p.rows >= p.cols ? 0 : 1);
    const int64_t along = s.dim == 0 ? p.rows : p.cols;
    const int64_t across = s.dim == 0 ? p.cols : p.rows;
    s.chunk = (along + ranks - 1) / ranks;
    s.elems = s.chunk * across;
    s.offset = region_;
    region_ = round_up(region_ + s.elems, kAlign);
    shards_.push_back(s);
  }
}

int64_t ZeroLayout::real_elems(size_t i, int k) const {
  const ShardRect r = rect(i, k);
  return r.rows * r.cols;
}

ShardRect ZeroLayout::rect(size_t i, int k) const {
  const ZeroParamSpec& p = params_[i];
  const ZeroShard& s = shards_[i];
  const int64_t along = s.dim == 0 ? p.rows : p.cols;
  const int64_t begin = std::min(along, s.chunk * k), end = std::min(along, s.chunk * (k + 1));
  if (s.dim == 0) return {begin, 0, end - begin, p.cols, p.cols};
  return {0, begin, p.rows, end - begin, s.chunk};
}

void ZeroLayout::pack(float* region, int k, const std::vector<const float*>& full) const {
  KEEL_CHECK(full.size() == params_.size(), "pack: {} tensors for {} parameters", full.size(),
             params_.size());
  // Every float of the region is written once: the chunk, then zeros for its padding and for the
  // alignment gap before the next shard.
  for (size_t i = 0; i < params_.size(); ++i) {
    const ZeroParamSpec& p = params_[i];
    const ZeroShard& s = shards_[i];
    float* dst = region + s.offset;
    const int64_t next = i + 1 < params_.size() ? shards_[i + 1].offset : region_;
    int64_t written = s.elems;
    if (s.dim == 0) {  // rows [k·chunk, …) are contiguous in the full matrix
      const int64_t r0 = std::min(p.rows, s.chunk * k);
      const int64_t r1 = std::min(p.rows, s.chunk * (k + 1));
      copy_floats(dst, full[i] + r0 * p.cols, (r1 - r0) * p.cols);
      written = (r1 - r0) * p.cols;
    } else {  // columns [k·chunk, …) of every row, packed row by row: (rows, chunk)
      const int64_t c0 = std::min(p.cols, s.chunk * k);
      const int64_t c1 = std::min(p.cols, s.chunk * (k + 1));
      copy_rows(dst, s.chunk, full[i] + c0, p.cols, p.rows, c1 - c0);
      if (c1 - c0 < s.chunk)
        for (int64_t r = 0; r < p.rows; ++r)
          std::fill(dst + r * s.chunk + (c1 - c0), dst + (r + 1) * s.chunk, 0.0f);
    }
    std::fill(dst + written, region + next, 0.0f);
  }
}

void ZeroLayout::pack_all(float* staging, const std::vector<const float*>& full) const {
  for (int k = 0; k < ranks_; ++k) pack(staging + k * region_, k, full);
}

void ZeroLayout::unpack_all(const float* staging, const std::vector<float*>& full) const {
  for (int k = 0; k < ranks_; ++k) unpack(staging + k * region_, k, full);
}

void ZeroLayout::unpack(const float* region, int k, const std::vector<float*>& full) const {
  KEEL_CHECK(full.size() == params_.size(), "unpack: {} tensors for {} parameters", full.size(),
             params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const ZeroParamSpec& p = params_[i];
    const ZeroShard& s = shards_[i];
    const float* src = region + s.offset;
    if (s.dim == 0) {
      const int64_t r0 = std::min(p.rows, s.chunk * k);
      const int64_t r1 = std::min(p.rows, s.chunk * (k + 1));
      copy_floats(full[i] + r0 * p.cols, src, (r1 - r0) * p.cols);
    } else {
      const int64_t c0 = std::min(p.cols, s.chunk * k);
      const int64_t c1 = std::min(p.cols, s.chunk * (k + 1));
      copy_rows(full[i] + c0, p.cols, src, s.chunk, p.rows, c1 - c0);
    }
  }
}

double counted_sum_squares(const std::vector<ZeroParamSpec>& params, const float* g, int64_t total,
                           const std::function<std::pair<int64_t, int64_t>(size_t)>& span,
                           Device device) {
  const kernels::Ops& k = kernels::ops(device);
  if (std::all_of(params.begin(), params.end(), [](const ZeroParamSpec& p) { return p.counted; }))
    return k.sum_squares(g, total, {});
  double sum = 0.0;
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].counted) {
      const auto [offset, floats] = span(i);
      sum += k.sum_squares(g + offset, floats, {});
    }
  return sum;
}

}  // namespace keel::parallel
