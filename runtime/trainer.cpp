#include "runtime/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "optim/adamw.h"
#include "parallel/self_communicator.h"
#include "runtime/hash.h"
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

struct Trainer::OwnGrid {
  parallel::SelfCommunicator world;
  parallel::ProcessGrid grid{world, parallel::GridLayout({})};
};

Trainer::Trainer(const Config& config, std::ostream& console, parallel::ProcessGrid& grid)
    : grid_(grid), config_(config), console_(console) {
  build();
}

Trainer::Trainer(const Config& config, std::ostream& console)
    : own_(std::make_unique<OwnGrid>()), grid_(own_->grid), config_(config), console_(console) {
  build();
}

namespace {

// Every rank must train the same run: compare a hash of the resolved config across the world
// before any work starts, and name the first rank that differs from rank 0.
void check_same_config(const Config& config, parallel::Communicator& world) {
  if (world.size() == 1) return;
  const std::string text = config_to_yaml(config);
  const uint64_t h = fnv1a(text);
  // Two 31-bit halves, so MAX and MIN over ranks compare exactly in int64.
  std::vector<int64_t> mine = {static_cast<int64_t>(h & 0x7fffffff),
                               static_cast<int64_t>((h >> 31) & 0x7fffffff)};
  std::vector<int64_t> hi = mine, lo = {-mine[0], -mine[1]};
  world.all_reduce(parallel::host_view(hi), parallel::ReduceOp::kMax);
  world.all_reduce(parallel::host_view(lo), parallel::ReduceOp::kMax);
  if (hi[0] == -lo[0] && hi[1] == -lo[1]) return;
  std::vector<int64_t> all(2 * static_cast<size_t>(world.size()));
  world.all_gather(parallel::host_view(all), parallel::host_view(mine));
  int differs = 0;
  for (int r = 1; r < world.size() && !differs; ++r)
    if (all[2 * r] != all[0] || all[2 * r + 1] != all[1]) differs = r;
  KEEL_FAIL(
      "the ranks were given different configs (rank {} differs from rank 0); every rank "
      "must run the same YAML with the same --set overrides",
      differs);
}

}  // namespace

void Trainer::build() {
  check_same_config(config_, grid_.world());
  const TrainingConfig& t = config_.training;
  const int64_t B = t.per_device_train_batch_size, T = config_.data.seq_length;
  const int64_t A = t.gradient_accumulation_steps;
  KEEL_CHECK(grid_.dp().size() == 1 || config_.parallel.zero_stage <= 1,
             "parallel.zero_stage {} is not implemented yet across ranks (this build has ZeRO "
             "stages 0 and 1); set parallel.zero_stage to 0 or 1",
             config_.parallel.zero_stage);

  corpus_ = std::make_unique<ByteCorpus>(config_.data.train);
  order_ = std::make_unique<SequenceOrder>(corpus_->size(), T, t.seed);
  model_ = std::make_unique<LlamaModel>(config_.model, B, T, t.gradient_checkpointing);
  model_->init_weights(t.seed);

  std::vector<optim::ParamRef> refs;
  if (config_.parallel.zero_stage == 1) {
    refs = build_zero1();
  } else {
    for (Parameter& p : model_->parameters())
      refs.push_back({p.name, p.value.f32(), p.grad.f32(), p.value.numel(), p.weight_decay});
  }
  optimizer_ = std::make_unique<optim::AdamW>(
      std::move(refs),
      optim::AdamWConfig{t.adam_beta1, t.adam_beta2, t.adam_epsilon, t.weight_decay});

  tokens_ = batch_.add("tokens", DType::I32, {A, B, T});
  targets_ = batch_.add("targets", DType::I32, {A, B, T});
  totals_ = batch_.add("totals", DType::F64, {4});
  batch_.allocate();
  // MFU's denominator: the GEMM peak of every rank, measured while all of them run, as in training.
  grid_.world().barrier();
  Tensor peak = batch_[totals_].slice0(2, 3);
  peak.data_as<double>()[0] = measure_peak_flops();
  grid_.world().all_reduce(peak);
  peak_flops_ = peak.data_as<double>()[0];

  planned_bytes_ =
      model_->planned_bytes() + optimizer_->state_bytes() + batch_.bytes() + zero_plan_.bytes();
  const int dp = grid_.dp().size();
  console_ << "keel: model " << model_->num_parameters() / 1e6 << " M parameters, corpus "
           << corpus_->size() << " tokens (" << order_->num_sequences() << " sequences of " << T
           << ")\n"
           << "keel: " << dp << (dp == 1 ? " rank" : " data-parallel ranks") << ", global batch "
           << dp * A * B << " sequences (" << B << " per micro-batch x " << A
           << " accumulation steps x " << dp << " ranks)\n"
           << "keel: memory plan per rank " << format_mib(planned_bytes_)
           << " (parameters+gradients+activations+workspace " << format_mib(model_->planned_bytes())
           << ", optimizer " << format_mib(optimizer_->state_bytes()) << ")\n"
           << "keel: fp32 GEMM peak measured at " << peak_flops_ / 1e9 << " GFLOP/s"
           << (grid_.world().size() > 1 ? " (all ranks together)\n" : "\n");
}

Trainer::~Trainer() = default;

// ZeRO stage 1: this rank keeps the fp32 master copy and the AdamW moments of its shard of every
// parameter only (split along the longer dimension, parallel/zero_layout.h); gradients are
// reduce-scattered to the shards and the updated shards all-gathered after the step.
std::vector<optim::ParamRef> Trainer::build_zero1() {
  parallel::Communicator& dp = grid_.dp();
  std::vector<parallel::ZeroParamSpec> specs;
  for (Parameter& p : model_->parameters()) {
    const int64_t rows = p.value.size(0);
    specs.push_back({p.name, rows, p.value.numel() / rows});
    zero_values_.push_back(p.value.f32());
    zero_grads_.push_back(p.grad.f32());
  }
  zero_ = std::make_unique<parallel::ZeroLayout>(std::move(specs), dp.size());
  const int64_t region = zero_->region_elems();
  zero_staging_ = zero_plan_.add("staging", DType::F32, {region * dp.size()});
  zero_master_ = zero_plan_.add("master shard", DType::F32, {region});
  zero_plan_.allocate();
  float* master = zero_plan_[zero_master_].f32();
  const float* grad = zero_plan_[zero_staging_].f32() + dp.rank() * region;
  std::vector<const float*> values(zero_values_.begin(), zero_values_.end());
  zero_->pack(master, dp.rank(), values);
  std::vector<optim::ParamRef> refs;
  for (size_t i = 0; i < zero_->params().size(); ++i) {
    const parallel::ZeroShard& s = zero_->shard(i);
    refs.push_back({zero_->params()[i].name, master + s.offset, grad + s.offset, s.elems,
                    model_->parameters()[i].weight_decay});
  }
  return refs;
}

StepStats Trainer::step() {
  const auto t0 = Clock::now();
  const TrainingConfig& t = config_.training;
  const int64_t B = t.per_device_train_batch_size, T = config_.data.seq_length;
  const int64_t A = t.gradient_accumulation_steps;
  parallel::Communicator& dp = grid_.dp();
  const uint64_t comm_before = grid_.total_stats().total_bytes();
  const int64_t local = A * B;               // sequences of this rank
  const int64_t global = local * dp.size();  // sequences of the step, over all ranks

  // This rank's slice of the step's global batch: samples [s·G + r·local, s·G + (r+1)·local).
  int32_t* tokens = batch_[tokens_].data_as<int32_t>();
  int32_t* targets = batch_[targets_].data_as<int32_t>();
  fill_batch(*corpus_, *order_, step_ * global + dp.rank() * local, local, T, tokens, targets);
  // The loss is the mean over the global batch's valid targets: count them on every rank first.
  Tensor totals = batch_[totals_];
  double* total = totals.data_as<double>();
  total[0] = 0.0;
  for (int64_t i = 0; i < local * T; ++i) total[0] += targets[i] >= 0;
  dp.all_reduce(totals.slice0(0, 1));
  const double valid = total[0];
  KEEL_CHECK(valid > 0, "step {}: every target of the global batch is ignored", step_ + 1);

  model_->zero_grad();
  total[1] = 0.0;
  for (int64_t m = 0; m < A; ++m) {
    total[1] += model_->forward_backward(tokens + m * B * T, targets + m * B * T,
                                         static_cast<float>(1.0 / valid));
  }
  dp.all_reduce(totals.slice0(1, 2));

  double sq = 0.0;
  if (zero_) {
    // ZeRO-1: every rank's chunk of every gradient side by side, reduce-scattered so this rank
    // holds the summed gradient of its shards; the norm is summed over the shards.
    const int64_t region = zero_->region_elems();
    Tensor staging = zero_plan_[zero_staging_];
    Tensor mine = staging.slice0(dp.rank() * region, (dp.rank() + 1) * region);
    zero_->pack_all(staging.f32(), zero_grads_);
    dp.reduce_scatter(mine, staging);
    total[3] = k::sum_squares(mine.f32(), region);
    dp.all_reduce(totals.slice0(3, 4));
    sq = total[3];
  } else {
    dp.all_reduce(model_->grad_storage());
    for (const Parameter& p : model_->parameters())
      sq += k::sum_squares(p.grad.f32(), p.grad.numel());
  }
  const double norm = std::sqrt(sq);
  double clip = 1.0;
  if (t.max_grad_norm > 0) clip = std::min(1.0, t.max_grad_norm / (norm + 1e-6));
  const double lr = learning_rate_at(t, step_);
  optimizer_->step(lr, clip);
  if (zero_) {
    // The updated shards, gathered from every rank, become the full parameters again.
    Tensor staging = zero_plan_[zero_staging_];
    dp.all_gather(staging, zero_plan_[zero_master_]);
    zero_->unpack_all(staging.f32(), zero_values_);
  }
  ++step_;

  StepStats s;
  s.step = step_;
  s.loss = total[1] / valid;
  s.learning_rate = lr;
  s.grad_norm = norm;
  s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  s.tokens_per_second = static_cast<double>(global * T) / s.seconds;
  s.mfu = s.tokens_per_second * model_->flops_per_token() / peak_flops_;
  s.peak_rss_mib = static_cast<double>(peak_rss_bytes()) / (1 << 20);
  s.comm_bytes = grid_.total_stats().total_bytes() - comm_before;
  return s;
}

void Trainer::run() {
  const TrainingConfig& t = config_.training;
  const bool writer = grid_.rank() == 0;
  std::unique_ptr<MetricsLog> log;
  if (writer) {
    std::filesystem::create_directories(t.output_dir);
    const std::string path = t.output_dir + "/config.yaml";
    std::ofstream f(path);
    f << config_to_yaml(config_);
    KEEL_CHECK(f.good(), "cannot write '{}'", path);
    log = std::make_unique<MetricsLog>(t.output_dir);
  }
  double seconds = 0.0;
  while (step_ < t.max_steps) {
    const StepStats s = step();
    seconds += s.seconds;
    if (s.step % t.logging_steps == 0 || s.step == t.max_steps || s.step == 1) {
      if (log) log->write(s);
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
