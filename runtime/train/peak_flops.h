// MFU's denominator: the fp32 GEMM rate this rank can sustain, measured at start-up on several
// shapes (a square one and the model's own largest product) with repetitions, the best run kept,
// or given by training.peak_flops (a GPU's datasheet peak). One busy moment at start-up must not
// make every later MFU read high, so the probe keeps its best and reports its spread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace keel::runtime {

// One GEMM shape of the probe: C (m × n) = A (m × k) · Bᵀ, and the rates of its runs.
struct ProbeShape {
  int64_t m = 0, n = 0, k = 0;
  double best = 0, worst = 0;  // FLOP/s of the fastest and the slowest run
  int runs = 0;
};

struct PeakProbe {
  std::vector<ProbeShape> shapes;
  double best() const;  // the fastest run of any shape: the peak
  // "91.2 GFLOP/s, the best of 24 runs (1024x1024x1024: 88.0-91.2; 2048x1024x384: 70.5-90.1)"
  std::string describe() const;
};

// Runs each shape (m, n, k) for at least `min_runs` runs and `min_seconds`, at most 50 runs.
PeakProbe probe_peak_flops(const std::vector<ProbeShape>& shapes, int min_runs = 5,
                           double min_seconds = 0.1);

// The probe's shapes for a model: a 1024³ square and its largest product, the MLP's
// (tokens × intermediate × hidden), with the tokens of a micro-batch capped at 2048.
std::vector<ProbeShape> probe_shapes(int64_t tokens, int64_t hidden, int64_t intermediate);

}  // namespace keel::runtime
