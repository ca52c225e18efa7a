// The training loop of one process: data → micro-batches with gradient accumulation → global-norm
// clipping → AdamW with the learning-rate schedule → metrics. It owns the model, the optimizer and
// the data order; everything is built, and all memory planned, in the constructor.
#pragma once

#include <memory>
#include <ostream>

#include "runtime/config.h"
#include "runtime/data.h"
#include "runtime/llama.h"
#include "runtime/metrics.h"

namespace keel::optim {
class AdamW;
}

namespace keel::runtime {

class Trainer {
 public:
  // Loads the data, builds and initialises the model from training.seed, and prints the memory
  // plan to `console`. Writes nothing to disk until run().
  Trainer(const Config& config, std::ostream& console);
  ~Trainer();

  // Runs until training.max_steps, writing metrics.jsonl and config.yaml in training.output_dir.
  void run();
  // One optimizer step over the next global batch.
  StepStats step();

  LlamaModel& model() { return *model_; }
  int64_t steps_done() const { return step_; }

 private:
  Config config_;
  std::ostream& console_;
  std::unique_ptr<ByteCorpus> corpus_;
  std::unique_ptr<SequenceOrder> order_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<optim::AdamW> optimizer_;
  MemoryPlan batch_{"batch"};
  MemoryPlan::Slot tokens_, targets_;  // (accumulation, B, T)
  int64_t step_ = 0;
  double peak_flops_ = 0;
  size_t planned_bytes_ = 0;  // every plan of the run: model, optimizer, batch
};

// Sustained fp32 GEMM FLOP/s of this machine, measured in a fraction of a second (MFU's unit).
double measure_peak_flops();

}  // namespace keel::runtime
