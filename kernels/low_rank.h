// Dense linear algebra behind GaLore's projector (optim/galore.h), in double precision on the CPU
// (OpenBLAS and its LAPACK): the Gram matrix of a matrix's short side, the top eigenvectors of a
// symmetric matrix, an orthonormal basis of a range sketch and the sketch's Gaussian test matrix.
// Vectors are stored as rows: a basis of r vectors of length n is an (r × n) row-major array.
#pragma once

#include <cstdint>

namespace keel::kernels::cpu {

// Rows (or columns) of g taken at a time by gram_accumulate; its scratch holds that many vectors.
constexpr int64_t kGramBlock = 256;

// gram (n × n, row-major) += the Gram matrix of g's n-long side, accumulated in double:
//   of_rows: g is (m × n) with ld floats per row, gram += gᵀ g (a sum over g's rows);
//   else:    g is (n × m) with ld floats per row, gram += g gᵀ (a sum over g's columns).
// Only the upper triangle (row-major) is written. scratch: kGramBlock · n doubles.
void gram_accumulate(double* gram, const float* g, int64_t n, int64_t m, int64_t ld, bool of_rows,
                     double* scratch);

// Scratch of symmetric_top_eigen for an n × n matrix and r vectors.
struct EigenScratch {
  int64_t doubles = 0, ints = 0;
};
EigenScratch eigen_scratch(int64_t n, int64_t r);

// The r largest eigenpairs of the symmetric matrix a (n × n, row-major, upper triangle read,
// overwritten): values (r) descending, vectors (r × n) as rows, each signed so that its entry of
// largest magnitude (the first of equals) is positive: the same basis on every rank and run.
// LAPACK dsyevr (only the r wanted vectors are computed). work/iwork: eigen_scratch(n, r).
void symmetric_top_eigen(double* a, int64_t n, int64_t r, double* values, double* vectors,
                         double* work, int* iwork);

// Signs each of the r rows of vectors (r × n) so that its entry of largest magnitude (the first
// of equals) is positive.
void canonicalize_signs(double* vectors, int64_t r, int64_t n);

// Doubles of scratch orthonormalize_rows needs for l vectors.
int64_t orthonormalize_scratch(int64_t l);
// Replaces the l rows of y (l × n, n ≥ l) by an orthonormal basis of their span (Householder QR,
// LAPACK dgeqrf + dorgqr). scratch: orthonormalize_scratch(l) doubles.
void orthonormalize_rows(double* y, int64_t l, int64_t n, double* scratch);

// out (r × n) = w (r × l) · q (l × n).
void combine_rows(double* out, const double* w, const double* q, int64_t r, int64_t l, int64_t n);

// x[i] for i in [0, count): standard normal values, a pure function of (seed, i) (counter-based:
// splitmix64 and Box-Muller), so every rank draws the same matrix and a resumed run redraws it.
void gaussian_fill(double* x, int64_t count, uint64_t seed);

}  // namespace keel::kernels::cpu

// No CUDA twin yet: keel's optimizers step on the CPU.
