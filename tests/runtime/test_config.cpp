// Tests for runtime/config: defaults, a full file, --set overrides, the YAML round trip and the
// files it reads. Each class of mistake has its test in test_config_errors.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "config_test_util.h"
#include "kernels/error.h"
#include "runtime/config/config.h"

namespace keel::runtime {
namespace {

using namespace test;  // NOLINT: the config tests' shared helpers

// Every key of docs/CONFIG.md, so that a key missing from config_to_yaml fails a test.
// clang-format off
const std::vector<std::string> kAllKeys = {
    "model.vocab_size", "model.hidden_size", "model.intermediate_size", "model.num_hidden_layers",
    "model.num_attention_heads", "model.num_key_value_heads", "model.max_position_embeddings",
    "model.rope_theta", "model.rms_norm_eps", "model.tie_word_embeddings",
    "model.initializer_range", "model.num_local_experts",
    "model.num_experts_per_tok", "model.output_router_logits", "model.router_aux_loss_coef",
    "model.router_z_loss_coef", "model.moe_layer_freq", "model.moe_layers",
    "model.moe_token_dropping", "model.moe_expert_capacity_factor", "data.train", "data.tokenizer", "data.seq_length",
    "data.validation", "data.max_eval_samples",
    "training.max_steps", "training.num_train_epochs", "training.learning_rate",
    "training.warmup_steps", "training.warmup_ratio", "training.lr_scheduler_type", "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps", "training.max_grad_norm", "training.weight_decay",
    "training.adam_beta1", "training.adam_beta2", "training.adam_epsilon", "training.seed",
    "training.logging_steps", "training.eval_steps", "training.report_to", "training.logging_dir", "training.save_steps", "training.save_total_limit",
    "training.exit_interval", "training.save_on_signal", "training.resume_from_checkpoint",
    "training.output_dir",
    "training.gradient_checkpointing", "training.on_nonfinite", "training.max_skipped_steps",
    "training.loss_spike_factor", "training.peak_flops", "training.memory_limit", "optimizer.type", "optimizer.block_size", "optimizer.min_8bit_size",
    "optimizer.relative_step", "optimizer.scale_parameter", "optimizer.warmup_init",
    "optimizer.decay_rate", "optimizer.clip_threshold", "optimizer.adafactor_beta1", "optimizer.per_layer_update", "optimizer.galore.rank",
    "optimizer.galore.update_proj_gap", "optimizer.galore.scale", "optimizer.galore.proj_type",
    "optimizer.galore.projector", "optimizer.galore.targets", "optimizer.galore.oversample",
    "optimizer.galore.power_iterations", "parallel.zero_stage",
    "parallel.overlap_comm", "parallel.tensor_model_parallel_size", "parallel.sequence_parallel",
    "parallel.pipeline_model_parallel_size", "parallel.pipeline_schedule",
    "parallel.virtual_pipeline_model_parallel_size", "parallel.pipeline_layers",
    "parallel.expert_model_parallel_size", "control.address", "control.hang_timeout", "control.tls_cert", "control.tls_key"};
// clang-format on

// Every key set away from its default.
const char* const kFullYaml = R"(
model:
  vocab_size: 512
  hidden_size: 64
  intermediate_size: 172
  num_hidden_layers: 3
  num_attention_heads: 8
  num_key_value_heads: 2
  max_position_embeddings: 128
  rope_theta: 500000.0
  rms_norm_eps: 1.0e-6
  tie_word_embeddings: true
  initializer_range: 0.01
data:
  train: data/tiny.txt
  tokenizer: bytes
  seq_length: 64
training:
  max_steps: 2000
  learning_rate: 6.0e-4
  warmup_steps: 100
  lr_scheduler_type: linear
  per_device_train_batch_size: 4
  gradient_accumulation_steps: 2
  max_grad_norm: 0.5
  weight_decay: 0.1
  adam_beta1: 0.8
  adam_beta2: 0.95
  adam_epsilon: 1.0e-6
  seed: 1234
  logging_steps: 5
  output_dir: runs/tiny
  gradient_checkpointing: true
  memory_limit: 12GiB
optimizer:
  type: adamw
parallel:
  zero_stage: 2
  tensor_model_parallel_size: 1
  sequence_parallel: true
  pipeline_model_parallel_size: 1
  expert_model_parallel_size: 1
control:
  address: 0.0.0.0:7000
  hang_timeout: 60
  tls_cert: cert.pem
  tls_key: key.pem
)";

void expect_same(const Config& a, const Config& b) {
  EXPECT_EQ(a.model.vocab_size, b.model.vocab_size);
  EXPECT_EQ(a.model.hidden_size, b.model.hidden_size);
  EXPECT_EQ(a.model.intermediate_size, b.model.intermediate_size);
  EXPECT_EQ(a.model.num_hidden_layers, b.model.num_hidden_layers);
  EXPECT_EQ(a.model.num_attention_heads, b.model.num_attention_heads);
  EXPECT_EQ(a.model.num_key_value_heads, b.model.num_key_value_heads);
  EXPECT_EQ(a.model.max_position_embeddings, b.model.max_position_embeddings);
  EXPECT_EQ(a.model.rope_theta, b.model.rope_theta);  // bit-exact: the round trip must not round
  EXPECT_EQ(a.model.rms_norm_eps, b.model.rms_norm_eps);
  EXPECT_EQ(a.model.tie_word_embeddings, b.model.tie_word_embeddings);
  EXPECT_EQ(a.model.initializer_range, b.model.initializer_range);
  EXPECT_EQ(a.data.train, b.data.train);
  EXPECT_EQ(a.data.tokenizer, b.data.tokenizer);
  EXPECT_EQ(a.data.seq_length, b.data.seq_length);
  EXPECT_EQ(a.training.max_steps, b.training.max_steps);
  EXPECT_EQ(a.training.learning_rate, b.training.learning_rate);
  EXPECT_EQ(a.training.warmup_steps, b.training.warmup_steps);
  EXPECT_EQ(a.training.lr_scheduler_type, b.training.lr_scheduler_type);
  EXPECT_EQ(a.training.per_device_train_batch_size, b.training.per_device_train_batch_size);
  EXPECT_EQ(a.training.gradient_accumulation_steps, b.training.gradient_accumulation_steps);
  EXPECT_EQ(a.training.max_grad_norm, b.training.max_grad_norm);
  EXPECT_EQ(a.training.weight_decay, b.training.weight_decay);
  EXPECT_EQ(a.training.adam_beta1, b.training.adam_beta1);
  EXPECT_EQ(a.training.adam_beta2, b.training.adam_beta2);
  EXPECT_EQ(a.training.adam_epsilon, b.training.adam_epsilon);
  EXPECT_EQ(a.training.seed, b.training.seed);
  EXPECT_EQ(a.training.logging_steps, b.training.logging_steps);
  EXPECT_EQ(a.training.output_dir, b.training.output_dir);
  EXPECT_EQ(a.training.gradient_checkpointing, b.training.gradient_checkpointing);
  EXPECT_EQ(a.training.memory_limit, b.training.memory_limit);
  EXPECT_EQ(a.optimizer.type, b.optimizer.type);
  EXPECT_EQ(a.parallel.zero_stage, b.parallel.zero_stage);
  EXPECT_EQ(a.parallel.tensor_model_parallel_size, b.parallel.tensor_model_parallel_size);
  EXPECT_EQ(a.parallel.sequence_parallel, b.parallel.sequence_parallel);
  EXPECT_EQ(a.parallel.pipeline_model_parallel_size, b.parallel.pipeline_model_parallel_size);
  EXPECT_EQ(a.parallel.expert_model_parallel_size, b.parallel.expert_model_parallel_size);
  EXPECT_EQ(a.control.address, b.control.address);
  EXPECT_EQ(a.control.hang_timeout, b.control.hang_timeout);
  EXPECT_EQ(a.control.tls_cert, b.control.tls_cert);
  EXPECT_EQ(a.control.tls_key, b.control.tls_key);
}

// A file under the test temp dir, removed at the end of the test.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        std::filesystem::path(::testing::TempDir()) /
        ("keel_config_" + std::string(info->name()) + "_" + std::to_string(::getpid()) + ".yaml");
    std::ofstream(path_) << text;
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

// ---- reading ---------------------------------------------------------------------------------

TEST(Config, MissingKeysAndSectionsKeepTheDefaults) {
  const Config parsed = parse_config(kMinimalYaml);
  Config expected;
  expected.data.train = "data/tiny.txt";
  expected.model.num_key_value_heads = expected.model.num_attention_heads;  // 0 resolves
  expect_same(parsed, expected);
  EXPECT_EQ(parsed.model.num_key_value_heads, 6);
}

TEST(Config, EmptyDocumentAndEmptySectionsAreFine) {
  const Config a = parse_config("", {"data.train=x.txt"});
  const Config b = parse_config("model:\ntraining:\n", {"data.train=x.txt"});
  expect_same(a, b);
  EXPECT_EQ(a.training.max_steps, TrainingConfig{}.max_steps);
  EXPECT_EQ(a.data.train, "x.txt");
}

TEST(Config, FullFileSetsEveryKey) {
  const Config c = parse_config(kFullYaml);
  EXPECT_EQ(c.model.vocab_size, 512);
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.intermediate_size, 172);
  EXPECT_EQ(c.model.num_hidden_layers, 3);
  EXPECT_EQ(c.model.num_attention_heads, 8);
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.max_position_embeddings, 128);
  EXPECT_EQ(c.model.rope_theta, 500000.0);
  EXPECT_EQ(c.model.rms_norm_eps, 1.0e-6);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.model.initializer_range, 0.01);
  EXPECT_EQ(c.model.head_dim(), 8);
  EXPECT_EQ(c.data.train, "data/tiny.txt");
  EXPECT_EQ(c.data.tokenizer, "bytes");
  EXPECT_EQ(c.data.seq_length, 64);
  EXPECT_EQ(c.training.max_steps, 2000);
  EXPECT_EQ(c.training.learning_rate, 6.0e-4);
  EXPECT_EQ(c.training.warmup_steps, 100);
  EXPECT_EQ(c.training.lr_scheduler_type, "linear");
  EXPECT_EQ(c.training.per_device_train_batch_size, 4);
  EXPECT_EQ(c.training.gradient_accumulation_steps, 2);
  EXPECT_EQ(c.training.max_grad_norm, 0.5);
  EXPECT_EQ(c.training.weight_decay, 0.1);
  EXPECT_EQ(c.training.adam_beta1, 0.8);
  EXPECT_EQ(c.training.adam_beta2, 0.95);
  EXPECT_EQ(c.training.adam_epsilon, 1.0e-6);
  EXPECT_EQ(c.training.seed, 1234u);
  EXPECT_EQ(c.training.logging_steps, 5);
  EXPECT_EQ(c.training.output_dir, "runs/tiny");
  EXPECT_TRUE(c.training.gradient_checkpointing);
  EXPECT_EQ(c.training.memory_limit, "12GiB");
  EXPECT_EQ(c.optimizer.type, "adamw");
  EXPECT_EQ(c.parallel.zero_stage, 2);
  EXPECT_EQ(c.parallel.tensor_model_parallel_size, 1);
  EXPECT_TRUE(c.parallel.sequence_parallel);
  EXPECT_EQ(c.parallel.pipeline_model_parallel_size, 1);
  EXPECT_EQ(c.parallel.expert_model_parallel_size, 1);
}

TEST(Config, FlowStyleAndNumberSpellings) {
  const Config c = parse_config(
      "model: {num_attention_heads: 4, rope_theta: 1e4, initializer_range: .5}\n"
      "data: {train: 'a b.txt'}\n"
      "training: {learning_rate: 3e-4, warmup_steps: +7, max_grad_norm: 2, seed: "
      "18446744073709551615}\n");
  EXPECT_EQ(c.model.num_attention_heads, 4);
  EXPECT_EQ(c.model.num_key_value_heads, 4);
  EXPECT_EQ(c.model.rope_theta, 1e4);
  EXPECT_EQ(c.model.initializer_range, 0.5);
  EXPECT_EQ(c.data.train, "a b.txt");
  EXPECT_EQ(c.training.learning_rate, 3e-4);
  EXPECT_EQ(c.training.warmup_steps, 7);
  EXPECT_EQ(c.training.max_grad_norm, 2.0);  // an integer is a fine float
  EXPECT_EQ(c.training.seed, std::numeric_limits<uint64_t>::max());
}

// ---- overrides -------------------------------------------------------------------------------

TEST(Config, OverridesApplyOnTopOfTheFile) {
  const Config c =
      parse_config(kFullYaml, {"training.max_steps=10", "data.train=other file.txt",
                               "model.tie_word_embeddings=false", "training.learning_rate=1e-3",
                               "training.max_steps=20", " parallel.zero_stage = 3"});
  EXPECT_EQ(c.training.max_steps, 20);  // the last --set of a key wins
  EXPECT_EQ(c.data.train, "other file.txt");
  EXPECT_FALSE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.training.learning_rate, 1e-3);
  EXPECT_EQ(c.parallel.zero_stage, 3);
  EXPECT_EQ(c.model.hidden_size, 64);  // untouched keys keep the file's value
}

TEST(Config, OverridesComeBeforeValidationAndKvResolution) {
  // The file alone is invalid (odd head dim), the override fixes it.
  const Config fixed = parse_config("model: {hidden_size: 60, num_attention_heads: 6}\n",
                                    {"data.train=x", "model.num_attention_heads=5"});
  EXPECT_EQ(fixed.model.num_attention_heads, 5);
  // num_key_value_heads: 0 resolves to the head count after the overrides.
  const Config c =
      parse_config(kMinimalYaml, {"model.num_attention_heads=4", "model.hidden_size=64"});
  EXPECT_EQ(c.model.num_key_value_heads, 4);
  const Config explicit_zero =
      parse_config(kFullYaml, {"model.num_key_value_heads=0", "model.num_attention_heads=4"});
  EXPECT_EQ(explicit_zero.model.num_key_value_heads, 4);
}

TEST(Config, OverrideWithUnknownKeySuggestsTheClosest) {
  const std::string m = parse_error(kMinimalYaml, {"training.learnig_rate=0.1"});
  EXPECT_EQ(m,
            "unknown key 'training.learnig_rate' in --set training.learnig_rate=0.1; did you "
            "mean 'training.learning_rate'?");
  expect_mentions(parse_error(kMinimalYaml, {"trainng.max_steps=1"}),
                  {"unknown section 'trainng'", "did you mean 'training'?"});
}

TEST(Config, MalformedOverrideSaysTheExpectedForm) {
  for (const std::string bad :
       {"training.max_steps", "max_steps=10", ".max_steps=1", "training.=1", ""}) {
    expect_mentions(parse_error(kMinimalYaml, {bad}),
                    {"malformed override '" + bad + "'", "expected section.key=value",
                     "--set training.learning_rate=3e-4"});
  }
}

TEST(Config, OverrideValueIsTypedLikeTheFile) {
  expect_mentions(
      parse_error(kMinimalYaml, {"training.max_steps=ten"}),
      {"training.max_steps", "--set training.max_steps=ten", "must be an integer", "found 'ten'"});
  expect_mentions(parse_error(kMinimalYaml, {"data.train="}),
                  {"data.train", "must be a string", "found an empty value"});
  expect_mentions(parse_error(kMinimalYaml, {"data.train=[a"}),
                  {"--set data.train=[a", "not a valid YAML scalar"});
}

// ---- round trip ------------------------------------------------------------------------------

TEST(Config, ToYamlWritesEveryKey) {
  const std::string yaml = config_to_yaml(parse_config(kFullYaml));
  for (const std::string& key : kAllKeys) {
    const std::string section = key.substr(0, key.find('.'));
    const std::string name = key.substr(key.find('.') + 1);
    EXPECT_NE(yaml.find("\n" + section + ":\n"), std::string::npos) << section << "\n" << yaml;
    const size_t dot = name.find('.');  // galore.rank is written as rank: under galore:
    if (dot == std::string::npos) {
      EXPECT_NE(yaml.find("\n  " + name + ": "), std::string::npos) << key << "\n" << yaml;
    } else {
      EXPECT_NE(yaml.find("\n  " + name.substr(0, dot) + ":\n"), std::string::npos) << key;
      EXPECT_NE(yaml.find("\n    " + name.substr(dot + 1) + ": "), std::string::npos) << key;
    }
  }
}

// optimizer.galore is a map of keys: read nested, from --set with two dots, targets as a list,
// written back nested, and a misspelt key inside it named with its group.
TEST(Config, GaloreKeysAreAMapInsideOptimizer) {
  const Config c = parse_config(
      "data: {train: x}\noptimizer: {type: adamw_8bit, galore: {rank: 16, proj_type: left, "
      "targets: [q_proj, mlp]}}\n",
      {"optimizer.galore.update_proj_gap=50"});
  EXPECT_EQ(c.optimizer.galore.rank, 16);
  EXPECT_EQ(c.optimizer.galore.proj_type, "left");
  EXPECT_EQ(c.optimizer.galore.targets, "q_proj,mlp");
  EXPECT_EQ(c.optimizer.galore.update_proj_gap, 50);
  EXPECT_EQ(c.optimizer.galore.scale, 0.25);
  expect_same(parse_config(config_to_yaml(c)), c);
  expect_mentions(parse_error("data: {train: x}\n"
                              "optimizer: {galore: {rnak: 4}}\n"),
                  {"'optimizer.galore.rnak'", "did you mean 'optimizer.galore.rank'?"});
  expect_mentions(parse_error("data: {train: x}\n"
                              "optimizer: {galore: {rank: 4, proj_type: middle}}\n"),
                  {"optimizer.galore.proj_type is 'middle'", "std, reverse_std, left, right"});
  expect_mentions(parse_error("data: {train: x}\n"
                              "optimizer: {galore: {rank: 4, projector: svd}}\n"),
                  {"optimizer.galore.projector is 'svd'", "exact, randomized"});
  expect_mentions(parse_error("data: {train: x}\n"
                              "optimizer: {galore: {rank: 4, targets: []}}\n"),
                  {"optimizer.galore.targets is empty"});
  expect_mentions(
      parse_error("data: {train: x}\n"
                  "optimizer: {type: adafactor, scale_parameter: true, galore: {rank: 4}}\n"),
      {"optimizer.scale_parameter", "set it to false with optimizer.galore"});
}

// docs/CONFIG.md documents every key in a table row of its section, and nothing else: the keys
// of config_to_yaml and the rows under "### `section`" are the same set.
TEST(Config, DocsDescribeEveryKeyAndNoOther) {
  std::ifstream doc(std::string(KEEL_SOURCE_DIR) + "/docs/CONFIG.md");
  ASSERT_TRUE(doc.good());
  std::vector<std::string> documented, keys;
  std::string line, section;
  while (std::getline(doc, line)) {
    if (line.rfind("### `", 0) == 0) section = line.substr(5, line.find('`', 5) - 5);
    if (line.rfind("## ", 0) == 0) section.clear();
    if (!section.empty() && line.rfind("| `", 0) == 0)
      documented.push_back(section + "." + line.substr(3, line.find('`', 3) - 3));
  }
  std::istringstream yaml(config_to_yaml(Config{}));
  std::string group;  // "galore." while reading the keys of optimizer.galore
  while (std::getline(yaml, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::string key = line.substr(0, line.find(':'));
    if (line[0] != ' ') {
      section = key;
    } else if (line.rfind("    ", 0) == 0) {
      keys.push_back(section + "." + group + key.substr(4));
    } else if (line.back() == ':') {
      group = key.substr(2) + ".";
    } else {
      group.clear();
      keys.push_back(section + "." + key.substr(2));
    }
  }
  EXPECT_EQ(documented, keys) << "docs/CONFIG.md's tables and the schema (in table order)";
  EXPECT_EQ(keys, kAllKeys);
}

TEST(Config, RoundTripIsExact) {
  const Config full = parse_config(kFullYaml);
  expect_same(parse_config(config_to_yaml(full)), full);

  // Values that a careless writer would round or retype.
  Config tricky = full;
  tricky.data.train = "dir: with \"quotes\", #hash, back\\slash\ttab, caf\xc3\xa9";
  tricky.training.output_dir = "yes";  // a plain `yes` is a bool to YAML 1.1 readers
  tricky.training.learning_rate = 1.0 / 3.0;
  tricky.training.adam_epsilon = 1e-8;
  tricky.model.rope_theta = 10000.0;
  tricky.model.rms_norm_eps = 1.2345678901234567e-5;
  tricky.training.weight_decay = 0.0;
  tricky.training.seed = std::numeric_limits<uint64_t>::max();
  const std::string yaml = config_to_yaml(tricky);
  expect_same(parse_config(yaml), tricky);
  // Floats always carry a '.', so PyYAML reads them as floats too.
  expect_mentions(yaml, {"rope_theta: 10000.0\n", "adam_epsilon: 1.0e-08\n", "weight_decay: 0.0\n",
                         "output_dir: \"yes\"\n"});
}

// ---- files -----------------------------------------------------------------------------------

TEST(Config, LoadConfigReadsAFileAndNamesItInErrors) {
  const TempFile good(kFullYaml);
  expect_same(load_config(good.path()), parse_config(kFullYaml));
  EXPECT_EQ(load_config(good.path(), {"training.max_steps=3"}).training.max_steps, 3);

  const TempFile typo("data: {train: x}\ntraining:\n  max_step: 3\n");
  expect_mentions(error_of([&] { load_config(typo.path()); }),
                  {"unknown key 'training.max_step' in " + typo.path() + ":3",
                   "did you mean 'training.max_steps'?"});

  const TempFile broken("data: {train: x\n");
  expect_mentions(error_of([&] { load_config(broken.path()); }),
                  {"YAML syntax error in " + broken.path() + ":"});
}

TEST(Config, LoadConfigNamesAMissingFile) {
  expect_mentions(
      error_of([] { load_config("configs/does_not_exist.yaml"); }),
      {"cannot open config file 'configs/does_not_exist.yaml'", "No such file or directory"});
  expect_mentions(error_of([] { load_config(::testing::TempDir()); }), {"it is a directory"});
}

}  // namespace
}  // namespace keel::runtime
