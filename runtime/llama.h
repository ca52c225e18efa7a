// The LLaMA model: embedding, blocks of (RMSNorm → GQA attention with RoPE → residual, RMSNorm →
// SwiGLU MLP → residual), final RMSNorm, output head (tied or not). Forward and backward are
// written by hand, the backward the forward in reverse; all memory comes from three plans made at
// construction (parameters+gradients, activations, workspace).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "runtime/config.h"
#include "runtime/parameter.h"

namespace keel::runtime {

class LlamaModel {
 public:
  // B sequences of T tokens per micro-batch. With checkpointing, only each block's input is kept
  // from the forward; the backward recomputes the block's insides.
  LlamaModel(const ModelConfig& config, int64_t B, int64_t T, bool checkpointing);
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  int64_t batch() const { return B_; }
  int64_t seq() const { return T_; }

  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  Parameter& parameter(const std::string& name);
  int64_t num_parameters() const;

  // Hugging Face's initialisation: every matrix N(0, initializer_range²), norm weights 1.
  void init_weights(uint64_t seed);
  void zero_grad();
  // Every gradient as one contiguous F32 tensor (the gradient plan, padding between parameters
  // included and always zero): what data parallelism all-reduces in one call.
  Tensor grad_storage() const;

  // tokens, targets (B, T); targets < 0 are ignored. Returns the sum of per-token losses.
  // Gradients accumulate: grad += ∂(grad_scale · Σ losses)/∂param.
  double forward_backward(const int32_t* tokens, const int32_t* targets, float grad_scale);
  // Forward only. Returns Σ losses over valid targets (targets may be null: returns 0). When
  // logits is not null it receives (B, T, V) floats.
  double forward(const int32_t* tokens, const int32_t* targets, float* logits);

  // Model FLOPs per trained token (forward + backward, causal attention counted at half).
  double flops_per_token() const;
  // The three memory plans, buffer by buffer, in MiB.
  std::string describe_memory() const;
  size_t planned_bytes() const;

 private:
  struct Layer;  // parameter and activation slots of one block
  void build_plans();
  void embed(const int32_t* tokens);
  void block_forward(int l, bool recompute);
  void block_backward(int l);
  double head(const int32_t* targets, float grad_scale, bool backward, float* logits);

  ModelConfig config_;
  int64_t B_, T_, N_;
  int64_t H_, Hkv_, D_, C_, I_, V_, QKV_;
  int64_t chunk_rows_;     // rows of logits that exist at once
  int workspace_threads_;  // OpenMP threads the attention workspace is sized for
  bool checkpointing_;

  MemoryPlan weights_{"parameters"};
  MemoryPlan grads_{"gradients"};
  MemoryPlan acts_{"activations"};
  MemoryPlan work_{"workspace"};
  std::vector<Parameter> params_;
  std::vector<Layer> layers_;
  struct Slots;
  std::unique_ptr<Slots> s_;
};

}  // namespace keel::runtime
