// Saving and resuming the Trainer (runtime/train/trainer.h) through runtime/store/checkpoint.h:
// which state each rank writes, how the ranks agree that a save worked, and what a resume restores.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>
#include <sstream>

#include "optim/adamw_8bit.h"
#include "runtime/store/block_index.h"
#include "runtime/store/checkpoint.h"
#include "runtime/train/trainer.h"

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

// Every rank's record of the state file it wrote (zero for a rank that wrote none), for rank 0 to
// put in meta.json: a file's checksums leave the rank that computed them from its own bytes.
std::vector<StateFileSum> gather_sums(parallel::Communicator& world, const StateFileSum& mine) {
  std::vector<int64_t> in = {static_cast<int64_t>(mine.bytes), mine.header_crc32c};
  std::vector<int64_t> all(2 * static_cast<size_t>(world.size()));
  if (world.size() > 1)
    world.all_gather(parallel::host_view(all), parallel::host_view(in));
  else
    all = in;
  std::vector<StateFileSum> sums;
  for (size_t r = 0; r < all.size(); r += 2)
    sums.push_back({static_cast<uint64_t>(all[r]), static_cast<uint32_t>(all[r + 1])});
  return sums;
}

// The blocks a run cuts 8-bit optimizer state into: TP's slices, ZeRO's shards of each (the DP
// size under ZeRO 1-3, else 1), optimizer.block_size and optimizer.min_8bit_size (the largest
// int64 for an optimizer that quantizes nothing). GaLore's projected state is cut by the same.
struct QuantizedLayout {
  int tp = 1;
  int shards = 1;
  int expert_shards = 1;  // an expert's ZeRO shards: over the expert-data-parallel group
  int64_t block_size = 256;
  int64_t min_8bit_size = 4096;
  bool operator==(const QuantizedLayout&) const = default;
};

QuantizedLayout quantized_layout(const Config& config, int data_parallel_size,
                                 int tensor_parallel_size, int expert_parallel_size) {
  const int64_t min_8bit = config.optimizer.type == "adamw_8bit"
                               ? config.optimizer.min_8bit_size
                               : std::numeric_limits<int64_t>::max();
  const bool zero = config.parallel.zero_stage > 0;
  return {tensor_parallel_size, zero ? data_parallel_size : 1,
          zero ? data_parallel_size / expert_parallel_size : 1, config.optimizer.block_size,
          min_8bit};
}

using Shapes = std::map<std::string, std::pair<int64_t, int64_t>>;

// Each pipeline stage's shapes, merged (every rank learns them all): a stage holds only its own
// tensors, and meta.json lists every one. As text, "name rows cols" a line.
Shapes gather_shapes(parallel::Communicator& pp, const Shapes& mine) {
  std::ostringstream os;
  for (const auto& [name, shape] : mine)
    os << name << ' ' << shape.first << ' ' << shape.second << '\n';
  Shapes out;
  for (const std::string& text : parallel::all_gather_text(pp, os.str())) {
    std::istringstream in(text);
    std::string name;
    int64_t rows = 0, cols = 0;
    while (in >> name >> rows >> cols) out[name] = {rows, cols};
  }
  return out;
}

}  // namespace

void Trainer::for_each_tensor(const std::function<void(const TensorSlot&)>& f) {
  const std::vector<optim::ParamRef>& refs = sync_->tensors();
  for (size_t i = 0; i < refs.size(); ++i) {
    const Shape& shape = model_->parameter_by_name(refs[i].name).global_shape;
    const int64_t rows = shape[0], cols = shape.numel() / rows;
    // A whole vector carries no rectangle: all of it, as rows of n × 1.
    const parallel::ShardRect rect =
        refs[i].rect.ld > 0 ? refs[i].rect : parallel::ShardRect{0, 0, rows, cols, cols};
    const Parameter& p = model_->parameter_by_name(refs[i].name);
    f({refs[i].name, rows, cols, rect, i, refs[i].value, refs[i].n, p.tp_counted, p.tied_copy,
       refs[i].group ? refs[i].group->rank() : 0, p.expert});
  }
}

StatePiece Trainer::state_piece(const TensorSlot& t, const optim::StateTensor& s) const {
  const std::string name = optimizer_state_name(s.name, t.name);
  KEEL_CHECK(s.layout != optim::StateLayout::kPerBlock,
             "'{}' is per-block state, which state_pieces stacks (internal error)", name);
  if (s.layout == optim::StateLayout::kOwnRect)
    return {name, s.rows, s.cols, s.rect, s.data, s.elems, s.bytes};
  return {name, t.rows, t.cols, t.rect, s.data, t.elems, s.bytes};
}

std::vector<StatePiece> Trainer::pieces_to_write(std::map<std::string, int64_t>& block_totals) {
  return state_pieces(true, &block_totals);
}

std::vector<StatePiece> Trainer::pieces_to_read() { return state_pieces(false, nullptr); }

std::vector<StatePiece> Trainer::state_pieces(bool written,
                                              std::map<std::string, int64_t>* block_totals) {
  // Per-block state (8-bit absmax) belongs to the buffer it was cut from: this rank's TP slice
  // or ZeRO shard of it. Its rows in the stacked tensor come from every rank's buffers.
  const parallel::Communicator* group = sync_->shard_group();
  const int64_t shard = group ? group->rank() : 0;
  std::vector<StatePiece> out;
  std::vector<std::pair<size_t, BlockRecord>> blocks;  // (piece, its buffer)
  std::vector<BlockRecord> records;
  // Without ZeRO the data-parallel ranks hold the same dense tensors, the expert-data-parallel
  // ones the same experts: the first of each writes them.
  const bool sharded = group != nullptr;
  for_each_tensor([&](const TensorSlot& t) {
    // The tied embedding's copy is the first stage's tensor: read into, never written, and no
    // record of its 8-bit blocks (the first stage's, identical, place them in the index).
    if (written && t.copy) return;
    if (written && !sharded && (t.expert ? grid_.edp() : grid_.dp()).rank() != 0) return;
    const bool keep = !written || t.counted;
    if (keep) out.push_back({t.name, t.rows, t.cols, t.rect, t.value, t.elems});
    for (const optim::StateTensor& s : optimizer_->state(t.index)) {
      // Written: a part several ranks hold alike, by one of them (every rank reads its own).
      const bool keep_state = s.distinct || (keep && (!written || !s.alike || t.group_rank == 0));
      if (s.layout != optim::StateLayout::kPerBlock) {
        if (keep_state) out.push_back(state_piece(t, s));
        continue;
      }
      const parallel::ShardRect& cut = s.rect.ld > 0 ? s.rect : t.rect;  // the buffer's part
      const BlockRecord r{optimizer_state_name(s.name, t.name), shard, cut.row0, cut.col0, s.elems};
      if (!t.copy) records.push_back(r);
      if (!keep_state) continue;
      blocks.emplace_back(out.size(), r);
      out.push_back({r.name, 0, 1, {}, s.data, s.elems});
    }
  });
  const BlockIndex index(gather_block_records(grid_.world(), records));
  for (const auto& [at, r] : blocks) {
    StatePiece& p = out[at];
    p.rows = index.total(r.name);
    p.rect = {index.first(r), 0, r.blocks, 1, 1};
  }
  if (block_totals) *block_totals = index.totals();
  return out;
}

void Trainer::restore_requantized(const std::string& dir, const CheckpointInfo& info,
                                  int64_t saved_block_size) {
  const StateReader reader(dir, info);
  std::vector<StatePiece> params;
  for_each_tensor([&](const TensorSlot& t) {
    params.push_back({t.name, t.rows, t.cols, t.rect, t.value, t.elems});
  });
  reader.read(params);
  // Each state tensor as fp32 values (8-bit codes dequantized in the blocks they were saved in),
  // kept as this run keeps it: copied, or quantized in its own blocks. Absmax is remade with the
  // codes.
  const kernels::cpu::QuantMap first = kernels::cpu::dynamic_map(true),
                               second = kernels::cpu::dynamic_map(false);
  std::vector<float> values;
  for_each_tensor([&](const TensorSlot& t) {
    for (const optim::StateTensor& s : optimizer_->state(t.index)) {
      if (s.layout == optim::StateLayout::kPerBlock) continue;
      StatePiece piece = state_piece(t, s);
      values.resize(static_cast<size_t>(piece.elems));
      piece.data = values.data(), piece.bytes = nullptr;
      reader.read_dequantized(piece,
                              {optimizer_state_name(s.name + "_absmax", t.name), saved_block_size,
                               optim::signed_state(s.name) ? &first : &second});
      optimizer_->load_state(t.index, s.name, values.data());
    }
  });
}

std::string Trainer::save_checkpoint() {
  const std::string bad = first_nonfinite_weight();
  KEEL_CHECK(bad.empty(),
             "step {}: the weights are not finite (first: {}), so no checkpoint was written; "
             "the last good one is {}",
             step_, bad, last_good_checkpoint().empty() ? "none" : last_good_checkpoint());
  return write_checkpoint();
}

std::string Trainer::write_checkpoint() {
  const auto t0 = Clock::now();
  parallel::Communicator& world = grid_.world();
  const CheckpointStore store(config_.training.output_dir + "/checkpoints");
  const bool lead = world.rank() == 0;
  // Without ZeRO the ranks of a data-parallel group hold the same state: its first writes it,
  // one file for each TP slice (and each expert-parallel rank's experts, from the first of the
  // ranks holding them). A tensor that TP ranks hold alike is written by the first.
  const bool sharded = sync_->shard_group() != nullptr;
  const bool writes = sharded || grid_.edp().rank() == 0;
  agree(world, lead ? attempt([&] { store.begin(step_); }) : "", "starting a checkpoint");

  std::map<std::string, int64_t> block_totals;
  const std::vector<StatePiece> pieces = pieces_to_write(block_totals);
  // Rank 0 holds a part of every tensor of its stage (the first TP rank writes what the ranks
  // share) but the other expert-parallel ranks' experts, which come over the ep group; the other
  // stages' over the pipeline group. Per-block state it may not keep (a larger slice quantized
  // elsewhere) comes from the index.
  Shapes shapes;
  for (const StatePiece& p : pieces) shapes[p.name] = {p.rows, p.cols};
  shapes = gather_shapes(grid_.pp(), gather_shapes(grid_.ep(), shapes));
  const std::string tmp = store.staging(step_);
  StateFileSum sum;
  agree(world,
        writes ? attempt([&] {
          sum = write_state_file(tmp + "/" + state_file_name(world.rank()), pieces);
        })
               : "",
        "writing a checkpoint's state file");
  const std::vector<StateFileSum> sums = gather_sums(world, sum);

  std::string dir;
  std::string error;
  if (lead) {
    error = attempt([&] {
      CheckpointInfo info;
      info.step = step_;
      info.samples_consumed = samples_;
      info.seed = config_.training.seed;
      info.data_parallel_size = grid_.dp().size();
      info.tensor_parallel_size = grid_.tp().size();
      info.pipeline_parallel_size = grid_.pp().size();
      info.expert_parallel_size = grid_.ep().size();
      info.zero_stage = static_cast<int>(config_.parallel.zero_stage);
      info.optimizer = config_.optimizer.type;
      info.config_yaml = config_to_yaml(config_);
      for (int r = 0; r < world.size(); ++r) {
        if (sums[static_cast<size_t>(r)].bytes == 0) continue;  // wrote no file
        info.files.push_back(state_file_name(r));
        info.sums.push_back(sums[static_cast<size_t>(r)]);
      }
      info.shapes = shapes;
      for (const auto& [name, total] : block_totals) info.shapes[name] = {total, 1};
      write_checkpoint_info(tmp, info);
      dir = store.commit(step_, config_.training.save_total_limit);
    });
  }
  agree(world, error, "committing a checkpoint");
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  console_ << "keel: checkpoint " << std::filesystem::path(dir).filename().string() << " saved in "
           << seconds << " s\n"
           << std::flush;
  saved_step_ = step_;
  saved_dir_ = dir;
  if (control_) control_->on_checkpoint(step_, dir);
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
  // TP or DP size, or block setting), or saved by fp32 AdamW for this 8-bit run or the other way
  // round, each moment is read as fp32 and stored as this run keeps it.
  const QuantizedLayout before = quantized_layout(
      saved, info.data_parallel_size, info.tensor_parallel_size, info.expert_parallel_size);
  const bool requantize =
      (config_.optimizer.type == "adamw_8bit" || info.optimizer == "adamw_8bit") &&
      !(before ==
        quantized_layout(config_, grid_.dp().size(), grid_.tp().size(), grid_.ep().size()));
  if (requantize) {
    restore_requantized(dir, info, before.block_size);
  } else {
    read_state(dir, info, pieces_to_read());
  }
  optimizer_->set_steps_taken(info.step);
  step_ = info.step;
  samples_ = info.samples_consumed;
  // Stages 1 and 2: the model's full weights from the loaded master shards.
  sync_->publish();
  resumed_from_ = dir;
  saved_step_ = step_;  // a checkpoint command here returns it instead of writing a copy
  saved_dir_ = dir;
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();

  std::ostringstream note;
  note << "keel: resumed from " << dir << " at step " << step_ << " in " << seconds
       << " s (written by " << written_by(info) << ")\n";
  if (info.sums.empty())
    note << "keel:   the checkpoint is of version " << info.version
         << ", written before checksums: its files were read unverified\n";
  for (const std::string& c : config_differences(saved, config_))
    note << "keel:   changed since: " << c << "\n";
  // The data-parallel size is no config key, yet it scales the global batch, which the learning
  // rate and the data order's position are tuned to.
  const TrainingConfig &was = saved.training, &now = config_.training;
  const int64_t batch_before =
      was.per_device_train_batch_size * was.gradient_accumulation_steps * info.data_parallel_size;
  const int64_t batch_after =
      now.per_device_train_batch_size * now.gradient_accumulation_steps * grid_.dp().size();
  if (batch_before != batch_after)
    note << "keel:   changed since: global batch (per_device_train_batch_size x "
            "gradient_accumulation_steps x data-parallel ranks): "
         << was.per_device_train_batch_size << " x " << was.gradient_accumulation_steps << " x "
         << info.data_parallel_size << " = " << batch_before << " -> "
         << now.per_device_train_batch_size << " x " << now.gradient_accumulation_steps << " x "
         << grid_.dp().size() << " = " << batch_after << " sequences\n";
  console_ << note.str();
  plan_text_ += note.str();
}

}  // namespace keel::runtime
