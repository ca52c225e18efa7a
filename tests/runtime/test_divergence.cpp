// The divergence guard (runtime/train/trainer_guard.cpp): a step with a NaN in its loss or gradient
// leaves every weight as it was and names the first tensor whose gradient is not finite; skip_step
// passes over the batch and goes on; rollback reloads the last good checkpoint and passes over the
// same batch, so both end with the same weights, bit for bit; stop ends the run naming the last
// good checkpoint, which survives save_total_limit; a loss spike is caught when asked.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "kernels/error.h"
#include "runtime/store/checkpoint.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class DivergenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("keel_divergence_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    std::ofstream f(dir_ / "corpus.txt");
    for (int i = 0; i < 400; ++i) f << "In the beginning " << i * 7919 % 1000 << " was the word.\n";
  }
  void TearDown() override { fs::remove_all(dir_); }

  Config config(const std::string& run) const {
    Config c;
    c.model.vocab_size = 256;
    c.model.hidden_size = 32;
    c.model.intermediate_size = 48;
    c.model.num_hidden_layers = 2;
    c.model.num_attention_heads = 4;
    c.model.num_key_value_heads = 2;
    c.model.max_position_embeddings = 32;
    c.data.train = (dir_ / "corpus.txt").string();
    c.data.seq_length = 16;
    c.training.max_steps = 8;
    c.training.learning_rate = 3e-3;
    c.training.per_device_train_batch_size = 2;
    c.training.logging_steps = 1;
    c.training.report_to = "none";
    c.training.output_dir = (dir_ / run).string();
    return c;
  }

  // Every line of a run's metrics.jsonl, parsed by a strict JSON parser.
  static std::vector<nlohmann::json> metrics(const Config& c) {
    std::ifstream f(c.training.output_dir + "/metrics.jsonl");
    std::vector<nlohmann::json> lines;
    std::string line;
    while (std::getline(f, line)) lines.push_back(nlohmann::json::parse(line));  // throws if not
    return lines;
  }

  static std::vector<float> weights(Trainer& t) {
    std::vector<float> all;
    for (const Parameter& p : t.model().parameters())
      all.insert(all.end(), p.value.f32(), p.value.f32() + p.value.numel());
    return all;
  }

  fs::path dir_;
};

// The first block's attention output projection poisoned: the loss and its gradient become NaN.
float* poisoned_weight(Trainer& t) {
  return t.model().parameter_by_name("model.layers.0.self_attn.o_proj.weight").value.f32();
}

TEST_F(DivergenceTest, NonFiniteStepLeavesTheWeightsAndNamesTheTensor) {
  std::ostringstream quiet;
  Trainer t(config("run"), quiet);
  ASSERT_TRUE(t.step().rejected.empty());
  float* w = poisoned_weight(t);
  const float saved = w[3];
  w[3] = kNaN;
  const std::vector<float> before = weights(t);
  const StepStats s = t.step();
  EXPECT_TRUE(std::isnan(s.loss));
  EXPECT_NE(s.rejected.find("the loss is nan"), std::string::npos) << s.rejected;
  EXPECT_NE(s.rejected.find("first non-finite gradient: model."), std::string::npos) << s.rejected;
  EXPECT_EQ(s.step, 2);
  EXPECT_EQ(t.steps_done(), 1);
  const std::vector<float> after = weights(t);
  ASSERT_EQ(after.size(), before.size());
  EXPECT_EQ(std::memcmp(after.data(), before.data(), after.size() * sizeof(float)), 0)
      << "a rejected step changed the weights";
  w[3] = saved;
  const StepStats next = t.step();
  EXPECT_TRUE(next.rejected.empty()) << next.rejected;
  EXPECT_TRUE(std::isfinite(next.loss));
  EXPECT_EQ(t.steps_done(), 2);
}

// Under the per-layer update the units are stepped inside the backward: the first unit whose
// gradient is not finite, and every unit after it, is not stepped, and the step is rejected.
TEST_F(DivergenceTest, PerLayerUpdateStepsNoUnitFromTheBadOneOn) {
  Config c = config("run");
  c.optimizer.per_layer_update = true;
  c.training.max_grad_norm = 0;
  std::ostringstream quiet;
  Trainer t(c, quiet);
  ASSERT_TRUE(t.step().rejected.empty());
  poisoned_weight(t)[3] = kNaN;
  const std::vector<float> before = weights(t);
  const StepStats s = t.step();
  EXPECT_NE(s.rejected.find("first non-finite gradient: "), std::string::npos) << s.rejected;
  const std::vector<float> after = weights(t);
  EXPECT_EQ(std::memcmp(after.data(), before.data(), after.size() * sizeof(float)), 0)
      << "a unit was stepped with a non-finite gradient";
  EXPECT_EQ(t.steps_done(), 1);
}

TEST_F(DivergenceTest, StopNamesTheLastGoodCheckpointWhichSurvivesPruning) {
  Config c = config("run");
  c.training.save_steps = 2;
  c.training.save_total_limit = 1;
  std::ostringstream console;
  Trainer t(c, console);
  t.set_before_step([&](int64_t step) {
    if (step >= 5) poisoned_weight(t)[0] = kNaN;  // diverged from step 5 on
  });
  const std::string message = [&] {
    try {
      t.run();
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  }();
  EXPECT_NE(message.find("step 5: the loss is nan"), std::string::npos) << message;
  EXPECT_NE(message.find("checkpoints/step_00000004"), std::string::npos) << message;
  const CheckpointStore store(c.training.output_dir + "/checkpoints");
  EXPECT_EQ(fs::path(store.latest()).filename(), "step_00000004");
  const std::vector<nlohmann::json> lines = metrics(c);
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_TRUE(lines.back()["loss"].is_null());
  EXPECT_EQ(lines.back()["action"], "stop");
  EXPECT_EQ(lines.back()["nonfinite"], nlohmann::json({"loss", "grad_norm"}));
}

// skip_step (the weight poisoned for one attempt) and rollback (poisoned once, then reloaded
// from step 4's checkpoint) pass over the same batch: the same weights at the end, bit for bit,
// and each step's applied line once in metrics.jsonl.
TEST_F(DivergenceTest, SkipStepAndRollbackPassOverTheSameBatch) {
  auto train = [&](const std::string& mode) {
    Config c = config(mode);
    c.training.on_nonfinite = mode;
    c.training.save_steps = 2;
    std::ostringstream console;
    auto t = std::make_unique<Trainer>(c, console);
    int calls = 0;
    float saved = 0;
    t->set_before_step([&](int64_t) {
      ++calls;
      float* w = poisoned_weight(*t);
      if (calls == 6) saved = w[0], w[0] = kNaN;            // the 6th attempt is step 6
      if (calls == 7 && mode == "skip_step") w[0] = saved;  // rollback reloads it instead
    });
    t->run();
    EXPECT_EQ(t->steps_done(), 8) << mode;
    EXPECT_NE(console.str().find(mode == "rollback" ? "rolled back to" : "the batch is skipped"),
              std::string::npos)
        << console.str();
    std::vector<int64_t> applied;
    int rejected = 0;
    for (const nlohmann::json& line : metrics(c)) {
      if (line.contains("rejected")) {
        ++rejected;
        EXPECT_EQ(line["action"], mode);
      } else {
        applied.push_back(line["step"].get<int64_t>());
      }
    }
    EXPECT_EQ(rejected, 1) << mode;
    EXPECT_EQ(applied, std::vector<int64_t>({1, 2, 3, 4, 5, 6, 7, 8})) << mode;
    return weights(*t);
  };
  const std::vector<float> skipped = train("skip_step"), rolled = train("rollback");
  ASSERT_EQ(skipped.size(), rolled.size());
  EXPECT_EQ(std::memcmp(skipped.data(), rolled.data(), skipped.size() * sizeof(float)), 0);
  for (const float v : skipped) ASSERT_TRUE(std::isfinite(v));
}

TEST_F(DivergenceTest, SkipStepGivesUpAfterMaxSkippedSteps) {
  Config c = config("run");
  c.training.on_nonfinite = "skip_step";
  c.training.max_skipped_steps = 2;
  std::ostringstream console;
  Trainer t(c, console);
  t.set_before_step([&](int64_t step) {
    if (step >= 3) poisoned_weight(t)[0] = kNaN;
  });
  try {
    t.run();
    ADD_FAILURE() << "the run went on";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("more than training.max_skipped_steps 2"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(t.steps_done(), 2);
}

// Weights that a finite update took past the float range are never saved: the checkpoint of
// that step is not written and the run stops naming the last good one.
TEST_F(DivergenceTest, NonFiniteWeightsAreNeverSaved) {
  Config c = config("run");
  c.training.save_steps = 2;
  std::ostringstream console;
  Trainer t(c, console);
  t.set_before_step([&](int64_t step) {
    // An update of +inf in one weight that step 4's forward never reads (its padding row of the
    // vocabulary is not in the corpus; the embedding's gradient there is zero): only the weight
    // check finds it.
    if (step == 4)
      t.model().parameter_by_name("model.embed_tokens.weight").value.f32()[255 * 32] =
          std::numeric_limits<float>::infinity();
  });
  try {
    t.run();
    ADD_FAILURE() << "the run went on";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("the update made the weights non-finite (first: "
                                         "model.embed_tokens.weight)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(fs::path(CheckpointStore(c.training.output_dir + "/checkpoints").latest()).filename(),
            "step_00000002");
}

TEST_F(DivergenceTest, LossSpikeIsRejectedWhenAsked) {
  Config c = config("run");
  c.training.loss_spike_factor = 1.5;
  c.training.on_nonfinite = "skip_step";
  std::ostringstream quiet;
  Trainer t(c, quiet);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(t.step().rejected.empty()) << i;
  // The output head scaled up: every logit far sharper than the last steps' (and wrong).
  const Parameter& e = t.model().parameter_by_name("lm_head.weight");
  std::vector<float> saved(e.value.f32(), e.value.f32() + e.value.numel());
  for (int64_t i = 0; i < e.value.numel(); ++i) e.value.f32()[i] *= 100.0f;
  const StepStats s = t.step();
  EXPECT_NE(s.rejected.find("training.loss_spike_factor 1.5"), std::string::npos)
      << s.rejected << " (loss " << s.loss << ")";
  EXPECT_TRUE(std::isfinite(s.loss));
  std::copy(saved.begin(), saved.end(), e.value.f32());
  EXPECT_TRUE(t.step().rejected.empty());
}

}  // namespace
}  // namespace keel::runtime
