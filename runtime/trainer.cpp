#include "runtime/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "optim/adamw.h"
#include "runtime/schedule.h"

namespace keel::runtime {

namespace k = keel::kernels::cpu;
using Clock = std::chrono::steady_clock;

double measure_peak_flops() {
  constexpr int64_t n = 1024;
  MemoryPlan plan("gemm probe");
  const auto a = plan.add("a", DType::F32, {n, n});
  const auto b = plan.add("b", DType::F32, {n, n});
  const auto c = plan.add("c", DType::F32, {n, n});
  plan.allocate();
  double best = 0.0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    k::gemm(false, true, n, n, n, 1.0f, plan[a].f32(), n, plan[b].f32(), n, 0.0f, plan[c].f32(), n);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, 2.0 * n * n * n / s);
  }
  return best;
}

Trainer::Trainer(const Config& config, std::ostream& console) : config_(config), console_(console) {
  const TrainingConfig& t = config_.training;
  const int64_t B = t.per_device_train_batch_size, T = config_.data.seq_length;
  const int64_t A = t.gradient_accumulation_steps;

  corpus_ = std::make_unique<ByteCorpus>(config_.data.train);
  order_ = std::make_unique<SequenceOrder>(corpus_->size(), T, t.seed);
  model_ = std::make_unique<LlamaModel>(config_.model, B, T, t.gradient_checkpointing);
  model_->init_weights(t.seed);

  std::vector<optim::ParamRef> refs;
  for (Parameter& p : model_->parameters())
    refs.push_back({p.name, p.value.f32(), p.grad.f32(), p.value.numel(), p.weight_decay});
  optimizer_ = std::make_unique<optim::AdamW>(
      std::move(refs),
      optim::AdamWConfig{t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay});

  tokens_ = batch_.add("tokens", DType::I32, {A, B, T});
  targets_ = batch_.add("targets", DType::I32, {A, B, T});
  batch_.allocate();
  peak_flops_ = measure_peak_flops();

  const size_t planned = model_->planned_bytes() + optimizer_->state_bytes() + batch_.bytes();
  planned_bytes_ = planned;
  console_ << "keel: model " << model_->num_parameters() / 1e6 << " M parameters, corpus "
           << corpus_->size() << " tokens (" << order_->num_sequences() << " sequences of " << T
           << ")\n"
           << "keel: memory plan " << format_mib(planned) << " (parameters+gradients+activations+"
           << "workspace " << format_mib(model_->planned_bytes()) << ", optimizer "
           << format_mib(optimizer_->state_bytes()) << ")\n"
           << "keel: fp32 GEMM peak measured at " << peak_flops_ / 1e9 << " GFLOP/s\n";
}

Trainer::~Trainer() = default;

StepStats Trainer::step() {
  const auto t0 = Clock::now();
  const TrainingConfig& t = config_.training;
  const int64_t B = t.per_device_train_batch_size, T = config_.data.seq_length;
  const int64_t A = t.gradient_accumulation_steps;
  const int64_t global = A * B;  // one rank: the global batch is all micro-batches

  // The whole global batch first, so the loss is normalised by its count of valid targets.
  int32_t* tokens = batch_[tokens_].data_as<int32_t>();
  int32_t* targets = batch_[targets_].data_as<int32_t>();
  fill_batch(*corpus_, *order_, step_ * global, global, T, tokens, targets);
  int64_t valid = 0;
  for (int64_t i = 0; i < global * T; ++i) valid += targets[i] >= 0;
  KEEL_CHECK(valid > 0, "step {}: every target of the global batch is ignored", step_ + 1);

  model_->zero_grad();
  double loss_sum = 0.0;
  for (int64_t m = 0; m < A; ++m) {
    loss_sum += model_->forward_backward(tokens + m * B * T, targets + m * B * T,
                                         static_cast<float>(1.0 / static_cast<double>(valid)));
  }

  double sq = 0.0;
  for (const Parameter& p : model_->parameters())
    sq += k::sum_squares(p.grad.f32(), p.grad.numel());
  const double norm = std::sqrt(sq);
  double clip = 1.0;
  if (t.max_grad_norm > 0) clip = std::min(1.0, t.max_grad_norm / (norm + 1e-6));
  const double lr = learning_rate_at(t, step_);
  optimizer_->step(lr, clip);
  ++step_;

  StepStats s;
  s.step = step_;
  s.loss = loss_sum / static_cast<double>(valid);
  s.learning_rate = lr;
  s.grad_norm = norm;
  s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  s.tokens_per_second = static_cast<double>(global * T) / s.seconds;
  s.mfu = s.tokens_per_second * model_->flops_per_token() / peak_flops_;
  s.peak_rss_mib = static_cast<double>(peak_rss_bytes()) / (1 << 20);
  return s;
}

void Trainer::run() {
  const TrainingConfig& t = config_.training;
  std::filesystem::create_directories(t.output_dir);
  {
    const std::string path = t.output_dir + "/config.yaml";
    std::ofstream f(path);
    f << config_to_yaml(config_);
    KEEL_CHECK(f.good(), "cannot write '{}'", path);
  }
  MetricsLog log(t.output_dir);
  double seconds = 0.0;
  while (step_ < t.max_steps) {
    const StepStats s = step();
    seconds += s.seconds;
    if (s.step % t.logging_steps == 0 || s.step == t.max_steps || s.step == 1) {
      log.write(s);
      const double eta =
          seconds / static_cast<double>(s.step) * static_cast<double>(t.max_steps - s.step);
      console_ << progress_line(s, t.max_steps, eta) << "\n" << std::flush;
    }
  }
  console_ << "keel: done, " << step_ << " steps in " << seconds << " s; peak RSS "
           << format_mib(peak_rss_bytes()) << " against a memory plan of "
           << format_mib(planned_bytes_) << "\n";
}

}  // namespace keel::runtime
