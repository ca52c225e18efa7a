// The reduction helpers the engine runs between the big ops: count_nonfinite (the divergence
// guard's test) counts NaN, +inf and -inf wherever they sit and nothing else, at awkward sizes and
// with any thread count; the largest and smallest finite floats are not counted.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/elementwise.h"
#include "op_test_util.h"

namespace keel::kernels::cpu {
namespace {

TEST(CountNonfinite, CountsNanAndInfinitiesOnly) {
  constexpr float kMax = std::numeric_limits<float>::max();
  constexpr float kTiny = std::numeric_limits<float>::denorm_min();
  for (const int64_t n : {0, 1, 7, 17, 1000, 100003}) {
    std::vector<float> x = testing::random_floats(static_cast<size_t>(n), 11, 1e3f);
    if (n > 2) x[1] = kMax, x[2] = -kTiny;
    int64_t want = 0;
    for (int64_t i = 0; i < n; i += 13) {
      x[i] = i % 3 == 0 ? NAN : (i % 3 == 1 ? INFINITY : -INFINITY);
      ++want;
    }
    if (n > 0) x[n - 1] = -NAN, want += (n - 1) % 13 != 0;
    for (const int threads : {1, 2}) {
      const int before = omp_get_max_threads();
      omp_set_num_threads(threads);
      EXPECT_EQ(count_nonfinite(x.data(), n), want) << "n " << n << ", threads " << threads;
      omp_set_num_threads(before);
    }
  }
}

}  // namespace
}  // namespace keel::kernels::cpu
