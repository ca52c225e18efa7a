// ZeRO's per-parameter sharding: which dimension splits, the padding, and that packing every
// rank's region and unpacking them restores every parameter exactly.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "parallel/zero_layout.h"

namespace keel::parallel {
namespace {

TEST(ZeroLayoutTest, SplitsTheLongerDimensionWithPadding) {
  ZeroLayout z({{"tall", 10, 3}, {"wide", 3, 10}, {"vector", 7, 1}}, 4);
  EXPECT_EQ(z.shard(0).dim, 0);
  EXPECT_EQ(z.shard(0).chunk, 3);  // ceil(10 / 4)
  EXPECT_EQ(z.shard(0).elems, 9);
  EXPECT_EQ(z.shard(1).dim, 1);
  EXPECT_EQ(z.shard(1).elems, 9);
  EXPECT_EQ(z.shard(2).chunk, 2);
  // Real elements per rank add up to the parameter; the last rank holds the remainder.
  for (size_t i = 0; i < 3; ++i) {
    int64_t total = 0;
    for (int k = 0; k < 4; ++k) total += z.real_elems(i, k);
    EXPECT_EQ(total, z.params()[i].rows * z.params()[i].cols);
  }
  EXPECT_EQ(z.real_elems(0, 3), 3);  // row 9 alone
  EXPECT_EQ(z.real_elems(2, 3), 1);
  EXPECT_EQ(z.shard(1).offset % 16, 0);
  EXPECT_EQ(z.region_elems() % 16, 0);
}

TEST(ZeroLayoutTest, PackThenUnpackRestoresEveryParameter) {
  for (int ranks : {1, 2, 3, 4, 7}) {
    const std::vector<ZeroParamSpec> specs = {
        {"a", 13, 5}, {"b", 5, 13}, {"c", 1, 1}, {"d", 9, 1}, {"e", 6, 6}};
    ZeroLayout z(specs, ranks);
    std::vector<std::vector<float>> full, back;
    std::vector<const float*> in;
    std::vector<float*> out;
    for (const ZeroParamSpec& p : specs) {
      full.emplace_back(static_cast<size_t>(p.rows * p.cols));
      std::iota(full.back().begin(), full.back().end(), 1000.0f * static_cast<float>(full.size()));
      back.emplace_back(full.back().size(), -1.0f);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      in.push_back(full[i].data());
      out.push_back(back[i].data());
    }
    std::vector<float> staging(static_cast<size_t>(z.region_elems() * ranks), -7.0f);
    z.pack_all(staging.data(), in);
    // Each shard holds its slice: rank k's first element of "b" (split by columns) is column
    // k·chunk of row 0.
    const ZeroShard& sb = z.shard(1);
    for (int k = 0; k < ranks; ++k) {
      if (z.real_elems(1, k) == 0) continue;
      EXPECT_EQ(staging[static_cast<size_t>(k * z.region_elems() + sb.offset)],
                full[1][static_cast<size_t>(k * sb.chunk)]);
    }
    // rect() says where every packed value came from: element (r, c) of rank k's shard of
    // parameter i is element (row0 + r, col0 + c) of the full tensor; padding is zero.
    for (size_t i = 0; i < specs.size(); ++i)
      for (int k = 0; k < ranks; ++k) {
        const ShardRect rc = z.rect(i, k);
        const float* shard = staging.data() + k * z.region_elems() + z.shard(i).offset;
        EXPECT_EQ(rc.ld * ((z.shard(i).elems + rc.ld - 1) / rc.ld), z.shard(i).elems);
        for (int64_t e = 0; e < z.shard(i).elems; ++e) {
          const int64_t r = e / rc.ld, c = e % rc.ld;
          const float want =
              r < rc.rows && c < rc.cols
                  ? full[i][static_cast<size_t>((rc.row0 + r) * specs[i].cols + rc.col0 + c)]
                  : 0.0f;
          ASSERT_EQ(shard[e], want) << specs[i].name << " rank " << k << " of " << ranks;
        }
      }
    z.unpack_all(staging.data(), out);
    EXPECT_EQ(full, back) << ranks << " ranks";
  }
}

}  // namespace
}  // namespace keel::parallel
