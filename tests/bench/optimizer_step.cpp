// keel_optimizer_step: the time of one optimizer step per parameter, fp32 AdamW and 8-bit AdamW
// (keel's kernels on the threads keel trains with), on n parameters in tensors of a training
// run's sizes, and the bytes of state each keeps. bench_optimizers.sh runs it beside PyTorch's
// AdamW and bitsandbytes' AdamW8bit on the same machine.
//
// Usage: keel_optimizer_step [--params N] [--repeats R]
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "optim/adamw.h"
#include "optim/adamw_8bit.h"

namespace keel::bench {
namespace {

// Seconds of the best of `repeats` steps of opt (after one warm-up step).
double best_step(optim::Optimizer& opt, int repeats) {
  opt.step(1e-3, 1.0);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.step(1e-3, 1.0);
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int run(int argc, char** argv) {
  int64_t n = int64_t{64} << 20;
  int repeats = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--params") n = std::atoll(argv[i + 1]);
    if (a == "--repeats") repeats = std::atoi(argv[i + 1]);
  }
  // Tensors of 4 M parameters (a 2048 x 2048 matrix), as a ~1B model's are.
  const int64_t tensor = int64_t{4} << 20, count = (n + tensor - 1) / tensor;
  std::vector<float> value(static_cast<size_t>(count * tensor), 0.01f);
  std::vector<float> grad(value.size());
  for (size_t i = 0; i < grad.size(); ++i)
    grad[i] = static_cast<float>((i * 2654435761u) % 2001) * 1e-6f - 1e-3f;
  std::vector<optim::ParamRef> refs;
  for (int64_t t = 0; t < count; ++t)
    refs.push_back(
        {std::to_string(t), value.data() + t * tensor, grad.data() + t * tensor, tensor, true});
  const double params = static_cast<double>(count * tensor);
  std::printf("{\"threads\": %d, \"params\": %.0f", omp_get_max_threads(), params);
  for (const char* type : {"adamw", "adamw_8bit"}) {
    optim::OptimizerConfig c;
    c.type = type;
    c.weight_decay = 0.1;
    const auto opt = optim::make_optimizer(refs, c);
    const double s = best_step(*opt, repeats);
    std::printf(
        ", \"%s\": {\"step_seconds\": %.6f, \"ns_per_param\": %.4f, \"state_bytes_per_param\": "
        "%.5f}",
        type, s, s / params * 1e9, static_cast<double>(opt->state_bytes()) / params);
  }
  std::printf("}\n");
  return 0;
}

}  // namespace
}  // namespace keel::bench

int main(int argc, char** argv) { return keel::bench::run(argc, argv); }
