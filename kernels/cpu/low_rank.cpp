#include "kernels/low_rank.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "kernels/error.h"
#include "kernels/hash.h"

// LAPACK's Fortran entry points in OpenBLAS (character arguments carry hidden lengths).
extern "C" {
void dsyevr_(const char* jobz, const char* range, const char* uplo, const int* n, double* a,
             const int* lda, const double* vl, const double* vu, const int* il, const int* iu,
             const double* abstol, int* m, double* w, double* z, const int* ldz, int* isuppz,
             double* work, const int* lwork, int* iwork, const int* liwork, int* info, size_t,
             size_t, size_t);
void dgeqrf_(const int* m, const int* n, double* a, const int* lda, double* tau, double* work,
             const int* lwork, int* info);
void dorgqr_(const int* m, const int* n, const int* k, double* a, const int* lda, const double* tau,
             double* work, const int* lwork, int* info);
}

namespace keel::kernels::cpu {

namespace {

int blas_int(int64_t v, const char* what) {
  KEEL_CHECK(v >= 0 && v <= std::numeric_limits<int>::max(),
             "low-rank kernels: {} = {} is negative or too large for 32-bit LAPACK", what, v);
  return static_cast<int>(v);
}

// dsytrd's block size and more: dsyevr runs at full speed with (nb + 6) · n doubles of work.
constexpr int64_t kEigenWorkPerRow = 70;
// dgeqrf / dorgqr's block size: l · nb doubles of work.
constexpr int64_t kQrBlock = 64;

}  // namespace

void gram_accumulate(double* gram, const float* g, int64_t n, int64_t m, int64_t ld, bool of_rows,
                     double* scratch) {
  const int nn = blas_int(n, "n");
  for (int64_t b0 = 0; b0 < m; b0 += kGramBlock) {
    const int64_t b = std::min(kGramBlock, m - b0);
    // scratch: the block's vectors as (b × n) rows, in double.
    for (int64_t i = 0; i < b; ++i) {
      double* dst = scratch + i * n;
      if (of_rows) {
        const float* src = g + (b0 + i) * ld;
        for (int64_t j = 0; j < n; ++j) dst[j] = src[j];
      } else {
        for (int64_t j = 0; j < n; ++j) dst[j] = g[j * ld + b0 + i];
      }
    }
    // gram += scratchᵀ · scratch, the upper triangle.
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, nn, static_cast<int>(b), 1.0, scratch, nn,
                1.0, gram, nn);
  }
}

EigenScratch eigen_scratch(int64_t n, int64_t r) {
  // work: dsyevr's, then its n eigenvalues and the (n × r) column-major vectors; iwork: its 10n
  // and isuppz (2r).
  return {std::max<int64_t>(26, kEigenWorkPerRow) * n + n + n * r, 10 * n + 2 * r};
}

void symmetric_top_eigen(double* a, int64_t n, int64_t r, double* values, double* vectors,
                         double* work, int* iwork) {
  KEEL_CHECK(r >= 1 && r <= n, "symmetric_top_eigen: r = {} must be in [1, {}]", r, n);
  const int nn = blas_int(n, "n"), il = static_cast<int>(n - r + 1), iu = nn;
  const int lwork = blas_int(kEigenWorkPerRow * n, "lwork");
  const int liwork = blas_int(10 * n, "liwork");
  double* w = work + kEigenWorkPerRow * n;
  double* z = w + n;
  int* isuppz = iwork + 10 * n;
  const double vl = 0.0, vu = 0.0, abstol = 0.0;
  int found = 0, info = 0;
  // Row-major upper is column-major lower.
  dsyevr_("V", "I", "L", &nn, a, &nn, &vl, &vu, &il, &iu, &abstol, &found, w, z, &nn, isuppz, work,
          &lwork, iwork, &liwork, &info, 1, 1, 1);
  KEEL_CHECK(info == 0 && found == r, "LAPACK dsyevr failed (info {}, {} of {} eigenvalues)", info,
             found, r);
  // Ascending from LAPACK; column j of z (column-major) is n contiguous doubles.
  for (int64_t k = 0; k < r; ++k) {
    const int64_t from = r - 1 - k;
    values[k] = w[from];
    std::copy_n(z + from * n, n, vectors + k * n);
  }
  canonicalize_signs(vectors, r, n);
}

void canonicalize_signs(double* vectors, int64_t r, int64_t n) {
  for (int64_t k = 0; k < r; ++k) {
    double* v = vectors + k * n;
    int64_t big = 0;
    for (int64_t j = 1; j < n; ++j)
      if (std::abs(v[j]) > std::abs(v[big])) big = j;
    if (v[big] < 0)
      for (int64_t j = 0; j < n; ++j) v[j] = -v[j];
  }
}

int64_t orthonormalize_scratch(int64_t l) { return l + kQrBlock * l; }

void orthonormalize_rows(double* y, int64_t l, int64_t n, double* scratch) {
  KEEL_CHECK(l <= n, "orthonormalize_rows: {} vectors of length {}", l, n);
  if (l == 0) return;
  // y's rows are the columns of a column-major (n × l) matrix.
  const int m = blas_int(n, "n"), k = blas_int(l, "l");
  const int lwork = blas_int(kQrBlock * l, "lwork");
  double* tau = scratch;
  double* work = scratch + l;
  int info = 0;
  dgeqrf_(&m, &k, y, &m, tau, work, &lwork, &info);
  KEEL_CHECK(info == 0, "LAPACK dgeqrf failed (info {})", info);
  dorgqr_(&m, &k, &k, y, &m, tau, work, &lwork, &info);
  KEEL_CHECK(info == 0, "LAPACK dorgqr failed (info {})", info);
}

void combine_rows(double* out, const double* w, const double* q, int64_t r, int64_t l, int64_t n) {
  if (r == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, blas_int(r, "r"), blas_int(n, "n"),
              blas_int(l, "l"), 1.0, w, static_cast<int>(std::max<int64_t>(1, l)), q,
              static_cast<int>(n), 0.0, out, static_cast<int>(n));
}

namespace {

// A uniform double in (0, 1] from 53 random bits.
double unit(uint64_t bits) { return (static_cast<double>(bits >> 11) + 1.0) * 0x1.0p-53; }

}  // namespace

void gaussian_fill(double* x, int64_t count, uint64_t seed) {
  const uint64_t key = splitmix64(seed);
  for (int64_t i = 0; i < count; i += 2) {
    const uint64_t pair = static_cast<uint64_t>(i / 2);
    const double u1 = unit(splitmix64(key ^ (2 * pair))),
                 u2 = unit(splitmix64(key ^ (2 * pair + 1)));
    const double radius = std::sqrt(-2.0 * std::log(u1)), angle = 2.0 * std::numbers::pi * u2;
    x[i] = radius * std::cos(angle);
    if (i + 1 < count) x[i + 1] = radius * std::sin(angle);
  }
}

}  // namespace keel::kernels::cpu
