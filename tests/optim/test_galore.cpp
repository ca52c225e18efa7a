// GaLore (optim/galore.h) on one rank: step by step against the from-scratch PyTorch GaLore of
// tests/reference/galore_ref.py for every proj_type, across a projector refresh; the randomized
// projector's subspace against the exact one on matrices with decaying spectra; and the eigen
// kernels under it (kernels/low_rank.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/low_rank.h"
#include "optim/galore.h"

namespace keel::optim {
namespace {

namespace k = keel::kernels::cpu;

nlohmann::json golden() {
  std::ifstream f(std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/galore_torch.json");
  EXPECT_TRUE(f.good());
  return nlohmann::json::parse(f);
}

// The reference's gradients: G = (W X − Y) Xᵀ in double, rounded to fp32; a vector's W − Y.
void gradient(const std::vector<float>& w, const std::vector<float>& x, const std::vector<float>& y,
              int64_t m, int64_t n, std::vector<float>& g) {
  if (x.empty()) {
    for (size_t i = 0; i < w.size(); ++i) g[i] = static_cast<float>(double{w[i]} - y[i]);
    return;
  }
  const int64_t kk = static_cast<int64_t>(x.size()) / n;
  std::vector<double> e(static_cast<size_t>(m * kk));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < kk; ++c) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j) s += double{w[i * n + j]} * x[j * kk + c];
      e[i * kk + c] = s - y[i * kk + c];
    }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < kk; ++c) s += e[i * kk + c] * x[j * kk + c];
      g[i * n + j] = static_cast<float>(s);
    }
}

class GaloreGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(GaloreGolden, StepsAsTorch) {
  const nlohmann::json j = golden();
  OptimizerConfig c;
  c.beta1 = j["betas"][0], c.beta2 = j["betas"][1], c.eps = j["eps"];
  c.weight_decay = j["weight_decay"];
  c.galore.rank = j["rank"];
  c.galore.update_proj_gap = j["update_proj_gap"];
  c.galore.scale = j["scale"];
  c.galore.proj_type = GetParam();
  c.galore.targets = "proj";
  const double lr = j["lr"];
  std::vector<std::string> names;
  std::vector<std::vector<float>> w, g, x, y;
  std::vector<int64_t> rows, cols;
  std::vector<ParamRef> refs;
  for (const auto& [name, t] : j["tensors"].items()) {
    names.push_back(name);
    w.push_back(t["w"].get<std::vector<float>>());
    x.push_back(t["x"].get<std::vector<float>>());
    y.push_back(t["y"].get<std::vector<float>>());
    g.emplace_back(w.back().size());
    rows.push_back(t["shape"][0]);
    cols.push_back(t["shape"].size() > 1 ? t["shape"][1].get<int64_t>() : 1);
  }
  for (size_t i = 0; i < names.size(); ++i) {
    refs.push_back({names[i], w[i].data(), g[i].data(), static_cast<int64_t>(w[i].size()), true});
    if (!x[i].empty())
      refs.back().rows = rows[i], refs.back().cols = cols[i],
      refs.back().rect = {0, 0, rows[i], cols[i], cols[i]};
  }
  const auto opt = make_optimizer(refs, c);
  auto& galore = dynamic_cast<GaLore&>(*opt);
  for (size_t i = 0; i < names.size(); ++i)
    EXPECT_EQ(galore.projected(i), names[i].find("proj") != std::string::npos) << names[i];
  const int steps = j["steps"];
  for (int s = 0; s < steps; ++s) {
    for (size_t i = 0; i < names.size(); ++i) gradient(w[i], x[i], y[i], rows[i], cols[i], g[i]);
    opt->step(lr, 1.0);
    for (size_t i = 0; i < names.size(); ++i) {
      const std::vector<float> want = j["runs"][GetParam()][names[i]][s].get<std::vector<float>>();
      double diff = 0, scale = 0;
      for (size_t e = 0; e < want.size(); ++e) {
        diff = std::max(diff, std::abs(double{w[i][e]} - want[e]));
        scale = std::max(scale, std::abs(double{want[e]}));
      }
      EXPECT_LE(diff, 1e-5 * scale) << names[i] << " after step " << s + 1;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ProjTypes, GaloreGolden,
                         ::testing::Values("std", "reverse_std", "left", "right"));

// An m × n matrix U diag(σ) Vᵀ with σ_i = decay^i and random orthonormal U, V.
std::vector<float> decaying(int64_t m, int64_t n, double decay, uint64_t seed) {
  const int64_t q = std::min(m, n);
  std::vector<double> u(static_cast<size_t>(q * m)), v(static_cast<size_t>(q * n));
  std::vector<double> scratch(static_cast<size_t>(k::orthonormalize_scratch(q)));
  k::gaussian_fill(u.data(), q * m, seed);
  k::gaussian_fill(v.data(), q * n, seed + 1);
  k::orthonormalize_rows(u.data(), q, m, scratch.data());
  k::orthonormalize_rows(v.data(), q, n, scratch.data());
  std::vector<float> a(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t t = 0; t < q; ++t) s += std::pow(decay, double(t)) * u[t * m + i] * v[t * n + j];
      a[static_cast<size_t>(i * n + j)] = static_cast<float>(s);
    }
  return a;
}

// The projector GaLore builds for one whole matrix holding gradient g (one step, then its state).
std::vector<float> projector(const std::vector<float>& g, int64_t m, int64_t n,
                             const std::string& kind, int64_t rank) {
  std::vector<float> w(g.size(), 0.0f);
  OptimizerConfig c;
  c.galore.rank = rank, c.galore.projector = kind, c.galore.targets = "w";
  c.galore.power_iterations = 2, c.galore.oversample = 8;
  ParamRef p{"w", w.data(), g.data(), m * n, false};
  p.rows = m, p.cols = n, p.rect = {0, 0, m, n, n};
  const auto opt = make_optimizer({p}, c);
  opt->step(1e-3, 1.0);
  const StateTensor s = opt->state(0).front();
  EXPECT_EQ(s.name, "galore_projector");
  return {s.data, s.data + s.elems};
}

// cos of the largest principal angle between the row spaces of a and b (r × n, orthonormal rows):
// the smallest singular value of a bᵀ.
double smallest_cosine(const std::vector<float>& a, const std::vector<float>& b, int64_t r,
                       int64_t n) {
  std::vector<double> c(static_cast<size_t>(r * r)), cct(static_cast<size_t>(r * r));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double s = 0;
      for (int64_t t = 0; t < n; ++t) s += double{a[i * n + t]} * b[j * n + t];
      c[i * r + j] = s;
    }
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double s = 0;
      for (int64_t t = 0; t < r; ++t) s += c[i * r + t] * c[j * r + t];
      cct[i * r + j] = s;
    }
  const k::EigenScratch e = k::eigen_scratch(r, r);
  std::vector<double> work(static_cast<size_t>(e.doubles)), values(static_cast<size_t>(r)),
      vectors(static_cast<size_t>(r * r));
  std::vector<int> iwork(static_cast<size_t>(e.ints));
  k::symmetric_top_eigen(cct.data(), r, r, values.data(), vectors.data(), work.data(),
                         iwork.data());
  return std::sqrt(std::max(values[static_cast<size_t>(r - 1)], 0.0));
}

// Randomized (rank + 8 sketch vectors, 2 power iterations) against exact, for tall and wide
// matrices whose singular values fall by 0.8 and 0.9 per index: every principal angle of the
// rank-16 subspaces under 2.6° (cos > 0.999); the slower decay is the harder case.
TEST(GaloreProjector, RandomizedSubspaceMatchesExact) {
  const int64_t r = 16;
  for (const auto& [m, n] : {std::pair<int64_t, int64_t>{300, 96}, {96, 300}}) {
    for (const double decay : {0.8, 0.9}) {
      const std::vector<float> g = decaying(m, n, decay, 5);
      const int64_t s = std::min(m, n);
      const double cosine = smallest_cosine(projector(g, m, n, "exact", r),
                                            projector(g, m, n, "randomized", r), r, s);
      EXPECT_GT(cosine, 0.999) << m << "x" << n << " decay " << decay;
    }
  }
}

// The exact projector is the top singular subspace: on a matrix built with a known basis, every
// principal angle to it is ~0.
TEST(GaloreProjector, ExactIsTheTopSingularSubspace) {
  const int64_t m = 64, n = 24, r = 5;
  const std::vector<float> g = decaying(m, n, 0.6, 9);
  // The known right singular vectors: the same draws decaying() made.
  std::vector<double> v(static_cast<size_t>(n * n));
  std::vector<double> scratch(static_cast<size_t>(k::orthonormalize_scratch(n)));
  k::gaussian_fill(v.data(), n * n, 10);
  k::orthonormalize_rows(v.data(), n, n, scratch.data());
  std::vector<float> top(v.begin(), v.begin() + r * n);
  EXPECT_GT(smallest_cosine(projector(g, m, n, "exact", r), top, r, n), 1.0 - 1e-6);
}

// symmetric_top_eigen: values descending, A v = λ v, unit vectors signed by their largest entry;
// gram_accumulate: both orientations against the plain sums.
TEST(LowRankKernels, EigenAndGram) {
  const int64_t m = 300, n = 7;  // 300 rows: two gram blocks
  std::vector<float> g(static_cast<size_t>(m * n));
  std::vector<double> draws(g.size());
  k::gaussian_fill(draws.data(), m * n, 3);
  std::copy(draws.begin(), draws.end(), g.begin());
  std::vector<double> by_rows(static_cast<size_t>(n * n), 0.0), by_cols(by_rows.size(), 0.0);
  std::vector<double> scratch(static_cast<size_t>(k::kGramBlock * n));
  k::gram_accumulate(by_rows.data(), g.data(), n, m, n, true, scratch.data());
  // g read as (n × m) with ld m: its transpose's rows are g's... use gᵀ stored explicitly.
  std::vector<float> gt(g.size());
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) gt[j * m + i] = g[i * n + j];
  k::gram_accumulate(by_cols.data(), gt.data(), n, m, m, false, scratch.data());
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = a; b < n; ++b) {
      double s = 0;
      for (int64_t i = 0; i < m; ++i) s += double{g[i * n + a]} * g[i * n + b];
      EXPECT_NEAR(by_rows[a * n + b], s, 1e-9 * std::abs(s) + 1e-9);
      EXPECT_NEAR(by_cols[a * n + b], s, 1e-9 * std::abs(s) + 1e-9);
    }
  const std::vector<double> a = by_rows;
  const int64_t r = 3;
  const k::EigenScratch e = k::eigen_scratch(n, r);
  std::vector<double> work(static_cast<size_t>(e.doubles)), values(r), vectors(r * n);
  std::vector<int> iwork(static_cast<size_t>(e.ints));
  k::symmetric_top_eigen(by_rows.data(), n, r, values.data(), vectors.data(), work.data(),
                         iwork.data());
  for (int64_t t = 0; t < r; ++t) {
    if (t > 0) {
      EXPECT_GE(values[t - 1], values[t]);
    }
    const double* v = vectors.data() + t * n;
    double norm = 0, big = 0;
    for (int64_t i = 0; i < n; ++i) {
      double av = 0;  // (A v)_i from the upper triangle
      for (int64_t j = 0; j < n; ++j) av += a[std::min(i, j) * n + std::max(i, j)] * v[j];
      EXPECT_NEAR(av, values[t] * v[i], 1e-9 * values[0]);
      norm += v[i] * v[i];
      if (std::abs(v[i]) > std::abs(big)) big = v[i];
    }
    EXPECT_NEAR(norm, 1.0, 1e-12);
    EXPECT_GT(big, 0.0);
  }
}

}  // namespace
}  // namespace keel::optim
