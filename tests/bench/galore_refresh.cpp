// keel_galore_refresh: what GaLore costs on the matrices of a TinyLlama-1.1B layer (q/o 2048²,
// k/v 256 × 2048, gate/up 5632 × 2048, down 2048 × 5632) at rank r, one process: the projector
// refresh (exact: Gram matrix + dsyevr; randomized: sketch of r + 8 vectors, 2 power iterations),
// a GaLore step without a refresh, and fp32 AdamW's step on the same matrices.
//
// Usage: keel_galore_refresh [--rank R]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "optim/galore.h"

namespace keel::bench {
namespace {

struct Shape {
  const char* name;
  int64_t rows, cols;
};

int run(int argc, char** argv) {
  int64_t rank = 128;
  for (int i = 1; i + 1 < argc; i += 2)
    if (std::string(argv[i]) == "--rank") rank = std::atoll(argv[i + 1]);
  const std::vector<Shape> shapes = {{"q_proj", 2048, 2048},    {"k_proj", 256, 2048},
                                     {"v_proj", 256, 2048},     {"o_proj", 2048, 2048},
                                     {"gate_proj", 5632, 2048}, {"up_proj", 5632, 2048},
                                     {"down_proj", 2048, 5632}};
  std::vector<std::vector<float>> values, grads;
  std::vector<optim::ParamRef> refs;
  int64_t params = 0;
  for (const Shape& s : shapes) {
    const int64_t n = s.rows * s.cols;
    values.emplace_back(static_cast<size_t>(n), 0.01f);
    grads.emplace_back(static_cast<size_t>(n));
    for (size_t i = 0; i < grads.back().size(); ++i)
      grads.back()[i] = static_cast<float>((i * 2654435761u) % 2001) * 1e-6f - 1e-3f;
    optim::ParamRef p{std::string("mlp.") + s.name, values.back().data(), grads.back().data(), n,
                      true};
    p.rows = s.rows, p.cols = s.cols, p.rect = {0, 0, s.rows, s.cols, s.cols};
    refs.push_back(p);
    params += n;
  }
  auto seconds = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  std::printf("{\"threads\": %d, \"params\": %lld, \"rank\": %lld", omp_get_max_threads(),
              static_cast<long long>(params), static_cast<long long>(rank));
  optim::OptimizerConfig plain;
  plain.weight_decay = 0.1;
  {
    const auto opt = optim::make_optimizer(refs, plain);
    opt->step(1e-3, 1.0);
    std::printf(", \"adamw_step_seconds\": %.4f", seconds([&] { opt->step(1e-3, 1.0); }));
  }
  for (const char* projector : {"exact", "randomized"}) {
    optim::OptimizerConfig c = plain;
    c.galore.rank = rank, c.galore.projector = projector, c.galore.update_proj_gap = 1000;
    const auto opt = optim::make_optimizer(refs, c);
    const auto& galore = dynamic_cast<const optim::GaLore&>(*opt);
    const double first = seconds([&] { opt->step(1e-3, 1.0); });  // refreshes every projector
    const double step = seconds([&] { opt->step(1e-3, 1.0); });
    std::printf(
        ", \"%s\": {\"refresh_seconds\": %.4f, \"first_step_seconds\": %.4f, "
        "\"step_seconds\": %.4f, \"state_bytes_per_param\": %.4f}",
        projector, galore.refresh_seconds(), first, step,
        static_cast<double>(opt->state_bytes()) / static_cast<double>(params));
  }
  std::printf("}\n");
  return 0;
}

}  // namespace
}  // namespace keel::bench

int main(int argc, char** argv) { return keel::bench::run(argc, argv); }
