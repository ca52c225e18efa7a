// ZeRO's per-layer hand-over on one rank (the multi-rank runs are tests/launcher/
// test_per_layer_update.cpp): unit u is handed over when unit u−1 releases its gradients, with
// its shard holding its gradient; the shards of two units exist, not of all; every misuse that
// would step a unit from a wrong gradient is an error.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/self_communicator.h"
#include "parallel/zero.h"
#include "unit_test_util.h"

namespace keel::parallel {
namespace {

using test::error_of;
using test::fill_toy_grad;
using test::toy_grad;
using test::toy_sum_squares;
using test::toy_units;

// A stage-2 Zero over the toy units on one rank, the model's weights beside it.
struct Toy {
  SelfCommunicator one;
  std::vector<std::vector<float>> weights;
  Zero zero;
  explicit Toy(bool per_layer, int live_units = 1)
      : zero(toy_units(), 2, one, live_units, per_layer) {
    std::vector<float*> w;
    for (const ZeroUnit& u : toy_units()) {
      weights.emplace_back(static_cast<size_t>(u.elems), 0.0f);
      w.push_back(weights.back().data());
    }
    zero.attach_model(w, {});
    zero.init_master([&](int u, float*) { return weights[static_cast<size_t>(u)].data(); });
  }
  void backward(int unit) {
    fill_toy_grad(toy_units()[static_cast<size_t>(unit)], unit, zero.acquire_grads(unit));
    zero.release_grads(unit);
  }
};

// Which shards() entries belong to unit u (units in order, their parameters in order).
size_t first_shard(int u) {
  size_t n = 0;
  for (int v = 0; v < u; ++v) n += toy_units()[static_cast<size_t>(v)].params.size();
  return n;
}

TEST(ZeroPerLayerTest, HandsUnitOverWhenTheNextReleases) {
  for (const int live : {1, 2}) {  // 2: a tied embedding, held from the head to the end
    Toy toy(true, live);
    const std::vector<ZeroShardRef> shards = toy.zero.shards();
    std::vector<int> order;
    int releasing = -1;  // the unit whose release is under way
    toy.zero.set_unit_ready([&](int u, double sq) {
      order.push_back(u);
      EXPECT_EQ(releasing, u == 0 ? -1 : u - 1) << "unit " << u << " handed over late or early";
      const ZeroUnit& unit = toy_units()[static_cast<size_t>(u)];
      EXPECT_NEAR(sq, toy_sum_squares(unit, u), 1e-6 * sq);
      // One rank: each shard is its whole parameter, row-major.
      for (size_t p = 0; p < unit.params.size(); ++p)
        for (int64_t i = 0; i < unit.params[p].rows * unit.params[p].cols; ++i)
          ASSERT_EQ(shards[first_shard(u) + p].grad[i], toy_grad(u, unit.offsets[p] + i))
              << "unit " << u << ", parameter " << unit.params[p].name << ", element " << i;
    });
    for (int step = 0; step < 2; ++step) {
      order.clear();
      toy.zero.begin_step();
      float* embed = nullptr;
      releasing = 3;
      if (live == 2) {  // the head adds to the embedding's gradient too
        float* head = toy.zero.acquire_grads(3);
        embed = toy.zero.acquire_grads(0);
        fill_toy_grad(toy_units()[3], 3, head);
        toy.zero.release_grads(3);
      } else {
        toy.backward(3);
      }
      for (int u = 2; u >= 1; --u) {
        releasing = u;
        toy.backward(u);
      }
      releasing = 0;
      if (embed) {
        fill_toy_grad(toy_units()[0], 0, embed);
        toy.zero.release_grads(0);
      } else {
        toy.backward(0);
      }
      releasing = -1;
      toy.zero.reduce_gradients();
      EXPECT_EQ(order, (std::vector<int>{3, 2, 1, 0})) << "live units " << live;
    }
  }
}

TEST(ZeroPerLayerTest, KeepsTheShardsOfTwoUnits) {
  int64_t widest = 0, total = 0;
  for (const ZeroUnit& u : toy_units()) {
    const int64_t region = ZeroLayout(u.params, 2).region_elems();
    widest = std::max(widest, region), total += region;
  }
  const ZeroBytes all = Zero::plan(toy_units(), 2, 2, 1),
                  two = Zero::plan(toy_units(), 2, 2, 1, true);
  EXPECT_EQ(all.grad_shard, static_cast<size_t>(total) * sizeof(float));
  EXPECT_EQ(two.grad_shard, static_cast<size_t>(2 * widest) * sizeof(float));
  EXPECT_LT(two.grad_shard, all.grad_shard);
  EXPECT_EQ(two.master, all.master);
}

TEST(ZeroPerLayerTest, MisuseIsAnError) {
  SelfCommunicator one;
  EXPECT_NE(error_of([&] { Zero z(toy_units(), 1, one, 1, true); }).find("needs stage 2 or 3"),
            std::string::npos);
  Toy unset(true);
  EXPECT_NE(error_of([&] { unset.zero.begin_step(); }).find("set_unit_ready first"),
            std::string::npos);
  auto started = [](Toy& toy) {
    toy.zero.set_unit_ready([](int, double) {});
    toy.zero.begin_step();
  };
  Toy norm(true);
  started(norm);
  EXPECT_NE(error_of([&] { norm.zero.grad_sum_squares(); }).find("each unit's"), std::string::npos);
  // Units 3 and 1 share a shard buffer, and 3 is not handed over until the next release.
  Toy skip(true);
  started(skip);
  skip.backward(3);
  EXPECT_NE(error_of([&] {
              skip.backward(1);
            }).find("unit 'layers.0' would reduce into the gradient shard of unit 'head'"),
            std::string::npos);
  Toy twice(true);
  started(twice);
  twice.backward(3);
  EXPECT_NE(error_of([&] { twice.backward(3); }).find("'head' released twice in a step"),
            std::string::npos);
  Toy missing(true);
  started(missing);
  missing.backward(3);
  missing.backward(2);
  EXPECT_NE(error_of([&] { missing.zero.reduce_gradients(); }).find("stepped 2 of the 4 units"),
            std::string::npos);
}

}  // namespace
}  // namespace keel::parallel
