// The admission check: the plan it checks is the plan the trainer allocates (byte for byte, across
// ZeRO stages, optimizers, GaLore, per-layer update, checkpointing), a plan above the limit is one
// line naming the plan, the limit and settings that fit (each of which does fit), and a plan that
// fits trains.
#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/self_communicator.h"
#include "runtime/config_test_util.h"
#include "runtime/file_test_util.h"
#include "runtime/train/memory_fit.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {
namespace {

using test::error_of;
using test::expect_mentions;

constexpr uint64_t kGiB = uint64_t{1} << 30;

// Small enough to train in a blink; every dimension of the search applies to it.
const char* const kModel = R"(
model: {vocab_size: 256, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}
data: {train: data/kjv.txt.gz, tokenizer: bytes, seq_length: 32}
training: {max_steps: 2, per_device_train_batch_size: 4, report_to: none}
)";

Config config_with(const std::vector<std::string>& sets) { return parse_config(kModel, sets); }

class MemoryFitTest : public testing::FileTest {
 protected:
  Config config(std::vector<std::string> sets) const {
    sets.push_back("data.train=" + std::string(KEEL_SOURCE_DIR) + "/data/kjv.txt.gz");
    sets.push_back("training.output_dir=" + path("run"));
    return config_with(sets);
  }
};

// What `keel plan` forecasts and the admission checks is what the trainer then plans, to the byte.
TEST_F(MemoryFitTest, PlanIsWhatTheTrainerPlans) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"training.gradient_checkpointing=true"},
      {"optimizer.type=adamw_8bit", "optimizer.min_8bit_size=256", "optimizer.block_size=64"},
      {"optimizer.type=adafactor"},
      {"optimizer.galore.rank=8"},
      {"optimizer.galore.rank=8", "optimizer.type=adamw_8bit", "optimizer.min_8bit_size=0"},
      {"optimizer.per_layer_update=true", "training.max_grad_norm=0"},
      {"parallel.zero_stage=1"},
      {"parallel.zero_stage=2", "optimizer.galore.rank=4"},
      {"parallel.zero_stage=3", "training.gradient_accumulation_steps=2"},
      {"parallel.zero_stage=3", "optimizer.per_layer_update=true", "training.max_grad_norm=0"},
      {"parallel.zero_stage=2", "optimizer.per_layer_update=true", "training.max_grad_norm=0",
       "model.tie_word_embeddings=true"},
  };
  for (const std::vector<std::string>& sets : cases) {
    const Config c = config(sets);
    std::ostringstream console;
    const Trainer trainer(c, console);
    const RankMemory plan = plan_rank_memory(c, 1);
    EXPECT_EQ(plan.total(), trainer.planned_bytes())
        << describe_memory(plan) << console.str() << "with " << ::testing::PrintToString(sets);
  }
}

// Sequence parallelism keeps 1/tp of the rows of the slots that hold the residual stream between
// the TP regions (each block's input and middle, the norms' statistics, the residual gradient);
// the gathered norm outputs and everything inside the TP regions keep every row.
TEST(MemoryFit, SequenceParallelismShrinksTheSlotsThatHoldATokenSlice) {
  const std::vector<std::string> tp2 = {"parallel.tensor_model_parallel_size=2"};
  std::vector<std::string> sp = tp2;
  sp.push_back("parallel.sequence_parallel=true");
  const RankMemory off = plan_rank_memory(config_with(tp2), 1),
                   on = plan_rank_memory(config_with(sp), 1);
  // N = 4·32 rows, half of them held: L+1 = 3 block inputs (n, C), per layer xmid (n, C) and two
  // rstd (n), the final rstd (n); every slot a multiple of 64 bytes, so nothing is padding.
  const size_t L = 2, n = 64, C = 64, f = sizeof(float);
  EXPECT_EQ(off.activations - on.activations, f * ((L + 1) * n * C + L * (n * C + 2 * n) + n));
  // The residual gradient (n, C) instead of (N, C); the norms' partial gradients (2, C) added.
  EXPECT_EQ(off.buffers - on.buffers, f * (n * C - 2 * C));
  EXPECT_EQ(on.parameters, off.parameters);
}

// Every setting the search offers fits when applied as its --set arguments say; none is a
// stronger version of another listed; the cheapest comes first.
// A pipeline stage's micro-batches in flight each hold their own activations; everything else,
// and the printed line without a pipeline, stays as it was.
TEST(MemoryFit, ActivationSlotsCountEachMicroBatchInFlight) {
  for (const char* checkpointing : {"false", "true"}) {
    const Config c = config_with({std::string("training.gradient_checkpointing=") + checkpointing});
    const RankMemory one = plan_rank_memory(c, 1), four = plan_rank_memory(c, 1, 0, 4);
    EXPECT_GT(one.activation_slot_bytes, 0u);
    EXPECT_LT(one.activation_slot_bytes, one.activations);
    EXPECT_EQ(four.activation_slot_bytes, one.activation_slot_bytes);
    EXPECT_EQ(four.activations, one.activations + 3 * one.activation_slot_bytes);
    EXPECT_EQ(four.total() - four.activations, one.total() - one.activations);
    EXPECT_EQ(describe_memory(one).find("in flight"), std::string::npos) << describe_memory(one);
    expect_mentions(describe_memory(four),
                    {"activations " + format_mib(four.activations),
                     "(4 micro-batches in flight x " + format_mib(one.activation_slot_bytes)});
  }
}

TEST(MemoryFit, EverySettingOfferedFitsAndTheCheapestComesFirst) {
  const Config c = config_with({"training.per_device_train_batch_size=8"});
  for (const int dp : {1, 4}) {
    const uint64_t full = plan_rank_memory(c, dp).total();
    const uint64_t least = search_fits(c, dp, 0).smallest.bytes;
    ASSERT_LT(least, full);
    for (const double share : {0.9, 0.6, 0.3, 0.0}) {  // of the way from the smallest plan to this
      const uint64_t limit =
          least + static_cast<uint64_t>(share * static_cast<double>(full - least));
      const FitSearch search = search_fits(c, dp, limit);
      SCOPED_TRACE(::testing::Message() << "dp " << dp << ", limit " << limit << " of " << full);
      ASSERT_FALSE(search.fits.empty()) << describe_fits(search, limit);
      EXPECT_LE(search.fits.size(), 3u);
      for (size_t i = 0; i < search.fits.size(); ++i) {
        const MemoryFit& f = search.fits[i];
        const uint64_t bytes =
            plan_rank_memory(parse_config(config_to_yaml(c), f.sets), dp).total();
        EXPECT_EQ(bytes, f.bytes) << f.overrides();
        EXPECT_LE(bytes, limit) << f.overrides();
        if (i) {
          EXPECT_LE(search.fits[i - 1].cost, f.cost);
        }
        for (size_t j = 0; j < i; ++j) {  // a listed setting is no superset of a cheaper one
          bool superset = true;
          for (const std::string& s : search.fits[j].sets)
            superset = superset && std::find(f.sets.begin(), f.sets.end(), s) != f.sets.end();
          EXPECT_FALSE(superset) << f.overrides() << " beside " << search.fits[j].overrides();
        }
      }
      EXPECT_NE(describe_fits(search, limit).find("settings that fit: --set "), std::string::npos);
    }
  }
  // Where the weights and their state dominate (one short sequence a micro-batch), the cheapest
  // way to a fifth less on 4 ranks is more ZeRO sharding; on one rank ZeRO is never offered.
  const Config weights =
      config_with({"training.per_device_train_batch_size=1", "data.seq_length=8"});
  const uint64_t full = plan_rank_memory(weights, 4).total();
  const FitSearch four = search_fits(weights, 4, full * 4 / 5);
  ASSERT_FALSE(four.fits.empty());
  EXPECT_EQ(four.fits.front().overrides().rfind("--set parallel.zero_stage=", 0), 0u)
      << describe_fits(four, full * 4 / 5);
  for (const MemoryFit& f : search_fits(c, 1, plan_rank_memory(c, 1).total() / 2).fits)
    EXPECT_EQ(f.overrides().find("zero_stage"), std::string::npos) << f.overrides();
}

TEST(MemoryFit, WhenNothingFitsTheSmallestPlanSaysByHowMuch) {
  const Config c = config_with({});
  const FitSearch search = search_fits(c, 2, 1024);
  EXPECT_TRUE(search.fits.empty());
  EXPECT_LT(search.smallest.bytes, plan_rank_memory(c, 2).total());
  EXPECT_FALSE(search.smallest.sets.empty());
  expect_mentions(describe_fits(search, 1024),
                  {"no setting searched fits", search.smallest.overrides(),
                   format_memory(search.smallest.bytes - 1024) + " too much", "more ranks"});
}

TEST(MemoryFit, RefusalNamesPlanLimitAndSettings) {
  const Config c = config_with({});
  const RankMemory plan = plan_rank_memory(c, 1);
  const MemoryLimit limit{plan.total() / 2, plan.total() / 4, "24.0 GiB of memory, cgroup none"};
  expect_mentions(
      memory_refusal(c, 1, plan, limit, "this rank"),
      {"the plan needs " + format_memory(plan.total()) + " per rank (parameters " +
           format_memory(plan.parameters),
       "optimizer state", "activations",
       "but this rank can have " + format_memory(limit.bytes) + " (24.0 GiB of memory, cgroup none",
       "only " + format_memory(limit.free) + " is free now", "settings that fit: --set",
       "`keel plan CONFIG --world-size 1 --fit " + std::to_string(limit.bytes) + "`",
       "training.memory_limit=none"});
}

TEST(MemoryFit, LittleFreeMemoryWarnsButDoesNotRefuse) {
  RankMemory plan;
  plan.activations = 6 * kGiB;
  EXPECT_EQ(memory_warning(plan, {8 * kGiB, 10 * kGiB, "host"}), "");  // enough free
  EXPECT_EQ(memory_warning(plan, {8 * kGiB, 0, "training.memory_limit is 8GiB"}), "");
  EXPECT_EQ(memory_warning(plan, {4 * kGiB, 2 * kGiB, "host"}), "");  // refused, not warned
  expect_mentions(memory_warning(plan, {8 * kGiB, 5 * kGiB, "host"}),
                  {"keel: warning: the plan needs 6.0 GiB per rank", "can have (8.0 GiB)",
                   "only 5.0 GiB per rank is free now"});
}

TEST_F(MemoryFitTest, TrainerRefusesAPlanAboveTheLimitBeforeAllocating) {
  const Config small = config({});
  const uint64_t plan = plan_rank_memory(small, 1).total();
  std::ostringstream console;
  expect_mentions(error_of([&] {
                    Trainer(config({"training.memory_limit=" + std::to_string(plan - 1)}), console);
                  }),
                  {"the plan needs", "but this rank can have", "training.memory_limit is"});
  EXPECT_EQ(console.str(), "");  // refused before the plan is printed
  // At exactly the plan it fits; none skips the check.
  const Trainer fits(config({"training.memory_limit=" + std::to_string(plan)}), console);
  EXPECT_EQ(fits.planned_bytes(), plan);
  const Trainer unchecked(config({"training.memory_limit=none"}), console);
  EXPECT_EQ(unchecked.planned_bytes(), plan);
}

TEST(MemoryFit, OneRankAdmitsWhatFitsAndRefusesWhatDoesNot) {
  parallel::SelfCommunicator world;
  std::ostringstream console;
  admit_memory(config_with({"training.memory_limit=none"}), world, 1, 0, console);
  admit_memory(config_with({"training.memory_limit=64GiB"}), world, 1, 0, console);
  EXPECT_EQ(console.str(), "");
  expect_mentions(error_of([&] {
                    admit_memory(config_with({"training.memory_limit=1MiB"}), world, 1, 0, console);
                  }),
                  {"this rank can have 1.0 MiB (training.memory_limit is 1MiB)"});
}

}  // namespace
}  // namespace keel::runtime
