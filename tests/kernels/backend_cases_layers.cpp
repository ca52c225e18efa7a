// Harness cases (backend_harness.h) for the elementwise ops, the GEMMs and the model's layers:
// random inputs of awkward sizes (1, primes, just past a block), outputs poisoned with NaN unless
// the op accumulates into them, the result held against kernels::cpu on the same inputs.
#include <omp.h>

#include <cmath>
#include <limits>

#include "tests/kernels/backend_harness.h"

namespace keel::testing {
namespace {

namespace cpu = kernels::cpu;

size_t sz(int64_t n) { return static_cast<size_t>(n); }
std::vector<float> poisoned(int64_t n) { return std::vector<float>(sz(n), std::nanf("")); }

constexpr int64_t kLengths[] = {1, 13, 257, 4099};

void add_inplace_case(BackendRun& b) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = random_floats(sz(n), 1), y = random_floats(sz(n), 2);
    std::vector<float> want = y;
    cpu::add_inplace(want.data(), x.data(), n);
    auto dy = b.put(y), dx = b.put(x);
    b.ops().add_inplace(dy.get(), dx.get(), n, b.stream());
    b.expect_close("y", b.get(dy), want);
  }
}

void add_case(BackendRun& b) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = random_floats(sz(n), 3), y = random_floats(sz(n), 4);
    std::vector<float> want = poisoned(n);
    cpu::add(want.data(), x.data(), y.data(), n);
    auto dout = b.put(poisoned(n)), dx = b.put(x), dy = b.put(y);
    b.ops().add(dout.get(), dx.get(), dy.get(), n, b.stream());
    b.expect_close("out", b.get(dout), want);
  }
}

void scale_inplace_case(BackendRun& b) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = random_floats(sz(n), 5);
    std::vector<float> want = x;
    cpu::scale_inplace(want.data(), -0.37f, n);
    auto dx = b.put(x);
    b.ops().scale_inplace(dx.get(), -0.37f, n, b.stream());
    b.expect_close("x", b.get(dx), want);
  }
}

void sum_squares_case(BackendRun& b) {
  for (int64_t n : kLengths) {
    const std::vector<float> x = random_floats(sz(n), 6, 3.0f);
    auto dx = b.put(x);
    b.expect_close("sum", b.ops().sum_squares(dx.get(), n, b.stream()),
                   cpu::sum_squares(x.data(), n));
  }
}

void count_nonfinite_case(BackendRun& b) {
  for (int64_t n : kLengths) {
    std::vector<float> x = random_floats(sz(n), 7);
    for (size_t i = 0; i < x.size(); i += 5) x[i] = std::numeric_limits<float>::infinity();
    for (size_t i = 2; i < x.size(); i += 7) x[i] = std::nanf("");
    auto dx = b.put(x);
    const int64_t got = b.ops().count_nonfinite(dx.get(), n, b.stream());
    b.expect_same("count", std::vector<int64_t>{got}, {cpu::count_nonfinite(x.data(), n)});
  }
}

void gemm_case(BackendRun& b) {
  struct Dims {
    int64_t M, N, K;
  };
  for (const Dims d : {Dims{1, 1, 1}, Dims{7, 13, 5}, Dims{33, 17, 65}, Dims{4, 3, 0}}) {
    for (const bool ta : {false, true}) {
      for (const bool tb : {false, true}) {
        const int64_t lda = (ta ? d.M : d.K) + 3, ldb = (tb ? d.K : d.N) + 2, ldc = d.N + 1;
        const std::vector<float> A = random_floats(sz((ta ? d.K : d.M) * lda), 8);
        const std::vector<float> B = random_floats(sz((tb ? d.N : d.K) * ldb), 9);
        const std::vector<float> C = random_floats(sz(d.M * ldc), 10);
        std::vector<float> want = C;
        cpu::gemm(ta, tb, d.M, d.N, d.K, 0.75f, A.data(), lda, B.data(), ldb, 0.5f, want.data(),
                  ldc);
        auto dA = b.put(A), dB = b.put(B), dC = b.put(C);
        b.ops().gemm(ta, tb, d.M, d.N, d.K, 0.75f, dA.get(), lda, dB.get(), ldb, 0.5f, dC.get(),
                     ldc, b.stream());
        b.expect_close("C", b.get(dC), want);
      }
    }
  }
}

void matmul_forward_case(BackendRun& b) {
  for (const auto [N, C, OC] : {std::array<int64_t, 3>{1, 1, 1}, {5, 7, 11}, {37, 64, 3}}) {
    const std::vector<float> inp = random_floats(sz(N * C), 11), w = random_floats(sz(OC * C), 12);
    std::vector<float> want = poisoned(N * OC);
    cpu::matmul_forward(want.data(), inp.data(), w.data(), N, C, OC);
    auto dout = b.put(poisoned(N * OC)), dinp = b.put(inp), dw = b.put(w);
    b.ops().matmul_forward(dout.get(), dinp.get(), dw.get(), N, C, OC, b.stream());
    b.expect_close("out", b.get(dout), want);
  }
}

void matmul_backward_case(BackendRun& b) {
  const int64_t N = 9, C = 7, OC = 13;
  const std::vector<float> dout = random_floats(sz(N * OC), 13), inp = random_floats(sz(N * C), 14);
  const std::vector<float> w = random_floats(sz(OC * C), 15);
  const std::vector<float> dinp0 = random_floats(sz(N * C), 16),
                           dw0 = random_floats(sz(OC * C), 17);
  for (const bool accumulate : {false, true}) {
    for (const bool with_dinp : {false, true}) {
      std::vector<float> want_dinp = dinp0, want_dw = dw0;
      cpu::matmul_backward(with_dinp ? want_dinp.data() : nullptr, want_dw.data(), dout.data(),
                           inp.data(), w.data(), N, C, OC, accumulate);
      auto d_dinp = b.put(dinp0), d_dw = b.put(dw0), d_dout = b.put(dout), d_inp = b.put(inp);
      auto d_w = b.put(w);
      b.ops().matmul_backward(with_dinp ? d_dinp.get() : nullptr, d_dw.get(), d_dout.get(),
                              d_inp.get(), d_w.get(), N, C, OC, accumulate, b.stream());
      b.expect_close("dinp", b.get(d_dinp), want_dinp);
      b.expect_close("dweight", b.get(d_dw), want_dw);
    }
  }
}

void embedding_forward_case(BackendRun& b) {
  const int64_t N = 19, C = 13, V = 7;
  const std::vector<float> table = random_floats(sz(V * C), 18);
  const std::vector<int32_t> tokens = random_ints(sz(N), 0, static_cast<int32_t>(V), 19);
  std::vector<float> want = poisoned(N * C);
  cpu::embedding_forward(want.data(), tokens.data(), table.data(), N, C, V);
  auto dout = b.put(poisoned(N * C)), dtable = b.put(table);
  auto dtokens = b.put(tokens);
  b.ops().embedding_forward(dout.get(), dtokens.get(), dtable.get(), N, C, V, b.stream());
  b.expect_close("out", b.get(dout), want);
}

void embedding_backward_case(BackendRun& b) {
  const int64_t N = 23, C = 5, V = 4;  // tokens repeat: the scatter-add sums in order
  const std::vector<float> dout = random_floats(sz(N * C), 20),
                           dtable = random_floats(sz(V * C), 21);
  const std::vector<int32_t> tokens = random_ints(sz(N), 0, static_cast<int32_t>(V), 22);
  std::vector<float> want = dtable;
  cpu::embedding_backward(want.data(), dout.data(), tokens.data(), N, C, V);
  auto d_dtable = b.put(dtable), d_dout = b.put(dout);
  auto d_tokens = b.put(tokens);
  b.ops().embedding_backward(d_dtable.get(), d_dout.get(), d_tokens.get(), N, C, V, b.stream());
  b.expect_close("dtable", b.get(d_dtable), want);
}

constexpr float kNormEps = 1e-5f;

void rmsnorm_forward_case(BackendRun& b) {
  for (const auto [N, C] : {std::array<int64_t, 2>{1, 1}, {3, 257}, {17, 64}}) {
    const std::vector<float> x = random_floats(sz(N * C), 23), w = random_floats(sz(C), 24);
    std::vector<float> want_out = poisoned(N * C), want_rstd = poisoned(N);
    cpu::rmsnorm_forward(want_out.data(), want_rstd.data(), x.data(), w.data(), N, C, kNormEps);
    auto dout = b.put(poisoned(N * C)), drstd = b.put(poisoned(N)), dx = b.put(x), dw = b.put(w);
    b.ops().rmsnorm_forward(dout.get(), drstd.get(), dx.get(), dw.get(), N, C, kNormEps,
                            b.stream());
    b.expect_close("out", b.get(dout), want_out);
    b.expect_close("rstd", b.get(drstd), want_rstd);
  }
}

void rmsnorm_backward_case(BackendRun& b) {
  const int64_t N = 11, C = 259;
  const std::vector<float> x = random_floats(sz(N * C), 25), w = random_floats(sz(C), 26);
  const std::vector<float> dout = random_floats(sz(N * C), 27);
  std::vector<float> out(sz(N * C)), rstd(sz(N));
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, kNormEps);
  for (const bool accumulate : {false, true}) {
    const std::vector<float> dx0 = accumulate ? random_floats(sz(N * C), 28) : poisoned(N * C);
    const std::vector<float> dw0 = random_floats(sz(C), 29);
    std::vector<float> want_dx = dx0, want_dw = dw0;
    cpu::rmsnorm_backward(want_dx.data(), want_dw.data(), dout.data(), x.data(), w.data(),
                          rstd.data(), N, C, accumulate);
    auto d_dx = b.put(dx0), d_dw = b.put(dw0), d_dout = b.put(dout), d_x = b.put(x);
    auto d_w = b.put(w), d_rstd = b.put(rstd);
    b.ops().rmsnorm_backward(d_dx.get(), d_dw.get(), d_dout.get(), d_x.get(), d_w.get(),
                             d_rstd.get(), N, C, accumulate, b.stream());
    b.expect_close("dx", b.get(d_dx), want_dx);
    b.expect_close("dweight", b.get(d_dw), want_dw);
  }
}

// Rows of a fused qkv buffer: the H rotated heads first, then floats rope must leave alone.
void rope_case(BackendRun& b, bool backward) {
  const int64_t B = 2, T = 5, H = 3, D = 8, row_stride = H * D + 7;
  std::vector<float> cos(sz(T * D / 2)), sin(sz(T * D / 2));
  cpu::rope_tables(cos.data(), sin.data(), T, D, 10000.0);
  const std::vector<float> x = random_floats(sz(B * T * row_stride), 30);
  std::vector<float> want = x;
  (backward ? cpu::rope_backward : cpu::rope_forward)(want.data(), cos.data(), sin.data(), B, T, H,
                                                      D, row_stride, {});
  auto dx = b.put(x), dcos = b.put(cos), dsin = b.put(sin);
  (backward ? b.ops().rope_backward : b.ops().rope_forward)(dx.get(), dcos.get(), dsin.get(), B, T,
                                                            H, D, row_stride, b.stream());
  b.expect_close("x", b.get(dx), want);
}
void rope_forward_case(BackendRun& b) { rope_case(b, false); }
void rope_backward_case(BackendRun& b) { rope_case(b, true); }

void swiglu_forward_case(BackendRun& b) {
  for (const auto [N, I] : {std::array<int64_t, 2>{1, 1}, {7, 259}}) {
    const std::vector<float> gate_up = random_floats(sz(N * 2 * I), 31, 4.0f);
    std::vector<float> want = poisoned(N * I);
    cpu::swiglu_forward(want.data(), gate_up.data(), N, I);
    auto dout = b.put(poisoned(N * I)), dgu = b.put(gate_up);
    b.ops().swiglu_forward(dout.get(), dgu.get(), N, I, b.stream());
    b.expect_close("out", b.get(dout), want);
  }
}

void swiglu_backward_case(BackendRun& b) {
  const int64_t N = 7, I = 259;
  const std::vector<float> gate_up = random_floats(sz(N * 2 * I), 32, 4.0f);
  const std::vector<float> dout = random_floats(sz(N * I), 33);
  std::vector<float> want = poisoned(N * 2 * I);
  cpu::swiglu_backward(want.data(), dout.data(), gate_up.data(), N, I);
  auto d_dgu = b.put(poisoned(N * 2 * I)), d_dout = b.put(dout), d_gu = b.put(gate_up);
  b.ops().swiglu_backward(d_dgu.get(), d_dout.get(), d_gu.get(), N, I, b.stream());
  b.expect_close("dgate_up", b.get(d_dgu), want);
}

struct AttentionDims {
  int64_t B, T, H, Hkv, D;
  int64_t qkv() const { return B * T * (H + 2 * Hkv) * D; }
  int64_t out() const { return B * T * H * D; }
  int64_t lse() const { return B * H * T; }
};
constexpr AttentionDims kAttention[] = {{1, 1, 1, 1, 4}, {2, 7, 4, 2, 12}, {1, 33, 2, 1, 8}};

// A backend's own workspace, as its query sizes it.
BackendBuffer<float> attention_workspace(BackendRun& b, const AttentionDims& d) {
  return BackendBuffer<float>(b.ops(), b.ops().attention_workspace_floats(d.B, d.T, d.H, d.Hkv, d.D,
                                                                          omp_get_max_threads()));
}
std::vector<float> cpu_attention_workspace(const AttentionDims& d) {
  return std::vector<float>(
      cpu::attention_workspace_floats(d.B, d.T, d.H, d.Hkv, d.D, omp_get_max_threads()));
}

void attention_forward_case(BackendRun& b) {
  for (const AttentionDims& d : kAttention) {
    const std::vector<float> qkv = random_floats(sz(d.qkv()), 34);
    std::vector<float> want_out = poisoned(d.out()), want_lse = poisoned(d.lse());
    std::vector<float> ws = cpu_attention_workspace(d);
    cpu::attention_forward(want_out.data(), want_lse.data(), qkv.data(), d.B, d.T, d.H, d.Hkv, d.D,
                           ws.data());
    auto dout = b.put(poisoned(d.out())), dlse = b.put(poisoned(d.lse())), dqkv = b.put(qkv);
    BackendBuffer<float> dws = attention_workspace(b, d);
    b.ops().attention_forward(dout.get(), dlse.get(), dqkv.get(), d.B, d.T, d.H, d.Hkv, d.D,
                              dws.get(), b.stream());
    b.expect_close("out", b.get(dout), want_out);
    b.expect_close("lse", b.get(dlse), want_lse);
  }
}

void attention_backward_case(BackendRun& b) {
  for (const AttentionDims& d : kAttention) {
    const std::vector<float> qkv = random_floats(sz(d.qkv()), 35);
    const std::vector<float> dout = random_floats(sz(d.out()), 36);
    std::vector<float> out(sz(d.out())), lse(sz(d.lse()));
    std::vector<float> ws = cpu_attention_workspace(d);
    cpu::attention_forward(out.data(), lse.data(), qkv.data(), d.B, d.T, d.H, d.Hkv, d.D,
                           ws.data());
    std::vector<float> want = poisoned(d.qkv());
    cpu::attention_backward(want.data(), dout.data(), qkv.data(), out.data(), lse.data(), d.B, d.T,
                            d.H, d.Hkv, d.D, ws.data());
    auto d_dqkv = b.put(poisoned(d.qkv())), d_dout = b.put(dout), d_qkv = b.put(qkv);
    auto d_out = b.put(out), d_lse = b.put(lse);
    BackendBuffer<float> dws = attention_workspace(b, d);
    b.ops().attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(),
                               d.B, d.T, d.H, d.Hkv, d.D, dws.get(), b.stream());
    b.expect_close("dqkv", b.get(d_dqkv), want);
  }
}

void attention_cached_case(BackendRun& b) {
  struct Dims {
    int64_t n, p0, H, Hkv, D;
  };
  for (const Dims d : {Dims{1, 0, 1, 1, 4}, Dims{3, 5, 4, 2, 8}, Dims{1, 40, 2, 2, 16}}) {
    const int64_t positions = d.p0 + d.n;
    const std::vector<float> q = random_floats(sz(d.n * d.H * d.D), 37);
    const std::vector<float> k = random_floats(sz(positions * d.Hkv * d.D), 38);
    const std::vector<float> v = random_floats(sz(positions * d.Hkv * d.D), 39);
    std::vector<float> ws(cpu::attention_cached_workspace_floats(positions, omp_get_max_threads()));
    std::vector<float> want = poisoned(d.n * d.H * d.D);
    cpu::attention_cached(want.data(), q.data(), k.data(), v.data(), d.n, d.p0, d.H, d.Hkv, d.D,
                          ws.data());
    auto dout = b.put(poisoned(d.n * d.H * d.D)), dq = b.put(q), dk = b.put(k), dv = b.put(v);
    BackendBuffer<float> dws(
        b.ops(), b.ops().attention_cached_workspace_floats(positions, omp_get_max_threads()));
    b.ops().attention_cached(dout.get(), dq.get(), dk.get(), dv.get(), d.n, d.p0, d.H, d.Hkv, d.D,
                             dws.get(), b.stream());
    b.expect_close("out", b.get(dout), want);
  }
}

// Targets with an ignored row among them.
std::vector<int32_t> targets_of(int64_t N, int64_t V) {
  std::vector<int32_t> t = random_ints(sz(N), 0, static_cast<int32_t>(V), 40);
  t[t.size() / 2] = cpu::kIgnoreIndex;
  return t;
}

void cross_entropy_forward_case(BackendRun& b) {
  const int64_t N = 5, V = 1031;
  const std::vector<float> logits = random_floats(sz(N * V), 41, 3.0f);
  const std::vector<int32_t> targets = targets_of(N, V);
  std::vector<float> want = poisoned(N);
  cpu::cross_entropy_forward(want.data(), logits.data(), targets.data(), N, V);
  auto dlosses = b.put(poisoned(N)), dlogits = b.put(logits);
  auto dtargets = b.put(targets);
  b.ops().cross_entropy_forward(dlosses.get(), dlogits.get(), dtargets.get(), N, V, b.stream());
  b.expect_close("losses", b.get(dlosses), want);
  b.expect_close("logits (unchanged)", b.get(dlogits), logits);
}

void cross_entropy_forward_backward_case(BackendRun& b) {
  const int64_t N = 6, V = 257;
  const std::vector<float> logits = random_floats(sz(N * V), 42, 3.0f);
  const std::vector<int32_t> targets = targets_of(N, V);
  std::vector<float> want_losses = poisoned(N), want_grad = logits;
  cpu::cross_entropy_forward_backward(want_losses.data(), want_grad.data(), targets.data(), N, V,
                                      0.25f);
  auto dlosses = b.put(poisoned(N)), dlogits = b.put(logits);
  auto dtargets = b.put(targets);
  b.ops().cross_entropy_forward_backward(dlosses.get(), dlogits.get(), dtargets.get(), N, V, 0.25f,
                                         b.stream());
  b.expect_close("losses", b.get(dlosses), want_losses);
  b.expect_close("dlogits", b.get(dlogits), want_grad);
}

// The CUDA backend's documented agreement with the CPU (docs/CUDA.md): the same bits for
// copies and sums of two terms, rounding (1e-5 relative, per tensor) where its arithmetic
// differs (expf, reduction order), 1e-12 for a sum accumulated in double.
constexpr double kExact = 0.0, kFp32 = 1e-5, kDouble = 1e-12;

}  // namespace

std::vector<OpCase> layer_cases() {
  return {
      {"add_inplace", {"add_inplace"}, kExact, add_inplace_case},
      {"add", {"add"}, kExact, add_case},
      {"scale_inplace", {"scale_inplace"}, kExact, scale_inplace_case},
      {"sum_squares", {"sum_squares"}, kDouble, sum_squares_case},
      {"count_nonfinite", {"count_nonfinite"}, kExact, count_nonfinite_case},
      {"gemm", {"gemm"}, kFp32, gemm_case},
      {"matmul_forward", {"matmul_forward"}, kFp32, matmul_forward_case},
      {"matmul_backward", {"matmul_backward"}, kFp32, matmul_backward_case},
      {"embedding_forward", {"embedding_forward"}, kExact, embedding_forward_case},
      {"embedding_backward", {"embedding_backward"}, kExact, embedding_backward_case},
      {"rmsnorm_forward", {"rmsnorm_forward"}, kFp32, rmsnorm_forward_case},
      {"rmsnorm_backward", {"rmsnorm_backward"}, kFp32, rmsnorm_backward_case},
      {"rope_forward", {"rope_forward"}, kFp32, rope_forward_case},
      {"rope_backward", {"rope_backward"}, kFp32, rope_backward_case},
      {"swiglu_forward", {"swiglu_forward"}, kFp32, swiglu_forward_case},
      {"swiglu_backward", {"swiglu_backward"}, kFp32, swiglu_backward_case},
      {"attention_forward",
       {"attention_forward", "attention_workspace_floats"},
       kFp32,
       attention_forward_case},
      {"attention_backward",
       {"attention_backward", "attention_workspace_floats"},
       kFp32,
       attention_backward_case},
      {"attention_cached",
       {"attention_cached", "attention_cached_workspace_floats"},
       kFp32,
       attention_cached_case},
      {"cross_entropy_forward", {"cross_entropy_forward"}, kFp32, cross_entropy_forward_case},
      {"cross_entropy_forward_backward",
       {"cross_entropy_forward_backward"},
       kFp32,
       cross_entropy_forward_backward_case},
  };
}

}  // namespace keel::testing
