// GaLore's projector refresh (optim/galore.h): the whole side's Gram matrix (or a randomized
// sketch through it) summed over the tensor's group, its top eigenvectors, the split side's
// vectors G V Σ⁻¹ and their signs over the group.
#include <chrono>
#include <cmath>
#include <vector>

#include "kernels/error.h"
#include "kernels/hash.h"
#include "kernels/low_rank.h"
#include "kernels/ops.h"
#include "optim/galore.h"
#include "optim/galore_layout.h"

namespace keel::optim {

using namespace galore;  // NOLINT: the layout's own helpers

float* GaLore::sketch_product(size_t i, const double* sketch, int64_t q) {
  const GaloreLayout& l = layouts_[i];
  const kernels::Ops& k = kernels::ops(work_[slots_->product].device());
  const ParamRef& p = params_[i];
  float* qf = work_[slots_->sketch_f].f32();
  float* z = work_[slots_->product].f32();
  to_float(qf, sketch, q * l.S);
  if (l.rows_split) {  // Z (Lk × q) = G Qᵀ
    k.gemm(false, true, l.Lk, q, l.S, 1.0f, p.grad, p.rect.ld, qf, l.S, 0.0f, z, q, {});
  } else {  // Z (q × Lk) = Q G
    k.gemm(false, false, q, l.Lk, l.S, 1.0f, qf, l.S, p.grad, p.rect.ld, 0.0f, z, l.Lk, {});
  }
  return z;
}

void GaLore::apply_gram(size_t i, double* sketch, int64_t q) {
  const GaloreLayout& l = layouts_[i];
  const kernels::Ops& k = kernels::ops(work_[slots_->sketch_f].device());
  const ParamRef& p = params_[i];
  const float* z = sketch_product(i, sketch, q);
  float* y = work_[slots_->sketch_f].f32();
  if (l.rows_split) {  // Gram = Gᵀ G: Q Gram = Zᵀ G
    k.gemm(true, false, q, l.S, l.Lk, 1.0f, z, q, p.grad, p.rect.ld, 0.0f, y, l.S, {});
  } else {  // Gram = G Gᵀ: Q Gram = Z Gᵀ
    k.gemm(false, true, q, l.S, l.Lk, 1.0f, z, l.Lk, p.grad, p.rect.ld, 0.0f, y, l.S, {});
  }
  sum_over_group(i, y, q * l.S);
  to_double(sketch, y, q * l.S);
}

void GaLore::refresh(size_t i) {
  const auto t0 = std::chrono::steady_clock::now();
  const GaloreLayout& l = layouts_[i];
  const kernels::Ops& k = kernels::ops(work_[slots_->basis].device());
  const ParamRef& p = params_[i];
  double* values = work_[slots_->values].data_as<double>();
  double* basis = work_[slots_->basis].data_as<double>();
  double* eig = work_[slots_->eig].data_as<double>();
  int* eig_int = work_[slots_->eig_int].data_as<int>();
  if (config_.galore.projector == "randomized") {
    // A Gaussian sketch through the Gram matrix, re-orthonormalised after each pass; the top
    // vectors of the Gram matrix restricted to its span are the basis.
    const int64_t q = sketch_size(l, config_.galore);
    double* sketch = work_[slots_->sketch].data_as<double>();
    double* qr = work_[slots_->qr].data_as<double>();
    const uint64_t seed = fnv1a(p.name, kFnvOffsetBasis ^ config_.seed) ^ static_cast<uint64_t>(t_);
    k.gaussian_fill(sketch, q * l.S, seed);
    apply_gram(i, sketch, q);
    for (int64_t it = 0; it < config_.galore.power_iterations; ++it) {
      k.orthonormalize_rows(sketch, q, l.S, qr);
      apply_gram(i, sketch, q);
    }
    k.orthonormalize_rows(sketch, q, l.S, qr);
    // T (q × q) = Q Gram Qᵀ = Zᵀ Z (or Z Zᵀ) with Z the sketch applied to G.
    const float* z = sketch_product(i, sketch, q);
    float* tf = work_[slots_->small_f].f32();
    if (l.rows_split) {
      k.gemm(true, false, q, q, l.Lk, 1.0f, z, q, z, q, 0.0f, tf, q, {});
    } else {
      k.gemm(false, true, q, q, l.Lk, 1.0f, z, l.Lk, z, l.Lk, 0.0f, tf, q, {});
    }
    sum_over_group(i, tf, q * q);
    double* t = work_[slots_->small].data_as<double>();
    double* w = work_[slots_->small_vectors].data_as<double>();
    to_double(t, tf, q * q);
    k.symmetric_top_eigen(t, q, l.r, values, w, eig, eig_int);
    k.combine_rows(basis, w, sketch, l.r, q, l.S);
    k.canonicalize_signs(basis, l.r, l.S);
  } else {
    double* gram = work_[slots_->gram].data_as<double>();
    std::fill_n(gram, l.S * l.S, 0.0);
    k.gram_accumulate(gram, p.grad, l.S, l.Lk, p.rect.ld, l.rows_split,
                      work_[slots_->gram_scratch].data_as<double>());
    sum_over_group(i, gram, l.S * l.S);
    k.symmetric_top_eigen(gram, l.S, l.r, values, basis, eig, eig_int);
  }
  if (!l.whole_short) sign_by_split_side(i, basis, values);
  set_projector(i, basis, values);
  refresh_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void GaLore::set_projector(size_t i, const double* basis, const double* values) {
  const GaloreLayout& l = layouts_[i];
  float* P = state_[l.projector].f32();
  if (l.whole_side) {
    to_float(P, basis, l.r * l.S);
    return;
  }
  split_vectors(i, basis, values, P);
}

void GaLore::split_vectors(size_t i, const double* basis, const double* values, float* out) {
  const GaloreLayout& l = layouts_[i];
  const kernels::Ops& k = kernels::ops(work_[slots_->basis_f].device());
  const ParamRef& p = params_[i];
  // U = G V Σ⁻¹ on this rank's split-side rows: U (r × Lk) = V (r × S) · (G as S × Lk) / σ.
  float* vf = work_[slots_->basis_f].f32();
  to_float(vf, basis, l.r * l.S);
  k.gemm(false, l.rows_split, l.r, l.Lk, l.S, 1.0f, vf, l.S, p.grad, p.rect.ld, 0.0f, out, l.Lk,
         {});
  // A direction the gradient does not span (σ ≈ 0) has no left vector: it stays zero.
  const double top = std::sqrt(std::max(values[0], 0.0));
  for (int64_t j = 0; j < l.r; ++j) {
    const double sigma = std::sqrt(std::max(values[j], 0.0));
    const float inv = sigma > 1e-6 * top && sigma > 0 ? static_cast<float>(1.0 / sigma) : 0.0f;
    for (int64_t c = 0; c < l.Lk; ++c) out[j * l.Lk + c] *= inv;
  }
}

void GaLore::sign_by_split_side(size_t i, double* basis, const double* values) {
  const GaloreLayout& l = layouts_[i];
  const ParamRef& p = params_[i];
  float* u = work_[slots_->split_vectors].f32();
  split_vectors(i, basis, values, u);
  const int64_t real = l.rows_split ? p.rect.rows : p.rect.cols;  // padding is not an entry
  double* most = work_[slots_->signs].data_as<double>();  // per vector: |largest entry| here
  double* sign = most + l.r;                              // and its sign
  for (int64_t j = 0; j < l.r; ++j) {
    int64_t big = 0;
    for (int64_t c = 1; c < real; ++c)
      if (std::abs(u[j * l.Lk + c]) > std::abs(u[j * l.Lk + big])) big = c;
    most[j] = real > 0 ? std::abs(u[j * l.Lk + big]) : 0.0;
    sign[j] = real > 0 && u[j * l.Lk + big] < 0 ? -1.0 : 1.0;
  }
  // The largest over the group, and the sign of the rank (or ranks, alike) holding it.
  std::vector<double> local(most, most + l.r);
  parallel::Communicator* group = group_of(i);
  if (group)
    group->all_reduce(parallel::host_view(most, static_cast<size_t>(l.r)),
                      parallel::ReduceOp::kMax);
  for (int64_t j = 0; j < l.r; ++j)
    sign[j] = p.counted && local[static_cast<size_t>(j)] == most[j] ? sign[j] : 0.0;
  if (group) group->all_reduce(parallel::host_view(sign, static_cast<size_t>(l.r)));
  for (int64_t j = 0; j < l.r; ++j)
    if (sign[j] < 0)
      for (int64_t c = 0; c < l.S; ++c) basis[j * l.S + c] = -basis[j * l.S + c];
}

parallel::Communicator* GaLore::group_of(size_t i) const {
  parallel::Communicator* g = params_[i].group;
  return g && g->size() > 1 ? g : nullptr;
}

template <class T>
void GaLore::sum_over_group(size_t i, T* x, int64_t n) {
  parallel::Communicator* group = group_of(i);
  if (!group) return;
  if (!params_[i].counted) std::fill_n(x, n, T(0));  // another rank of the group adds this part
  group->all_reduce(parallel::host_view(x, static_cast<size_t>(n)));
}

}  // namespace keel::optim
