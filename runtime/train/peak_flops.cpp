#include "runtime/train/peak_flops.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "kernels/memory_plan.h"
#include "kernels/ops.h"

namespace keel::runtime {

double PeakProbe::best() const {
  double b = 0;
  for (const ProbeShape& s : shapes) b = std::max(b, s.best);
  return b;
}

std::string PeakProbe::describe() const {
  int runs = 0;
  std::string each;
  for (const ProbeShape& s : shapes) {
    char text[128];
    std::snprintf(text, sizeof text, "%s%lldx%lldx%lld: %.1f-%.1f", each.empty() ? "" : "; ",
                  static_cast<long long>(s.m), static_cast<long long>(s.n),
                  static_cast<long long>(s.k), s.worst / 1e9, s.best / 1e9);
    each += text;
    runs += s.runs;
  }
  char head[96];
  std::snprintf(head, sizeof head, "%.1f GFLOP/s, the best of %d runs (", best() / 1e9, runs);
  return head + each + " GFLOP/s)";
}

PeakProbe probe_peak_flops(const std::vector<ProbeShape>& shapes, int min_runs,
                           double min_seconds) {
  using Clock = std::chrono::steady_clock;
  constexpr int kMaxRuns = 50;
  PeakProbe probe{shapes};
  for (ProbeShape& s : probe.shapes) {
    MemoryPlan plan("gemm probe");
    const auto a = plan.add("a", DType::F32, {s.m, s.k});
    const auto b = plan.add("b", DType::F32, {s.n, s.k});
    const auto c = plan.add("c", DType::F32, {s.m, s.n});
    plan.allocate();  // zeroed, and its pages touched before the first timed run
    const kernels::Ops& k = kernels::ops(plan[c].device());
    const double flops =
        2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k);
    s.best = 0, s.worst = 0, s.runs = 0;
    const auto start = Clock::now();
    while (s.runs < kMaxRuns &&
           (s.runs < min_runs ||
            std::chrono::duration<double>(Clock::now() - start).count() < min_seconds)) {
      const auto t0 = Clock::now();
      k.gemm(false, true, s.m, s.n, s.k, 1.0f, plan[a].f32(), s.k, plan[b].f32(), s.k, 0.0f,
             plan[c].f32(), s.n, {});
      const double rate = flops / std::chrono::duration<double>(Clock::now() - t0).count();
      s.best = std::max(s.best, rate);
      s.worst = s.runs == 0 ? rate : std::min(s.worst, rate);
      ++s.runs;
    }
  }
  return probe;
}

std::vector<ProbeShape> probe_shapes(int64_t tokens, int64_t hidden, int64_t intermediate) {
  std::vector<ProbeShape> shapes = {{1024, 1024, 1024}};
  const ProbeShape mlp{std::min<int64_t>(tokens, 2048), intermediate, hidden};
  if (mlp.m * mlp.n * mlp.k >= 64 * 64 * 64) shapes.push_back(mlp);  // too small says nothing
  return shapes;
}

}  // namespace keel::runtime
