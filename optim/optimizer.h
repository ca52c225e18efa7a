// What the trainer sees of an optimizer: it steps every tensor it was given (parameters, or ZeRO
// shards), lists each tensor's state for checkpoints, and says how many bytes that state takes.
// make_optimizer builds the one optimizer.type names.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "optim/galore_config.h"
#include "parallel/communicator.h"
#include "parallel/zero_layout.h"

namespace keel::optim {

// One tensor the optimizer updates: n floats of value and gradient. For a matrix, its whole shape
// and the rectangle of it these n floats hold (all of it, or under ZeRO this rank's shard), stored
// row-major with rect.ld floats per row; the floats past the rectangle are padding, kept zero. A
// vector's ZeRO shard gives its rect too, as rows of an n × 1 matrix (its length is the sum of
// the shards' rect.rows); a whole vector may leave rect empty.
struct ParamRef {
  std::string name;
  float* value;
  const float* grad;
  int64_t n;
  bool weight_decay;
  bool quantize = true;           // an 8-bit optimizer may quantize its state (see min_8bit_size)
  int64_t rows = 0, cols = 0;     // a matrix's global shape; 0 for a vector
  parallel::ShardRect rect = {};  // the part held here (ld 0: a whole vector)
  // The ranks holding the parts of the tensor (ZeRO's shards, tensor parallelism's slices, or
  // both), over which statistics of the whole tensor (Adafactor's row and column sums, GaLore's
  // Gram matrix) are summed; nullptr when it is whole here. parts: that group's size (what a plan
  // without communicators sizes by). counted: whether this rank's part adds to those sums (tensor
  // parallelism may hold one part alike on several ranks of the group: one of them counts it).
  parallel::Communicator* group = nullptr;
  int parts = 1;
  bool counted = true;
  bool matrix() const { return rows > 0 && cols > 0; }
};

struct OptimizerConfig {
  std::string type = "adamw";  // adamw | adamw_8bit | adafactor
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t block_size = 256;      // adamw_8bit: elements per quantization block
  int64_t min_8bit_size = 4096;  // adamw_8bit: smaller tensors keep fp32 moments
  // adafactor (kernels/adafactor.h): beta1 0 keeps no first moment.
  bool relative_step = false, scale_parameter = false, warmup_init = false;
  double decay_rate = -0.8, clip_threshold = 1.0, adafactor_beta1 = 0.0;
  GaloreConfig galore = {};  // rank > 0: GaLore around the optimizer of `type`
  uint64_t seed = 0;         // of GaLore's randomized projector
};

// What an optimizer allocates: state (checkpointed) and workspace (reused every step).
struct OptimizerBytes {
  size_t state = 0, workspace = 0;
};

// How a state tensor lies beside its parameter, for checkpoints.
enum class StateLayout : uint8_t {
  kElementwise,  // one value per element of the tensor (its rectangle of the parameter)
  kPerBlock,     // a vector of the tensor's own, stacked rank after rank (8-bit absmax per block)
  kOwnRect,      // a rectangle (rect) of a global tensor of its own (rows × cols)
};

// One tensor of a parameter's optimizer state: floats at data, or 8-bit codes at bytes.
struct StateTensor {
  std::string name;  // "exp_avg", "exp_avg_absmax", "exp_avg_sq_row", ...
  float* data = nullptr;
  uint8_t* bytes = nullptr;
  int64_t elems = 0;
  StateLayout layout = StateLayout::kElementwise;
  int64_t rows = 0, cols = 0;     // kOwnRect: the global tensor's shape
  parallel::ShardRect rect = {};  // kOwnRect: the part held here, row-major, rect.ld per row
  // This rank's alone even where its tensor's part is held alike by several ranks (GaLore's block
  // of a projected gradient): a checkpoint takes it from every rank. For per-block state, rect
  // (when set) names the buffer its blocks were cut from instead of the tensor's part.
  bool distinct = false;
  // Held alike by every rank of its tensor's group (a side of a split matrix each rank keeps
  // whole: Adafactor's means of it, GaLore's projector on it): a checkpoint takes it from the
  // group's first rank.
  bool alike = false;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update of every tensor with learning rate lr, gradients multiplied by grad_scale first.
  void step(double lr, double grad_scale) {
    begin_step();
    step_tensors(0, num_tensors(), lr, grad_scale);
  }
  // A step in parts (per-layer update): begin_step(), then step_tensors over ranges that cover
  // every tensor once, taken in the same order on every rank (an optimizer over ZeRO shards may
  // run collectives for the tensors of a range).
  void begin_step() { ++t_; }
  virtual void step_tensors(size_t first, size_t last, double lr, double grad_scale) = 0;
  virtual size_t num_tensors() const = 0;
  // The state of tensor i (in the order the tensors were given).
  virtual std::vector<StateTensor> state(size_t i) = 0;
  // Sets the state `name` of tensor i (element-wise or its own rectangle; not per-block) from
  // fp32 values laid out as state(i) lays it out, as another layout or optimizer saved it: copied,
  // or quantized in this optimizer's blocks.
  virtual void load_state(size_t i, const std::string& name, const float* values);
  virtual size_t state_bytes() const = 0;
  virtual size_t workspace_bytes() const { return 0; }
  virtual std::string describe_memory() const = 0;
  // One line on what the optimizer does to the tensors it was given, for a run's opening lines:
  // "adamw_8bit: 8-bit moments in blocks of 256 for 9 of 21 tensors (91.2 % of the values), ...".
  virtual std::string describe() const = 0;
  int64_t steps_taken() const { return t_; }
  // A checkpoint's step count (the bias correction depends on it).
  void set_steps_taken(int64_t t) { t_ = t; }

 protected:
  int64_t t_ = 0;
};

// "9 of 21 tensors (91.2 % of the values)": the tensors of params that `picked` selects.
std::string describe_share(const std::vector<ParamRef>& params,
                           const std::function<bool(size_t)>& picked);

// The AdamW kernels' hyper-parameters for a step (step: the 1-based count including it);
// weight_decay is left 0 for the caller to set per tensor (ParamRef::weight_decay).
kernels::cpu::AdamWHyper adamw_hyper(const OptimizerConfig& config, double lr, double grad_scale,
                                     int64_t step);

// Each tensor names the group its parts are spread over (ParamRef::group).
std::unique_ptr<Optimizer> make_optimizer(std::vector<ParamRef> params,
                                          const OptimizerConfig& config);
// What that optimizer would allocate over these tensors (value and grad unused; each spread over
// ParamRef::parts ranks), without allocating.
OptimizerBytes optimizer_plan_bytes(const OptimizerConfig& config,
                                    const std::vector<ParamRef>& params);

}  // namespace keel::optim
