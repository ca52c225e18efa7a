// Adafactor (Shazeer & Stern, 2018) as Hugging Face transformers' Adafactor computes it: the
// second moment of a matrix kept factored (a running mean of g² + eps1 per row and per column,
// their outer product over the mean row value standing in for the full matrix), of a vector kept
// whole; the update clipped to an RMS of clip_threshold; an optional first moment over the
// clipped update; the step size fixed or relative (min(1e-2, 1/sqrt(t)), times max(eps2,
// RMS(param)) with scale_parameter).
#pragma once

#include <cstdint>

#include "kernels/device.h"

namespace keel::kernels::cpu {

struct AdafactorHyper {
  double lr = 1e-3;  // the step size, unless relative_step
  bool relative_step = false, scale_parameter = false, warmup_init = false;
  double decay_rate = -0.8;  // β2 at step t: 1 − t^decay_rate
  double clip_threshold = 1.0;
  double eps1 = 1e-30, eps2 = 1e-3;
  double beta1 = 0.0;  // > 0: keep a first moment of the update
  double weight_decay = 0.0;
  int64_t step = 1;         // 1-based, including this update
  float grad_scale = 1.0f;  // multiplies the gradient first (global-norm clipping)
};

// param, grad: rows × cols, row-major. factored (a matrix): row (rows) and col (cols) hold the
// running means, sq is unused; otherwise (a vector, rows × 1) sq (rows·cols) does. m (rows·cols)
// is the first moment when beta1 > 0, else unused.
void adafactor_step(float* param, const float* grad, float* row, float* col, float* sq, float* m,
                    int64_t rows, int64_t cols, bool factored, const AdafactorHyper& h,
                    Stream stream = {});

}  // namespace keel::kernels::cpu

// No CUDA twin yet: keel's optimizers step on the CPU.
