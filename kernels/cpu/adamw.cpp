// AdamW on the CPU, one fused pass over the elements. The operation order and the fp32 roundings
// follow torch.optim.AdamW's single-tensor path; the two differ only where the compiler fuses a
// multiply-add that torch rounds twice (a few ulp of v, ~1e-8 of the parameters).
#include "kernels/adamw.h"

#include <cmath>

#include "kernels/error.h"

namespace keel::kernels::cpu {

void adamw_step(float* param, float* m, float* v, const float* grad, int64_t n, const AdamWHyper& h,
                Stream) {
  KEEL_CHECK(h.step >= 1, "adamw: step is 1-based and must be >= 1, got {}", h.step);
  // Scalars as torch derives them from Python floats: in double, then cast to fp32 where the
  // tensor kernel consumes them.
  const double lr = h.lr;
  const double beta1 = h.beta1;
  const double beta2 = h.beta2;
  const double t = static_cast<double>(h.step);
  const double bias_correction1 = 1.0 - std::pow(beta1, t);
  const double bias_correction2 = 1.0 - std::pow(beta2, t);
  const float decay = static_cast<float>(1.0 - lr * static_cast<double>(h.weight_decay));
  const float lerp_weight = static_cast<float>(1.0 - beta1);
  const bool lerp_small = std::abs(lerp_weight) < 0.5f;
  const float b2 = h.beta2;
  const float one_minus_b2 = static_cast<float>(1.0 - beta2);
  const float step_size = static_cast<float>(lr / bias_correction1);
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = h.eps;
  const float scale = h.grad_scale;

  // GCC vectorises this loop only under -fno-math-errno: otherwise std::sqrt keeps a scalar
  // errno-setting branch (measured 3x slower). keel never reads errno.
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * scale;
    const float p = param[i] * decay;
    // m.lerp_(g, w = 1 − β1), in the two forms torch's lerp picks between by |w| < 0.5.
    const float mi =
        lerp_small ? m[i] + lerp_weight * (g - m[i]) : g - (g - m[i]) * (1.0f - lerp_weight);
    // v.mul_(β2).addcmul_(g, g, value = 1 − β2).
    const float vi = v[i] * b2 + one_minus_b2 * g * g;
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    // param.addcdiv_(m, denom, value = −step_size).
    param[i] = p + (-step_size) * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace keel::kernels::cpu
