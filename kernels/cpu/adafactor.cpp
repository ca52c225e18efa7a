// Adafactor on the CPU, in passes over the tensor: the gradient's row and column sums with the
// parameter's RMS, the running means, the update's RMS (the update recomputed rather than
// stored), then the update itself. Sums run in double and each row's or column's in order, so the
// means do not depend on the thread count's split of the work.
#include "kernels/adafactor.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "kernels/cpu/vec_math.h"
#include "kernels/error.h"

namespace keel::kernels::cpu {
namespace {

// Columns per block of the column sums: a block's accumulators live on the stack.
constexpr int64_t kMaxColumnBlock = 256;

// The update u of element (r, c) of the part, before clipping.
inline float update(const AdafactorPart& p, const AdafactorScale& s, float scale, int64_t r,
                    int64_t c) {
  const float g = p.grad[r * p.ld + c] * scale;
  if (s.sq) return 1.0f / std::sqrt(s.sq[r * p.ld + c]) * g;
  return s.row_factor[r] * s.col_factor[c] * g;
}

}  // namespace

AdafactorDecay adafactor_decay(const AdafactorHyper& h) {
  KEEL_CHECK(h.step >= 1, "adafactor: step is 1-based and must be >= 1, got {}", h.step);
  const double beta2t = 1.0 - std::pow(static_cast<double>(h.step), h.decay_rate);
  return {static_cast<float>(beta2t), static_cast<float>(1.0 - beta2t)};
}

double adafactor_step_size(const AdafactorHyper& h, double rms_param) {
  const double t = static_cast<double>(h.step);
  double step_size = h.lr;
  if (h.relative_step) step_size = std::min(h.warmup_init ? 1e-6 * t : 1e-2, 1.0 / std::sqrt(t));
  if (h.scale_parameter) step_size *= std::max(h.eps2, rms_param);
  return step_size;
}

double adafactor_sums(const AdafactorPart& part, const AdafactorHyper& h, double* row_sums,
                      double* col_sums) {
  const int64_t rows = part.rows, cols = part.cols, ld = part.ld;
  const float* grad = part.grad;
  const float* param = part.param;
  const auto eps1 = static_cast<float>(h.eps1);
  const float scale = h.grad_scale;
  double p2 = 0.0;
#pragma omp parallel for reduction(+ : p2) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0, q = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const float g = grad[r * ld + c] * scale;
      s += g * g + eps1;
      q += double{param[r * ld + c]} * param[r * ld + c];
    }
    if (row_sums) row_sums[r] = s;
    p2 += q;
  }
  if (col_sums && cols > 0) {
    // Each thread sums a block of whole columns, row after row: reads stay contiguous.
    const int64_t block = column_block(cols, kMaxColumnBlock);
    const int64_t blocks = (cols + block - 1) / block;
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * block, c1 = std::min(cols, c0 + block);
      std::array<double, kMaxColumnBlock> acc{};
      for (int64_t r = 0; r < rows; ++r) {
        const float* g_row = grad + r * ld;
        for (int64_t c = c0; c < c1; ++c) {
          const float g = g_row[c] * scale;
          acc[static_cast<size_t>(c - c0)] += g * g + eps1;
        }
      }
      for (int64_t c = c0; c < c1; ++c) col_sums[c] = acc[static_cast<size_t>(c - c0)];
    }
  }
  return p2;
}

void adafactor_update_means(float* mean, const double* sums, int64_t n, double count,
                            AdafactorDecay d) {
  for (int64_t i = 0; i < n; ++i)
    mean[i] = mean[i] * d.beta2 + d.one_minus_beta2 * static_cast<float>(sums[i] / count);
}

void adafactor_factors(float* factor, const float* mean, int64_t n, float divisor) {
  for (int64_t i = 0; i < n; ++i) factor[i] = 1.0f / std::sqrt(mean[i] / divisor);
}

void adafactor_second_moment(const AdafactorPart& part, float* sq, const AdafactorHyper& h,
                             AdafactorDecay d) {
  const auto eps1 = static_cast<float>(h.eps1);
  const float scale = h.grad_scale;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r = 0; r < part.rows; ++r)
    for (int64_t c = 0; c < part.cols; ++c) {
      const float g = part.grad[r * part.ld + c] * scale;
      float& v = sq[r * part.ld + c];
      v = v * d.beta2 + d.one_minus_beta2 * (g * g + eps1);
    }
}

double adafactor_update_sum_sq(const AdafactorPart& part, const AdafactorScale& s,
                               const AdafactorHyper& h) {
  double u2 = 0.0;
#pragma omp parallel for collapse(2) reduction(+ : u2) schedule(static)
  for (int64_t r = 0; r < part.rows; ++r)
    for (int64_t c = 0; c < part.cols; ++c) {
      const float u = update(part, s, h.grad_scale, r, c);
      u2 += double{u} * u;
    }
  return u2;
}

void adafactor_apply(const AdafactorPart& part, const AdafactorScale& s, float* m,
                     const AdafactorHyper& h, double step_size, double rms_update) {
  const auto lr = static_cast<float>(step_size);
  const auto clip = static_cast<float>(std::max(rms_update / h.clip_threshold, 1.0));
  const auto beta1 = static_cast<float>(h.beta1), one_minus_b1 = static_cast<float>(1.0 - h.beta1);
  const auto decay = static_cast<float>(-h.weight_decay * step_size);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t r = 0; r < part.rows; ++r)
    for (int64_t c = 0; c < part.cols; ++c) {
      const int64_t i = r * part.ld + c;
      float u = update(part, s, h.grad_scale, r, c) / clip * lr;
      if (h.beta1 > 0) u = m[i] = m[i] * beta1 + one_minus_b1 * u;
      float p = part.param[i];
      if (h.weight_decay != 0) p = p + p * decay;
      part.param[i] = p - u;
    }
}

void adafactor_step(float* param, const float* grad, float* row, float* col, float* sq, float* m,
                    int64_t rows, int64_t cols, bool factored, const AdafactorHyper& h, Stream) {
  KEEL_CHECK(rows > 0 && cols > 0, "adafactor: empty tensor {}x{}", rows, cols);
  const AdafactorPart part{param, grad, rows, cols, cols};
  const double n = static_cast<double>(rows * cols);
  const AdafactorDecay d = adafactor_decay(h);
  std::vector<double> row_sums, col_sums;
  if (factored)
    row_sums.resize(static_cast<size_t>(rows)), col_sums.resize(static_cast<size_t>(cols));
  const double p2 = adafactor_sums(part, h, factored ? row_sums.data() : nullptr,
                                   factored ? col_sums.data() : nullptr);
  const double step_size = adafactor_step_size(h, std::sqrt(p2 / n));

  std::vector<float> row_factor, col_factor;
  AdafactorScale s;
  if (factored) {
    adafactor_update_means(row, row_sums.data(), rows, static_cast<double>(cols), d);
    adafactor_update_means(col, col_sums.data(), cols, static_cast<double>(rows), d);
    double row_sum = 0.0;
    for (int64_t r = 0; r < rows; ++r) row_sum += row[r];
    row_factor.resize(static_cast<size_t>(rows));
    col_factor.resize(static_cast<size_t>(cols));
    adafactor_factors(row_factor.data(), row, rows,
                      static_cast<float>(row_sum / static_cast<double>(rows)));
    adafactor_factors(col_factor.data(), col, cols, 1.0f);
    s.row_factor = row_factor.data(), s.col_factor = col_factor.data();
  } else {
    adafactor_second_moment(part, sq, h, d);
    s.sq = sq;
  }
  const double rms_update = std::sqrt(adafactor_update_sum_sq(part, s, h) / n);
  adafactor_apply(part, s, m, h, step_size, rms_update);
}

}  // namespace keel::kernels::cpu
