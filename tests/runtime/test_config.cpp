// Tests for runtime/config: defaults, a full file, --set overrides, the YAML round trip, and one
// test per class of mistake, checking that the message names the key and the fix.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "runtime/config.h"

namespace keel::runtime {
namespace {

// Every key of docs/CONFIG.md, so that a key missing from config_to_yaml fails a test.
// clang-format off
const std::vector<std::string> kAllKeys = {
    "model.vocab_size", "model.hidden_size", "model.intermediate_size", "model.num_hidden_layers",
    "model.num_attention_heads", "model.num_key_value_heads", "model.max_position_embeddings",
    "model.rope_theta", "model.rms_norm_eps", "model.tie_word_embeddings",
    "model.initializer_range", "data.train", "data.tokenizer", "data.seq_length",
    "data.validation", "data.max_eval_samples",
    "training.max_steps", "training.num_train_epochs", "training.learning_rate",
    "training.warmup_steps", "training.warmup_ratio", "training.lr_scheduler_type", "training.per_device_train_batch_size",
    "training.gradient_accumulation_steps", "training.max_grad_norm", "training.weight_decay",
    "training.adam_beta1", "training.adam_beta2", "training.adam_epsilon", "training.seed",
    "training.logging_steps", "training.eval_steps", "training.report_to", "training.logging_dir", "training.save_steps", "training.save_total_limit",
    "training.exit_interval", "training.resume_from_checkpoint", "training.output_dir",
    "training.gradient_checkpointing", "optimizer.type", "optimizer.block_size", "optimizer.min_8bit_size",
    "optimizer.relative_step", "optimizer.scale_parameter", "optimizer.warmup_init",
    "optimizer.decay_rate", "optimizer.clip_threshold", "optimizer.adafactor_beta1", "optimizer.per_layer_update", "optimizer.galore.rank",
    "optimizer.galore.update_proj_gap", "optimizer.galore.scale", "optimizer.galore.proj_type",
    "optimizer.galore.projector", "optimizer.galore.targets", "optimizer.galore.oversample",
    "optimizer.galore.power_iterations", "parallel.zero_stage",
    "parallel.overlap_comm", "parallel.tensor_model_parallel_size",
    "parallel.pipeline_model_parallel_size", "parallel.expert_model_parallel_size"};
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
optimizer:
  type: adamw
parallel:
  zero_stage: 2
  tensor_model_parallel_size: 1
  pipeline_model_parallel_size: 1
  expert_model_parallel_size: 1
)";

const char* const kMinimalYaml = "data: {train: data/tiny.txt}\n";

// The message of the keel::Error that f throws; fails the test when f throws nothing.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a keel::Error";
  return "";
}

std::string parse_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse_config(yaml, overrides, "configs/x.yaml"); });
}

// Expects every piece in the message.
void expect_mentions(const std::string& message, const std::vector<std::string>& pieces) {
  for (const std::string& piece : pieces) {
    EXPECT_NE(message.find(piece), std::string::npos)
        << "message lacks \"" << piece << "\":\n  " << message;
  }
}

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
  EXPECT_EQ(a.optimizer.type, b.optimizer.type);
  EXPECT_EQ(a.parallel.zero_stage, b.parallel.zero_stage);
  EXPECT_EQ(a.parallel.tensor_model_parallel_size, b.parallel.tensor_model_parallel_size);
  EXPECT_EQ(a.parallel.pipeline_model_parallel_size, b.parallel.pipeline_model_parallel_size);
  EXPECT_EQ(a.parallel.expert_model_parallel_size, b.parallel.expert_model_parallel_size);
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
  EXPECT_EQ(c.optimizer.type, "adamw");
  EXPECT_EQ(c.parallel.zero_stage, 2);
  EXPECT_EQ(c.parallel.tensor_model_parallel_size, 1);
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

// ---- mistakes in the file --------------------------------------------------------------------

TEST(Config, UnknownKeyNamesItTheFileLineAndTheClosestKey) {
  const std::string m = parse_error("data: {train: x}\ntraining:\n  learnig_rate: 0.1\n");
  EXPECT_EQ(m,
            "unknown key 'training.learnig_rate' in configs/x.yaml:3; did you mean "
            "'training.learning_rate'?");
  // Swapped letters count as one edit.
  expect_mentions(parse_error("model: {hidden_szie: 64}\n"),
                  {"'model.hidden_szie'", "did you mean 'model.hidden_size'?"});
  // A key put under the wrong section points at the right one.
  expect_mentions(parse_error("training: {seq_length: 64}\n"),
                  {"'training.seq_length'", "did you mean 'data.seq_length'?"});
  // A far-off name still gets the closest key, and the list of valid keys.
  expect_mentions(parse_error("parallel: {lookahead: 1}\n"),
                  {"'parallel.lookahead'", "did you mean",
                   "(valid: zero_stage, overlap_comm, tensor_model_parallel_size, "
                   "pipeline_model_parallel_size, expert_model_parallel_size)"});
}

TEST(Config, UnknownSectionSuggestsTheClosest) {
  EXPECT_EQ(parse_error("data: {train: x}\ntrainig: {max_steps: 1}\n"),
            "unknown section 'trainig' in configs/x.yaml:2; did you mean 'training'?");
  expect_mentions(parse_error("learning_rate: 0.1\n"),
                  {"unknown section 'learning_rate'", "did you mean 'training.learning_rate'?"});
}

TEST(Config, WrongTypeNamesKeyExpectedTypeAndValue) {
  struct Case {
    std::string yaml;
    std::vector<std::string> pieces;
  };
  const std::vector<Case> cases = {
      {"training: {max_steps: ten}",
       {"training.max_steps in configs/x.yaml:1", "must be an integer", "found 'ten'"}},
      {"training: {max_steps: 2.5}", {"training.max_steps", "an integer", "'2.5'"}},
      {"training: {max_steps: 1e3}", {"training.max_steps", "an integer", "'1e3'"}},
      {"model: {num_hidden_layers: -3}", {"model.num_hidden_layers is -3", "allowed range: >= 1"}},
      {"training: {max_steps: \"100\"}", {"training.max_steps", "an integer", "the string '100'"}},
      {"training: {seed: -1}", {"training.seed", "non-negative integer", "'-1'"}},
      {"training: {learning_rate: fast}", {"training.learning_rate", "a finite number", "'fast'"}},
      {"training: {learning_rate: .nan}", {"training.learning_rate", "a finite number", "'.nan'"}},
      {"model: {tie_word_embeddings: yes}",
       {"model.tie_word_embeddings", "true or false", "'yes'"}},
      {"model: {tie_word_embeddings: 1}", {"model.tie_word_embeddings", "true or false", "'1'"}},
      {"data: {train: [a, b]}", {"data.train", "must be a string", "found a list"}},
      {"training: {output_dir: {a: b}}",
       {"training.output_dir", "must be a string", "found a map"}},
      {"model: {hidden_size: }", {"model.hidden_size", "an integer", "an empty value"}},
  };
  for (const Case& c : cases) expect_mentions(parse_error(c.yaml), c.pieces);
}

TEST(Config, MisshapenDocuments) {
  expect_mentions(parse_error("- a\n- b\n"),
                  {"configs/x.yaml must be a map of sections", "a list"});
  expect_mentions(parse_error("training: 5\n"),
                  {"section 'training' in configs/x.yaml:1 must be a map", "found '5'"});
  expect_mentions(parse_error("data: {train: x}\ntraining: {max_steps: 1, max_steps: 2}\n"),
                  {"key 'training.max_steps' appears twice in configs/x.yaml:2"});
  expect_mentions(parse_error("data: {train: x}\n---\ndata: {train: y}\n"),
                  {"configs/x.yaml holds 2 YAML documents"});
}

TEST(Config, YamlSyntaxErrorGivesPathLineAndColumn) {
  expect_mentions(parse_error("data: {train: x}\ntraining: [1, 2\n"),
                  {"YAML syntax error in configs/x.yaml:3:1: "});
}

// ---- values out of range ---------------------------------------------------------------------

TEST(Config, OutOfRangeNamesKeyAndAllowedRange) {
  struct Case {
    std::string set;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"training.adam_beta1=1", "training.adam_beta1 is 1; allowed range: [0, 1)"},
      {"training.adam_beta2=-0.1", "training.adam_beta2 is -0.1; allowed range: [0, 1)"},
      {"training.adam_epsilon=0", "training.adam_epsilon is 0; allowed range: > 0"},
      {"training.max_grad_norm=-1", "training.max_grad_norm is -1; allowed range: >= 0"},
      {"training.weight_decay=-0.5", "training.weight_decay is -0.5; allowed range: >= 0"},
      {"training.learning_rate=-1e-3", "training.learning_rate is -0.001; allowed range: >= 0"},
      {"training.logging_steps=0", "training.logging_steps is 0; allowed range: >= 1"},
      {"training.max_steps=-2", "training.max_steps is -2; allowed range: >= -1"},
      {"training.max_steps=0",
       "training.max_steps is 0; set it to the number of optimizer steps, or to -1 to train "
       "training.num_train_epochs passes over the data"},
      {"training.warmup_ratio=1.5", "training.warmup_ratio is 1.5; allowed range: [0, 1]"},
      {"training.per_device_train_batch_size=0",
       "training.per_device_train_batch_size is 0; allowed range: >= 1"},
      {"training.gradient_accumulation_steps=0",
       "training.gradient_accumulation_steps is 0; allowed range: >= 1"},
      {"parallel.zero_stage=4", "parallel.zero_stage is 4; allowed range: [0, 3]"},
      {"model.hidden_size=0", "model.hidden_size is 0; allowed range: >= 1"},
      {"model.num_attention_heads=0", "model.num_attention_heads is 0; allowed range: >= 1"},
      {"model.vocab_size=0", "model.vocab_size is 0; allowed range: >= 1"},
      {"model.rms_norm_eps=0", "model.rms_norm_eps is 0; allowed range: > 0"},
      {"data.seq_length=0", "data.seq_length is 0; allowed range: >= 1"},
  };
  for (const Case& c : cases) EXPECT_EQ(parse_error(kMinimalYaml, {c.set}), c.message) << c.set;
}

TEST(Config, ValidateCatchesValuesSetInCode) {
  Config c;
  c.data.train = "x.txt";
  validate_config(c);  // the defaults are valid, num_key_value_heads 0 included
  c.training.warmup_steps = -5;
  EXPECT_EQ(error_of([&] { validate_config(c); }),
            "training.warmup_steps is -5; allowed range: >= 0");
  c.training.warmup_steps = 0;
  c.training.learning_rate = std::numeric_limits<double>::quiet_NaN();
  expect_mentions(error_of([&] { validate_config(c); }), {"training.learning_rate is nan"});
}

// ---- unsupported choices and empty strings ---------------------------------------------------

TEST(Config, UnsupportedChoicesListWhatIsSupported) {
  EXPECT_EQ(parse_error(kMinimalYaml, {"training.lr_scheduler_type=cosin"}),
            "training.lr_scheduler_type is 'cosin'; schedulers supported in this build: linear, "
            "cosine, constant, constant_with_warmup; did you mean 'cosine'?");
  EXPECT_EQ(parse_error(kMinimalYaml, {"optimizer.type=adam"}),
            "optimizer.type is 'adam'; optimizers supported in this build: adamw, adamw_8bit, "
            "adafactor; did you mean 'adamw'?");
  EXPECT_EQ(parse_error(kMinimalYaml, {"data.tokenizer=bpe"}),
            "data.tokenizer is 'bpe'; set it to auto (the tokenizer.json of prepared data, bytes "
            "for text), bytes, or the path of a tokenizer.json");
  for (const std::string kind : {"tensor", "pipeline", "expert"}) {
    const std::string key = kind + "_model_parallel_size";
    EXPECT_EQ(parse_error(kMinimalYaml, {"parallel." + key + "=2"}),
              "parallel." + key + " is 2, but " + kind +
                  " parallelism is not supported yet in this build; set it to 1");
  }
}

// A per-layer update steps a unit before the units below it have gradients: whatever needs the
// step's whole gradient first is refused, naming the key and the fix.
TEST(Config, PerLayerUpdateRefusesWhatNeedsTheWholeGradient) {
  const std::string on = "optimizer.per_layer_update=true", no_clip = "training.max_grad_norm=0";
  EXPECT_TRUE(parse_config(kMinimalYaml, {on, no_clip}).optimizer.per_layer_update);
  EXPECT_EQ(parse_error(kMinimalYaml, {on}),
            "optimizer.per_layer_update cannot clip by the global gradient norm, but "
            "training.max_grad_norm is 1 (the norm needs every unit's gradient before any unit "
            "is stepped); set training.max_grad_norm to 0, or optimizer.per_layer_update to "
            "false");
  EXPECT_EQ(parse_error(kMinimalYaml, {on, no_clip, "training.gradient_accumulation_steps=4"}),
            "optimizer.per_layer_update takes one micro-batch per step, but "
            "training.gradient_accumulation_steps is 4 (a unit would be stepped before the later "
            "micro-batches add their gradients); set training.gradient_accumulation_steps to 1 "
            "(raise training.per_device_train_batch_size for a larger batch), or "
            "optimizer.per_layer_update to false");
  EXPECT_EQ(parse_error(kMinimalYaml, {on, no_clip, "parallel.zero_stage=1"}),
            "optimizer.per_layer_update does not run with parallel.zero_stage 1, which keeps "
            "every gradient until the backward ends and reduces them only then; set "
            "parallel.zero_stage to 2 (the same sharding, with each unit's gradient "
            "reduce-scattered during the backward), or to 0 or 3");
  for (const char* stage : {"0", "2", "3"})
    EXPECT_NO_THROW(
        parse_config(kMinimalYaml, {on, no_clip, "parallel.zero_stage=" + std::string(stage)}));
  // Off, the same settings are fine.
  EXPECT_NO_THROW(parse_config(
      kMinimalYaml, {"training.gradient_accumulation_steps=4", "parallel.zero_stage=1"}));
}

TEST(Config, ByteTokenizerNeedsA256Vocab) {
  EXPECT_EQ(parse_error(kMinimalYaml, {"model.vocab_size=100", "data.tokenizer=bytes"}),
            "model.vocab_size is 100, but data.tokenizer 'bytes' needs at least 256 token ids "
            "(one per byte value); set model.vocab_size to 256 or more");
}

TEST(Config, EmptyPathsAreErrors) {
  expect_mentions(parse_error("training: {max_steps: 1}\n"),
                  {"data.train is empty", "--set data.train="});
  expect_mentions(parse_error(kMinimalYaml, {"training.output_dir=''"}),
                  {"training.output_dir is empty"});
}

// ---- impossible shapes -----------------------------------------------------------------------

TEST(Config, HiddenSizeNotDivisibleByHeads) {
  EXPECT_EQ(parse_error(kMinimalYaml, {"model.hidden_size=100"}),
            "model.hidden_size (100) must be divisible by model.num_attention_heads (6); set "
            "model.num_attention_heads to one of 1, 2, 5, 10, 25, 50, or set model.hidden_size to "
            "a multiple of 12 (e.g. 96 or 108)");
}

TEST(Config, KvHeadsMustDivideHeads) {
  EXPECT_EQ(parse_error(kMinimalYaml, {"model.num_key_value_heads=4"}),
            "model.num_key_value_heads (4) must divide model.num_attention_heads (6); pick one of "
            "1, 2, 3, 6");
  expect_mentions(parse_error(kMinimalYaml, {"model.num_key_value_heads=12"}),
                  {"model.num_key_value_heads (12) must divide"});
}

TEST(Config, HeadDimMustBeEvenForRope) {
  EXPECT_EQ(parse_error(kMinimalYaml, {"model.hidden_size=102"}),
            "the head dim model.hidden_size / model.num_attention_heads = 102 / 6 = 17 must be "
            "even for RoPE; set model.num_attention_heads to one of 1, 3, 17, 51, or set "
            "model.hidden_size to a multiple of 12 (e.g. 96 or 108)");
}

TEST(Config, SeqLengthWithinPositions) {
  EXPECT_EQ(parse_error(kMinimalYaml, {"data.seq_length=512"}),
            "data.seq_length (512) exceeds model.max_position_embeddings (256); lower "
            "data.seq_length or raise model.max_position_embeddings to at least 512");
  parse_config(kMinimalYaml, {"data.seq_length=256"});  // equal is fine
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
