// Validation loss: the model's mean cross-entropy over held-out sequences, in order, split over
// the data-parallel ranks. What training.eval_steps reports during a run and keel eval prints.
#pragma once

#include <cmath>
#include <cstdint>

#include "parallel/communicator.h"
#include "runtime/data/data.h"
#include "runtime/model/llama.h"
#include "runtime/train/pipeline_runner.h"

namespace keel::runtime {

struct EvalResult {
  double loss = 0;        // mean over the evaluated targets
  int64_t tokens = 0;     // targets evaluated
  int64_t sequences = 0;  // sequences evaluated
  double perplexity() const { return std::exp(loss); }
};

// The first max_sequences (0: all) sequences of data through model's forward, model.batch() at a
// time on each rank of dp: global batch j holds sequences [j·B·R, (j+1)·B·R) and rank r takes
// its r-th B of them (past the end: ignored targets). Collective over dp. tokens and targets are
// the caller's (B, T) buffers; the model's gradients are untouched. With a pipeline (runner not
// null) the model is this rank's stage, each batch passes through the stages, and the last
// stage's losses reach every stage over pp: collective over dp and pp.
EvalResult evaluate(LlamaModel& model, const TokenData& data, int64_t max_sequences,
                    parallel::Communicator& dp, int32_t* tokens, int32_t* targets,
                    PipelineRunner* runner = nullptr, parallel::Communicator* pp = nullptr);

}  // namespace keel::runtime
