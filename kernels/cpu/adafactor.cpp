// Adafactor on the CPU, in passes over the tensor: the parameter's RMS, the running means, the
// update's RMS (the update recomputed rather than stored), then the update itself. Sums run in
// double, so the means and RMS do not depend on the thread count's split of the work.
#include "kernels/adafactor.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/error.h"

namespace keel::kernels::cpu {

void adafactor_step(float* param, const float* grad, float* row, float* col, float* sq, float* m,
                    int64_t rows, int64_t cols, bool factored, const AdafactorHyper& h, Stream) {
  KEEL_CHECK(h.step >= 1, "adafactor: step is 1-based and must be >= 1, got {}", h.step);
  KEEL_CHECK(rows > 0 && cols > 0, "adafactor: empty tensor {}x{}", rows, cols);
  const int64_t n = rows * cols;
  const double t = static_cast<double>(h.step);
  double p2 = 0.0;
#pragma omp parallel for reduction(+ : p2) schedule(static)
  for (int64_t i = 0; i < n; ++i) p2 += double{param[i]} * param[i];
  const double rms_param = std::sqrt(p2 / static_cast<double>(n));
  double step_size = h.lr;
  if (h.relative_step) step_size = std::min(h.warmup_init ? 1e-6 * t : 1e-2, 1.0 / std::sqrt(t));
  if (h.scale_parameter) step_size *= std::max(h.eps2, rms_param);
  const auto lr = static_cast<float>(step_size);
  const double beta2t = 1.0 - std::pow(t, h.decay_rate);
  const auto b2 = static_cast<float>(beta2t), one_minus_b2 = static_cast<float>(1.0 - beta2t);
  const auto eps1 = static_cast<float>(h.eps1);
  const float scale = h.grad_scale;

  // The running means of g² + eps1, and the factors the update multiplies g by.
  std::vector<float> row_factor, col_factor;
  if (factored) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0.0;
      for (int64_t c = 0; c < cols; ++c) {
        const float g = grad[r * cols + c] * scale;
        s += g * g + eps1;
      }
      row[r] = row[r] * b2 + one_minus_b2 * static_cast<float>(s / static_cast<double>(cols));
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < cols; ++c) {
      double s = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        const float g = grad[r * cols + c] * scale;
        s += g * g + eps1;
      }
      col[c] = col[c] * b2 + one_minus_b2 * static_cast<float>(s / static_cast<double>(rows));
    }
    double row_sum = 0.0;
    for (int64_t r = 0; r < rows; ++r) row_sum += row[r];
    const auto row_mean = static_cast<float>(row_sum / static_cast<double>(rows));
    row_factor.resize(static_cast<size_t>(rows));
    col_factor.resize(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) row_factor[r] = 1.0f / std::sqrt(row[r] / row_mean);
    for (int64_t c = 0; c < cols; ++c) col_factor[c] = 1.0f / std::sqrt(col[c]);
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float g = grad[i] * scale;
      sq[i] = sq[i] * b2 + one_minus_b2 * (g * g + eps1);
    }
  }
  auto update = [&](int64_t i) {
    const float g = grad[i] * scale;
    if (factored)
      return row_factor[static_cast<size_t>(i / cols)] * col_factor[static_cast<size_t>(i % cols)] *
             g;
    return 1.0f / std::sqrt(sq[i]) * g;
  };
  double u2 = 0.0;
#pragma omp parallel for reduction(+ : u2) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float u = update(i);
    u2 += double{u} * u;
  }
  const double rms_update = std::sqrt(u2 / static_cast<double>(n));
  const auto clip = static_cast<float>(std::max(rms_update / h.clip_threshold, 1.0));
  const auto beta1 = static_cast<float>(h.beta1), one_minus_b1 = static_cast<float>(1.0 - h.beta1);
  const auto decay = static_cast<float>(-h.weight_decay * step_size);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    float u = update(i) / clip * lr;
    if (h.beta1 > 0) u = m[i] = m[i] * beta1 + one_minus_b1 * u;
    float p = param[i];
    if (h.weight_decay != 0) p = p + p * decay;
    param[i] = p - u;
  }
}

}  // namespace keel::kernels::cpu
