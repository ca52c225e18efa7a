#include "parallel/zero_layout.h"

#include <algorithm>
#include <cstring>

#include "kernels/error.h"

namespace keel::parallel {

namespace {
// Shards start on a 16-float (64-byte) boundary inside a region.
constexpr int64_t kAlign = 16;
int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }
}  // namespace

ZeroLayout::ZeroLayout(std::vector<ZeroParamSpec> params, int ranks)
    : params_(std::move(params)), ranks_(ranks) {
  KEEL_CHECK(ranks >= 1, "ZeRO needs at least one rank, got {}", ranks);
  for (const ZeroParamSpec& p : params_) {
    KEEL_CHECK(p.rows >= 1 && p.cols >= 1, "parameter '{}' has an empty shape {}x{}", p.name,
               p.rows, p.cols);
    ZeroShard s;
    s.dim = p.rows >= p.cols ? 0 : 1;
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
  const ZeroParamSpec& p = params_[i];
  const ZeroShard& s = shards_[i];
  const int64_t along = s.dim == 0 ? p.rows : p.cols;
  const int64_t across = s.dim == 0 ? p.cols : p.rows;
  const int64_t begin = std::min(along, s.chunk * k), end = std::min(along, s.chunk * (k + 1));
  return (end - begin) * across;
}

void ZeroLayout::pack(float* region, int k, const std::vector<const float*>& full) const {
  KEEL_CHECK(full.size() == params_.size(), "pack: {} tensors for {} parameters", full.size(),
             params_.size());
  std::fill_n(region, region_, 0.0f);
  for (size_t i = 0; i < params_.size(); ++i) {
    const ZeroParamSpec& p = params_[i];
    const ZeroShard& s = shards_[i];
    float* dst = region + s.offset;
    if (s.dim == 0) {  // rows [k·chunk, …) are contiguous in the full matrix
      const int64_t r0 = std::min(p.rows, s.chunk * k);
      const int64_t r1 = std::min(p.rows, s.chunk * (k + 1));
      std::memcpy(dst, full[i] + r0 * p.cols, static_cast<size_t>((r1 - r0) * p.cols) * 4);
    } else {  // columns [k·chunk, …) of every row, packed row by row: (rows, chunk)
      const int64_t c0 = std::min(p.cols, s.chunk * k);
      const int64_t c1 = std::min(p.cols, s.chunk * (k + 1));
      for (int64_t r = 0; r < p.rows; ++r)
        std::memcpy(dst + r * s.chunk, full[i] + r * p.cols + c0, static_cast<size_t>(c1 - c0) * 4);
    }
  }
}

void ZeroLayout::pack_all(float* staging, const std::vector<const float*>& full) const {
#pragma omp parallel for schedule(static)
  for (int k = 0; k < ranks_; ++k) pack(staging + k * region_, k, full);
}

void ZeroLayout::unpack_all(const float* staging, const std::vector<float*>& full) const {
  KEEL_CHECK(full.size() == params_.size(), "unpack: {} tensors for {} parameters", full.size(),
             params_.size());
#pragma omp parallel for schedule(static)
  for (int k = 0; k < ranks_; ++k) {
    const float* region = staging + k * region_;
    for (size_t i = 0; i < params_.size(); ++i) {
      const ZeroParamSpec& p = params_[i];
      const ZeroShard& s = shards_[i];
      const float* src = region + s.offset;
      if (s.dim == 0) {
        const int64_t r0 = std::min(p.rows, s.chunk * k);
        const int64_t r1 = std::min(p.rows, s.chunk * (k + 1));
        std::memcpy(full[i] + r0 * p.cols, src, static_cast<size_t>((r1 - r0) * p.cols) * 4);
      } else {
        const int64_t c0 = std::min(p.cols, s.chunk * k);
        const int64_t c1 = std::min(p.cols, s.chunk * (k + 1));
        for (int64_t r = 0; r < p.rows; ++r)
          std::memcpy(full[i] + r * p.cols + c0, src + r * s.chunk,
                      static_cast<size_t>(c1 - c0) * 4);
      }
    }
  }
}

}  // namespace keel::parallel
