// Saving and resuming the Trainer (runtime/trainer.h) through runtime/checkpoint.h: which state
// each rank writes, how the ranks agree that a save worked, and what a resume restores.
#include <chrono>
#include <filesystem>
#include <sstream>

#include "runtime/checkpoint.h"
#include "runtime/quantized_state.h"
#include "runtime/trainer.h"

namespace keel::runtime {
namespace {

using Clock = std::chrono::steady_clock;

// After a part of a collective save or load that may fail on some ranks only: every rank learns
// whether any failed and throws, the failing rank with its own message, the others naming it.
void agree(parallel::Communicator& world, const std::string& error, const std::string& what) {
  std::vector<int64_t> failed = {error.empty() ? 0 : world.rank() + 1};
  if (world.size() > 1) world.all_reduce(parallel::host_view(failed), parallel::ReduceOp::kMax);
  if (!error.empty()) KEEL_FAIL("{}", error);
  KEEL_CHECK(failed[0] == 0, "{} failed on rank {} (its log: logs/rank_{}.log)", what,
             failed[0] - 1, failed[0] - 1);
}

// Runs f, turning an error into its message so that agree() can share it.
template <class F>
std::string attempt(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

void Trainer::for_each_tensor(const std::function<void(const TensorSlot&)>& f) {
  if (!zero_) {  // every rank holds every parameter whole
    std::vector<Parameter>& params = model_->parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      const int64_t rows = params[i].global_shape[0], cols = params[i].value.numel() / rows;
      f({params[i].name,
         rows,
         cols,
         {0, 0, rows, cols, cols},
         i,
         params[i].value.f32(),
         params[i].value.numel()});
    }
    return;
  }
  const std::vector<parallel::ZeroShardRef> shards = zero_->shards();
  for (size_t i = 0; i < shards.size(); ++i)
    f({shards[i].spec->name, shards[i].spec->rows, shards[i].spec->cols, shards[i].rect, i,
       shards[i].master, shards[i].elems});
}

std::vector<StatePiece> Trainer::state_pieces() {
  std::vector<StatePiece> out;
  // Per-block state (8-bit absmax) belongs to this rank's shard: the global tensor stacks the
  // shards' blocks, (shards × blocks) × 1, and this rank holds its rows.
  const int ranks = zero_ ? grid_.dp().size() : 1, rank = zero_ ? grid_.dp().rank() : 0;
  for_each_tensor([&](const TensorSlot& t) {
    out.push_back({t.name, t.rows, t.cols, t.rect, t.value, t.elems});
    for (const optim::StateTensor& s : optimizer_->state(t.index)) {
      const std::string name = optimizer_state_name(s.name, t.name);
      if (s.layout == optim::StateLayout::kPerBlock) {
        out.push_back(
            {name, ranks * s.elems, 1, {rank * s.elems, 0, s.elems, 1, 1}, s.data, s.elems});
      } else if (s.layout == optim::StateLayout::kOwnRect) {
        out.push_back({name, s.rows, s.cols, s.rect, s.data, s.elems, s.bytes});
      } else {
        out.push_back({name, t.rows, t.cols, t.rect, s.data, t.elems, s.bytes});
      }
    }
  });
  return out;
}

void Trainer::restore_requantized(const std::string& dir, const CheckpointInfo& info,
                                  const QuantizedLayout& saved) {
  std::vector<StatePiece> params;
  for_each_tensor([&](const TensorSlot& t) {
    params.push_back({t.name, t.rows, t.cols, t.rect, t.value, t.elems});
  });
  read_state(dir, info, params);
  // Each element-wise moment as fp32, for the optimizer to keep in its own form.
  std::vector<float> values;
  for_each_tensor([&](const TensorSlot& t) {
    for (const optim::StateTensor& s : optimizer_->state(t.index)) {
      if (s.layout != optim::StateLayout::kElementwise) continue;
      values.resize(static_cast<size_t>(t.elems));
      read_moment_f32(dir, info, saved, t.name, t.rows, t.cols, t.rect, s.name, values.data(),
                      t.elems);
      optimizer_->load_state(t.index, s.name, values.data());
    }
  });
}

std::string Trainer::save_checkpoint() {
  const auto t0 = Clock::now();
  parallel::Communicator& world = grid_.world();
  const CheckpointStore store(config_.training.output_dir + "/checkpoints");
  const bool lead = world.rank() == 0;
  // Without ZeRO every rank holds the same state: rank 0 alone writes it.
  const bool writes = zero_ || lead;
  agree(world, lead ? attempt([&] { store.begin(step_); }) : "", "starting a checkpoint");

  const std::vector<StatePiece> pieces = state_pieces();
  const std::string tmp = store.staging(step_);
  agree(world,
        writes
            ? attempt([&] { write_state_file(tmp + "/" + state_file_name(world.rank()), pieces); })
            : "",
        "writing a checkpoint's state file");

  std::string dir;
  std::string error;
  if (lead) {
    error = attempt([&] {
      CheckpointInfo info;
      info.step = step_;
      info.samples_consumed = samples_;
      info.seed = config_.training.seed;
      info.data_parallel_size = grid_.dp().size();
      info.zero_stage = static_cast<int>(config_.parallel.zero_stage);
      info.optimizer = config_.optimizer.type;
      info.config_yaml = config_to_yaml(config_);
      for (int r = 0; r < (zero_ ? world.size() : 1); ++r) info.files.push_back(state_file_name(r));
      for (const StatePiece& p : pieces) info.shapes[p.name] = {p.rows, p.cols};
      write_checkpoint_info(tmp, info);
      dir = store.commit(step_, config_.training.save_total_limit);
    });
  }
  agree(world, error, "committing a checkpoint");
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  console_ << "keel: checkpoint " << std::filesystem::path(dir).filename().string() << " saved in "
           << seconds << " s\n"
           << std::flush;
  return dir;
}

Config Trainer::check_checkpoint(const std::string& dir, const CheckpointInfo& info) const {
  Config saved = parse_config(info.config_yaml, {}, dir + "/meta.json");
  const std::vector<std::string> model_changes = config_differences(saved, config_, "model");
  std::ostringstream changes;
  for (const std::string& c : model_changes) changes << (changes.tellp() ? "; " : "") << c;
  KEEL_CHECK(model_changes.empty(),
             "checkpoint {} is of another model shape ({}); resume with the model it was trained "
             "with, or start afresh (--set training.resume_from_checkpoint=none, or another "
             "training.output_dir)",
             dir, changes.str());
  // AdamW's moments in fp32 or 8 bits are the same state: either resumes the other.
  auto adamw = [](const std::string& type) { return type == "adamw" || type == "adamw_8bit"; };
  KEEL_CHECK(info.optimizer == config_.optimizer.type ||
                 (adamw(info.optimizer) && adamw(config_.optimizer.type)),
             "checkpoint {} holds '{}' optimizer state but optimizer.type is '{}'", dir,
             info.optimizer, config_.optimizer.type);
  // GaLore's state is shaped by its rank, its projection side and the matrices it targets.
  const optim::GaloreConfig &was = saved.optimizer.galore, &now = config_.optimizer.galore;
  KEEL_CHECK(was.rank == now.rank &&
                 (now.rank == 0 || (was.proj_type == now.proj_type && was.targets == now.targets)),
             "checkpoint {} holds optimizer state of optimizer.galore rank {}, proj_type {}, "
             "targets '{}', but this run has rank {}, proj_type {}, targets '{}'; resume with the "
             "saved settings (update_proj_gap, scale and projector may change)",
             dir, was.rank, was.proj_type, was.targets, now.rank, now.proj_type, now.targets);
  return saved;
}

void Trainer::load_checkpoint(const std::string& dir) {
  const CheckpointInfo info = read_checkpoint_info(dir);
  restore(dir, info, check_checkpoint(dir, info));
}

void Trainer::restore(const std::string& dir, const CheckpointInfo& info, const Config& saved) {
  const auto t0 = Clock::now();
  // 8-bit state in the blocks it was saved in comes back exactly; in other blocks (another
  // DP size or block setting), or saved by fp32 AdamW for this 8-bit run or the other way
  // round, each moment is read as fp32 and stored as this run keeps it.
  const QuantizedLayout before = quantized_layout(saved, info.data_parallel_size);
  const bool requantize =
      (config_.optimizer.type == "adamw_8bit" || info.optimizer == "adamw_8bit") &&
      !(before == quantized_layout(config_, grid_.dp().size()));
  if (requantize) {
    KEEL_CHECK(config_.optimizer.galore.rank == 0,
               "checkpoint {} holds 8-bit GaLore state in blocks of {} data-parallel shards of "
               "{} elements; this run cuts them otherwise (resharding 8-bit GaLore state is not "
               "built yet): resume with {} data-parallel ranks, the same ZeRO sharding and "
               "optimizer.block_size, or with fp32 moments (optimizer.type adamw both times)",
               dir, before.shards, before.block_size, before.shards);
    restore_requantized(dir, info, before);
  } else {
    read_state(dir, info, state_pieces());
  }
  optimizer_->set_steps_taken(info.step);
  step_ = info.step;
  samples_ = info.samples_consumed;
  // Stages 1 and 2: the model's full weights from the loaded master shards.
  if (zero_) zero_->publish_weights();
  resumed_from_ = dir;
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  std::ostringstream note;
  note << "keel: resumed from " << dir << " at step " << step_ << " in " << seconds
       << " s (written by " << info.data_parallel_size << " data-parallel rank"
       << (info.data_parallel_size > 1 ? "s" : "") << ", ZeRO " << info.zero_stage << ")\n";
  for (const std::string& c : config_differences(saved, config_))
    note << "keel:   changed since: " << c << "\n";
  console_ << note.str();
  plan_text_ += note.str();
}

}  // namespace keel::runtime
