// Harness cases (backend_harness.h) for the Mixture-of-Experts ops (kernels/moe.h): a router over
// awkward sizes (E = 5, k = 2, one row per sequence and longer sequences), and the row moves
// with dropped slots (-1) among the kept ones, held against kernels::cpu on the same inputs.
#include <cmath>

#include "tests/kernels/backend_harness.h"

namespace keel::testing {
namespace {

namespace cpu = kernels::cpu;

size_t sz(int64_t n) { return static_cast<size_t>(n); }
std::vector<float> poisoned(int64_t n) { return std::vector<float>(sz(n), std::nanf("")); }

constexpr int64_t kB = 3, kT = 7, kN = kB * kT, kE = 5, kK = 2, kC = 13;

// The router's outputs on fixed logits, as the CPU computes them.
struct Routed {
  std::vector<float> logits = random_floats(sz(kN * kE), 70, 2.0f);
  std::vector<float> probs = std::vector<float>(sz(kN * kE)), lse = std::vector<float>(sz(kN)),
                     gate = std::vector<float>(sz(kN * kK));
  std::vector<int32_t> sel = std::vector<int32_t>(sz(kN * kK));
  Routed() {
    cpu::moe_router_forward(probs.data(), lse.data(), sel.data(), gate.data(), logits.data(), kN,
                            kE, kK);
  }
};

// Each slot's row in a buffer of kN·kK rows, a permutation (5 is prime to 42), every fifth
// slot dropped.
std::vector<int32_t> slot_rows() {
  std::vector<int32_t> rows(sz(kN * kK));
  for (int64_t i = 0; i < kN * kK; ++i)
    rows[sz(i)] = i % 5 == 4 ? -1 : static_cast<int32_t>((i * 5) % (kN * kK));
  return rows;
}

void moe_router_forward_case(BackendRun& b) {
  const Routed want;
  auto logits = b.put(want.logits), probs = b.put(poisoned(kN * kE)), lse = b.put(poisoned(kN)),
       gate = b.put(poisoned(kN * kK));
  auto sel = b.put(std::vector<int32_t>(sz(kN * kK), -7));
  b.ops().moe_router_forward(probs.get(), lse.get(), sel.get(), gate.get(), logits.get(), kN, kE,
                             kK, b.stream());
  b.expect_close("probs", b.get(probs), want.probs);
  b.expect_close("lse", b.get(lse), want.lse);
  b.expect_same("sel", b.get(sel), want.sel);
  b.expect_close("gate", b.get(gate), want.gate);
}

void moe_router_stats_case(BackendRun& b) {
  const Routed r;
  std::vector<float> counts(sz(kB * kE), 1.0f), psum(sz(kB * kE), 0.5f);
  double zsum = 2.0;
  cpu::moe_router_stats(counts.data(), psum.data(), &zsum, r.probs.data(), r.lse.data(),
                        r.sel.data(), kB, kT, kE, kK);
  auto dcounts = b.put(std::vector<float>(sz(kB * kE), 1.0f)),
       dpsum = b.put(std::vector<float>(sz(kB * kE), 0.5f));
  auto probs = b.put(r.probs), lse = b.put(r.lse);
  auto sel = b.put(r.sel);
  double got = 2.0;
  b.ops().moe_router_stats(dcounts.get(), dpsum.get(), &got, probs.get(), lse.get(), sel.get(), kB,
                           kT, kE, kK, b.stream());
  b.expect_close("counts", b.get(dcounts), counts);
  b.expect_close("psum", b.get(dpsum), psum);
  b.expect_close("zsum", got, zsum);
}

void moe_router_backward_case(BackendRun& b) {
  const Routed r;
  const std::vector<float> dgate = random_floats(sz(kN * kK), 71),
                           aux = random_floats(sz(kB * kE), 72, 0.1f);
  std::vector<float> want = poisoned(kN * kE);
  cpu::moe_router_backward(want.data(), dgate.data(), r.probs.data(), r.lse.data(), r.sel.data(),
                           r.gate.data(), aux.data(), 0.01f, kN, kT, kE, kK);
  auto dz = b.put(poisoned(kN * kE)), ddgate = b.put(dgate), daux = b.put(aux),
       probs = b.put(r.probs), lse = b.put(r.lse), gate = b.put(r.gate);
  auto sel = b.put(r.sel);
  b.ops().moe_router_backward(dz.get(), ddgate.get(), probs.get(), lse.get(), sel.get(), gate.get(),
                              daux.get(), 0.01f, kN, kT, kE, kK, b.stream());
  b.expect_close("dlogits", b.get(dz), want);
}

void moe_gather_rows_case(BackendRun& b) {
  const std::vector<float> in = random_floats(sz(kN * kC), 73);
  std::vector<int32_t> rows = slot_rows();
  for (int32_t& r : rows) r = r < 0 ? -1 : r % static_cast<int32_t>(kN);
  std::vector<float> want = poisoned(kN * kK * kC);
  cpu::moe_gather_rows(want.data(), in.data(), rows.data(), kN * kK, kC);
  auto out = b.put(poisoned(kN * kK * kC)), din = b.put(in);
  auto drows = b.put(rows);
  b.ops().moe_gather_rows(out.get(), din.get(), drows.get(), kN * kK, kC, b.stream());
  b.expect_close("out", b.get(out), want);
}

void moe_combine_case(BackendRun& b) {
  const std::vector<float> in = random_floats(sz(kN * kK * kC), 74),
                           weight = random_floats(sz(kN * kK), 75);
  const std::vector<int32_t> rows = slot_rows();
  std::vector<float> want = poisoned(kN * kC);
  cpu::moe_combine(want.data(), in.data(), rows.data(), weight.data(), kN, kK, kC);
  auto out = b.put(poisoned(kN * kC)), din = b.put(in), dw = b.put(weight);
  auto drows = b.put(rows);
  b.ops().moe_combine(out.get(), din.get(), drows.get(), dw.get(), kN, kK, kC, b.stream());
  b.expect_close("out", b.get(out), want);
}

void moe_combine_backward_case(BackendRun& b) {
  const std::vector<float> in = random_floats(sz(kN * kK * kC), 76),
                           weight = random_floats(sz(kN * kK), 77),
                           dout = random_floats(sz(kN * kC), 78);
  const std::vector<int32_t> rows = slot_rows();
  // Rows no slot names keep what they held.
  std::vector<float> want_din(sz(kN * kK * kC), 3.0f), want_dw = poisoned(kN * kK);
  cpu::moe_combine_backward(want_din.data(), want_dw.data(), dout.data(), in.data(), rows.data(),
                            weight.data(), kN, kK, kC);
  auto din = b.put(std::vector<float>(sz(kN * kK * kC), 3.0f)), dw = b.put(poisoned(kN * kK)),
       ddout = b.put(dout), dinput = b.put(in), dweight = b.put(weight);
  auto drows = b.put(rows);
  b.ops().moe_combine_backward(din.get(), dw.get(), ddout.get(), dinput.get(), drows.get(),
                               dweight.get(), kN, kK, kC, b.stream());
  b.expect_close("din", b.get(din), want_din);
  b.expect_close("dweight", b.get(dw), want_dw);
}

void moe_add_gathered_case(BackendRun& b) {
  const std::vector<float> in = random_floats(sz(kN * kK * kC), 79),
                           start = random_floats(sz(kN * kC), 80);
  const std::vector<int32_t> rows = slot_rows();
  std::vector<float> want = start;
  cpu::moe_add_gathered(want.data(), in.data(), rows.data(), kN, kK, kC);
  auto out = b.put(start), din = b.put(in);
  auto drows = b.put(rows);
  b.ops().moe_add_gathered(out.get(), din.get(), drows.get(), kN, kK, kC, b.stream());
  b.expect_close("out", b.get(out), want);
}

// As the layers' cases (backend_cases_layers.cpp): the same bits for moves, 1e-5 where
// arithmetic may round differently.
constexpr double kExact = 0.0, kFp32 = 1e-5;

}  // namespace

std::vector<OpCase> moe_cases() {
  return {
      {"moe_router_forward", {"moe_router_forward"}, kFp32, moe_router_forward_case},
      {"moe_router_stats", {"moe_router_stats"}, kFp32, moe_router_stats_case},
      {"moe_router_backward", {"moe_router_backward"}, kFp32, moe_router_backward_case},
      {"moe_gather_rows", {"moe_gather_rows"}, kExact, moe_gather_rows_case},
      {"moe_combine", {"moe_combine"}, kFp32, moe_combine_case},
      {"moe_combine_backward", {"moe_combine_backward"}, kFp32, moe_combine_backward_case},
      {"moe_add_gathered", {"moe_add_gathered"}, kFp32, moe_add_gathered_case},
  };
}

}  // namespace keel::testing
