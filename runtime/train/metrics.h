// What a run reports: one JSON object per logged step in <output_dir>/metrics.jsonl, the same
// numbers as TensorBoard scalars (runtime/train/tensorboard.h), and a progress line on the console.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace keel::runtime {

// A step's mixture-of-experts routing, over its global batch (none without MoE layers).
struct MoeStepStats {
  // Per MoE layer, in model order: the busiest expert's routed token choices over the mean
  // (1 is perfect balance, E the worst).
  std::vector<double> load_imbalance;
  // Per MoE layer: the model's layer index and each expert's share of the routed choices.
  std::vector<int> layers;
  std::vector<std::vector<double>> expert_share;
  double aux_loss = 0;          // the load-balancing loss (without its coefficient)
  double z_loss = 0;            // the router z-loss (without its coefficient)
  double dropped_fraction = 0;  // of the token choices, dropped by capacity
  double router_entropy = 0;    // mean entropy of the router's softmax, nats (ln E at most)
  // Bytes rank 0 sent over its expert-parallel group in the step: as its communicator counted
  // them, and as its routing says they should be (the tokens' rows that left for other ranks
  // and came back, forward and backward, and the per-expert counts); 0 without EP.
  uint64_t all_to_all_bytes = 0;
  uint64_t all_to_all_bytes_routed = 0;
  bool present() const { return !load_imbalance.empty(); }
  double max_imbalance() const;
};

struct StepStats {
  int64_t step = 0;  // optimizer steps completed, 1-based
  double loss = 0;   // mean loss over the step's global batch
  double learning_rate = 0;
  double grad_norm = 0;  // before clipping
  double seconds = 0;    // wall time of the step
  double tokens_per_second = 0;
  double mfu = 0;  // model FLOP/s ÷ the measured fp32 GEMM peak of this machine
  double peak_rss_mib = 0;
  // Bytes this rank communicated during the step, as CommStats counts them (bus bytes: an
  // all-reduce of n bytes over N ranks counts 2n(N-1)/N); 0 on one rank.
  uint64_t comm_bytes = 0;
  // Seconds this rank spent blocked on gradient and parameter collectives during the step (what
  // the overlap did not hide); 0 on one rank.
  double comm_wait_seconds = 0;
  // Pipeline parallelism: seconds this rank's stage waited for its neighbours during the step,
  // in its schedule's receives and sends and for the last stage's loss after it (its share of
  // the pipeline bubble, measured); 0 without a pipeline.
  double pipeline_wait_seconds = 0;
  // Empty when the step updated the weights; otherwise why it did not ("the loss is nan", "the
  // loss 9.2 is 3.1 times the mean of the last 20 steps"): the trainer's guard held the
  // update back (training.on_nonfinite), and `step` is the step that was attempted.
  std::string rejected;
  MoeStepStats moe;
};

class TensorBoardWriter;  // runtime/train/tensorboard.h

class MetricsLog {
 public:
  // Opens <output_dir>/metrics.jsonl: truncated, or, for a run resumed at step keep_through,
  // keeping the lines of steps up to keep_through (later ones are trained again). With a
  // tensorboard_dir, also a new TensorBoard event file there.
  explicit MetricsLog(const std::string& output_dir, int64_t keep_through = 0,
                      const std::string& tensorboard_dir = "");
  ~MetricsLog();
  // A step's line. Numbers that are not finite are written as null and named in "nonfinite"
  // (so every line stays JSON); a rejected step also has "rejected" (why) and "action" (what the
  // run did about it: skip_step, rollback or stop), and goes to no TensorBoard curve.
  void write(const StepStats& s, const std::string& action = "");
  // Drops the lines of steps after `step` (a rollback trains them again).
  void rewind(int64_t step);
  // A validation result at `step`: {"step", "eval_loss", "eval_perplexity", "eval_tokens"}.
  void write_eval(int64_t step, double loss, int64_t tokens);
  const std::string& path() const { return path_; }

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::ofstream out_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // null without a tensorboard_dir
};

// "step 10/200 | loss 2.3456 | lr 3.00e-04 | 1234 tok/s | MFU 45.1% | mem 812 MiB | ETA 3m12s"
std::string progress_line(const StepStats& s, int64_t max_steps, double eta_seconds);

}  // namespace keel::runtime
