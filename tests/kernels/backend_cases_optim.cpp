// Harness cases (backend_harness.h) for the optimizers' ops: AdamW, the 8-bit blockwise codes and
// AdamW8bit, Adafactor whole and phase by phase, and GaLore's linear algebra in double. Running
// state is random but valid (second moments positive); matrices carry row padding (ld > cols).
#include <cmath>

#include "tests/kernels/backend_harness.h"

namespace keel::testing {
namespace {

namespace cpu = kernels::cpu;

size_t sz(int64_t n) { return static_cast<size_t>(n); }
std::vector<float> poisoned(int64_t n) { return std::vector<float>(sz(n), std::nanf("")); }
std::vector<float> positive(int64_t n, uint64_t seed) {
  std::vector<float> v = random_floats(sz(n), seed);
  for (float& x : v) x = x * x + 1e-3f;
  return v;
}
std::vector<double> random_doubles(int64_t n, uint64_t seed) {
  const std::vector<float> f = random_floats(sz(n), seed);
  return std::vector<double>(f.begin(), f.end());
}

void adamw_step_case(BackendRun& b) {
  cpu::AdamWHyper h;
  h.lr = 1e-2f, h.weight_decay = 0.1f, h.step = 3, h.grad_scale = 0.37f;
  for (const int64_t n : {1, 4099}) {
    const std::vector<float> p = random_floats(sz(n), 1), m = random_floats(sz(n), 2);
    const std::vector<float> v = positive(n, 3), g = random_floats(sz(n), 4);
    std::vector<float> wp = p, wm = m, wv = v;
    cpu::adamw_step(wp.data(), wm.data(), wv.data(), g.data(), n, h);
    auto dp = b.put(p), dm = b.put(m), dv = b.put(v), dg = b.put(g);
    b.ops().adamw_step(dp.get(), dm.get(), dv.get(), dg.get(), n, h, b.stream());
    b.expect_close("param", b.get(dp), wp);
    b.expect_close("m", b.get(dm), wm);
    b.expect_close("v", b.get(dv), wv);
  }
}

struct Blocks {
  int64_t n, block;
  int64_t count() const { return (n + block - 1) / block; }
};
constexpr Blocks kBlocks[] = {{1, 64}, {1000, 256}, {4097, 4096}};

void quantize_blockwise_case(BackendRun& b) {
  const cpu::QuantTable table(cpu::dynamic_map(true));
  for (const Blocks& q : kBlocks) {
    std::vector<float> x = random_floats(sz(q.n), 5);
    if (q.n > 300) std::fill(x.begin() + 256, x.begin() + 300, 0.0f);  // an all-zero block
    std::vector<uint8_t> want_codes(sz(q.n));
    std::vector<float> want_absmax = poisoned(q.count());
    cpu::quantize_blockwise(want_codes.data(), want_absmax.data(), x.data(), q.n, q.block, table);
    auto dcodes = b.put(std::vector<uint8_t>(sz(q.n), 0xAB));
    auto dabsmax = b.put(poisoned(q.count())), dx = b.put(x);
    b.ops().quantize_blockwise(dcodes.get(), dabsmax.get(), dx.get(), q.n, q.block, table,
                               b.stream());
    b.expect_same("codes", b.get(dcodes), want_codes);
    b.expect_close("absmax", b.get(dabsmax), want_absmax);
  }
}

void dequantize_blockwise_case(BackendRun& b) {
  const cpu::QuantMap map = cpu::dynamic_map(false);
  for (const Blocks& q : kBlocks) {
    std::vector<uint8_t> codes(sz(q.n));
    for (size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<uint8_t>(i * 37 + 11);
    const std::vector<float> absmax = positive(q.count(), 6);
    std::vector<float> want = poisoned(q.n);
    cpu::dequantize_blockwise(want.data(), codes.data(), absmax.data(), q.n, q.block, map);
    auto dx = b.put(poisoned(q.n)), dabsmax = b.put(absmax);
    auto dcodes = b.put(codes);
    b.ops().dequantize_blockwise(dx.get(), dcodes.get(), dabsmax.get(), q.n, q.block, map,
                                 b.stream());
    b.expect_close("x", b.get(dx), want);
  }
}

void adamw_8bit_step_case(BackendRun& b) {
  const cpu::QuantTable signed_table(cpu::dynamic_map(true));
  const cpu::QuantTable unsigned_table(cpu::dynamic_map(false));
  cpu::AdamWHyper h;
  h.lr = 3e-3f, h.weight_decay = 0.01f, h.step = 5, h.grad_scale = 0.5f;
  for (const Blocks& q : kBlocks) {
    // Valid running state: random moments, quantized as the optimizer keeps them.
    std::vector<uint8_t> mc(sz(q.n)), vc(sz(q.n));
    std::vector<float> ma(sz(q.count())), va(sz(q.count()));
    const std::vector<float> m = random_floats(sz(q.n), 7, 0.1f), v = positive(q.n, 8);
    cpu::quantize_blockwise(mc.data(), ma.data(), m.data(), q.n, q.block, signed_table);
    cpu::quantize_blockwise(vc.data(), va.data(), v.data(), q.n, q.block, unsigned_table);
    const std::vector<float> p = random_floats(sz(q.n), 9), g = random_floats(sz(q.n), 10);
    std::vector<float> wp = p, wma = ma, wva = va;
    std::vector<uint8_t> wmc = mc, wvc = vc;
    cpu::adamw_8bit_step(wp.data(), wmc.data(), wma.data(), wvc.data(), wva.data(), g.data(), q.n,
                         q.block, signed_table, unsigned_table, h);
    auto dp = b.put(p), dma = b.put(ma), dva = b.put(va), dg = b.put(g);
    auto dmc = b.put(mc), dvc = b.put(vc);
    b.ops().adamw_8bit_step(dp.get(), dmc.get(), dma.get(), dvc.get(), dva.get(), dg.get(), q.n,
                            q.block, signed_table, unsigned_table, h, b.stream());
    b.expect_close("param", b.get(dp), wp);
    b.expect_same("m codes", b.get(dmc), wmc);
    b.expect_close("m absmax", b.get(dma), wma);
    b.expect_same("v codes", b.get(dvc), wvc);
    b.expect_close("v absmax", b.get(dva), wva);
  }
}

cpu::AdafactorHyper adafactor_hyper() {
  cpu::AdafactorHyper h;
  h.relative_step = true, h.scale_parameter = true, h.beta1 = 0.9, h.weight_decay = 0.01;
  h.step = 3, h.grad_scale = 0.5f;
  return h;
}

void adafactor_step_case(BackendRun& b) {
  const cpu::AdafactorHyper h = adafactor_hyper();
  for (const bool factored : {true, false}) {
    const int64_t rows = factored ? 7 : 29, cols = factored ? 13 : 1;
    const std::vector<float> p = random_floats(sz(rows * cols), 11);
    const std::vector<float> g = random_floats(sz(rows * cols), 12);
    const std::vector<float> row = positive(rows, 13), col = positive(cols, 14);
    const std::vector<float> sq = positive(rows * cols, 15), m = random_floats(sz(rows * cols), 16);
    std::vector<float> wp = p, wrow = row, wcol = col, wsq = sq, wm = m;
    cpu::adafactor_step(wp.data(), g.data(), wrow.data(), wcol.data(), wsq.data(), wm.data(), rows,
                        cols, factored, h);
    auto dp = b.put(p), dg = b.put(g), drow = b.put(row), dcol = b.put(col), dsq = b.put(sq);
    auto dm = b.put(m);
    b.ops().adafactor_step(dp.get(), dg.get(), drow.get(), dcol.get(), dsq.get(), dm.get(), rows,
                           cols, factored, h, b.stream());
    b.expect_close("param", b.get(dp), wp);
    b.expect_close("row", b.get(drow), wrow);
    b.expect_close("col", b.get(dcol), wcol);
    b.expect_close("sq", b.get(dsq), wsq);
    b.expect_close("m", b.get(dm), wm);
  }
}

// A padded rectangle: rows × cols values, ld floats per row.
constexpr int64_t kRows = 9, kCols = 14, kLd = 17;

void adafactor_sums_case(BackendRun& b) {
  const cpu::AdafactorHyper h = adafactor_hyper();
  std::vector<float> p = random_floats(sz(kRows * kLd), 17);
  const std::vector<float> g = random_floats(sz(kRows * kLd), 18);
  const std::vector<double> rs0 = random_doubles(kRows, 19), cs0 = random_doubles(kCols, 20);
  std::vector<double> wrs = rs0, wcs = cs0;
  const double want =
      cpu::adafactor_sums({p.data(), g.data(), kRows, kCols, kLd}, h, wrs.data(), wcs.data());
  auto dp = b.put(p), dg = b.put(g);
  auto drs = b.put(rs0), dcs = b.put(cs0);
  const double got =
      b.ops().adafactor_sums({dp.get(), dg.get(), kRows, kCols, kLd}, h, drs.get(), dcs.get());
  b.expect_close("param sum", got, want);
  b.expect_close("row sums", b.get(drs), wrs);
  b.expect_close("col sums", b.get(dcs), wcs);
}

void adafactor_update_means_case(BackendRun& b) {
  const cpu::AdafactorDecay d = cpu::adafactor_decay(adafactor_hyper());
  const int64_t n = 37;
  const std::vector<float> mean = positive(n, 21);
  std::vector<double> sums = random_doubles(n, 22);
  for (double& s : sums) s = s * s;
  std::vector<float> want = mean;
  cpu::adafactor_update_means(want.data(), sums.data(), n, 13.0, d);
  auto dmean = b.put(mean);
  auto dsums = b.put(sums);
  b.ops().adafactor_update_means(dmean.get(), dsums.get(), n, 13.0, d);
  b.expect_close("mean", b.get(dmean), want);
}

void adafactor_factors_case(BackendRun& b) {
  const int64_t n = 37;
  const std::vector<float> mean = positive(n, 23);
  std::vector<float> want = poisoned(n);
  cpu::adafactor_factors(want.data(), mean.data(), n, 0.7f);
  auto dfactor = b.put(poisoned(n)), dmean = b.put(mean);
  b.ops().adafactor_factors(dfactor.get(), dmean.get(), n, 0.7f);
  b.expect_close("factor", b.get(dfactor), want);
}

void adafactor_second_moment_case(BackendRun& b) {
  const cpu::AdafactorHyper h = adafactor_hyper();
  const cpu::AdafactorDecay d = cpu::adafactor_decay(h);
  std::vector<float> p = random_floats(sz(kRows * kLd), 24);
  const std::vector<float> g = random_floats(sz(kRows * kLd), 25), sq = positive(kRows * kLd, 26);
  std::vector<float> want = sq;
  cpu::adafactor_second_moment({p.data(), g.data(), kRows, kCols, kLd}, want.data(), h, d);
  auto dp = b.put(p), dg = b.put(g), dsq = b.put(sq);
  b.ops().adafactor_second_moment({dp.get(), dg.get(), kRows, kCols, kLd}, dsq.get(), h, d);
  b.expect_close("sq", b.get(dsq), want);
}

// A factored scale (row and column factors) or a vector's (sq), on the backend's buffers.
struct Scale {
  std::vector<float> row = positive(kRows, 27), col = positive(kCols, 28);
  std::vector<float> sq = positive(kRows * kLd, 29);
  cpu::AdafactorScale of(bool factored) const {
    return factored ? cpu::AdafactorScale{row.data(), col.data(), nullptr}
                    : cpu::AdafactorScale{nullptr, nullptr, sq.data()};
  }
};

void adafactor_update_sum_sq_case(BackendRun& b) {
  const cpu::AdafactorHyper h = adafactor_hyper();
  const Scale s;
  std::vector<float> p = random_floats(sz(kRows * kLd), 30);
  const std::vector<float> g = random_floats(sz(kRows * kLd), 31);
  auto dp = b.put(p), dg = b.put(g), drow = b.put(s.row), dcol = b.put(s.col), dsq = b.put(s.sq);
  for (const bool factored : {true, false}) {
    const double want =
        cpu::adafactor_update_sum_sq({p.data(), g.data(), kRows, kCols, kLd}, s.of(factored), h);
    const cpu::AdafactorScale ds = factored ? cpu::AdafactorScale{drow.get(), dcol.get(), nullptr}
                                            : cpu::AdafactorScale{nullptr, nullptr, dsq.get()};
    b.expect_close("sum of u²",
                   b.ops().adafactor_update_sum_sq({dp.get(), dg.get(), kRows, kCols, kLd}, ds, h),
                   want);
  }
}

void adafactor_apply_case(BackendRun& b) {
  cpu::AdafactorHyper h = adafactor_hyper();
  const Scale s;
  const std::vector<float> p = random_floats(sz(kRows * kLd), 32);
  const std::vector<float> g = random_floats(sz(kRows * kLd), 33);
  const std::vector<float> m = random_floats(sz(kRows * kLd), 34);
  for (const bool factored : {true, false}) {
    const bool with_m = factored;  // the first moment once, and once without
    h.beta1 = with_m ? 0.9 : 0.0;
    std::vector<float> wp = p, wm = m;
    cpu::adafactor_apply({wp.data(), g.data(), kRows, kCols, kLd}, s.of(factored),
                         with_m ? wm.data() : nullptr, h, 0.01, 1.7);
    auto dp = b.put(p), dg = b.put(g), dm = b.put(m), drow = b.put(s.row), dcol = b.put(s.col);
    auto dsq = b.put(s.sq);
    const cpu::AdafactorScale ds = factored ? cpu::AdafactorScale{drow.get(), dcol.get(), nullptr}
                                            : cpu::AdafactorScale{nullptr, nullptr, dsq.get()};
    b.ops().adafactor_apply({dp.get(), dg.get(), kRows, kCols, kLd}, ds,
                            with_m ? dm.get() : nullptr, h, 0.01, 1.7);
    b.expect_close("param", b.get(dp), wp);
    b.expect_close("m", b.get(dm), wm);
  }
}

void gram_accumulate_case(BackendRun& b) {
  const int64_t n = 5, m = 300;  // m past kGramBlock: more than one block of vectors
  for (const bool of_rows : {true, false}) {
    const int64_t ld = (of_rows ? n : m) + 3;
    const std::vector<float> g = random_floats(sz((of_rows ? m : n) * ld), 35);
    const std::vector<double> gram = random_doubles(n * n, 36);
    std::vector<double> want = gram, scratch(sz(cpu::kGramBlock * n));
    cpu::gram_accumulate(want.data(), g.data(), n, m, ld, of_rows, scratch.data());
    auto dg = b.put(g);
    auto dgram = b.put(gram), dscratch = b.put(scratch);
    b.ops().gram_accumulate(dgram.get(), dg.get(), n, m, ld, of_rows, dscratch.get());
    b.expect_close("gram", b.get(dgram), want);
  }
}

void symmetric_top_eigen_case(BackendRun& b) {
  const int64_t n = 9, r = 3;
  // A positive semi-definite matrix X Xᵀ, so the top eigenvalues are well apart from noise.
  const std::vector<double> x = random_doubles(n * n, 37);
  std::vector<double> a(sz(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t k = 0; k < n; ++k) a[sz(i * n + j)] += x[sz(i * n + k)] * x[sz(j * n + k)];
  const cpu::EigenScratch cs = cpu::eigen_scratch(n, r);
  std::vector<double> wa = a, values(sz(r)), vectors(sz(r * n)), work(sz(cs.doubles));
  std::vector<int> iwork(sz(cs.ints));
  cpu::symmetric_top_eigen(wa.data(), n, r, values.data(), vectors.data(), work.data(),
                           iwork.data());
  const cpu::EigenScratch bs = b.ops().eigen_scratch(n, r);
  auto da = b.put(a), dvalues = b.put(std::vector<double>(sz(r))),
       dvectors = b.put(std::vector<double>(sz(r * n))),
       dwork = b.put(std::vector<double>(sz(bs.doubles)));
  auto diwork = b.put(std::vector<int>(sz(bs.ints)));
  b.ops().symmetric_top_eigen(da.get(), n, r, dvalues.get(), dvectors.get(), dwork.get(),
                              diwork.get());
  b.expect_close("values", b.get(dvalues), values);
  b.expect_close("vectors", b.get(dvectors), vectors);
}

void canonicalize_signs_case(BackendRun& b) {
  const int64_t r = 4, n = 11;
  const std::vector<double> v = random_doubles(r * n, 38);
  std::vector<double> want = v;
  cpu::canonicalize_signs(want.data(), r, n);
  auto dv = b.put(v);
  b.ops().canonicalize_signs(dv.get(), r, n);
  b.expect_close("vectors", b.get(dv), want);
}

void orthonormalize_rows_case(BackendRun& b) {
  const int64_t l = 4, n = 11;
  const std::vector<double> y = random_doubles(l * n, 39);
  std::vector<double> want = y, scratch(sz(cpu::orthonormalize_scratch(l)));
  cpu::orthonormalize_rows(want.data(), l, n, scratch.data());
  auto dy = b.put(y), dscratch = b.put(std::vector<double>(sz(b.ops().orthonormalize_scratch(l))));
  b.ops().orthonormalize_rows(dy.get(), l, n, dscratch.get());
  b.expect_close("basis", b.get(dy), want);
}

void combine_rows_case(BackendRun& b) {
  const int64_t r = 3, l = 5, n = 13;
  const std::vector<double> w = random_doubles(r * l, 40), q = random_doubles(l * n, 41);
  std::vector<double> want(sz(r * n));
  cpu::combine_rows(want.data(), w.data(), q.data(), r, l, n);
  auto dout = b.put(std::vector<double>(sz(r * n))), dw = b.put(w), dq = b.put(q);
  b.ops().combine_rows(dout.get(), dw.get(), dq.get(), r, l, n);
  b.expect_close("out", b.get(dout), want);
}

void gaussian_fill_case(BackendRun& b) {
  for (const int64_t count : {1, 1001}) {
    std::vector<double> want(sz(count));
    cpu::gaussian_fill(want.data(), count, 42);
    auto dx = b.put(std::vector<double>(sz(count)));
    b.ops().gaussian_fill(dx.get(), count, 42);
    b.expect_close("x", b.get(dx), want);
  }
}

// fp32 ops: rounding (1e-5 relative, per tensor, as the CUDA twins are held); codes exactly
// (expect_same); the double-precision linear algebra to 1e-12, the eigensolver to 1e-9 (another
// backend's solver takes another path to the same vectors).
constexpr double kFp32 = 1e-5, kDouble = 1e-12, kEigen = 1e-9;

}  // namespace

std::vector<OpCase> optimizer_cases() {
  return {
      {"adamw_step", {"adamw_step"}, kFp32, adamw_step_case},
      {"quantize_blockwise", {"quantize_blockwise"}, kFp32, quantize_blockwise_case},
      {"dequantize_blockwise", {"dequantize_blockwise"}, kFp32, dequantize_blockwise_case},
      {"adamw_8bit_step", {"adamw_8bit_step"}, kFp32, adamw_8bit_step_case},
      {"adafactor_step", {"adafactor_step"}, kFp32, adafactor_step_case},
      {"adafactor_sums", {"adafactor_sums"}, kDouble, adafactor_sums_case},
      {"adafactor_update_means", {"adafactor_update_means"}, kFp32, adafactor_update_means_case},
      {"adafactor_factors", {"adafactor_factors"}, kFp32, adafactor_factors_case},
      {"adafactor_second_moment", {"adafactor_second_moment"}, kFp32, adafactor_second_moment_case},
      {"adafactor_update_sum_sq",
       {"adafactor_update_sum_sq"},
       kDouble,
       adafactor_update_sum_sq_case},
      {"adafactor_apply", {"adafactor_apply"}, kFp32, adafactor_apply_case},
      {"gram_accumulate", {"gram_accumulate"}, kDouble, gram_accumulate_case},
      {"symmetric_top_eigen",
       {"symmetric_top_eigen", "eigen_scratch"},
       kEigen,
       symmetric_top_eigen_case},
      {"canonicalize_signs", {"canonicalize_signs"}, kDouble, canonicalize_signs_case},
      {"orthonormalize_rows",
       {"orthonormalize_rows", "orthonormalize_scratch"},
       kDouble,
       orthonormalize_rows_case},
      {"combine_rows", {"combine_rows"}, kDouble, combine_rows_case},
      {"gaussian_fill", {"gaussian_fill"}, kDouble, gaussian_fill_case},
  };
}

}  // namespace keel::testing
