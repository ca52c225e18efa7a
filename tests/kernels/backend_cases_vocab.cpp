// Harness cases (backend_harness.h) for tensor parallelism's vocabulary-parallel ops
// (kernels/vocab_parallel.h): one rank's slice of an uneven vocabulary, with tokens and targets
// inside and outside it and an ignored target, held against kernels::cpu on the same inputs.
#include <cmath>

#include "tests/kernels/backend_harness.h"

namespace keel::testing {
namespace {

namespace cpu = kernels::cpu;

size_t sz(int64_t n) { return static_cast<size_t>(n); }
std::vector<float> poisoned(int64_t n) { return std::vector<float>(sz(n), std::nanf("")); }

// The middle slice [v0, v0 + V) of a vocabulary of kWhole: tokens fall below, in and above it.
constexpr int64_t kWhole = 29, kV0 = 11, kV = 9;

std::vector<int32_t> tokens_of(int64_t N, uint64_t seed) {
  std::vector<int32_t> t = random_ints(sz(N), 0, static_cast<int32_t>(kWhole), seed);
  t[0] = static_cast<int32_t>(kV0), t[1] = static_cast<int32_t>(kV0 + kV - 1);  // the slice's edges
  t[2] = static_cast<int32_t>(kV0 - 1), t[3] = static_cast<int32_t>(kV0 + kV);  // just outside
  return t;
}

void embedding_forward_slice_case(BackendRun& b) {
  const int64_t N = 19, C = 13;
  const std::vector<float> table = random_floats(sz(kV * C), 60);
  const std::vector<int32_t> tokens = tokens_of(N, 61);
  std::vector<float> want = poisoned(N * C);
  cpu::embedding_forward_slice(want.data(), tokens.data(), table.data(), N, C, kV0, kV);
  auto dout = b.put(poisoned(N * C)), dtable = b.put(table);
  auto dtokens = b.put(tokens);
  b.ops().embedding_forward_slice(dout.get(), dtokens.get(), dtable.get(), N, C, kV0, kV,
                                  b.stream());
  b.expect_close("out", b.get(dout), want);
}

void embedding_backward_slice_case(BackendRun& b) {
  const int64_t N = 23, C = 5;  // tokens repeat: the scatter-add sums in order
  const std::vector<float> dout = random_floats(sz(N * C), 62),
                           dtable = random_floats(sz(kV * C), 63);
  const std::vector<int32_t> tokens = tokens_of(N, 64);
  std::vector<float> want = dtable;
  cpu::embedding_backward_slice(want.data(), dout.data(), tokens.data(), N, C, kV0, kV);
  auto d_dtable = b.put(dtable), d_dout = b.put(dout);
  auto d_tokens = b.put(tokens);
  b.ops().embedding_backward_slice(d_dtable.get(), d_dout.get(), d_tokens.get(), N, C, kV0, kV,
                                   b.stream());
  b.expect_close("dtable", b.get(d_dtable), want);
}

// Targets over the whole vocabulary, with an ignored row among them.
std::vector<int32_t> targets_of(int64_t N) {
  std::vector<int32_t> t = tokens_of(N, 65);
  t[t.size() / 2] = cpu::kIgnoreIndex;
  return t;
}

void cross_entropy_slice_max_case(BackendRun& b) {
  const int64_t N = 7;
  const std::vector<float> logits = random_floats(sz(N * kV), 66, 3.0f);
  std::vector<float> want = poisoned(N);
  cpu::cross_entropy_slice_max(want.data(), logits.data(), N, kV);
  auto dmax = b.put(poisoned(N)), dlogits = b.put(logits);
  b.ops().cross_entropy_slice_max(dmax.get(), dlogits.get(), N, kV, b.stream());
  b.expect_close("row_max", b.get(dmax), want);
}

// The row maxima as the TP group would hand them back: at least this slice's own.
std::vector<float> joined_max(const std::vector<float>& logits, int64_t N) {
  std::vector<float> m(sz(N));
  cpu::cross_entropy_slice_max(m.data(), logits.data(), N, kV);
  for (size_t i = 0; i < m.size(); i += 2) m[i] += 0.75f;  // another rank held a larger logit
  return m;
}

void cross_entropy_slice_sums_case(BackendRun& b) {
  const int64_t N = 8;
  const std::vector<float> logits = random_floats(sz(N * kV), 67, 3.0f);
  const std::vector<int32_t> targets = targets_of(N);
  const std::vector<float> row_max = joined_max(logits, N);
  std::vector<double> want(sz(2 * N), std::nan(""));
  cpu::cross_entropy_slice_sums(want.data(), logits.data(), row_max.data(), targets.data(), N, kV,
                                kV0);
  auto dstats = b.put(std::vector<double>(sz(2 * N), std::nan("")));
  auto dlogits = b.put(logits), dmax = b.put(row_max);
  auto dtargets = b.put(targets);
  b.ops().cross_entropy_slice_sums(dstats.get(), dlogits.get(), dmax.get(), dtargets.get(), N, kV,
                                   kV0, b.stream());
  b.expect_close("stats", b.get(dstats), want);
}

void cross_entropy_slice_finish_case(BackendRun& b) {
  const int64_t N = 8;
  const std::vector<float> logits = random_floats(sz(N * kV), 68, 3.0f);
  const std::vector<int32_t> targets = targets_of(N);
  const std::vector<float> row_max = joined_max(logits, N);
  // The sums as if joined over the group: this slice's own and more from the other ranks.
  std::vector<double> stats(sz(2 * N));
  cpu::cross_entropy_slice_sums(stats.data(), logits.data(), row_max.data(), targets.data(), N, kV,
                                kV0);
  for (int64_t n = 0; n < N; ++n) {
    stats[sz(n)] += 1.5 + 0.25 * static_cast<double>(n);
    const int32_t t = targets[sz(n)];
    if (t >= 0 && (t < kV0 || t >= kV0 + kV))
      stats[sz(N + n)] = 0.5 - 0.125 * static_cast<double>(n);
  }
  for (const bool backward : {false, true}) {
    std::vector<float> want_losses = poisoned(N), want_logits = logits;
    cpu::cross_entropy_slice_finish(want_losses.data(), want_logits.data(), row_max.data(),
                                    stats.data(), targets.data(), N, kV, kV0, 0.25f, backward);
    auto dlosses = b.put(poisoned(N)), dlogits = b.put(logits), dmax = b.put(row_max);
    auto dstats = b.put(stats);
    auto dtargets = b.put(targets);
    b.ops().cross_entropy_slice_finish(dlosses.get(), dlogits.get(), dmax.get(), dstats.get(),
                                       dtargets.get(), N, kV, kV0, 0.25f, backward, b.stream());
    b.expect_close("losses", b.get(dlosses), want_losses);
    b.expect_close(backward ? "dlogits" : "logits (unchanged)", b.get(dlogits), want_logits);
  }
}

// As for the whole-vocabulary ops (backend_cases_layers.cpp): lookups are copies, the softmax's
// sums rounding, its statistics accumulated in double.
constexpr double kExact = 0.0, kFp32 = 1e-5, kDouble = 1e-12;

}  // namespace

std::vector<OpCase> vocab_parallel_cases() {
  return {
      {"embedding_forward_slice",
       {"embedding_forward_slice"},
       kExact,
       embedding_forward_slice_case},
      {"embedding_backward_slice",
       {"embedding_backward_slice"},
       kExact,
       embedding_backward_slice_case},
      {"cross_entropy_slice_max",
       {"cross_entropy_slice_max"},
       kExact,
       cross_entropy_slice_max_case},
      {"cross_entropy_slice_sums",
       {"cross_entropy_slice_sums"},
       kDouble,
       cross_entropy_slice_sums_case},
      {"cross_entropy_slice_finish",
       {"cross_entropy_slice_finish"},
       kFp32,
       cross_entropy_slice_finish_case},
  };
}

}  // namespace keel::testing
