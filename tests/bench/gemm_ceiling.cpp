// keel_gemm_ceiling: the fp32 GEMM ceiling that the training bench divides achieved model FLOP/s
// by. It times OpenBLAS sgemm (the same library, threads and environment keel trains with) on the
// shapes a training step runs, and reports the best sustained GFLOP/s of any shape as the ceiling.
//
// Usage: keel_gemm_ceiling [--repeats N] [--budget-ms MS] [--json]
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/error.h"

namespace keel::bench {
namespace {

// One GEMM as keel's matmul issues it, row-major: C (M, N) = op(A) · op(B).
struct GemmShape {
  const char* name;
  int64_t M, N, K;
  bool trans_a, trans_b;
  double flops() const { return 2.0 * static_cast<double>(M) * static_cast<double>(N) * K; }
};

// T = batch · sequence = 2048 tokens for both bench shapes (4 × 512 and 8 × 256). Forward is
// inp (T, C) · W (OC, C)ᵀ (NT); backward adds dinp = dout · W (NN) and dW = doutᵀ · inp (TN).
constexpr GemmShape kShapes[] = {
    {"134M qkv/o fwd   T×768×768 NT", 2048, 768, 768, false, true},
    {"134M mlp up fwd  T×2048×768 NT", 2048, 2048, 768, false, true},
    {"134M mlp dn fwd  T×768×2048 NT", 2048, 768, 2048, false, true},
    {"134M mlp up dinp T×768×2048 NN", 2048, 768, 2048, false, false},
    {"134M mlp up dW   2048×768×T TN", 2048, 768, 2048, true, false},
    {"134M lm_head fwd T×32000×768 NT", 2048, 32000, 768, false, true},
    {"15M  mlp up fwd  T×768×288 NT", 2048, 768, 288, false, true},
    {"15M  lm_head fwd T×32000×288 NT", 2048, 32000, 288, false, true},
    {"square           2048³ NN", 2048, 2048, 2048, false, false},
};

struct Options {
  int repeats = 5;         // timed calls per shape at most (the best one counts)
  double budget_ms = 500;  // stop repeating a shape once this much time went into it...
  int min_repeats = 2;     // ...but never time fewer calls than this
  bool json = false;
};

Options parse_options(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--repeats" && has_value) {
      options.repeats = std::atoi(argv[++i]);
    } else if (arg == "--budget-ms" && has_value) {
      options.budget_ms = std::atof(argv[++i]);
    } else if (arg == "--json") {
      options.json = true;
    } else {
      KEEL_CHECK(false,
                 "unknown argument '{}'; usage: keel_gemm_ceiling [--repeats N] "
                 "[--budget-ms MS] [--json]",
                 arg);
    }
  }
  KEEL_CHECK(options.repeats >= 1, "--repeats must be at least 1, got {}", options.repeats);
  options.min_repeats = std::min(options.min_repeats, options.repeats);
  return options;
}

// 64-byte aligned, freed by unique_ptr; sized once for the largest shape so no timed call allocates
// or first-touches memory.
struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

Buffer make_buffer(int64_t count, std::mt19937& rng) {
  const size_t bytes = (static_cast<size_t>(count) * sizeof(float) + 63) / 64 * 64;
  auto* data = static_cast<float*>(std::aligned_alloc(64, bytes));
  KEEL_CHECK(data != nullptr, "cannot allocate {} MiB", bytes >> 20);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (int64_t i = 0; i < count; ++i) data[i] = dist(rng);
  return Buffer(data);
}

void run_gemm(const GemmShape& s, const float* A, const float* B, float* C) {
  // Leading dimensions of the row-major operands as stored: A is (M, K) or (K, M), B (K, N) or (N,
  // K).
  const auto lda = static_cast<int>(s.trans_a ? s.M : s.K);
  const auto ldb = static_cast<int>(s.trans_b ? s.K : s.N);
  cblas_sgemm(CblasRowMajor, s.trans_a ? CblasTrans : CblasNoTrans,
              s.trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(s.M), static_cast<int>(s.N),
              static_cast<int>(s.K), 1.0f, A, lda, B, ldb, 0.0f, C, static_cast<int>(s.N));
}

// Best GFLOP/s over the timed calls. No per-shape warm-up: the buffers were touched when filled and
// OpenBLAS's threads and work buffer are warmed once in run(), so only best-of-N guards the first
// call.
double time_shape(const GemmShape& s, const Options& options, const float* A, const float* B,
                  float* C) {
  using Clock = std::chrono::steady_clock;
  double best_s = 1e30;
  double spent_ms = 0;
  for (int r = 0; r < options.repeats; ++r) {
    if (r >= options.min_repeats && spent_ms >= options.budget_ms) break;
    const auto t0 = Clock::now();
    run_gemm(s, A, B, C);
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    best_s = std::min(best_s, seconds);
    spent_ms += seconds * 1e3;
  }
  return s.flops() / best_s / 1e9;
}

const char* env_or(const char* name, const char* fallback) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : fallback;
}

int run(int argc, char** argv) {
  const Options options = parse_options(argc, argv);

  int64_t max_a = 0, max_b = 0, max_c = 0;
  for (const GemmShape& s : kShapes) {
    max_a = std::max(max_a, s.M * s.K);
    max_b = std::max(max_b, s.K * s.N);
    max_c = std::max(max_c, s.M * s.N);
  }
  std::mt19937 rng(42);
  const Buffer A = make_buffer(max_a, rng);
  const Buffer B = make_buffer(max_b, rng);
  const Buffer C = make_buffer(max_c, rng);

  std::printf("keel_gemm_ceiling: OpenBLAS %s, core %s, %d BLAS threads, %d OpenMP threads\n",
              openblas_get_config(), openblas_get_corename(), openblas_get_num_threads(),
              omp_get_max_threads());
  std::printf("  OMP_NUM_THREADS=%s OPENBLAS_NUM_THREADS=%s OPENBLAS_CORETYPE=%s\n",
              env_or("OMP_NUM_THREADS", "(unset)"), env_or("OPENBLAS_NUM_THREADS", "(unset)"),
              env_or("OPENBLAS_CORETYPE", "(unset)"));
  std::printf("  buffers %.0f MiB, best of 2 to %d calls per shape after a warm-up\n",
              static_cast<double>(max_a + max_b + max_c) * sizeof(float) / (1 << 20),
              options.repeats);

  for (int i = 0; i < 3; ++i) run_gemm(kShapes[0], A.get(), B.get(), C.get());  // warm-up

  double ceiling = 0;
  const char* ceiling_shape = "";
  for (const GemmShape& s : kShapes) {
    const double gflops = time_shape(s, options, A.get(), B.get(), C.get());
    std::printf("  %-34s %8.1f GFLOP/s\n", s.name, gflops);
    std::fflush(stdout);
    if (gflops > ceiling) {
      ceiling = gflops;
      ceiling_shape = s.name;
    }
  }
  std::printf("ceiling: %.1f GFLOP/s (%s)\n", ceiling, ceiling_shape);
  if (options.json) {
    std::printf("{\"ceiling_gflops\": %.3f, \"shape\": \"%s\", \"blas_threads\": %d}\n", ceiling,
                ceiling_shape, openblas_get_num_threads());
  }
  return 0;
}

}  // namespace
}  // namespace keel::bench

int main(int argc, char** argv) {
  try {
    return keel::bench::run(argc, argv);
  } catch (const keel::Error& e) {
    std::cerr << "keel_gemm_ceiling: " << e.what() << " (" << e.where() << ")\n";
    return 2;
  }
}
