// UnitGrads (ZeRO 0 under a per-layer update) on one rank: each unit is handed over as it
// releases its gradients, from a buffer fixed per unit, and one buffer serves every unit (two
// with a tied embedding); every misuse that would step a unit from a wrong gradient is an error.
#include <gtest/gtest.h>

#include <vector>

#include "parallel/self_communicator.h"
#include "parallel/unit_grads.h"
#include "unit_test_util.h"

namespace keel::parallel {
namespace {

using test::error_of;
using test::fill_toy_grad;
using test::toy_grad;
using test::toy_sum_squares;
using test::toy_units;

// Records each hand-over and checks, while it happens, that the unit's gradient is in grads(u).
struct Recorder {
  const UnitGrads* grads = nullptr;
  std::vector<int> order;
  void operator()(int u, double sq) {
    order.push_back(u);
    const ZeroUnit& unit = toy_units()[static_cast<size_t>(u)];
    EXPECT_NEAR(sq, toy_sum_squares(unit, u), 1e-6 * sq) << "unit " << u;
    for (size_t p = 0; p < unit.params.size(); ++p)
      for (int64_t i = 0; i < unit.params[p].rows * unit.params[p].cols; ++i)
        ASSERT_EQ(grads->grads(u)[unit.offsets[p] + i], toy_grad(u, unit.offsets[p] + i))
            << "unit " << u << ", parameter " << unit.params[p].name << ", element " << i;
  }
};

void backward(UnitGrads& g, int unit) {
  fill_toy_grad(toy_units()[static_cast<size_t>(unit)], unit, g.acquire_grads(unit));
  g.release_grads(unit);
}

TEST(UnitGradsTest, HandsEachUnitOverFromOneBuffer) {
  SelfCommunicator one;
  UnitGrads g(toy_units(), one, 1);
  EXPECT_EQ(g.bytes(), UnitGrads::plan_bytes(toy_units(), 1));
  EXPECT_GE(g.bytes(), 40 * sizeof(float)) << "one buffer of the widest unit, not one per unit";
  EXPECT_LT(g.bytes(), 2 * 40 * sizeof(float));
  Recorder rec{&g, {}};
  g.set_unit_ready([&](int u, double sq) { rec(u, sq); });
  for (int step = 0; step < 2; ++step) {
    rec.order.clear();
    g.begin_step();
    for (int u = 3; u >= 0; --u) backward(g, u);
    g.end_step();
    EXPECT_EQ(rec.order, (std::vector<int>{3, 2, 1, 0}));
  }
  for (int u = 1; u < 4; ++u) EXPECT_EQ(g.grads(u), g.grads(0));
}

// Tied embeddings: the head adds to the embedding's gradient, which stays until the embedding's
// own backward; it has its own buffer, and is handed over last.
TEST(UnitGradsTest, TiedEmbeddingKeepsItsBufferAcrossTheBackward) {
  SelfCommunicator one;
  UnitGrads g(toy_units(), one, 2);
  Recorder rec{&g, {}};
  g.set_unit_ready([&](int u, double sq) { rec(u, sq); });
  g.begin_step();
  float* head = g.acquire_grads(3);
  float* embed = g.acquire_grads(0);
  EXPECT_NE(head, embed);
  fill_toy_grad(toy_units()[3], 3, head);
  g.release_grads(3);
  for (int u = 2; u >= 1; --u) backward(g, u);
  fill_toy_grad(toy_units()[0], 0, embed);
  g.release_grads(0);
  g.end_step();
  EXPECT_EQ(rec.order, (std::vector<int>{3, 2, 1, 0}));
}

TEST(UnitGradsTest, MisuseIsAnError) {
  SelfCommunicator one;
  UnitGrads g(toy_units(), one, 1);
  EXPECT_NE(error_of([&] { g.begin_step(); }).find("set_unit_ready first"), std::string::npos);
  g.set_unit_ready([](int, double) {});
  g.begin_step();
  EXPECT_NE(error_of([&] { g.acquire_weights(1); }).find("it holds its own"), std::string::npos);
  g.acquire_grads(3);
  // The one buffer is held: a second unit would overwrite a gradient not yet stepped.
  EXPECT_NE(error_of([&] {
              g.acquire_grads(2);
            }).find("unit 'layers.1' asked for its gradients while unit 'head' holds"),
            std::string::npos);
  g.release_grads(3);
  // A unit already stepped this step would be stepped again from a partial gradient.
  EXPECT_NE(error_of([&] {
              g.acquire_grads(3);
            }).find("unit 'head' asked for its gradients twice in a step"),
            std::string::npos);
  EXPECT_NE(error_of([&] { g.end_step(); }).find("stepped 1 of the 4 units"), std::string::npos);
}

}  // namespace
}  // namespace keel::parallel
