// The LLaMA model: embedding, blocks of (RMSNorm → GQA attention with RoPE → residual, RMSNorm →
// SwiGLU MLP → residual), final RMSNorm, output head (tied or not). Forward and backward are
// written by hand, the backward the forward in reverse; all memory comes from three plans made at
// construction (parameters, gradients, activations, workspace). The parameters fall into units
// that the step uses together (the embedding, each block, the head: final norm and lm_head): under
// ZeRO 2 and 3 the model holds neither gradients nor (stage 3) weights itself and asks
// parallel::UnitHooks for each unit's buffers as it runs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/memory_plan.h"
#include "parallel/zero.h"
#include "runtime/config/config.h"
#include "runtime/model/block.h"
#include "runtime/model/parameter.h"

namespace keel::runtime {

// Which buffers the model keeps for the whole run; the hooks provide the others unit by unit.
struct ModelHolds {
  bool weights = true;
  bool grads = true;
  bool allocate = true;  // false: the plans and units only, for sizes (keel plan); cannot run
};

// Which slice of the model this rank holds: its place in the tensor-parallel group, and whether
// the residual stream between the TP regions is split along the sequence too (sequence
// parallelism, parallel.sequence_parallel; nothing to split with tp_size 1).
struct ModelSplit {
  int tp_size = 1;
  int tp_rank = 0;
  bool sequence_parallel = false;
  // The pipeline stage: layers [first_layer, last_layer) (last_layer -1: to the end), with the
  // embedding on the stage that holds layer 0 and the head on the one that holds the last.
  int first_layer = 0;
  int last_layer = -1;
  // Which of how many stages this is (0: inferred from the layers, as above). Named explicitly, a
  // first or last stage may hold no blocks at all, only the embedding or the head (Megatron's
  // uneven first and last stages taken to the end).
  int pipeline_stage = 0;
  int pipeline_stages = 0;
  // Micro-batches the stage holds between their forward and their backward, each in its own
  // activation slot (a pipeline schedule's peak of live micro-batches on the stage; 1 without a
  // pipeline). Only what a micro-batch keeps for its backward is per slot; workspace is shared.
  int activation_slots = 1;
  // Zero-bubble schedules: the backward may run as two passes, the input gradient
  // (stage_backward_input) and later the weight gradients (stage_backward_weight); each slot then
  // keeps its blocks' GEMM output gradients in between. Not with checkpointing, whose recomputed
  // block insides do not outlive the first pass.
  bool split_backward = false;
  // Interleaved pipelines (Megatron's virtual stages): the model chunks this rank holds, chunk c
  // the layers [chunk_layers[c].first, chunk_layers[c].second) with chunk_slots[c] activation
  // slots; the embedding runs on chunk 0 of the first stage, the head on the last chunk of the
  // last stage. Empty: one chunk, [first_layer, last_layer) with activation_slots.
  std::vector<std::pair<int, int>> chunk_layers = {};
  std::vector<int> chunk_slots = {};
  // Expert parallelism: the MoE layers' experts split over ep_size ranks, this one holding
  // experts [ep_rank·E/ep_size, (ep_rank + 1)·E/ep_size) (parallel.expert_model_parallel_size).
  int ep_size = 1;
  int ep_rank = 0;
};

class LlamaModel {
 public:
  // B sequences of T tokens per micro-batch. With checkpointing, only each block's input is kept
  // from the forward; the backward recomputes the block's insides. Under tensor parallelism
  // (split.tp_size > 1) the model holds its TP slice of every layer (parallel/tensor_parallel.h)
  // and cannot run before set_tensor_parallel names the group. With sequence parallelism too,
  // the residual stream and the norms' statistics hold rows [r·B·T/tp, (r+1)·B·T/tp) only (B·T
  // must divide by tp); the embedding reduce-scatters into them and the head gathers them back.
  LlamaModel(const ModelConfig& config, int64_t B, int64_t T, bool checkpointing,
             ModelHolds holds = {}, ModelSplit split = {});
  ~LlamaModel();
  LlamaModel(const LlamaModel&) = delete;
  LlamaModel& operator=(const LlamaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const parallel::TpSplit& tp_split() const { return tp_; }
  // The TP group (of tp_split().size ranks, this one at tp_split().rank).
  void set_tensor_parallel(parallel::TpMappings tp);
  int64_t batch() const { return B_; }
  int64_t seq() const { return T_; }

  // Every parameter by its Hugging Face name, units in order. value and grad point into the
  // model's own buffers; they are empty (null data) for the buffers the model does not hold.
  std::vector<Parameter>& parameters() { return params_; }
  const std::vector<Parameter>& parameters() const { return params_; }
  Parameter& parameter(const std::string& name);
  const Parameter& parameter_by_name(const std::string& name) const;
  int64_t num_parameters() const;

  // Hugging Face's initialisation: every matrix N(0, initializer_range²), norm weights 1.
  void init_weights(uint64_t seed);
  // The same for unit u alone, written into base (the unit's layout, units()[u]).
  void init_unit(int u, uint64_t seed, float* base) const;

  // The units, each with its parameters' global shapes and float offsets in the unit's buffer:
  // 0 the embedding, 1..L the blocks, L+1 the head (final norm, and lm_head unless tied).
  const std::vector<parallel::ZeroUnit>& units() const { return units_; }
  // The order a micro-batch's forward and backward ask for unit weights (prefetching follows it).
  // Per model chunk (one without interleaving).
  std::vector<std::vector<int>> weight_orders() const;
  // Units held at once at most: one, plus the tied embedding (the head adds to its gradient,
  // held until the embedding's own backward, across every layer's), plus an MoE layer's experts
  // (held beside their layer): 3 for a tied model with experts.
  int live_units() const { return 1 + (config_.tie_word_embeddings ? 1 : 0) + (moe_ ? 1 : 0); }
  // The model's own buffer of unit u (null when it does not hold weights or gradients).
  float* own_weights(int u) const;
  float* own_grads(int u) const;
  // Required when the model does not hold weights or gradients; must outlive the model's use.
  void set_hooks(parallel::UnitHooks* hooks) { hooks_ = hooks; }
  void zero_grad();
  // Every gradient as one contiguous F32 tensor (the gradient plan, padding between parameters
  // included and always zero): what data parallelism all-reduces in one call. Needs held grads.
  Tensor grad_storage() const;

  // tokens, targets (B, T); targets < 0 are ignored. Returns the sum of per-token losses.
  // Gradients accumulate: grad += ∂(grad_scale · Σ losses)/∂param. The whole model: a stage's
  // forward and backward of one micro-batch with every unit on it.
  double forward_backward(const int32_t* tokens, const int32_t* targets, float grad_scale);
  // Forward only, the whole model. Returns Σ losses over valid targets (targets may be null:
  // returns 0). When logits is not null it receives (B, T, V) floats.
  double forward(const int32_t* tokens, const int32_t* targets, float* logits);

  // The model as a pipeline stage: a contiguous range of units (ModelSplit's layers, with the
  // embedding on the first stage and the head on the last); one rank holding every unit is the
  // special case. stage_forward takes token ids on the first stage, else the previous stage's
  // output (this rank's rows × hidden); on the last stage it also runs the head forward and
  // backward against targets and returns Σ losses (0 elsewhere). stage_output() is what it
  // hands the next stage. stage_backward takes the next stage's stage_input_grad() (nothing on
  // the last stage) and accumulates the stage's gradients; on the first stage it ends with the
  // embedding's.
  //
  // A micro-batch runs in an activation slot in [0, activation_slots()): its forward fills the
  // slot and its backward empties it, so the forwards and backwards of micro-batches in different
  // slots may interleave in any order a pipeline schedule gives (the slot calls below; the ones
  // without a slot use slot 0). The gradients are those of running them one after another, bit
  // for bit when the backwards run in the same order (gradients add in backward order).
  // stage_output(slot) stays valid until the slot's next forward, stage_input_grad(slot) from its
  // backward until its next forward: buffers an isend can hold while other micro-batches run.
  double stage_forward(int slot, const int32_t* tokens, const float* input, const int32_t* targets,
                       float grad_scale);
  const float* stage_output(int slot) const;
  void stage_backward(int slot, const float* output_grad);
  const float* stage_input_grad(int slot) const;
  double stage_forward(const int32_t* tokens, const float* input, const int32_t* targets,
                       float grad_scale) {
    return stage_forward(0, tokens, input, targets, grad_scale);
  }
  const float* stage_output() const { return stage_output(0); }
  void stage_backward(const float* output_grad) { stage_backward(0, output_grad); }
  const float* stage_input_grad() const { return stage_input_grad(0); }
  // stage_backward in two passes (ModelSplit::split_backward). The first takes the same
  // argument and leaves stage_input_grad(slot) ready for the previous stage, with the norms'
  // (and, on the first stage, the embedding's) gradients added; the second adds the blocks' GEMM
  // weight gradients. Together they add what stage_backward adds, bit for bit (model holding its
  // gradients; under ZeRO 2/3 each pass hands its part over on its own).
  void stage_backward_input(int slot, const float* output_grad);
  void stage_backward_weight(int slot);
  // Forward only, for evaluation, in chunk c's first slot between steps: the chunk's part of
  // forward(), the input as for stage_forward; on the head's chunk returns Σ losses over valid
  // targets (0 elsewhere, where stage_output(chunk_slot(c, 0)) is what the next one evaluates).
  double stage_evaluate(const int32_t* tokens, const float* input, const int32_t* targets,
                        int chunk = 0);
  // Floats a stage hands on, and takes, per micro-batch: this rank's rows × hidden.
  int64_t stage_io_elems() const { return rows_.count * C_; }
  int activation_slots() const { return static_cast<int>(slot_state_.size()); }
  // Model chunks (ModelSplit::chunk_layers; 1 without interleaving), and chunk c's slots: slot
  // ids chunk_slot(c, 0) .. chunk_slot(c, chunk_slots(c) - 1). A slot runs its chunk's layers.
  int chunks() const { return static_cast<int>(chunks_.size()); }
  // Whether a micro-batch through chunk c starts with the embedding (chunk 0 of the first stage),
  // ends with the head (the last chunk of the last stage).
  bool embeds(int chunk) const { return first_ && chunk == 0; }
  bool heads(int chunk) const { return last_ && chunk + 1 == chunks(); }
  int chunk_slots(int chunk) const;
  int chunk_slot(int chunk, int k) const;
  bool first_stage() const { return first_; }
  bool last_stage() const { return last_; }
  int64_t first_layer() const { return l0_; }
  int64_t num_layers() const { return static_cast<int64_t>(layer_index_.size()); }
  // The model's index of local layer l.
  int64_t layer_index(int64_t l) const { return layer_index_.at(static_cast<size_t>(l)); }

  // Mixture of experts. The expert-parallel group (of ModelSplit::ep_size ranks); needed before
  // a model with experts split over ranks runs.
  void set_expert_parallel(parallel::Communicator* ep);
  // How many sequences a step's router losses average over (the global batch's: the per-device
  // batch × accumulation × data-parallel size); the micro-batch's B until set.
  void set_router_loss_batch(int64_t sequences);
  // Each local layer's routing over the training forwards since clear_moe_stats (empty entries
  // for dense layers; nothing without experts).
  const std::vector<MoeStats>& moe_stats() const { return moe_stats_; }
  void clear_moe_stats();
  // Bytes this rank has sent over the expert-parallel group since construction, counted from its
  // routing (0 without experts or expert parallelism).
  uint64_t moe_exchanged_bytes() const { return moe_ ? moe_->exchanged_bytes() : 0; }
  // Whether local layer l's MLP is a mixture of experts.
  bool moe_layer(int64_t l) const;

  // The block every layer runs, and layer l's weights (null where the model does not hold them;
  // under ZeRO 3 valid only while the unit is acquired).
  const LlamaBlock& block() const { return block_; }
  BlockWeights block_weights(int l) const;

  // Model FLOPs per trained token (forward + backward, causal attention counted at half).
  double flops_per_token() const;
  // Rows of logits that exist at once (the head runs chunk by chunk): the same on every TP rank.
  int64_t logits_chunk_rows() const { return chunk_rows_; }
  // Bytes one forward_backward moves on the TP group, each rank's count as the communicator's
  // counters count it (runtime/model/tp_traffic.cpp); 0 without TP.
  uint64_t tp_bytes_per_micro_batch() const;
  // The memory plans the model holds, buffer by buffer, in MiB, and their sizes.
  std::string describe_memory() const;
  size_t planned_bytes() const;     // the four below together
  size_t weight_bytes() const;      // 0 when the model does not hold its weights
  size_t grad_bytes() const;        // 0 when it does not hold its gradients
  size_t activation_bytes() const;  // every slot's, and what the slots share
  size_t workspace_bytes() const;
  // What each activation slot holds of its own (block inputs, block insides unless checkpointing,
  // tokens): activation_bytes() with K slots is that with one plus K − 1 times this (up to the
  // plan's 64-byte alignment where one slot's last buffer ends unaligned).
  size_t activation_slot_bytes() const { return slot_bytes_; }
  // Every slot's own buffers together (K slots of one chunk: K times the above; interleaved
  // chunks of different depths differ).
  size_t activation_own_bytes() const { return own_bytes_; }

 private:
  struct Layer;      // parameter slots of one block
  struct MicroActs;  // activation slots of one micro-batch
  // Where an activation slot is between its forward and its backward.
  // kEvaluated: a forward without a backward (stage_evaluate), whose output may be read.
  // kInputGrad: a split backward's first pass ran, its weight pass has not.
  enum class SlotState { kEmpty, kForwarded, kBackwarded, kEvaluated, kInputGrad };
  void build_plans();
  // Slot `slot` in range, or one keel::Error naming it and the range (`what`: the call).
  const MicroActs& micro(int slot, const char* what) const;
  void embed(const MicroActs& m, const int32_t* tokens);
  BlockGrads block_grads(int l) const;
  // count: the MoE routing of this pass joins moe_stats().
  BlockActs block_acts(const MicroActs& m, int l, bool count = false) const;
  MoeScratch moe_scratch() const;    // empty without MoE layers
  BlockPositions positions() const;  // the micro-batch's: B sequences of T from position 0
  // count: a training forward, whose MoE routing joins moe_stats().
  void block_forward(const MicroActs& m, int l, bool recompute, bool count = false);
  // The block's whole backward, or (defer) its first pass: the GEMMs' output gradients kept.
  void block_backward(const MicroActs& m, int l, bool defer = false);
  BlockScratch block_scratch() const;
  // The stage's backward up to its input gradient; defer: as the first pass of a split one.
  void run_backward(int slot, const float* output_grad, bool defer);
  double head(const MicroActs& m, const int32_t* targets, float grad_scale, bool backward,
              float* logits);
  // head() with its units' weights (and, backward, gradients) held around it.
  double run_head(const MicroActs& m, const int32_t* targets, float grad_scale, bool backward,
                  float* logits);
  void sliced_cross_entropy(float* losses, float* logits, const int32_t* targets, int64_t rows,
                            float grad_scale, bool backward);
  // forward() and stage_evaluate(): slot 0's forward without a backward, the head's loss on the
  // last stage (its logits too when logits is not null).
  double evaluate_slot(int slot, const int32_t* tokens, const float* input, const int32_t* targets,
                       float* logits);
  // The embedding (first stage) or the input, then the stage's blocks, into slot m.
  // training: a stage_forward (its MoE routing counted), not an evaluation.
  void run_forward(const MicroActs& m, const int32_t* tokens, const float* input, bool training);
  // Units: the embedding (first stage), each local layer l, the head (last stage).
  // An MoE layer's experts are a unit of their own (sharded over another group), right after it.
  int layer_unit(int64_t l) const { return layer_unit_[static_cast<size_t>(l)]; }
  int expert_unit(int64_t l) const { return expert_unit_[static_cast<size_t>(l)]; }  // -1: dense
  // Layer l's units held around its block: weights and/or gradients, its experts' too; released
  // in the reverse order (the experts' gradients first: units hand over last unit first).
  void use_layer(int64_t l, bool weights, bool grads);
  void drop_layer(int64_t l, bool weights, bool grads);
  int head_unit() const { return static_cast<int>(units_.size()) - 1; }
  // Weights and gradients of a slot, wherever its unit's buffer is now.
  float* w(MemoryPlan::Slot s) const { return wbase_[unit_of_[s]] + slot_at_[s]; }
  float* g(MemoryPlan::Slot s) const { return gbase_[unit_of_[s]] + slot_at_[s]; }
  void use_weights(int u);
  void drop_weights(int u);
  void use_grads(int u);
  void drop_grads(int u);
  void progress() const {
    if (hooks_) hooks_->progress();
  }

  ModelConfig config_;
  // The backend of the plans' memory (host memory: MemoryPlan allocates on the CPU), whose op
  // table the model and its block call, and the stream they order work on.
  Device device_ = Device::cpu();
  const kernels::Ops* ops_;
  Stream stream_;
  int64_t B_, T_, N_;
  parallel::TpSplit tp_;
  parallel::TpMappings tp_comm_;
  int64_t H_, Hkv_, D_, C_, I_, V_, QKV_;  // as this rank holds them (V_: its vocabulary rows)
  int64_t chunk_rows_;                     // rows of logits that exist at once
  int workspace_threads_;                  // OpenMP threads the attention workspace is sized for
  bool checkpointing_;
  bool split_backward_;
  ModelHolds holds_;
  int64_t l0_, l1_;  // the stage's layers: [l0_, l1_) of the model's, in chunks
  // A model chunk: local layers [first, last), the model's layers from global_first on, and its
  // activation slots [slot_begin, slot_end).
  struct Chunk {
    int64_t first = 0, last = 0, global_first = 0;
    int slot_begin = 0, slot_end = 0;
  };
  std::vector<Chunk> chunks_;
  std::vector<int64_t> layer_index_;  // local layer → the model's layer

  bool first_, last_;  // whether the stage embeds the tokens, runs the head
  // Whether it holds the embedding (unit 0): the first stage, and the last when the head is tied
  // to it (a copy, Parameter::tied_copy, unless the stage is the first too).
  bool embed_;
  bool sp_;              // sequence parallelism (under TP only)
  parallel::Span rows_;  // rows of the residual stream held here: all N_, or the SP chunk
  LlamaBlock block_;
  // Mixture of experts: E_ experts per MoE layer, El_ of them here from expert e0_ on.
  int64_t E_ = 0, El_ = 0, e0_ = 0;
  std::unique_ptr<MoeMlp> moe_;
  mutable std::vector<MoeStats> moe_stats_;  // per local layer, counted by training forwards
  parallel::UnitHooks* hooks_ = nullptr;

  MemoryPlan weights_{"parameters"};
  MemoryPlan grads_{"gradients"};
  MemoryPlan acts_{"activations"};
  MemoryPlan work_{"workspace"};
  std::vector<Parameter> params_;
  std::vector<Layer> layers_;
  std::vector<parallel::ZeroUnit> units_;
  std::vector<int> layer_unit_, expert_unit_;  // local layer → its unit, its experts' (or -1)
  std::vector<int> unit_of_;                   // weight slot → unit
  std::vector<int64_t> slot_at_;               // weight slot → float offset inside its unit
  std::vector<int64_t> unit_begin_;    // unit → float offset in the weight (and gradient) plan
  std::vector<float*> wbase_, gbase_;  // unit → its buffer now (null when not acquired)
  struct Slots;
  std::unique_ptr<Slots> s_;
  std::vector<SlotState> slot_state_;  // per activation slot
  size_t slot_bytes_ = 0;              // activation_slot_bytes()
  size_t own_bytes_ = 0;               // activation_own_bytes()
};

}  // namespace keel::runtime
