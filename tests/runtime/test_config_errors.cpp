// Tests for runtime/config's mistakes, one per class (a key, type or document the schema does not
// know, a value out of range, an unsupported choice, an impossible shape), each checking that the
// message names the key and the fix.
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "config_test_util.h"
#include "kernels/error.h"
#include "runtime/config/config.h"

namespace keel::runtime {
namespace {

using namespace test;  // NOLINT: the config tests' shared helpers

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
                   "sequence_parallel, pipeline_model_parallel_size, pipeline_schedule, "
                   "virtual_pipeline_model_parallel_size, pipeline_layers, "
                   "expert_model_parallel_size)"});
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
}

// A mixture of experts that cannot run is one line, naming the key and the fix.
TEST(Config, MixturesOfExpertsThatCannotRunAreOneLine) {
  const std::string experts = "model.num_local_experts=2";
  EXPECT_EQ(parse_config(kMinimalYaml, {experts}).model.num_moe_layers(), 6);
  EXPECT_EQ(parse_config(kMinimalYaml, {experts, "model.moe_layer_freq=4"}).model.num_moe_layers(),
            2);  // layers 0 and 4
  EXPECT_EQ(parse_error(kMinimalYaml, {experts, "model.num_experts_per_tok=3"}),
            "model.num_experts_per_tok is 3, but the model has only 2 experts "
            "(model.num_local_experts); set model.num_experts_per_tok to at most 2");
  EXPECT_EQ(parse_error(kMinimalYaml, {experts, "model.moe_layers=[1, 6]"}),
            "model.moe_layers names layer 6, but the model has 6 layers (0 to 5); list indices "
            "below model.num_hidden_layers");
  EXPECT_EQ(parse_error(kMinimalYaml, {experts, "model.moe_layers=[one]"}),
            "model.moe_layers is 'one'; list the indices of the layers whose MLP is a mixture of "
            "experts, e.g. [1, 3, 5] (or leave it empty for every model.moe_layer_freq-th)");
  EXPECT_EQ(parse_error(kMinimalYaml, {experts, "model.moe_expert_capacity_factor=0"}),
            "model.moe_expert_capacity_factor is 0; allowed range: > 0");
  EXPECT_EQ(parse_error(kMinimalYaml,
                        {"model.num_local_experts=3", "parallel.expert_model_parallel_size=2"}),
            "parallel.expert_model_parallel_size 2 does not divide model.num_local_experts 3 "
            "(each expert-parallel rank holds the same number of experts); pick a divisor of 3");
  EXPECT_EQ(parse_error(kMinimalYaml, {"model.moe_layers=[7]"}),
            "model.moe_layers is '7', but the model has no experts (model.num_local_experts is "
            "0); set model.num_local_experts, or remove model.moe_layers");
  EXPECT_EQ(parse_error(kMinimalYaml, {"parallel.expert_model_parallel_size=2"}),
            "parallel.expert_model_parallel_size is 2, but the model has no experts "
            "(model.num_local_experts is 0); set parallel.expert_model_parallel_size to 1, or "
            "model.num_local_experts to a multiple of 2");
  EXPECT_EQ(parse_config(kMinimalYaml, {experts, "parallel.expert_model_parallel_size=2"})
                .parallel.expert_model_parallel_size,
            2);
  EXPECT_EQ(parse_error(kMinimalYaml,
                        {experts, "parallel.pipeline_model_parallel_size=2",
                         "parallel.pipeline_schedule=zb_h1", "model.tie_word_embeddings=false"}),
            "parallel.pipeline_schedule zb_h1 splits each block's backward in two, which "
            "mixture-of-experts layers do not do yet; pick 1f1b, interleaved_1f1b or gpipe");
  EXPECT_EQ(
      parse_error(kMinimalYaml, {experts, "parallel.expert_model_parallel_size=2",
                                 "optimizer.per_layer_update=true", "training.max_grad_norm=0"}),
      "optimizer.per_layer_update without ZeRO (parallel.zero_stage 0) cannot yet sum the "
      "experts' gradient norms over parallel.expert_model_parallel_size 2 ranks; set "
      "parallel.zero_stage to 2 or 3");
}

// A pipeline that cannot run is one line before any work, naming the key and the fix.
TEST(Config, PipelineLayoutsThatCannotRunAreOneLine) {
  const std::string pp2 = "parallel.pipeline_model_parallel_size=2";
  const std::string untied = "model.tie_word_embeddings=false";
  EXPECT_EQ(parse_config(kMinimalYaml, {pp2, untied}).parallel.pipeline_model_parallel_size, 2);
  EXPECT_EQ(parse_config(kMinimalYaml, {pp2, untied, "parallel.pipeline_layers=[0, 6]"})
                .parallel.pipeline_layers,
            "0,6");
  const int64_t layers = parse_config(kMinimalYaml).model.num_hidden_layers;
  EXPECT_NE(
      parse_error(kMinimalYaml,
                  {"parallel.pipeline_model_parallel_size=" + std::to_string(layers + 1), untied})
          .find("but the model has " + std::to_string(layers) + " layers"),
      std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml, {pp2, untied, "parallel.pipeline_layers=[1, 2]"})
                .find("parallel.pipeline_layers adds up to 3 layers, but the model has 6"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml, {pp2, untied, "parallel.pipeline_layers=[1, x]"})
                .find("parallel.pipeline_layers is '1,x'; list each stage's number of layers"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml, {"parallel.pipeline_layers=[2]"})
                .find("but parallel.pipeline_model_parallel_size is 1"),
            std::string::npos);
  EXPECT_NE(
      parse_error(kMinimalYaml, {pp2, untied, "parallel.pipeline_schedule=zigzag"}).find("zigzag"),
      std::string::npos);
  EXPECT_NE(
      parse_error(kMinimalYaml, {pp2, untied, "parallel.virtual_pipeline_model_parallel_size=2"})
          .find("needs parallel.pipeline_schedule = interleaved_1f1b"),
      std::string::npos);
  const std::string zb = "parallel.pipeline_schedule=zb_h1";
  EXPECT_EQ(parse_config(kMinimalYaml, {pp2, untied, zb}).parallel.pipeline_schedule, "zb_h1");
  const std::string interleaved = "parallel.pipeline_schedule=interleaved_1f1b";
  const std::string v2 = "parallel.virtual_pipeline_model_parallel_size=2";
  EXPECT_EQ(parse_config(kMinimalYaml,
                         {pp2, untied, interleaved, v2, "training.gradient_accumulation_steps=2"})
                .parallel.virtual_pipeline_model_parallel_size,
            2);
  EXPECT_NE(parse_error(kMinimalYaml, {pp2, untied, interleaved,
                                       "parallel.virtual_pipeline_model_parallel_size=4",
                                       "training.gradient_accumulation_steps=2"})
                .find("is 2 x 4 = 8 model chunks, but the model has 6 layers"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml,
                        {pp2, untied, interleaved, v2, "training.gradient_accumulation_steps=3"})
                .find("multiple of parallel.pipeline_model_parallel_size (2)"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml,
                        {pp2, untied, interleaved, v2, "training.gradient_accumulation_steps=2",
                         "parallel.pipeline_layers=[3,3]"})
                .find("lists 2 counts, but interleaving cuts the model into 4 chunks"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml, {pp2, untied, zb, "training.gradient_checkpointing=true"})
                .find("set training.gradient_checkpointing: false, or the schedule to 1f1b"),
            std::string::npos);
  EXPECT_NE(parse_error(kMinimalYaml, {pp2, untied, zb, "optimizer.per_layer_update=true",
                                       "training.max_grad_norm=0"})
                .find("set optimizer.per_layer_update: false, or the schedule to 1f1b"),
            std::string::npos);
  EXPECT_EQ(parse_config(kMinimalYaml, {pp2, "model.tie_word_embeddings=true"})
                .parallel.pipeline_model_parallel_size,
            2);
  EXPECT_NE(
      parse_error(kMinimalYaml, {pp2, "model.tie_word_embeddings=true",
                                 "optimizer.per_layer_update=true", "training.max_grad_norm=0"})
          .find("set optimizer.per_layer_update: false, or model.tie_word_embeddings: false"),
      std::string::npos);
}

// Tensor parallelism splits heads, the MLP and the vocabulary; what is not built on it yet is
// refused by name, with the setting that works.
TEST(Config, TensorParallelismRefusesWhatItCannotServe) {
  const std::string tp2 = "parallel.tensor_model_parallel_size=2";
  EXPECT_EQ(parse_config(kMinimalYaml, {tp2}).parallel.tensor_model_parallel_size, 2);
  EXPECT_NE(parse_error(kMinimalYaml, {"parallel.tensor_model_parallel_size=5"})
                .find("is not a multiple of 5"),
            std::string::npos);
  EXPECT_EQ(parse_config(kMinimalYaml, {tp2, "parallel.zero_stage=3"}).parallel.zero_stage, 3);
  EXPECT_EQ(parse_config(kMinimalYaml, {tp2, "optimizer.type=adafactor"}).optimizer.type,
            "adafactor");
  // Checkpoints reshard across TP sizes (tests/launcher/test_tensor_parallel_resume.cpp).
  EXPECT_EQ(parse_config(kMinimalYaml, {tp2, "training.save_steps=10"}).training.save_steps, 10);
}

// Sequence parallelism cuts every sequence into tp equal chunks: a length tp does not divide is
// one line naming both settings and a length that works, before any work.
TEST(Config, SequenceParallelismNeedsALengthTpDivides) {
  const std::string tp2 = "parallel.tensor_model_parallel_size=2",
                    sp = "parallel.sequence_parallel=true";
  EXPECT_TRUE(
      parse_config(kMinimalYaml, {tp2, sp, "data.seq_length=64"}).parallel.sequence_parallel);
  EXPECT_EQ(parse_error(kMinimalYaml, {tp2, sp, "data.seq_length=65"}),
            "parallel.sequence_parallel splits each sequence over the 2 tensor-parallel ranks, but "
            "data.seq_length 65 is not a multiple of 2; set data.seq_length to a multiple of 2 "
            "(e.g. 64) or parallel.sequence_parallel: false");
  // Without sequence parallelism, or without a TP group to split over, any length serves.
  parse_config(kMinimalYaml, {tp2, "data.seq_length=65"});
  parse_config(kMinimalYaml, {sp, "data.seq_length=65"});
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

TEST(Config, DivergenceGuardNeedsWhatItRecoversWith) {
  expect_mentions(parse_error(kMinimalYaml, {"training.on_nonfinite=ignore"}),
                  {"training.on_nonfinite", "'ignore'", "stop", "skip_step", "rollback"});
  EXPECT_EQ(parse_error(kMinimalYaml, {"training.on_nonfinite=rollback"}),
            "training.on_nonfinite is rollback, which reloads the last good checkpoint, but "
            "training.save_steps is 0 (no checkpoints); set training.save_steps (e.g. 100), or "
            "training.on_nonfinite to stop or skip_step");
  EXPECT_NO_THROW(
      parse_config(kMinimalYaml, {"training.on_nonfinite=rollback", "training.save_steps=10"}));
  expect_mentions(
      parse_error(kMinimalYaml, {"training.on_nonfinite=skip_step",
                                 "optimizer.per_layer_update=true", "training.max_grad_norm=0"}),
      {"skip_step", "optimizer.per_layer_update", "rollback"});
  expect_mentions(parse_error(kMinimalYaml, {"training.loss_spike_factor=0.5"}),
                  {"training.loss_spike_factor is 0.5", "above 1", "0 to turn the guard off"});
  EXPECT_EQ(parse_config(kMinimalYaml, {"training.loss_spike_factor=3"}).training.loss_spike_factor,
            3.0);
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

// The control server's address and TLS files are checked before any work: one line naming the key
// and what to write instead.
TEST(Config, ControlAddressIsHostAndPort) {
  for (const char* good : {"127.0.0.1:0", "0.0.0.0:7000", "localhost:65535", "none"})
    EXPECT_EQ(parse_config(kMinimalYaml, {std::string("control.address=") + good}).control.address,
              good);
  for (const char* bad : {"127.0.0.1", "7000", ":7000", "host:port", "host:70000", "::1:7000"})
    EXPECT_EQ(parse_error(kMinimalYaml, {std::string("control.address=") + bad}),
              std::string("control.address is '") + bad +
                  "'; write host:port (127.0.0.1:0 takes a free port on loopback, [::1]:50051 for "
                  "IPv6) or none for no control server");
  // YAML reads an unquoted [::1]:50051 as a list: quoted, it is the IPv6 loopback.
  EXPECT_EQ(parse_config(kMinimalYaml, {"control.address=\"[::1]:50051\""}).control.address,
            "[::1]:50051");
  EXPECT_EQ(parse_error(kMinimalYaml, {"control.tls_cert=cert.pem"}),
            "control.tls_cert and control.tls_key go together (TLS needs the certificate and its "
            "key); set both, or neither for plaintext");
  EXPECT_NE(parse_error(kMinimalYaml, {"control.hang_timeout=-1"}).find("control.hang_timeout"),
            std::string::npos);
}

}  // namespace
}  // namespace keel::runtime
