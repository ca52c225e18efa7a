// AdamW with both moments blockwise-quantized to 8 bits (optimizer.type adamw_8bit; Dettmers et
// al., bitsandbytes' AdamW8bit): per tensor, codes for m (signed dynamic map) and v (unsigned) and
// one fp32 absmax per block of config.block_size elements. The blocks are cut from each tensor
// the optimizer is given, so under ZeRO they never cross a shard. Tensors under
// config.min_8bit_size elements, or not marked ParamRef::quantize, keep fp32 moments. The maps are
// built on every rank (replicated).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kernels/memory_plan.h"
#include "kernels/quantize.h"
#include "optim/optimizer.h"

namespace keel::optim {

// Whether 8-bit state `name` ("exp_avg", "exp_avg_sq", or either behind a wrapper's prefix, as
// "galore.exp_avg") is quantized with the signed dynamic map: the first moment is.
inline bool signed_state(std::string_view name) { return name.ends_with("exp_avg"); }

class AdamW8bit final : public Optimizer {
 public:
  AdamW8bit(std::vector<ParamRef> params, const OptimizerConfig& config);
  static size_t plan_bytes(const OptimizerConfig& config, const std::vector<ParamRef>& params);

  void step_tensors(size_t first, size_t last, double lr, double grad_scale) override;
  size_t num_tensors() const override { return params_.size(); }
  // Quantized tensors: exp_avg and exp_avg_sq as codes, exp_avg_absmax and exp_avg_sq_absmax per
  // block; the others exp_avg and exp_avg_sq in fp32.
  std::vector<StateTensor> state(size_t i) override;
  // Quantized tensors: the values quantized in this optimizer's blocks (codes and absmax).
  void load_state(size_t i, const std::string& name, const float* values) override;
  size_t state_bytes() const override { return state_.bytes(); }
  std::string describe_memory() const override { return state_.describe(); }
  std::string describe() const override;
  bool quantized(size_t i) const { return slots_[i].quantized; }

 private:
  struct Slots {
    bool quantized;
    MemoryPlan::Slot m, v;                // codes (U8) or fp32 moments
    MemoryPlan::Slot m_absmax, v_absmax;  // (blocks) when quantized
  };
  static void declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                      const OptimizerConfig& config, std::vector<Slots>& slots);
  int64_t blocks(size_t i) const;

  std::vector<ParamRef> params_;
  OptimizerConfig config_;
  MemoryPlan state_{"optimizer state"};
  std::vector<Slots> slots_;
  kernels::cpu::QuantTable signed_, unsigned_;
};

}  // namespace keel::optim
