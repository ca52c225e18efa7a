// AdamW with decoupled weight decay, exactly as torch.optim.AdamW (foreach=False) computes it,
// vectorised and parallel over elements.
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

struct AdamWHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;         // 1-based count of updates including this one (bias correction)
  float grad_scale = 1.0f;  // multiplies the gradient first (global-norm clipping, loss scaling)
};

// With g = grad · grad_scale:
//   param ← param · (1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//   param ← param − (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps).
// param, m, v, grad have n elements.
void adamw_step(float* param, float* m, float* v, const float* grad, int64_t n, const AdamWHyper& h,
                Stream stream = {});

}  // namespace keel::kernels::cpu

// CUDA twin (kernels/cuda/adamw.cu): device pointers, work on the stream. Both versions take the
// same AdamWHyper, so argument-dependent lookup sees both: call them qualified (cuda::adamw_step).
namespace keel::kernels::cuda {

using cpu::AdamWHyper;

void adamw_step(float* param, float* m, float* v, const float* grad, int64_t n, const AdamWHyper& h,
                Stream stream = {});

}  // namespace keel::kernels::cuda
