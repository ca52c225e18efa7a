// AdamW on the GPU, one fused pass with one thread per element. The scalars are derived on the
// host exactly as kernels/cpu/adamw.cpp derives them, and the per-element arithmetic is the same
// sequence of fp32 operations (torch.optim.AdamW's single-tensor path).
#include <cmath>

#include "kernels/adamw.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"

namespace keel::kernels::cuda {

namespace {

struct AdamWScalars {
  float decay;         // 1 − lr·wd
  float lerp_weight;   // 1 − β1
  bool lerp_small;     // |lerp_weight| < 0.5: which of torch's two lerp forms
  float b2;            // β2
  float one_minus_b2;  // 1 − β2
  float step_size;     // lr / (1 − β1^t)
  float bias_correction2_sqrt;
  float eps;
  float grad_scale;
};

__global__ void adamw_kernel(float* param, float* m, float* v, const float* grad, int64_t n,
                             AdamWScalars k) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const float g = grad[i] * k.grad_scale;
    const float p = param[i] * k.decay;
    const float mi =
        k.lerp_small ? m[i] + k.lerp_weight * (g - m[i]) : g - (g - m[i]) * (1.0f - k.lerp_weight);
    const float vi = v[i] * k.b2 + k.one_minus_b2 * g * g;
    const float denom = sqrtf(vi) / k.bias_correction2_sqrt + k.eps;
    param[i] = p + (-k.step_size) * mi / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

}  // namespace

void adamw_step(float* param, float* m, float* v, const float* grad, int64_t n, const AdamWHyper& h,
                Stream stream) {
  KEEL_CHECK(h.step >= 1, "adamw: step is 1-based and must be >= 1, got {}", h.step);
  const double lr = h.lr;
  const double beta1 = h.beta1;
  const double beta2 = h.beta2;
  const double t = static_cast<double>(h.step);
  AdamWScalars k{};
  k.decay = static_cast<float>(1.0 - lr * static_cast<double>(h.weight_decay));
  k.lerp_weight = static_cast<float>(1.0 - beta1);
  k.lerp_small = std::abs(k.lerp_weight) < 0.5f;
  k.b2 = h.beta2;
  k.one_minus_b2 = static_cast<float>(1.0 - beta2);
  k.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
  k.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  k.eps = h.eps;
  k.grad_scale = h.grad_scale;
  if (n == 0) return;
  adamw_kernel<<<grid_for(n), kBlock, 0, to_cuda(stream)>>>(param, m, v, grad, n, k);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace keel::kernels::cuda
