#include "runtime/model/parameter.h"

#include <cmath>

#include "kernels/hash.h"

namespace keel::runtime {

namespace {

// A uniform double in (0, 1) from 53 random bits.
double unit(uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }

}  // namespace

void init_normal(Parameter& p, uint64_t seed, double std) {
  const uint64_t key = splitmix64(seed ^ fnv1a(p.name));
  // Local element (r, c) is global element (r + row0, c + col0) of a (rows, gcols) matrix.
  const int64_t gcols = p.global_shape.rank() > 1 ? p.global_shape.numel() / p.global_shape[0] : 1;
  const int64_t cols = p.value.rank() > 1 ? p.value.numel() / p.value.shape()[0] : 1;
  const int64_t row0 = p.shard.row0(), col0 = p.shard.col0();
  KEEL_CHECK(p.shard.dim <= 1 && (p.shard.dim != 1 || p.value.rank() == 2),
             "init of '{}': a shard is rows or columns of a matrix", p.name);
  float* v = p.value.f32();
  const int64_t n = p.value.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    // Box-Muller on two independent draws keyed by the global index.
    const auto g = static_cast<uint64_t>((i / cols + row0) * gcols + i % cols + col0);
    const double u1 = unit(splitmix64(key ^ (2 * g)));
    const double u2 = unit(splitmix64(key ^ (2 * g + 1)));
    v[i] = static_cast<float>(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
  }
}

void init_constant(Parameter& p, float c) {
  float* v = p.value.f32();
  for (int64_t i = 0; i < p.value.numel(); ++i) v[i] = c;
}

}  // namespace keel::runtime
