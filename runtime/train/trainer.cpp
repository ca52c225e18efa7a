#include "runtime/train/trainer.h"

#include <chrono>
#include <cmath>
#include <sstream>

#include "kernels/hash.h"
#include "parallel/self_communicator.h"
#include "runtime/model/tp_gather.h"
#include "runtime/store/safetensors.h"
#include "runtime/train/grad_sync.h"
#include "runtime/train/memory_fit.h"
#include "runtime/train/memory_report.h"
#include "runtime/train/moe_metrics.h"
#include "runtime/train/peak_flops.h"
#include "runtime/train/schedule.h"

namespace keel::runtime {

using Clock = std::chrono::steady_clock;

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

// Every rank must train the same run: compare a hash of what each was given (the resolved config,
// the data it opened) across the world before any work starts, and name the first rank that
// differs from rank 0, the problem (`what`) and the fix.
void check_same_on_every_rank(uint64_t h, parallel::Communicator& world, const char* what,
                              const char* fix) {
  if (world.size() == 1) return;
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
  KEEL_FAIL("the ranks were given different {} (rank {} differs from rank 0); {}", what, differs,
            fix);
}

}  // namespace

void Trainer::build() {
  check_same_on_every_rank(fnv1a(config_to_yaml(config_)), grid_.world(), "configs",
                           "every rank must run the same YAML with the same --set overrides");
  const TrainingConfig& t = config_.training;
  const int64_t B = t.per_device_train_batch_size, T = config_.data.seq_length;
  // A checkpoint to resume from is found and checked before anything is built.
  const std::string resume = find_checkpoint(t.resume_from_checkpoint, t.output_dir);
  CheckpointInfo resume_info;
  Config resume_config;
  if (!resume.empty()) {
    resume_info = read_checkpoint_info(resume);
    resume_config = check_checkpoint(resume, resume_info);
  }

  tokenizer_ = std::make_unique<ResolvedTokenizer>(
      resolve_tokenizer(config_.data.tokenizer, config_.data.train));
  const int64_t V = tokenizer_->tokenizer.vocab_size();
  KEEL_CHECK(config_.model.vocab_size >= V,
             "model.vocab_size is {}, but the tokenizer ({}) has {} tokens; set "
             "model.vocab_size to {} or more",
             config_.model.vocab_size, tokenizer_->path, V, V);
  data_ = std::make_unique<TokenData>(config_.data.train, tokenizer_->tokenizer, T, "train",
                                      config_.model.vocab_size);
  order_ = std::make_unique<SequenceOrder>(data_->num_sequences(), t.seed);
  validation_ = open_validation(config_.data, tokenizer_->tokenizer, config_.model.vocab_size);
  check_same_on_every_rank(data_fingerprint(*data_, validation_.get()), grid_.world(), "data",
                           "every rank must see the same data.train and data.validation: keep "
                           "them on a shared filesystem, or copy the same prepared directory to "
                           "every node");
  KEEL_CHECK(validation_ || t.eval_steps == 0,
             "training.eval_steps is {} but the run has no validation data (data.validation is "
             "'{}'); set data.validation to a prepared directory, a .tokens shard or a text "
             "file, or prepare data.train with keel prepare, which writes a validation split",
             t.eval_steps, config_.data.validation);
  resolve_schedule_lengths(config_.training, data_->num_sequences(), grid_.dp().size());
  // ZeRO 2 hands the model its gradients unit by unit, ZeRO 3 its weights too; so does ZeRO 0
  // with a per-layer update (parallel::UnitGrads).
  const bool per_layer = config_.optimizer.per_layer_update;
  // Before the first large allocation: a plan that does not fit this rank's memory is one line
  // with the settings that would fit, not an OOM kill without a word.
  admit_memory(config_, grid_.world(), grid_.dp().size(), grid_.pp().rank(), console_);
  pipeline_ = pipeline_layout(config_);
  const int stage = grid_.pp().rank();
  KEEL_CHECK(grid_.pp().size() == pipeline_.shape.stages,
             "the process grid has {} pipeline stages but the config {} (internal error)",
             grid_.pp().size(), pipeline_.shape.stages);
  model_ = std::make_unique<LlamaModel>(
      config_.model, B, T, t.gradient_checkpointing, model_holds(config_),
      stage_split(config_, pipeline_, stage, grid_.tp().rank(), grid_.ep().rank()));
  model_->set_tensor_parallel(parallel::TpMappings(&grid_.tp()));
  model_->set_expert_parallel(&grid_.ep());
  // The router's losses average over the step's global batch of sequences (docs/MOE.md).
  model_->set_router_loss_batch(B * t.gradient_accumulation_steps * grid_.dp().size());
  if (pipeline_.pipelined())
    runner_ =
        std::make_unique<PipelineRunner>(*model_, grid_.pp(), pipeline_.schedule, pipeline_.shape);
  sync_ = make_grad_sync(config_, *model_, grid_);
  if (pipeline_.pipelined() && config_.model.tie_word_embeddings) {
    // Collective over the world: the ranks between the ends each get a group of their own.
    const int p = grid_.pp().size();
    const bool end = stage == 0 || stage == p - 1;
    const int place = grid_.coord().tp + grid_.tp().size() * grid_.coord().dp;
    tied_ = grid_.world().split(end ? place : parallel::Communicator::kNoColor, stage);
    if (tied_) {
      tied_->set_name("embedding");
      sync_->set_tied_group(tied_.get());
    }
  }
  const std::vector<optim::ParamRef>& refs = sync_->tensors();
  if (per_layer) build_per_layer(refs);
  for (const optim::ParamRef& r : refs) grads_.push_back({r.name, r.grad, r.n});
  optimizer_ = optim::make_optimizer(refs, optimizer_config(config_));

  const BatchSlots slots = declare_batch(batch_, t, T);
  tokens_ = slots.tokens;
  targets_ = slots.targets;
  totals_ = slots.totals;
  batch_.allocate();
  // MFU's denominator: the peak of every rank together, given or measured while all of them
  // run, as in training.
  const int ranks = grid_.world().size();
  if (t.peak_flops > 0) {
    peak_flops_ = t.peak_flops * ranks;
    std::ostringstream text;
    text << "training.peak_flops, " << t.peak_flops / 1e9 << " GFLOP/s a rank";
    peak_text_ = text.str();
  } else {
    grid_.world().barrier();
    const PeakProbe probe = probe_peak_flops(
        probe_shapes(B * T, config_.model.hidden_size, config_.model.intermediate_size));
    Tensor peak = batch_[totals_].slice0(2, 3);
    peak.data_as<double>()[0] = probe.best();
    grid_.world().all_reduce(peak);
    peak_flops_ = peak.data_as<double>()[0];
    peak_text_ = "the fp32 GEMM peak measured at start-up, " + probe.describe() +
                 (ranks > 1 ? " on rank " + std::to_string(grid_.rank()) + ", " +
                                  std::to_string(static_cast<long long>(peak_flops_ / 1e9)) +
                                  " GFLOP/s over " + std::to_string(ranks) + " ranks"
                            : "");
  }
  print_plan();
  if (!resume.empty()) restore(resume, resume_info, resume_config);
}

void Trainer::print_plan() {
  const int64_t T = config_.data.seq_length;
  const RankMemory m =
      account(*model_, sync_->bytes(), {optimizer_->state_bytes(), optimizer_->workspace_bytes()},
              batch_.bytes());
  planned_bytes_ = m.total();
  std::ostringstream text;
  // A pipeline stage holds part of the model: the whole model's count, then the stage's.
  const int64_t whole =
      pipeline_.pipelined()
          ? LlamaModel(config_.model, 1, 1, false, ModelHolds{false, false, false}).num_parameters()
          : model_->num_parameters();
  text << "keel: model " << whole / 1e6 << " M parameters";
  if (pipeline_.pipelined())
    text << " (pipeline stage " << grid_.pp().rank() << ": " << model_->num_parameters() / 1e6
         << " M)";
  text << ", data " << data_->num_tokens() << " tokens (" << order_->num_sequences()
       << " sequences of " << T << "; tokenizer " << tokenizer_->path << ", "
       << tokenizer_->tokenizer.vocab_size() << " tokens)\n";
  if (validation_)
    text << "keel: validation " << validation_->num_sequences() << " sequences ("
         << validation_->num_tokens() << " tokens)\n";
  if (!data_->note().empty()) text << "keel: note: " << data_->note() << "\n";
  if (validation_ && !validation_->note().empty() && validation_->note() != data_->note())
    text << "keel: note: " << validation_->note() << "\n";
  text << describe_layout(config_, grid_.dp().size()) << "keel: optimizer "
       << optimizer_->describe() << (sync_->shard_group() ? " (this rank's shards)\n" : "\n")
       << describe_memory(m) << "keel: MFU against " << peak_text_ << "\n";
  plan_text_ = text.str();
  console_ << plan_text_;
}

Trainer::~Trainer() = default;

parallel::ZeroTimers Trainer::zero_timers() const { return sync_->timers(); }

namespace {

// The tensors a stage's keeper gathers, in the order it holds them: each unit's (but the tied
// copy), an expert unit followed by the same unit of every other expert-parallel rank (by_ep[r]:
// the plan of ep rank r's slice of the stage).
void for_each_kept(const std::vector<std::unique_ptr<LlamaModel>>& by_ep,
                   const std::function<void(const Parameter&)>& f) {
  const LlamaModel& first = *by_ep.front();
  for (size_t u = 0; u < first.units().size(); ++u) {
    const bool experts = first.units()[u].group == parallel::ZeroUnit::kExpertGroup;
    for (size_t r = 0; r < (experts ? by_ep.size() : 1); ++r)
      for (const parallel::ZeroParamSpec& spec : by_ep[r]->units()[u].params) {
        const Parameter& p = by_ep[r]->parameter_by_name(spec.name);
        if (!p.tied_copy) f(p);
      }
  }
}

}  // namespace

void Trainer::write_parameters(const std::string& path) {
  const bool writer = grid_.rank() == 0;
  const bool pipelined = grid_.pp().size() > 1;
  const int ep = grid_.ep().size();
  std::vector<std::pair<std::string, Tensor>> tensors;
  const bool tp = model_->tp_split().split();
  // A plan (nothing allocated) of each expert-parallel rank's slice of pipeline stage s.
  auto stage_by_ep = [&](int s) {
    std::vector<std::unique_ptr<LlamaModel>> out;
    for (int r = 0; r < ep; ++r)
      out.push_back(std::make_unique<LlamaModel>(
          config_.model, model_->batch(), model_->seq(), config_.training.gradient_checkpointing,
          ModelHolds{false, false, false}, stage_split(config_, pipeline_, s, 0, r)));
    return out;
  };
  if (!tp && !pipelined && ep == 1 && sync_->model_holds_weights()) {  // every rank holds all
    for (const Parameter& p : model_->parameters()) tensors.emplace_back(p.name, p.value);
    if (writer) write_safetensors(path, tensors, {{"format", "pt"}});
    return;
  }
  // Unit by unit: its weights as this rank holds them (the model's own, or gathered from ZeRO 3's
  // shards), then each tensor whole from the TP group's slices. The first rank of each stage's
  // TP and DP groups keeps its stage's tensors; the others need room for one unit and one tensor
  // only. Every rank takes part in each collective. Under expert parallelism the keeper holds
  // the experts of ep rank 0; the first rank holding each other rank's (tp 0, edp 0) sends it
  // its experts unit by unit.
  const bool keeper = grid_.tp().rank() == 0 && grid_.dp().rank() == 0;
  const bool expert_sender =
      ep > 1 && grid_.tp().rank() == 0 && grid_.edp().rank() == 0 && grid_.ep().rank() > 0;
  const std::vector<parallel::ZeroUnit>& units = model_->units();
  const std::vector<std::unique_ptr<LlamaModel>> kept = stage_by_ep(grid_.pp().rank());
  int64_t total = 0, widest_unit = 0, widest = 0;
  for_each_kept(kept, [&](const Parameter& p) {
    total += p.global_shape.numel(), widest = std::max(widest, p.global_shape.numel());
  });
  for (const parallel::ZeroUnit& u : units) widest_unit = std::max(widest_unit, u.elems);
  std::vector<float> out(static_cast<size_t>(keeper ? total : widest));
  std::vector<float> unit(sync_->model_holds_weights() ? 0 : static_cast<size_t>(widest_unit));
  const parallel::TpMappings mappings(&grid_.tp());
  int64_t at = 0;
  for (size_t u = 0; u < units.size(); ++u) {
    const float* base = model_->own_weights(static_cast<int>(u));
    if (!sync_->model_holds_weights()) {
      sync_->gather_unit(static_cast<int>(u), unit.data());
      base = unit.data();
    }
    for (size_t i = 0; i < units[u].params.size(); ++i) {
      const Parameter& p = model_->parameter_by_name(units[u].params[i].name);
      if (p.tied_copy) continue;  // the first stage's is written
      float* whole = out.data() + (keeper ? at : 0);
      const float* local = base + units[u].offsets[i];
      if (tp)
        gather_whole(p, local, whole, mappings);
      else if (keeper || expert_sender)
        std::copy_n(local, p.global_shape.numel(), whole);
      if (expert_sender && p.expert)
        grid_.ep().send(Tensor(whole, DType::F32, Shape{p.global_shape.numel()}), 0);
      if (!keeper) continue;
      if (writer) tensors.emplace_back(p.name, Tensor(whole, DType::F32, p.global_shape));
      at += p.global_shape.numel();
    }
    if (!keeper || units[u].group != parallel::ZeroUnit::kExpertGroup) continue;
    for (int r = 1; r < ep; ++r)  // the same unit's experts of every other ep rank, in order
      for (const parallel::ZeroParamSpec& spec : kept[static_cast<size_t>(r)]->units()[u].params) {
        const Parameter& p = kept[static_cast<size_t>(r)]->parameter_by_name(spec.name);
        float* whole = out.data() + at;
        grid_.ep().recv(Tensor(whole, DType::F32, Shape{p.global_shape.numel()}), r);
        if (writer) tensors.emplace_back(p.name, Tensor(whole, DType::F32, p.global_shape));
        at += p.global_shape.numel();
      }
  }
  // The later stages' keepers hand theirs to rank 0, stage by stage, in their unit order: rank 0
  // knows their names and shapes from a plan of each stage (nothing allocated).
  std::vector<std::vector<float>> received;
  if (pipelined && keeper) {
    parallel::Communicator& pp = grid_.pp();
    if (pp.rank() > 0) pp.send(Tensor(out.data(), DType::F32, Shape{total}), 0);
    for (int s = 1; writer && s < pp.size(); ++s) {
      const std::vector<std::unique_ptr<LlamaModel>> stage = stage_by_ep(s);
      int64_t n = 0;
      for_each_kept(stage, [&](const Parameter& p) { n += p.global_shape.numel(); });
      std::vector<float>& buffer = received.emplace_back(static_cast<size_t>(n));
      pp.recv(Tensor(buffer.data(), DType::F32, Shape{n}), s);
      int64_t offset = 0;
      for_each_kept(stage, [&](const Parameter& p) {
        tensors.emplace_back(p.name, Tensor(buffer.data() + offset, DType::F32, p.global_shape));
        offset += p.global_shape.numel();
      });
    }
  }
  if ((pipelined || ep > 1) && writer) {
    // In the whole model's order, as one rank writes them (interleaved stages hold chunks from
    // all over the stack).
    const LlamaModel whole(config_.model, model_->batch(), model_->seq(), false,
                           ModelHolds{false, false, false});
    std::map<std::string, size_t> place;
    for (const Parameter& p : whole.parameters()) place.emplace(p.name, place.size());
    std::stable_sort(tensors.begin(), tensors.end(), [&](const auto& a, const auto& b) {
      return place.at(a.first) < place.at(b.first);
    });
  }
  if (writer) write_safetensors(path, tensors, {{"format", "pt"}});
}

uint64_t Trainer::all_to_all_bytes() const {
  const parallel::CommStats& ep = grid_.ep().stats();
  return ep[parallel::CommOp::kAllToAll].bytes + ep[parallel::CommOp::kAllToAllV].bytes;
}

uint64_t Trainer::comm_bytes() const {
  return grid_.total_stats().total_bytes() + (tied_ ? tied_->stats().total_bytes() : 0);
}

double Trainer::model_sum(double x) { return group_sum(grid_.pp(), group_sum(grid_.tp(), x)); }

double Trainer::group_sum(parallel::Communicator& group, double x) {
  if (group.size() == 1) return x;
  Tensor t = batch_[totals_].slice0(2, 3);
  t.data_as<double>()[0] = x;
  group.all_reduce(t);
  return t.data_as<double>()[0];
}

StepStats Trainer::step() {
  const auto t0 = Clock::now();
  const TrainingConfig& t = config_.training;
  const int64_t B = t.per_device_train_batch_size, T = config_.data.seq_length;
  const int64_t A = t.gradient_accumulation_steps;
  parallel::Communicator& dp = grid_.dp();
  const uint64_t comm_before = comm_bytes();
  const uint64_t a2a_before = all_to_all_bytes(), routed_before = model_->moe_exchanged_bytes();
  double wait = -sync_->timers().wait_seconds;  // blocked on collectives
  const int64_t local = A * B;                  // sequences of this rank
  const int64_t global = local * dp.size();     // sequences of the step, over all ranks

  // Batches a rollback marked are passed over (the same ones on every rank).
  while (skip_batches_.count(samples_)) {
    console_ << "keel: step " << step_ + 1 << " passes over the batch at sample " << samples_
             << ", which diverged before the rollback\n";
    samples_ += global;
  }
  // This rank's slice of the step's global batch: the next G samples of the data order, of which
  // rank r takes [r·local, (r+1)·local).
  int32_t* tokens = batch_[tokens_].data_as<int32_t>();
  int32_t* targets = batch_[targets_].data_as<int32_t>();
  const auto data_start = Clock::now();
  fill_batch(*data_, *order_, samples_ + dp.rank() * local, local, tokens, targets);
  data_seconds_ += std::chrono::duration<double>(Clock::now() - data_start).count();
  // The loss is the mean over the global batch's valid targets: count them on every rank first.
  Tensor totals = batch_[totals_];
  double* total = totals.data_as<double>();
  total[0] = 0.0;
  for (int64_t i = 0; i < local * T; ++i) total[0] += targets[i] >= 0;
  dp.all_reduce(totals.slice0(0, 1));
  const double valid = total[0];
  KEEL_CHECK(valid > 0, "step {}: every target of the global batch is ignored", step_ + 1);

  const double lr = learning_rate_at(t, step_);
  const bool per_layer = config_.optimizer.per_layer_update;
  if (per_layer) {  // the units are stepped inside the backward (step_unit)
    optimizer_->begin_step();
    unit_lr_ = lr;
    unit_sum_squares_ = 0.0;
    unit_bad_tensor_ = -1;
  }
  model_->zero_grad();
  model_->clear_moe_stats();
  sync_->begin_step();
  total[1] = 0.0;
  if (runner_) {  // this stage's part of the pipeline's schedule; the loss on the last stage
    total[1] = runner_->run_step(tokens, targets, static_cast<float>(1.0 / valid));
  } else {
    for (int64_t m = 0; m < A; ++m) {
      total[1] += model_->forward_backward(tokens + m * B * T, targets + m * B * T,
                                           static_cast<float>(1.0 / valid));
    }
  }
  dp.all_reduce(totals.slice0(1, 2));
  double pipeline_wait = runner_ ? runner_->wait_seconds() : 0.0;
  if (runner_) {
    // The last stage's loss, to every stage. A stage that finished its schedule early waits
    // here for the last backwards of the stages before it: the rest of its bubble.
    const auto t_sum = Clock::now();
    grid_.pp().all_reduce(totals.slice0(1, 2));
    pipeline_wait += std::chrono::duration<double>(Clock::now() - t_sum).count();
  }

  // The summed gradient (per-layer update: every unit stepped already) and its norm².
  // Under TP each rank summed its slices (a tensor held alike by several, once), and each
  // pipeline stage its own tensors: their sum over both is the whole gradient's.
  const double sq = model_sum(sync_->reduce([this] { return unit_sum_squares_; }));
  const double norm = std::sqrt(sq);
  StepStats s;
  s.loss = total[1] / valid;
  // The guard, before the optimizer touches the weights: loss and norm are the same on every
  // rank, so every rank takes the same way.
  s.rejected = judge(s.loss, sq);
  if (s.rejected.empty()) {
    double clip = 1.0;
    if (t.max_grad_norm > 0) clip = std::min(1.0, t.max_grad_norm / (norm + 1e-6));
    if (!per_layer) optimizer_->step(lr, clip);
    sync_->publish();  // ZeRO 1, 2: the updated shards become the full weights
    ++step_;
  } else if (per_layer) {
    optimizer_->set_steps_taken(step_);  // begin_step() counted a step that did not happen
  }
  wait += sync_->timers().wait_seconds;
  samples_ += global;

  s.step = s.rejected.empty() ? step_ : step_ + 1;
  s.learning_rate = lr;
  s.grad_norm = norm;
  s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  s.tokens_per_second = static_cast<double>(global * T) / s.seconds;
  const double model_flops = s.tokens_per_second * model_->flops_per_token();
  if (model_flops > peak_flops_ && !peak_exceeded_) {
    // The probe read low (a busy host at start-up): MFU is against the rate seen from now on,
    // so that it stays a fraction a user can trust; a given peak is kept, and named as wrong.
    peak_exceeded_ = true;
    std::ostringstream note;
    note << "keel: step " << step_ << " ran the model at " << model_flops / 1e9
         << " GFLOP/s, above the peak MFU is against (" << peak_flops_ / 1e9 << " GFLOP/s, "
         << peak_text_ << "); ";
    if (config_.training.peak_flops > 0) {
      note << "training.peak_flops is too low";
    } else {
      note << "MFU is against " << model_flops / 1e9
           << " GFLOP/s from now on (training.peak_flops sets the peak)";
      peak_flops_ = model_flops;
    }
    console_ << note.str() << "\n";
  }
  s.mfu = model_flops / peak_flops_;
  s.peak_rss_mib = static_cast<double>(peak_rss_bytes()) / (1 << 20);
  s.comm_bytes = comm_bytes() - comm_before;
  s.comm_wait_seconds = dp.size() > 1 ? wait : 0.0;
  s.pipeline_wait_seconds = pipeline_wait;
  s.moe = gather_moe_stats(*model_, grid_);
  s.moe.all_to_all_bytes = all_to_all_bytes() - a2a_before;
  s.moe.all_to_all_bytes_routed = model_->moe_exchanged_bytes() - routed_before;
  return s;
}

EvalResult Trainer::evaluate() {
  KEEL_CHECK(validation_, "the run has no validation data (data.validation is '{}')",
             config_.data.validation);
  // The batch buffers are free between steps; the first micro-batch's share serves.
  return runtime::evaluate(*model_, *validation_, config_.data.max_eval_samples, grid_.dp(),
                           batch_[tokens_].data_as<int32_t>(), batch_[targets_].data_as<int32_t>(),
                           runner_.get(), &grid_.pp());
}

}  // namespace keel::runtime
