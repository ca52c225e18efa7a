// Checks on a run configuration (runtime/config/config.h): every numeric key against its range in
// the schema, the names that must be one of a fixed set, and the shapes no single key can check
// alone.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "kernels/error.h"
#include "parallel/tensor_parallel.h"
#include "runtime/config/config.h"
#include "runtime/config/config_schema.h"
#include "runtime/config/pipeline_layout.h"
#include "runtime/train/memory_limit.h"

namespace keel::runtime {

using detail::did_you_mean;
using detail::Field;
using detail::join;
using detail::kFields;
using detail::kInf;
using detail::number_text;
using detail::Range;
using detail::to_strings;

namespace {

constexpr std::array<std::string_view, 4> kSchedulers = {"linear", "cosine", "constant",
                                                         "constant_with_warmup"};
constexpr std::array<std::string_view, 3> kOptimizers = {"adamw", "adamw_8bit", "adafactor"};
constexpr std::array<std::string_view, 4> kProjTypes = {"std", "reverse_std", "left", "right"};
constexpr std::array<std::string_view, 2> kProjectors = {"exact", "randomized"};
constexpr std::array<std::string_view, 2> kReportTo = {"tensorboard", "none"};
constexpr std::array<std::string_view, 3> kOnNonfinite = {"stop", "skip_step", "rollback"};
// The byte tokenizer maps each of the 256 byte values to its own token id.
constexpr int64_t kByteVocab = 256;

std::string range_text(const Range& r) {
  const bool has_lo = r.lo != -kInf;
  const bool has_hi = r.hi != kInf;
  if (has_lo && has_hi) {
    return format("{}{}, {}{}", r.lo_open ? "(" : "[", number_text(r.lo), number_text(r.hi),
                  r.hi_open ? ")" : "]");
  }
  if (has_lo) return format("{} {}", r.lo_open ? ">" : ">=", number_text(r.lo));
  return format("{} {}", r.hi_open ? "<" : "<=", number_text(r.hi));
}

bool in_range(double v, const Range& r) {
  const bool lo_ok = r.lo_open ? v > r.lo : v >= r.lo;
  const bool hi_ok = r.hi_open ? v < r.hi : v <= r.hi;
  return lo_ok && hi_ok;
}

void check_range(const Field& field, Config& config) {
  std::visit(
      [&](auto ref) {
        using T = std::remove_reference_t<decltype(ref(config))>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
          const T v = ref(config);
          const std::string text = std::is_same_v<T, double> ? number_text(v) : std::to_string(v);
          KEEL_CHECK(std::isfinite(static_cast<double>(v)),
                     "{}.{} is {}; it must be a finite number", field.section, field.key, text);
          KEEL_CHECK(in_range(static_cast<double>(v), field.range),
                     "{}.{} is {}; allowed range: {}", field.section, field.key, text,
                     range_text(field.range));
        }
      },
      field.ref);
}

template <size_t N>
void check_one_of(const std::string& value, const std::array<std::string_view, N>& supported,
                  std::string_view key, std::string_view what) {
  if (std::find(supported.begin(), supported.end(), value) != supported.end()) return;
  const std::string hint = N > 1 ? did_you_mean(value, to_strings(supported), "") : "";
  KEEL_FAIL("{} is '{}'; {} supported in this build: {}{}", key, value, what,
            join(to_strings(supported)), hint);
}

void check_galore(const OptimizerConfig& o) {
  const optim::GaloreConfig& g = o.galore;
  check_one_of(g.proj_type, kProjTypes, "optimizer.galore.proj_type", "projection types");
  check_one_of(g.projector, kProjectors, "optimizer.galore.projector", "projectors");
  if (g.rank == 0) return;
  bool named = false;
  for (std::string_view rest = g.targets; !rest.empty();) {
    const size_t comma = rest.find(',');
    named = named || !rest.substr(0, comma).empty();
    rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
  }
  KEEL_CHECK(named,
             "optimizer.galore.targets is empty; name the matrices GaLore projects by a part of "
             "their names, e.g. [attn, mlp]");
  // GaLore's Adafactor steps in the projected space, where the parameter's own scale is absent.
  KEEL_CHECK(o.type != "adafactor" || !o.scale_parameter,
             "optimizer.scale_parameter scales a step by the parameter's RMS, which GaLore's "
             "projected space does not have; set it to false with optimizer.galore");
}

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d <= n / d; ++d) {
    if (n % d != 0) continue;
    out.push_back(d);
    if (d != n / d) out.push_back(n / d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string list(const std::vector<int64_t>& values) {
  std::vector<std::string> items;
  for (int64_t v : values) items.push_back(std::to_string(v));
  return join(items);
}

// The fix for a hidden size / head count that does not give an even head dim: head counts that do
// (up to six, nearest the current one), or hidden sizes that do.
std::string head_shape_fix(int64_t hidden, int64_t heads) {
  std::vector<int64_t> good;
  for (int64_t d : divisors(hidden)) {
    if ((hidden / d) % 2 == 0) good.push_back(d);
  }
  std::stable_sort(good.begin(), good.end(),
                   [&](int64_t a, int64_t b) { return std::abs(a - heads) < std::abs(b - heads); });
  if (good.size() > 6) good.resize(6);
  std::sort(good.begin(), good.end());
  const int64_t step = 2 * heads;
  const int64_t below = hidden / step * step;
  const std::string sizes =
      below > 0 ? format("{} or {}", below, below + step) : std::to_string(below + step);
  const std::string hidden_fix =
      format("set model.hidden_size to a multiple of {} (e.g. {})", step, sizes);
  if (good.empty()) return hidden_fix;
  return format("set model.num_attention_heads to one of {}, or {}", list(good), hidden_fix);
}

void check_shapes(const Config& config) {
  const ModelConfig& m = config.model;
  KEEL_CHECK(m.hidden_size % m.num_attention_heads == 0,
             "model.hidden_size ({}) must be divisible by model.num_attention_heads ({}); {}",
             m.hidden_size, m.num_attention_heads,
             head_shape_fix(m.hidden_size, m.num_attention_heads));
  KEEL_CHECK(m.head_dim() % 2 == 0,
             "the head dim model.hidden_size / model.num_attention_heads = {} / {} = {} must be "
             "even for RoPE; {}",
             m.hidden_size, m.num_attention_heads, m.head_dim(),
             head_shape_fix(m.hidden_size, m.num_attention_heads));
  const int64_t kv_heads =
      m.num_key_value_heads == 0 ? m.num_attention_heads : m.num_key_value_heads;
  KEEL_CHECK(m.num_attention_heads % kv_heads == 0,
             "model.num_key_value_heads ({}) must divide model.num_attention_heads ({}); pick one "
             "of {}",
             kv_heads, m.num_attention_heads, list(divisors(m.num_attention_heads)));
  KEEL_CHECK(config.data.seq_length <= m.max_position_embeddings,
             "data.seq_length ({}) exceeds model.max_position_embeddings ({}); lower "
             "data.seq_length or raise model.max_position_embeddings to at least {}",
             config.data.seq_length, m.max_position_embeddings, config.data.seq_length);
}

// control.address is host:port (an IPv6 host in brackets) with a port in [0, 65535], or none; TLS
// needs both of its files.
void check_control(const ControlConfig& c) {
  if (c.address != "none") {
    const size_t colon = c.address.rfind(':');
    const std::string host = colon == std::string::npos ? "" : c.address.substr(0, colon);
    const std::string port = colon == std::string::npos ? "" : c.address.substr(colon + 1);
    const bool bracketed = host.size() >= 2 && host.front() == '[' && host.back() == ']';
    const bool digits = !port.empty() && port.size() <= 5 &&
                        port.find_first_not_of("0123456789") == std::string::npos;
    KEEL_CHECK(!host.empty() && digits && std::stoi(port) <= 65535 &&
                   (bracketed || host.find(':') == std::string::npos),
               "control.address is '{}'; write host:port (127.0.0.1:0 takes a free port on "
               "loopback, [::1]:50051 for IPv6) or none for no control server",
               c.address);
  }
  KEEL_CHECK(c.tls_cert.empty() == c.tls_key.empty(),
             "control.tls_cert and control.tls_key go together (TLS needs the certificate and its "
             "key); set both, or neither for plaintext");
}

// Tensor parallelism: the model's sizes must split (parallel::tp_split says which does not).
// Sequence parallelism cuts each micro-batch's B·T rows into tp equal chunks: T must divide by tp.
void check_tensor_parallel(const Config& config) {
  const int64_t tp = config.parallel.tensor_model_parallel_size;
  if (tp == 1) return;
  const ModelConfig& m = config.model;
  parallel::tp_split(m.num_attention_heads,
                     m.num_key_value_heads ? m.num_key_value_heads : m.num_attention_heads,
                     m.intermediate_size, m.vocab_size, static_cast<int>(tp), 0);
  const int64_t T = config.data.seq_length;
  KEEL_CHECK(!config.parallel.sequence_parallel || T % tp == 0,
             "parallel.sequence_parallel splits each sequence over the {} tensor-parallel ranks, "
             "but data.seq_length {} is not a multiple of {}; set data.seq_length to a multiple "
             "of {} (e.g. {}) or parallel.sequence_parallel: false",
             tp, T, tp, tp, std::max(T / tp * tp, tp));
}

// A mixture of experts that can run: k of E experts, the layers named, the experts spread evenly
// over the expert-parallel ranks.
void check_moe(const Config& config) {
  const ModelConfig& m = config.model;
  const int64_t ep = config.parallel.expert_model_parallel_size;
  if (!m.moe()) {
    KEEL_CHECK(m.moe_layers.empty(),
               "model.moe_layers is '{}', but the model has no experts (model.num_local_experts "
               "is 0); set model.num_local_experts, or remove model.moe_layers",
               m.moe_layers);
    KEEL_CHECK(ep == 1,
               "parallel.expert_model_parallel_size is {}, but the model has no experts "
               "(model.num_local_experts is 0); set parallel.expert_model_parallel_size to 1, or "
               "model.num_local_experts to a multiple of {}",
               ep, ep);
    return;
  }
  KEEL_CHECK(m.num_experts_per_tok <= m.num_local_experts,
             "model.num_experts_per_tok is {}, but the model has only {} experts "
             "(model.num_local_experts); set model.num_experts_per_tok to at most {}",
             m.num_experts_per_tok, m.num_local_experts, m.num_local_experts);
  KEEL_CHECK(m.num_moe_layers() > 0,  // also parses model.moe_layers, naming a bad index
             "model.num_local_experts is {}, but no layer is a mixture of experts; list them in "
             "model.moe_layers or set model.moe_layer_freq to at most {}",
             m.num_local_experts, m.num_hidden_layers);
  KEEL_CHECK(m.num_local_experts % ep == 0,
             "parallel.expert_model_parallel_size {} does not divide model.num_local_experts {} "
             "(each expert-parallel rank holds the same number of experts); pick a divisor of {}",
             ep, m.num_local_experts, m.num_local_experts);
  KEEL_CHECK(config.parallel.pipeline_schedule != "zb_h1",
             "parallel.pipeline_schedule zb_h1 splits each block's backward in two, which "
             "mixture-of-experts layers do not do yet; pick 1f1b, interleaved_1f1b or gpipe");
  KEEL_CHECK(ep == 1 || !config.optimizer.per_layer_update || config.parallel.zero_stage > 0,
             "optimizer.per_layer_update without ZeRO (parallel.zero_stage 0) cannot yet sum the "
             "experts' gradient norms over parallel.expert_model_parallel_size {} ranks; set "
             "parallel.zero_stage to 2 or 3",
             ep);
}

// A unit is stepped as soon as its gradient is complete in the backward, before the units below
// it have theirs: nothing may need the whole step's gradient first.
void check_per_layer_update(const Config& config) {
  if (!config.optimizer.per_layer_update) return;
  const TrainingConfig& t = config.training;
  KEEL_CHECK(t.gradient_accumulation_steps == 1,
             "optimizer.per_layer_update takes one micro-batch per step, but "
             "training.gradient_accumulation_steps is {} (a unit would be stepped before the "
             "later micro-batches add their gradients); set training.gradient_accumulation_steps "
             "to 1 (raise training.per_device_train_batch_size for a larger batch), or "
             "optimizer.per_layer_update to false",
             t.gradient_accumulation_steps);
  KEEL_CHECK(t.max_grad_norm == 0,
             "optimizer.per_layer_update cannot clip by the global gradient norm, but "
             "training.max_grad_norm is {} (the norm needs every unit's gradient before any unit "
             "is stepped); set training.max_grad_norm to 0, or optimizer.per_layer_update to "
             "false",
             number_text(t.max_grad_norm));
  KEEL_CHECK(config.parallel.zero_stage != 1,
             "optimizer.per_layer_update does not run with parallel.zero_stage 1, which keeps "
             "every gradient until the backward ends and reduces them only then; set "
             "parallel.zero_stage to 2 (the same sharding, with each unit's gradient "
             "reduce-scattered during the backward), or to 0 or 3");
}

// What a diverged step does: each mode needs what it recovers with.
void check_divergence_guard(const Config& config) {
  const TrainingConfig& t = config.training;
  check_one_of(t.on_nonfinite, kOnNonfinite, "training.on_nonfinite", "choices");
  KEEL_CHECK(t.loss_spike_factor == 0 || t.loss_spike_factor > 1,
             "training.loss_spike_factor is {}; a spike is a loss above this multiple of the "
             "recent mean, so set it above 1 (e.g. 3), or to 0 to turn the guard off",
             number_text(t.loss_spike_factor));
  KEEL_CHECK(t.on_nonfinite != "rollback" || t.save_steps > 0,
             "training.on_nonfinite is rollback, which reloads the last good checkpoint, but "
             "training.save_steps is 0 (no checkpoints); set training.save_steps (e.g. 100), or "
             "training.on_nonfinite to stop or skip_step");
  KEEL_CHECK(t.on_nonfinite != "skip_step" || !config.optimizer.per_layer_update,
             "training.on_nonfinite skip_step cannot undo a step with optimizer.per_layer_update, "
             "which updates each unit inside the backward before the whole step's gradient is "
             "known; set training.on_nonfinite to rollback (with training.save_steps) or stop");
}

}  // namespace

void validate_config(const Config& config) {
  Config copy = config;  // the field table hands out mutable references
  for (const Field& field : kFields) check_range(field, copy);

  KEEL_CHECK(config.training.max_steps != 0,
             "training.max_steps is 0; set it to the number of optimizer steps, or to -1 to train "
             "training.num_train_epochs passes over the data");
  KEEL_CHECK(!config.data.train.empty(),
             "data.train is empty; set it to the training text file (e.g. --set "
             "data.train=data/tiny.txt)");
  KEEL_CHECK(!config.training.output_dir.empty(),
             "training.output_dir is empty; set it to the run directory (e.g. runs/tiny)");
  KEEL_CHECK(!config.training.resume_from_checkpoint.empty(),
             "training.resume_from_checkpoint is empty; set it to 'auto' (the latest checkpoint "
             "in output_dir, if any), 'none', or a checkpoint directory");
  const std::string& tok = config.data.tokenizer;
  KEEL_CHECK(tok == "auto" || tok == "bytes" ||
                 (tok.size() > 5 && tok.compare(tok.size() - 5, 5, ".json") == 0),
             "data.tokenizer is '{}'; set it to auto (the tokenizer.json of prepared data, bytes "
             "for text), bytes, or the path of a tokenizer.json",
             tok);
  // Other tokenizers' vocabularies are checked when the tokenizer is read, before training.
  KEEL_CHECK(tok != "bytes" || config.model.vocab_size >= kByteVocab,
             "model.vocab_size is {}, but data.tokenizer 'bytes' needs at least {} token ids (one "
             "per byte value); set model.vocab_size to {} or more",
             config.model.vocab_size, kByteVocab, kByteVocab);
  check_one_of(config.training.lr_scheduler_type, kSchedulers, "training.lr_scheduler_type",
               "schedulers");
  check_one_of(config.optimizer.type, kOptimizers, "optimizer.type", "optimizers");
  check_galore(config.optimizer);
  check_per_layer_update(config);
  const int64_t block = config.optimizer.block_size;
  KEEL_CHECK((block & (block - 1)) == 0,
             "optimizer.block_size is {}; it must be a power of two from 64 to 4096 (256 is "
             "bitsandbytes' choice)",
             block);
  check_one_of(config.training.report_to, kReportTo, "training.report_to", "choices");
  check_divergence_guard(config);
  if (config.training.memory_limit != "auto" && config.training.memory_limit != "none")
    parse_memory_size(config.training.memory_limit, "training.memory_limit");
  check_tensor_parallel(config);
  pipeline_layout(config);  // throws for a pipeline that cannot run
  check_moe(config);
  check_control(config.control);
  check_shapes(config);
}

}  // namespace keel::runtime
