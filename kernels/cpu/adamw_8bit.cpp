// 8-bit AdamW on the CPU: one OpenMP task per block; the block's dequantized moments live in
// stack scratch between the update and the requantization. The fp32 roundings follow
// bitsandbytes' CPU path (torch's mul_/add_/addcmul_/addcdiv_ in sequence).
#include "kernels/adamw_8bit.h"

#include <algorithm>
#include <cmath>

#include "kernels/error.h"

namespace keel::kernels::cpu {

void adamw_8bit_step(float* param, uint8_t* m_codes, float* m_absmax, uint8_t* v_codes,
                     float* v_absmax, const float* grad, int64_t n, int64_t block,
                     const QuantTable& m_table, const QuantTable& v_table, const AdamWHyper& h,
                     Stream) {
  KEEL_CHECK(h.step >= 1, "adamw_8bit: step is 1-based and must be >= 1, got {}", h.step);
  KEEL_CHECK(block > 0 && block <= kMaxQuantBlock, "adamw_8bit: block size {} is not in [1, {}]",
             block, kMaxQuantBlock);
  // Scalars as bitsandbytes derives them from Python floats: in double, cast to fp32 where the
  // tensor op consumes them.
  const double lr = h.lr, beta1 = h.beta1, beta2 = h.beta2, t = static_cast<double>(h.step);
  const auto correction2 = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  const auto step_size = static_cast<float>(-lr / (1.0 - std::pow(beta1, t)));
  const auto decay = static_cast<float>(1.0 - lr * static_cast<double>(h.weight_decay));
  const float b1 = h.beta1, one_minus_b1 = static_cast<float>(1.0 - beta1);
  const float b2 = h.beta2, one_minus_b2 = static_cast<float>(1.0 - beta2);
  const float eps = h.eps, scale = h.grad_scale;
  const int64_t blocks = (n + block - 1) / block;
  const QuantMap& m_map = m_table.map();
  const QuantMap& v_map = v_table.map();
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    // Three passes over the block, each a loop the compiler vectorises (gathers from the maps
    // and the quantization table, the arithmetic, max reductions); per element the arithmetic is
    // the same sequence as in one pass, so the result is too.
    float m[kMaxQuantBlock], v[kMaxQuantBlock];
    const int64_t begin = b * block, len = std::min(n, begin + block) - begin;
    const float ma = m_absmax[b], va = v_absmax[b];
    const uint8_t* mc = m_codes + begin;
    const uint8_t* vc = v_codes + begin;
    const float* gb = grad + begin;
    float* pb = param + begin;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      m[j] = m_map[mc[j]] * ma;
      v[j] = v_map[vc[j]] * va;
    }
    float m_max = 0.0f, v_max = 0.0f;
#pragma omp simd reduction(max : m_max, v_max)
    for (int64_t j = 0; j < len; ++j) {
      const float g = gb[j] * scale;
      float mi = m[j] * b1;
      mi = mi + one_minus_b1 * g;
      float vi = v[j] * b2;
      vi = vi + one_minus_b2 * g * g;
      const float denom = std::sqrt(vi) / correction2 + eps;
      const float p = pb[j] * decay;
      pb[j] = p + step_size * mi / denom;
      m[j] = mi;
      v[j] = vi;
      m_max = std::max(m_max, std::abs(mi));
      v_max = std::max(v_max, std::abs(vi));
    }
    m_absmax[b] = m_max;
    v_absmax[b] = v_max;
    const float m_inv = 1.0f / std::max(m_max, 1e-38f), v_inv = 1.0f / std::max(v_max, 1e-38f);
    uint8_t* mo = m_codes + begin;
    uint8_t* vo = v_codes + begin;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      // std::clamp, written so it if-converts: NaN stays NaN as there.
      mo[j] = m_table.quantize(std::min(std::max(m[j] * m_inv, -1.0f), 1.0f));
      vo[j] = v_table.quantize(std::min(std::max(v[j] * v_inv, -1.0f), 1.0f));
    }
  }
}

}  // namespace keel::kernels::cpu
