// The training loop: data → micro-batches with gradient accumulation → gradients summed over the
// data-parallel ranks → global-norm clipping → AdamW with the learning-rate schedule → metrics.
// It owns the model, the optimizer and the data order; everything is built, and all memory
// planned, in the constructor. Across data-parallel ranks, parallel.zero_stage picks what is
// sharded (0: nothing, gradients all-reduced; 1-3: parallel/zero.h); the global batch of a step
// is the same set of sequences whatever the number of ranks, micro-batch size and accumulation.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <set>

#include "optim/optimizer.h"
#include "parallel/process_grid.h"
#include "parallel/zero.h"
#include "runtime/config/config.h"
#include "runtime/config/pipeline_layout.h"
#include "runtime/data/data.h"
#include "runtime/model/llama.h"
#include "runtime/store/checkpoint.h"
#include "runtime/train/evaluate.h"
#include "runtime/train/grad_sync.h"
#include "runtime/train/metrics.h"
#include "runtime/train/pipeline_runner.h"
#include "runtime/train/run_control.h"

namespace keel::runtime {

class Trainer {
 public:
  // Loads the data, builds and initialises the model from training.seed, and prints the memory
  // plan to `console`. Writes nothing to disk until run(). The grid's data-parallel group splits
  // the global batch; every rank of it must construct its Trainer from the same config.
  Trainer(const Config& config, std::ostream& console, parallel::ProcessGrid& grid);
  // One process alone (a grid of one rank that the trainer owns).
  Trainer(const Config& config, std::ostream& console);
  ~Trainer();

  // Runs until training.max_steps, then writes model.safetensors. Rank 0 of the world writes
  // metrics.jsonl, config.yaml and the parameters in training.output_dir and prints progress;
  // every rank writes its own log, logs/rank_<r>.log there. With training.save_steps, a
  // checkpoint every save_steps steps and at the end (checkpoints/, runtime/store/checkpoint.h).
  void run();
  // One optimizer step over the next global batch (collective over the data-parallel group).
  // A step whose loss or gradient norm is not finite, or whose loss spikes
  // (training.loss_spike_factor), leaves the weights as they were: its StepStats say why in
  // `rejected`, the batch is consumed and steps_done() does not advance (run() then does what
  // training.on_nonfinite says).
  StepStats step();

  // Called by run() before each step with the number of the step it is about to attempt, as a
  // Hugging Face TrainerCallback's on_step_begin: for tools that watch or steer a run, and for
  // tests that inject a fault at a known step.
  void set_before_step(std::function<void(int64_t step)> hook) { before_step_ = std::move(hook); }

  // Rank 0: the control plane that steers this run (runtime/train/run_control.h), asked at every
  // step boundary and told every step; null on the other ranks and without one. Outlives run().
  void set_control(RunControl* control) { control_ = control; }

  LlamaModel& model() { return *model_; }
  int64_t steps_done() const { return step_; }
  // Rank 0 writes every parameter in full (Hugging Face names) to path as safetensors; under
  // ZeRO 3 they are gathered from the shards unit by unit (collective over the group).
  void write_parameters(const std::string& path);
  // Time blocked on ZeRO's collectives and in its copies so far (zero without ZeRO).
  parallel::ZeroTimers zero_timers() const;
  // Writes a checkpoint of the current step to <output_dir>/checkpoints (collective over the
  // world; every rank throws if any rank fails). Returns its directory. Weights that are not
  // finite are never saved: that is an error, and `latest` stays where it was.
  std::string save_checkpoint();
  // Loads the checkpoint in dir, written by this model under any layout (collective): weights,
  // optimizer state, the step and the data position. The constructor calls it for
  // training.resume_from_checkpoint.
  void load_checkpoint(const std::string& dir);
  // The validation loss of the current weights (collective over the data-parallel group): every
  // sequence of data.validation, or the first data.max_eval_samples. Needs validation data.
  EvalResult evaluate();
  // The checkpoint this run resumed from ("" for a fresh start).
  const std::string& resumed_from() const { return resumed_from_; }
  // The bytes of every plan of the run, as the start-up memory line counts them.
  size_t planned_bytes() const { return planned_bytes_; }

 private:
  struct OwnGrid;  // the one-rank grid of the second constructor
  void build();
  // optimizer.per_layer_update (trainer_per_layer.cpp): each unit's tensor range in refs, and the
  // hooks' call that steps a unit as its gradient completes.
  void build_per_layer(const std::vector<optim::ParamRef>& refs);
  void step_unit(int unit, double grad_sum_squares);
  void print_plan();
  // save_checkpoint() without the check of the weights (run() has just made it).
  std::string write_checkpoint();
  // The divergence guard (trainer_guard.cpp). Why a step with this global loss and gradient
  // norm² must not update the weights, or "" when it may (the same verdict on every rank).
  std::string judge(double loss, double grad_sum_squares);
  // x summed over the ranks that hold the model's parts: the tensor-parallel group, then the
  // pipeline's stages (x itself without either).
  double model_sum(double x);
  // The name of the first of the tensors (this rank's, in order) at local index `first` (-1:
  // none) over the world, where each pipeline stage lists its own: the stages' lists in stage
  // order make one (collective over the world).
  std::string first_over_world(int64_t first, const std::vector<std::string>& names);
  // Step boundaries (trainer_run.cpp). What the ranks agreed there: a stop signal some rank
  // received (SIGTERM, SIGUSR1; 0: none) and rank 0's command; `paused`: waiting to be resumed.
  struct Order {
    int signal = 0;
    RunCommand command = RunCommand::kNone;
  };
  Order agreed_order(bool paused);
  // Carries out this boundary's orders on every rank alike (a pause holds here until resumed, a
  // checkpoint is written here); returns why the run stops here, or "" to go on.
  std::string take_orders(std::ostream& rank_log);
  // The checkpoint of the current step: the one already written or resumed from, else a new one.
  std::string checkpoint_here(std::ostream& rank_log);
  // x summed over the group (x itself on a group of one rank).
  double group_sum(parallel::Communicator& group, double x);
  // The name of the first optimizer tensor (in their order) whose gradient on some rank holds a
  // NaN or an infinity, or "" (collective over the world).
  std::string first_nonfinite_gradient();
  // The same for the weights (fp32 master shards under ZeRO): collective over the world.
  std::string first_nonfinite_weight();
  // What run() does with a rejected step, as training.on_nonfinite says; `batch` is the data
  // position of the batch to skip from now on, `undoable` whether skipping it undoes the harm
  // (false once an update has reached the weights). Throws to stop the run.
  void handle_rejected(StepStats s, int64_t batch, bool undoable, MetricsLog* log);
  // The checkpoint a rollback or a stop names: the newest in the run's store, or the one the run
  // resumed from ("" when there is none).
  std::string last_good_checkpoint() const;
  // Checks that this run can continue the checkpoint in dir; returns the config it was saved with.
  Config check_checkpoint(const std::string& dir, const CheckpointInfo& info) const;
  // Loads a checkpoint that check_checkpoint accepted (saved: its config).
  void restore(const std::string& dir, const CheckpointInfo& info, const Config& saved);
  // Each tensor this rank's optimizer steps: a whole parameter (no ZeRO) or this rank's shard.
  struct TensorSlot {
    std::string name;
    int64_t rows, cols;  // the parameter's global shape
    parallel::ShardRect rect;
    size_t index;  // in the optimizer's list
    float* value;  // weights or fp32 master shard
    int64_t elems;
    bool counted;    // false where another TP rank holds it alike and writes it (tp_counted)
    bool copy;       // the last pipeline stage's copy of the tied embedding (never written)
    int group_rank;  // this rank's place in the group holding the tensor's parts (0 without one)
    bool expert;  // an MoE expert's (Parameter::expert): shared by the expert-data-parallel group
  };
  void for_each_tensor(const std::function<void(const TensorSlot&)>& f);
  // This rank's training state (weights or master shards, optimizer state) as checkpoint pieces.
  // Collective over the world (per-block state is stacked over the ranks,
  // runtime/store/block_index.h). What a checkpoint takes from this rank (of parts several ranks
  // hold alike, one rank's), with every per-block state's stacked rows in block_totals:
  std::vector<StatePiece> pieces_to_write(std::map<std::string, int64_t>& block_totals);
  // Everything this rank holds, for reading a checkpoint into:
  std::vector<StatePiece> pieces_to_read();
  std::vector<StatePiece> state_pieces(bool written, std::map<std::string, int64_t>* block_totals);
  // Optimizer state s of tensor t (element-wise or its own rectangle) as a checkpoint piece.
  StatePiece state_piece(const TensorSlot& t, const optim::StateTensor& s) const;
  // Restores a checkpoint whose 8-bit state was quantized in other blocks (of saved_block_size
  // codes, cut from other shards) or by another optimizer (fp32 AdamW for an 8-bit run, or the
  // other way round).
  void restore_requantized(const std::string& dir, const CheckpointInfo& info,
                           int64_t saved_block_size);

  std::unique_ptr<OwnGrid> own_;
  parallel::ProcessGrid& grid_;
  Config config_;
  std::ostream& console_;
  std::unique_ptr<ResolvedTokenizer> tokenizer_;
  std::unique_ptr<TokenData> data_;
  std::unique_ptr<TokenData> validation_;  // null when the run has none
  std::unique_ptr<SequenceOrder> order_;
  double data_seconds_ = 0.0;          // this rank's time filling batches, for the closing line
  double weight_check_seconds_ = 0.0;  // and scanning the weights for NaN and infinities
  PipelineLayout pipeline_;            // the stages, their schedule (one stage without a pipeline)
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<PipelineRunner> runner_;  // with a pipeline: runs this stage's schedule
  // A pipeline with tied embeddings: the first and last stages of this rank's TP and DP place
  // (null elsewhere), over which the embedding's gradient is summed (GradSync::set_tied_group).
  std::unique_ptr<parallel::Communicator> tied_;
  // Every byte this rank has sent or received, the grid's groups' and the tied group's.
  uint64_t comm_bytes() const;
  // The bytes the expert-parallel group's all-to-alls have moved so far (MoE dispatch).
  uint64_t all_to_all_bytes() const;
  std::unique_ptr<optim::Optimizer> optimizer_;
  MemoryPlan batch_{"batch"};
  MemoryPlan::Slot tokens_, targets_;  // (accumulation, B, T): this rank's slice of the batch
  MemoryPlan::Slot totals_;            // (3) F64 over ranks: valid targets, loss sum, GEMM peak
  // How gradients are summed over the data-parallel group, and what the optimizer steps.
  std::unique_ptr<GradSync> sync_;
  // Per-layer update: unit u steps the optimizer's tensors [unit_first_[u], unit_first_[u+1]);
  // the step's learning rate, and Σ g² of the units stepped so far in it.
  std::vector<size_t> unit_first_;
  double unit_lr_ = 0.0, unit_sum_squares_ = 0.0;
  // Per-layer update: the first tensor of the step whose gradient was not finite (none stepped
  // from there on), or -1.
  int64_t unit_bad_tensor_ = -1;
  // Each optimizer tensor's name and gradient (this rank's shard), for the guard's report.
  struct GradView {
    std::string name;
    const float* grad;
    int64_t n;
  };
  std::vector<GradView> grads_;
  std::deque<double> recent_losses_;  // the last good steps' losses (loss_spike_factor)
  int64_t rejected_ = 0;              // steps the guard rejected in this process
  std::set<int64_t> skip_batches_;    // data positions (samples_) a rollback skips
  std::function<void(int64_t)> before_step_;
  RunControl* control_ = nullptr;
  int64_t saved_step_ = -1;  // the step of the newest checkpoint written or resumed from
  std::string saved_dir_;
  int64_t step_ = 0;
  int64_t samples_ = 0;  // global samples of the data order trained on so far
  std::string resumed_from_;
  double peak_flops_ = 0;       // MFU's denominator, FLOP/s of every rank together
  std::string peak_text_;       // where it comes from, for the opening lines
  bool peak_exceeded_ = false;  // a step ran faster than peak_flops_ (said once)
  size_t planned_bytes_ = 0;    // every plan of the run: model, ZeRO, optimizer, batch
  std::string plan_text_;       // the start-up lines: model, layout, memory plan
};

}  // namespace keel::runtime
