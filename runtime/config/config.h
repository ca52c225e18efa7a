// The run configuration: one YAML file with a section per concern, keys named as Hugging Face
// (model, training), DeepSpeed and Megatron (parallel) name them. Loaded and validated once at
// start; every mistake is one keel::Error that names the key and the fix. docs/CONFIG.md documents
// every key.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "optim/galore_config.h"

namespace keel::runtime {

struct ModelConfig {
  int64_t vocab_size = 256;
  int64_t hidden_size = 288;
  int64_t intermediate_size = 768;
  int64_t num_hidden_layers = 6;
  int64_t num_attention_heads = 6;
  int64_t num_key_value_heads = 0;  // 0 in YAML means "same as num_attention_heads"
  int64_t max_position_embeddings = 256;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;
  // Mixture of experts, under Hugging Face Mixtral's names (Megatron's where Mixtral has none).
  // 0 experts: every MLP dense. Otherwise the MoE layers (moe_layers, or every moe_layer_freq-th
  // from layer 0) have num_local_experts SwiGLU experts of intermediate_size and a router that
  // sends each token to num_experts_per_tok of them (docs/CONFIG.md, docs/MOE.md).
  int64_t num_local_experts = 0;
  int64_t num_experts_per_tok = 2;
  bool output_router_logits = false;  // the load-balancing loss joins the training loss
  double router_aux_loss_coef = 0.001;
  double router_z_loss_coef = 0.0;
  int64_t moe_layer_freq = 1;
  std::string moe_layers;  // comma-separated layer indices; "" = by moe_layer_freq
  // Capacity (GShard, Megatron): each expert takes at most ceil(factor·T·k/E) of a sequence's T
  // tokens' k choices, in token order; the rest are dropped (the residual carries them).
  bool moe_token_dropping = false;
  double moe_expert_capacity_factor = 1.0;

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  bool moe() const { return num_local_experts > 0; }
  // Whether layer l's MLP is a mixture of experts; moe_layers is parsed (and checked) each call.
  bool moe_layer(int64_t l) const;
  int64_t num_moe_layers() const;
  // Each MoE layer's expert capacity per sequence of T tokens (0: dropless).
  int64_t expert_capacity(int64_t T) const;
};

struct DataConfig {
  std::string train;               // a text file, a .tokens shard or a prepared directory
  std::string tokenizer = "auto";  // "auto", "bytes" (one token per byte) or a tokenizer.json
  int64_t seq_length = 256;
  // Held-out data for evaluation: "auto" (the val_*.tokens split of a prepared directory in
  // train, none otherwise), "none", or a path like train's (a prepared directory: its val split).
  std::string validation = "auto";
  int64_t max_eval_samples = 0;  // validation sequences evaluated (the first ones); 0: all
};

struct TrainingConfig {
  int64_t max_steps = 100;        // -1: num_train_epochs passes over the data instead
  double num_train_epochs = 3.0;  // used when max_steps is -1
  double learning_rate = 3e-4;
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;  // used when warmup_steps is 0: ceil(ratio × max_steps) steps
  std::string lr_scheduler_type = "cosine";  // linear | cosine | constant | constant_with_warmup
  int64_t per_device_train_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double max_grad_norm = 1.0;  // 0 disables clipping
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  uint64_t seed = 42;
  int64_t logging_steps = 10;
  int64_t eval_steps = 0;  // validation loss every this many steps and at the end; 0: never
  std::string report_to = "tensorboard";  // "tensorboard": event files in logging_dir; "none"
  std::string logging_dir;                // "": <output_dir>/tensorboard
  int64_t save_steps = 0;        // a checkpoint every this many steps and at the end; 0: none
  int64_t save_total_limit = 0;  // checkpoints kept (the newest); 0: all
  // Stop (after a checkpoint) once the step is a multiple of this, as Megatron's exit_interval:
  // a long run in jobs of bounded time. 0: run to max_steps.
  int64_t exit_interval = 0;
  // SIGTERM or SIGUSR1 to any rank (a scheduler's notice before it kills the job): the whole job
  // checkpoints at the next step boundary and exits 0; a second SIGTERM ends it at once. false
  // leaves the signals their default (the process dies where it stands).
  bool save_on_signal = true;
  // "auto": the latest checkpoint in output_dir, if any; "none"; or a checkpoint's path.
  std::string resume_from_checkpoint = "auto";
  std::string output_dir = "runs/default";
  bool gradient_checkpointing = false;
  // A step whose loss or gradient norm is not finite (or spikes, with loss_spike_factor) never
  // reaches the weights. "stop": exit non-zero naming the step and the last good checkpoint;
  // "skip_step": skip that batch's update (at most max_skipped_steps in a run); "rollback":
  // reload the last good checkpoint and skip the offending batch when the run gets back to it.
  std::string on_nonfinite = "stop";
  int64_t max_skipped_steps = 10;
  // > 1: a step whose loss exceeds this multiple of the mean of the last good steps' losses is
  // treated as diverged (handled as on_nonfinite says). 0: off.
  double loss_spike_factor = 0.0;
  // MFU's denominator, FLOP/s of one rank (a GPU's datasheet peak); 0: measured at start-up.
  double peak_flops = 0.0;
  // What one rank may plan: "auto" (KEEL_MEMORY_LIMIT, else this host's memory and cgroup shared
  // by its ranks), "none" (no check), or a size such as "12GiB" (runtime/train/memory_limit.h).
  std::string memory_limit = "auto";
};

struct OptimizerConfig {
  std::string type = "adamw";    // adamw | adamw_8bit | adafactor
  int64_t block_size = 256;      // adamw_8bit: elements per quantization block
  int64_t min_8bit_size = 4096;  // adamw_8bit: tensors with fewer elements keep fp32 moments
  // adafactor (as Hugging Face's Adafactor; the Trainer's defaults):
  bool relative_step = false;    // step size min(1e-2, 1/sqrt(t)) instead of the learning rate
  bool scale_parameter = false;  // step size times max(1e-3, RMS(parameter))
  bool warmup_init = false;      // relative step min(1e-6·t, 1/sqrt(t))
  double decay_rate = -0.8;      // β2 at step t: 1 − t^decay_rate
  double clip_threshold = 1.0;   // the update's RMS is clipped to this
  double adafactor_beta1 = 0.0;  // > 0: a first moment of the update with this decay
  // Step each unit (embedding, block, head) as soon as its gradient is complete in the backward,
  // then reuse that gradient's memory for the next unit (one micro-batch, no global clipping).
  bool per_layer_update = false;
  optim::GaloreConfig galore = {};  // optimizer.galore: GaLore around the optimizer of `type`
};

struct ParallelConfig {
  int64_t zero_stage = 0;
  bool overlap_comm = true;  // ZeRO 1-3: run collectives asynchronously behind compute
  int64_t tensor_model_parallel_size = 1;
  // Under TP: the residual stream and the norms between the TP regions hold 1/tp of the tokens
  // (Megatron's sequence parallelism); nothing to split with tensor_model_parallel_size 1.
  bool sequence_parallel = false;
  int64_t pipeline_model_parallel_size = 1;
  // The order of the stages' forward and backward passes (parallel/pipeline_schedule.h): "gpipe",
  // "1f1b", "interleaved_1f1b" or "zb_h1".
  std::string pipeline_schedule = "1f1b";
  // Model chunks per pipeline rank (interleaved_1f1b only; Megatron's name).
  int64_t virtual_pipeline_model_parallel_size = 1;
  // Blocks per stage, comma-separated ("3,4,4,3"); empty: balanced by cost.
  std::string pipeline_layers;
  int64_t expert_model_parallel_size = 1;
};

// The control plane (launcher/control/): where rank 0 serves gRPC, and when a silent rank ends the
// job.
struct ControlConfig {
  // host:port; the default is loopback on a free port (the one bound goes to
  // <output_dir>/control.json). Beyond loopback every call needs the run's token. "none": no
  // server.
  std::string address = "127.0.0.1:0";
  double hang_timeout = 300.0;  // seconds without a rank's heartbeat or step; 0: never
  std::string tls_cert;         // PEM paths: serve TLS instead of plaintext ("": plaintext)
  std::string tls_key;
};

struct Config {
  ModelConfig model;
  DataConfig data;
  TrainingConfig training;
  OptimizerConfig optimizer;
  ParallelConfig parallel;
  ControlConfig control;
};

// Parses YAML text. Applies `overrides` ("section.key=value", as `--set` takes them) on top, then
// validates. `origin` names the source in messages (a path, or "<string>").
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides = {},
                    const std::string& origin = "<string>");

// Reads and parses a YAML file (the error names the path when it cannot be read).
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Checks shapes and values that no single key can check alone (hidden size divisible by heads,
// kv heads dividing heads, even head dim for RoPE, ...). parse_config calls it.
void validate_config(const Config& config);

// The resolved configuration as YAML (written beside the metrics of every run).
std::string config_to_yaml(const Config& config);

// Every key whose value differs between `before` and `after`, as "section.key: old -> new" in
// table order; only the keys of `section` when one is named.
std::vector<std::string> config_differences(const Config& before, const Config& after,
                                            const std::string& section = "");

}  // namespace keel::runtime
