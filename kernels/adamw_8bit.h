// AdamW with both moments kept in 8 bits, blockwise (Dettmers et al., bitsandbytes' AdamW8bit):
// per block, the moments are dequantized, updated as AdamW updates them, and requantized against
// the block's new absolute maximum, in one pass; the parameter update is AdamW's.
#pragma once

#include <cstdint>

#include "kernels/adamw.h"
#include "kernels/device.h"
#include "kernels/quantize.h"

namespace keel::kernels::cpu {

// Largest block the fused step supports (its per-block scratch lives on the stack).
constexpr int64_t kMaxQuantBlock = 4096;

// With g = grad · grad_scale, per element, as bitsandbytes' AdamW8bit computes it:
//   m = m_map[m_code]·m_absmax, v = v_map[v_code]·v_absmax   (dequantize the block)
//   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   param ← param·(1 − lr·wd) − (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps)
// then each block's m and v are requantized (quantize_blockwise). param, grad, m_codes, v_codes
// have n elements; m_absmax and v_absmax ceil(n / block). m_table's map is signed, v_table's
// unsigned.
void adamw_8bit_step(float* param, uint8_t* m_codes, float* m_absmax, uint8_t* v_codes,
                     float* v_absmax, const float* grad, int64_t n, int64_t block,
                     const QuantTable& m_table, const QuantTable& v_table, const AdamWHyper& h,
                     Stream stream = {});

}  // namespace keel::kernels::cpu

// No CUDA twin yet: keel's optimizers step on the CPU (the runtime does not call the CUDA ops).
