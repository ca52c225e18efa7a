// The training loop: schedules with Hugging Face's semantics, the global sequence order, and the
// promise the data order makes: the same global batch gives the same training whatever the
// micro-batch size and accumulation steps.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "kernels/op_test_util.h"
#include "runtime/train/schedule.h"
#include "runtime/train/trainer.h"

namespace keel::runtime {
namespace {

TEST(Schedule, MatchesHuggingFaceLambdas) {
  TrainingConfig t;
  t.learning_rate = 1.0;
  t.warmup_steps = 4;
  t.max_steps = 12;
  t.lr_scheduler_type = "cosine";
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 0), 0.0);  // HF's first step runs at rate 0 with warmup
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 2), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 4), 1.0);
  EXPECT_NEAR(learning_rate_at(t, 8), 0.5, 1e-15);
  EXPECT_NEAR(learning_rate_at(t, 12), 0.0, 1e-15);
  t.lr_scheduler_type = "linear";
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 8), 0.5);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 13), 0.0);
  t.lr_scheduler_type = "constant_with_warmup";
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 1), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 11), 1.0);
  t.lr_scheduler_type = "constant";
  EXPECT_DOUBLE_EQ(learning_rate_at(t, 0), 1.0);
}

TEST(SequenceOrder, EachEpochIsAPermutationFixedBySeed) {
  SequenceOrder a(100, 7), b(100, 7), c(100, 8);
  ASSERT_EQ(a.num_sequences(), 100);
  std::set<int64_t> epoch0, epoch1;
  bool differs_from_other_seed = false, epochs_differ = false;
  for (int64_t i = 0; i < 100; ++i) {
    const int64_t s0 = a.sequence(i);
    epoch0.insert(s0);
    EXPECT_TRUE(s0 >= 0 && s0 < 100) << s0;
    EXPECT_EQ(s0, b.sequence(i));
    differs_from_other_seed |= s0 != c.sequence(i);
  }
  for (int64_t i = 100; i < 200; ++i) {
    epoch1.insert(a.sequence(i));
    epochs_differ |= a.sequence(i) != b.sequence(i - 100);
  }
  EXPECT_EQ(epoch0.size(), 100u);
  EXPECT_EQ(epoch1.size(), 100u);
  EXPECT_TRUE(differs_from_other_seed);
  EXPECT_TRUE(epochs_differ);
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("keel_trainer_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    std::ofstream f(dir_ / "corpus.txt");
    for (int i = 0; i < 400; ++i) f << "In the beginning " << i * 7919 % 1000 << " was the word.\n";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  Config small_config(int64_t micro, int64_t accumulation) const {
    Config c;
    c.model.vocab_size = 256;
    c.model.hidden_size = 48;
    c.model.intermediate_size = 72;
    c.model.num_hidden_layers = 2;
    c.model.num_attention_heads = 4;
    c.model.num_key_value_heads = 2;
    c.model.max_position_embeddings = 32;
    c.data.train = (dir_ / "corpus.txt").string();
    c.data.seq_length = 24;
    c.training.max_steps = 6;
    c.training.learning_rate = 3e-3;
    c.training.warmup_steps = 2;
    c.training.per_device_train_batch_size = micro;
    c.training.gradient_accumulation_steps = accumulation;
    c.training.max_grad_norm = 0.5;
    c.training.weight_decay = 0.1;
    c.training.output_dir = (dir_ / "run").string();
    return c;
  }

  std::filesystem::path dir_;
};

// The global batch of 4 sequences as 1×4, 2×2 and 4×1 (micro-batch × accumulation).
TEST_F(TrainerTest, SameGlobalBatchWhateverTheMicroBatching) {
  std::ostringstream quiet;
  Trainer a(small_config(4, 1), quiet), b(small_config(2, 2), quiet), c(small_config(1, 4), quiet);
  for (int s = 0; s < 6; ++s) {
    const double la = a.step().loss, lb = b.step().loss, lc = c.step().loss;
    EXPECT_NEAR(lb, la, 1e-5 * la) << "step " << s;
    EXPECT_NEAR(lc, la, 1e-5 * la) << "step " << s;
  }
  for (size_t i = 0; i < a.model().parameters().size(); ++i) {
    const Parameter& p = a.model().parameters()[i];
    const Parameter& q = c.model().parameters()[i];
    std::vector<double> want(p.value.f32(), p.value.f32() + p.value.numel());
    std::vector<float> got(q.value.f32(), q.value.f32() + q.value.numel());
    EXPECT_LE(testing::rel_error(got, want), 1e-5) << p.name;
  }
}

// Same seed, same run: training is deterministic to the bit.
TEST_F(TrainerTest, Deterministic) {
  std::ostringstream quiet;
  Trainer a(small_config(2, 1), quiet), b(small_config(2, 1), quiet);
  for (int s = 0; s < 3; ++s) EXPECT_EQ(a.step().loss, b.step().loss);
}

TEST_F(TrainerTest, RunWritesMetricsAndConfig) {
  std::ostringstream console;
  Config c = small_config(2, 1);
  c.training.logging_steps = 2;
  Trainer t(c, console);
  t.run();
  std::ifstream f(c.training.output_dir + "/metrics.jsonl");
  std::string line;
  std::vector<std::string> lines;
  while (std::getline(f, line)) lines.push_back(line);
  ASSERT_EQ(lines.size(), 4u);  // steps 1, 2, 4, 6
  for (const char* key : {"\"step\"", "\"loss\"", "\"learning_rate\"", "\"tokens_per_second\""})
    EXPECT_NE(lines[0].find(key), std::string::npos) << key;
  EXPECT_NE(lines.back().find("\"step\": 6"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(c.training.output_dir + "/config.yaml"));
  EXPECT_NE(console.str().find("step 6/6"), std::string::npos);
}

}  // namespace
}  // namespace keel::runtime

namespace keel::runtime {
namespace {

TEST(Schedule, EpochsAndWarmupRatioResolveAsHuggingFaceTrainer) {
  TrainingConfig t;
  t.max_steps = -1;
  t.num_train_epochs = 2.5;
  t.per_device_train_batch_size = 4;
  t.gradient_accumulation_steps = 2;
  t.warmup_ratio = 0.1;
  resolve_schedule_lengths(t, 100, 2);  // global batch 16: 6 steps an epoch
  EXPECT_EQ(t.max_steps, 15);
  EXPECT_EQ(t.warmup_steps, 2);  // ceil(1.5)
  TrainingConfig fixed;
  fixed.max_steps = 40;
  fixed.warmup_steps = 3;
  fixed.warmup_ratio = 0.5;  // warmup_steps wins, as in HF
  resolve_schedule_lengths(fixed, 100, 1);
  EXPECT_EQ(fixed.max_steps, 40);
  EXPECT_EQ(fixed.warmup_steps, 3);
  TrainingConfig tiny;
  tiny.max_steps = -1;
  tiny.num_train_epochs = 0.01;
  resolve_schedule_lengths(tiny, 3, 1);  // fewer sequences than a batch: one step an epoch
  EXPECT_EQ(tiny.max_steps, 1);
}

}  // namespace
}  // namespace keel::runtime
