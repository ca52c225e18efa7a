#include "runtime/train/evaluate.h"

#include <algorithm>
#include <vector>

#include "kernels/error.h"

namespace keel::runtime {

EvalResult evaluate(LlamaModel& model, const TokenData& data, int64_t max_sequences,
                    parallel::Communicator& dp, int32_t* tokens, int32_t* targets,
                    PipelineRunner* runner, parallel::Communicator* pp) {
  const int64_t B = model.batch(), T = model.seq();
  KEEL_CHECK(data.seq_length() == T, "validation sequences of {} tokens for a model of {}",
             data.seq_length(), T);
  const int64_t n =
      max_sequences > 0 ? std::min(max_sequences, data.num_sequences()) : data.num_sequences();
  const int64_t global = B * dp.size();
  // Σ losses and the number of valid targets, summed on this rank and then over the ranks.
  std::vector<double> totals(2, 0.0);
  for (int64_t first = 0; first < n; first += global) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t index = first + dp.rank() * B + b;
      int32_t* tk = tokens + b * T;
      int32_t* tg = targets + b * T;
      if (index < n) {
        data.sequence(index, tk, tg);
      } else {
        std::fill_n(tk, T, 0);
        std::fill_n(tg, T, -1);
      }
      for (int64_t t = 0; t < T; ++t) totals[1] += tg[t] >= 0;
    }
    totals[0] +=
        runner ? runner->evaluate(tokens, targets) : model.forward(tokens, targets, nullptr);
  }
  dp.all_reduce(parallel::host_view(totals));
  if (runner) {  // the losses are the last stage's; the target count every stage's alike
    std::vector<double> loss = {totals[0]};
    pp->all_reduce(parallel::host_view(loss));
    totals[0] = loss[0];
  }
  KEEL_CHECK(totals[1] > 0, "the validation data has no targets to evaluate");
  return {totals[0] / totals[1], static_cast<int64_t>(totals[1]), n};
}

}  // namespace keel::runtime
