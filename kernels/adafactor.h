// Adafactor (Shazeer & Stern, 2018) as Hugging Face transformers' Adafactor computes it: the
// second moment of a matrix kept factored (a running mean of g² + eps1 per row and per column,
// their outer product over the mean row value standing in for the full matrix), of a vector kept
// whole; the update clipped to an RMS of clip_threshold; an optional first moment over the
// clipped update; the step size fixed or relative (min(1e-2, 1/sqrt(t)), times max(eps2,
// RMS(param)) with scale_parameter).
//
// adafactor_step does all of it for a whole tensor. The phases it is made of work on any
// rectangle of a tensor, so that an optimizer over ZeRO shards can reduce the sums that span the
// whole tensor across ranks between them (optim/adafactor.cpp): sums → means → update_sum_sq →
// apply.
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

// ---- The phases, on a part of a tensor -------------------------------------------------------

// A rectangle of a tensor held in memory: rows × cols values, row-major with ld floats per row
// (ld ≥ cols; the floats past cols are padding, never read or written). A vector is n × 1.
// Element-wise state (a vector's sq, the first moment m) is laid out the same way.
struct AdafactorPart {
  float* param;       // (rows, ld)
  const float* grad;  // (rows, ld)
  int64_t rows = 0, cols = 0, ld = 0;
};

// What divides the gradient into the update: a factored matrix's row factors (part rows) and
// column factors (part cols), or else a vector's second moment sq (laid out as the part).
struct AdafactorScale {
  const float* row_factor = nullptr;
  const float* col_factor = nullptr;
  const float* sq = nullptr;
};

// β2 at this step (1 − t^decay_rate) and 1 − β2, rounded to fp32 as the means use them.
struct AdafactorDecay {
  float beta2, one_minus_beta2;
};
AdafactorDecay adafactor_decay(const AdafactorHyper& h);

// The step size: lr, or the relative step; with scale_parameter times max(eps2, rms_param), the
// RMS of the whole parameter before the update.
double adafactor_step_size(const AdafactorHyper& h, double rms_param);

// Phase 1. row_sums (rows) and col_sums (cols), either may be null: Σ of g² + eps1 along each
// row and each column of the part (g = grad · grad_scale), summed in double, each in order so the
// result does not depend on the thread count. Returns Σ param² over the part.
double adafactor_sums(const AdafactorPart& part, const AdafactorHyper& h, double* row_sums,
                      double* col_sums);

// mean[i] ← β2 · mean[i] + (1 − β2) · sums[i] / count, for n running means of a factored matrix;
// count is the length of the other dimension of the whole matrix.
void adafactor_update_means(float* mean, const double* sums, int64_t n, double count,
                            AdafactorDecay d);

// factor[i] = 1 / sqrt(mean[i] / divisor) for n means: the row factors (divisor: the mean of
// every row's running mean) or the column factors (divisor 1).
void adafactor_factors(float* factor, const float* mean, int64_t n, float divisor);

// A vector's second moment over the part: sq ← β2 · sq + (1 − β2) · (g² + eps1).
void adafactor_second_moment(const AdafactorPart& part, float* sq, const AdafactorHyper& h,
                             AdafactorDecay d);

// Phase 2: Σ u² over the part, u = g · row_factor · col_factor, or g / sqrt(sq).
double adafactor_update_sum_sq(const AdafactorPart& part, const AdafactorScale& s,
                               const AdafactorHyper& h);

// Phase 3: param ← param − weight_decay · step_size · param − step_size · u / clip, through the
// first moment m (laid out as the part) when beta1 > 0, where clip = max(1, rms_update /
// clip_threshold) and rms_update is the RMS of u over the whole tensor.
void adafactor_apply(const AdafactorPart& part, const AdafactorScale& s, float* m,
                     const AdafactorHyper& h, double step_size, double rms_update);

}  // namespace keel::kernels::cpu

// No CUDA twin yet: keel's optimizers step on the CPU.
