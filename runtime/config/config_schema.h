// The schema behind runtime/config/config.h, shared by runtime/config*.cpp only: one table of every
// key with its section, type and range (reading, checks and config_to_yaml all walk it, so no key
// is read without being checked and written), and the name lookups and "did you mean" hints.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "runtime/config/config.h"

namespace keel::runtime::detail {

// A key is reached through a function that returns a reference to its field; std::visit then
// picks the reader, the checks and the writer by the field's value type.
template <class T>
using FieldRef = T& (*)(Config&);
using Ref = std::variant<FieldRef<int64_t>, FieldRef<uint64_t>, FieldRef<double>, FieldRef<bool>,
                         FieldRef<std::string>>;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Allowed values of a numeric key: lo <= v (lo < v when lo_open), v <= hi (v < hi when hi_open).
struct Range {
  double lo = -kInf;
  bool lo_open = false;
  double hi = kInf;
  bool hi_open = false;
};
constexpr Range at_least(double lo) { return {lo, false, kInf, false}; }
constexpr Range above(double lo) { return {lo, true, kInf, false}; }
constexpr Range closed(double lo, double hi) { return {lo, false, hi, false}; }
constexpr Range half_open(double lo, double hi) { return {lo, false, hi, true}; }
constexpr Range below(double hi) { return {-kInf, false, hi, true}; }
constexpr Range any_value() { return {}; }

struct Field {
  std::string_view section;
  std::string_view key;
  Ref ref;
  Range range;
  bool list = false;  // a string key that also takes a YAML list, kept comma-separated
};

// clang-format off
#define KEEL_CONFIG_FIELD(section, key, range) \
  Field { #section, #key, Ref{+[](Config& c) -> auto& { return c.section.key; }}, range }
#define KEEL_CONFIG_LIST(section, key) \
  Field { #section, #key, Ref{+[](Config& c) -> auto& { return c.section.key; }}, any_value(), true }

// Order here is the order of config_to_yaml and of docs/CONFIG.md. A key with a dot
// ("galore.rank") belongs to a map inside its section (optimizer: {galore: {rank: 64}}).
inline constexpr auto kFields = std::to_array<Field>({
    KEEL_CONFIG_FIELD(model, vocab_size, at_least(1)),
    KEEL_CONFIG_FIELD(model, hidden_size, at_least(1)),
    KEEL_CONFIG_FIELD(model, intermediate_size, at_least(1)),
    KEEL_CONFIG_FIELD(model, num_hidden_layers, at_least(1)),
    KEEL_CONFIG_FIELD(model, num_attention_heads, at_least(1)),
    KEEL_CONFIG_FIELD(model, num_key_value_heads, at_least(0)),
    KEEL_CONFIG_FIELD(model, max_position_embeddings, at_least(1)),
    KEEL_CONFIG_FIELD(model, rope_theta, above(0)),
    KEEL_CONFIG_FIELD(model, rms_norm_eps, above(0)),
    KEEL_CONFIG_FIELD(model, tie_word_embeddings, any_value()),
    KEEL_CONFIG_FIELD(model, initializer_range, at_least(0)),
    KEEL_CONFIG_FIELD(model, num_local_experts, at_least(0)),
    KEEL_CONFIG_FIELD(model, num_experts_per_tok, at_least(1)),
    KEEL_CONFIG_FIELD(model, output_router_logits, any_value()),
    KEEL_CONFIG_FIELD(model, router_aux_loss_coef, at_least(0)),
    KEEL_CONFIG_FIELD(model, router_z_loss_coef, at_least(0)),
    KEEL_CONFIG_FIELD(model, moe_layer_freq, at_least(1)),
    KEEL_CONFIG_LIST(model, moe_layers),
    KEEL_CONFIG_FIELD(model, moe_token_dropping, any_value()),
    KEEL_CONFIG_FIELD(model, moe_expert_capacity_factor, above(0)),
    KEEL_CONFIG_FIELD(data, train, any_value()),
    KEEL_CONFIG_FIELD(data, tokenizer, any_value()),
    KEEL_CONFIG_FIELD(data, seq_length, at_least(1)),
    KEEL_CONFIG_FIELD(data, validation, any_value()),
    KEEL_CONFIG_FIELD(data, max_eval_samples, at_least(0)),
    KEEL_CONFIG_FIELD(training, max_steps, at_least(-1)),
    KEEL_CONFIG_FIELD(training, num_train_epochs, above(0)),
    KEEL_CONFIG_FIELD(training, learning_rate, at_least(0)),
    KEEL_CONFIG_FIELD(training, warmup_steps, at_least(0)),
    KEEL_CONFIG_FIELD(training, warmup_ratio, closed(0, 1)),
    KEEL_CONFIG_FIELD(training, lr_scheduler_type, any_value()),
    KEEL_CONFIG_FIELD(training, per_device_train_batch_size, at_least(1)),
    KEEL_CONFIG_FIELD(training, gradient_accumulation_steps, at_least(1)),
    KEEL_CONFIG_FIELD(training, max_grad_norm, at_least(0)),
    KEEL_CONFIG_FIELD(training, weight_decay, at_least(0)),
    KEEL_CONFIG_FIELD(training, adam_beta1, half_open(0, 1)),
    KEEL_CONFIG_FIELD(training, adam_beta2, half_open(0, 1)),
    KEEL_CONFIG_FIELD(training, adam_epsilon, above(0)),
    KEEL_CONFIG_FIELD(training, seed, any_value()),
    KEEL_CONFIG_FIELD(training, logging_steps, at_least(1)),
    KEEL_CONFIG_FIELD(training, eval_steps, at_least(0)),
    KEEL_CONFIG_FIELD(training, report_to, any_value()),
    KEEL_CONFIG_FIELD(training, logging_dir, any_value()),
    KEEL_CONFIG_FIELD(training, save_steps, at_least(0)),
    KEEL_CONFIG_FIELD(training, save_total_limit, at_least(0)),
    KEEL_CONFIG_FIELD(training, exit_interval, at_least(0)),
    KEEL_CONFIG_FIELD(training, save_on_signal, any_value()),
    KEEL_CONFIG_FIELD(training, resume_from_checkpoint, any_value()),
    KEEL_CONFIG_FIELD(training, output_dir, any_value()),
    KEEL_CONFIG_FIELD(training, gradient_checkpointing, any_value()),
    KEEL_CONFIG_FIELD(training, on_nonfinite, any_value()),
    KEEL_CONFIG_FIELD(training, max_skipped_steps, at_least(0)),
    KEEL_CONFIG_FIELD(training, loss_spike_factor, at_least(0)),
    KEEL_CONFIG_FIELD(training, peak_flops, at_least(0)),
    KEEL_CONFIG_FIELD(training, memory_limit, any_value()),
    KEEL_CONFIG_FIELD(optimizer, type, any_value()),
    KEEL_CONFIG_FIELD(optimizer, block_size, closed(64, 4096)),
    KEEL_CONFIG_FIELD(optimizer, min_8bit_size, at_least(0)),
    KEEL_CONFIG_FIELD(optimizer, relative_step, any_value()),
    KEEL_CONFIG_FIELD(optimizer, scale_parameter, any_value()),
    KEEL_CONFIG_FIELD(optimizer, warmup_init, any_value()),
    KEEL_CONFIG_FIELD(optimizer, decay_rate, below(0)),
    KEEL_CONFIG_FIELD(optimizer, clip_threshold, above(0)),
    KEEL_CONFIG_FIELD(optimizer, adafactor_beta1, half_open(0, 1)),
    KEEL_CONFIG_FIELD(optimizer, per_layer_update, any_value()),
    KEEL_CONFIG_FIELD(optimizer, galore.rank, at_least(0)),
    KEEL_CONFIG_FIELD(optimizer, galore.update_proj_gap, at_least(1)),
    KEEL_CONFIG_FIELD(optimizer, galore.scale, above(0)),
    KEEL_CONFIG_FIELD(optimizer, galore.proj_type, any_value()),
    KEEL_CONFIG_FIELD(optimizer, galore.projector, any_value()),
    KEEL_CONFIG_LIST(optimizer, galore.targets),
    KEEL_CONFIG_FIELD(optimizer, galore.oversample, at_least(0)),
    KEEL_CONFIG_FIELD(optimizer, galore.power_iterations, at_least(0)),
    KEEL_CONFIG_FIELD(parallel, zero_stage, closed(0, 3)),
    KEEL_CONFIG_FIELD(parallel, overlap_comm, any_value()),
    KEEL_CONFIG_FIELD(parallel, tensor_model_parallel_size, at_least(1)),
    KEEL_CONFIG_FIELD(parallel, sequence_parallel, any_value()),
    KEEL_CONFIG_FIELD(parallel, pipeline_model_parallel_size, at_least(1)),
    KEEL_CONFIG_FIELD(parallel, pipeline_schedule, any_value()),
    KEEL_CONFIG_FIELD(parallel, virtual_pipeline_model_parallel_size, at_least(1)),
    KEEL_CONFIG_LIST(parallel, pipeline_layers),
    KEEL_CONFIG_FIELD(parallel, expert_model_parallel_size, at_least(1)),
    KEEL_CONFIG_FIELD(control, address, any_value()),
    KEEL_CONFIG_FIELD(control, hang_timeout, at_least(0)),
    KEEL_CONFIG_FIELD(control, tls_cert, any_value()),
    KEEL_CONFIG_FIELD(control, tls_key, any_value()),
});

#undef KEEL_CONFIG_FIELD
#undef KEEL_CONFIG_LIST
// clang-format on

inline constexpr std::array<std::string_view, 6> kSections = {"model",     "data",     "training",
                                                              "optimizer", "parallel", "control"};

// ---- names and suggestions (config_schema.cpp) -------------------------------------------------

std::string join(const std::vector<std::string>& items);

template <size_t N>
std::vector<std::string> to_strings(const std::array<std::string_view, N>& names) {
  return std::vector<std::string>(names.begin(), names.end());
}

// "; did you mean 'prefix+best'?", and the whole list of valid names when even the best is far off.
std::string did_you_mean(std::string_view name, const std::vector<std::string>& valid,
                         const std::string& prefix);

// The field of `section.key`, or nullptr.
const Field* find_field(std::string_view section, std::string_view key);

bool is_section(std::string_view name);
// Whether `key` of `section` is a map of keys ("galore" in optimizer: galore.rank, ...).
bool is_key_group(std::string_view section, std::string_view key);

// Throw the "unknown section" / "unknown key" errors, with the likeliest fix; `where` names the
// place in the file or the `--set` that named them.
[[noreturn]] void fail_unknown_section(const std::string& name, const std::string& where);
[[noreturn]] void fail_unknown_key(std::string_view section, const std::string& key,
                                   const std::string& where);

// Shortest text that reads back as the same double.
std::string number_text(double v);

}  // namespace keel::runtime::detail
