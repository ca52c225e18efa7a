// The process grid: how the global ranks of a job factor into tensor-, data- and pipeline-parallel
// coordinates (and expert parallelism inside the data-parallel dimension), which ranks form each
// group, and the object that owns one Communicator per group. GridLayout is pure arithmetic (no
// MPI) and is what the unit tests hold against the documented order; ProcessGrid splits a world
// communicator by it. docs/PARALLEL.md has the full picture.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "parallel/communicator.h"

namespace keel::parallel {

// The kinds of group a rank belongs to, one of each.
enum class Group : uint8_t {
  kTensor,      // tp: ranks that split each layer's matrices
  kData,        // dp: ranks that hold the same model slice and split the batch (ZeRO shards here)
  kPipeline,    // pp: the stages of one pipeline
  kExpert,      // ep: ranks that split the experts of an MoE layer (a slice of the dp group)
  kExpertData,  // edp: ranks holding the same experts; expert gradients are reduced here
  // tp_dp: the ranks of one pipeline stage (Megatron's tensor-and-data-parallel group): those
  // holding the parts of a tensor that TP splits and ZeRO shards, which an optimizer's statistics
  // over the whole tensor are summed across
  kTensorData,
  // tp_edp: the same for experts, whose parts TP splits and ZeRO shards over edp: the ranks of one
  // stage holding the same experts
  kTensorExpertData,
  kWorld,  // every rank
};
inline constexpr std::array<Group, 8> kAllGroups = {
    Group::kTensor,     Group::kData,       Group::kPipeline,         Group::kExpert,
    Group::kExpertData, Group::kTensorData, Group::kTensorExpertData, Group::kWorld};
// "tp", "dp", "pp", "ep", "edp", "tp_dp", "tp_edp", "world".
std::string_view group_name(Group g);

// The sizes of the grid's dimensions, as the config names them: tp is
// parallel.tensor_model_parallel_size, pp parallel.pipeline_model_parallel_size, ep
// parallel.expert_model_parallel_size; dp is derived (world / (tp·pp)) and has no key.
struct GridSizes {
  int tp = 1;
  int dp = 1;
  int pp = 1;
  int ep = 1;
};

// A rank's place in the grid. ep and edp are not independent: they split dp as
// dp = ep + ep_size·edp (EP fastest inside DP).
struct GridCoord {
  int tp = 0;
  int dp = 0;
  int pp = 0;
  int ep = 0;
  int edp = 0;
  bool operator==(const GridCoord&) const = default;
};

// The rank arithmetic, TP fastest, then DP, then PP (Megatron's order):
//   global = tp + tp_size·(dp + dp_size·pp),   dp = ep + ep_size·edp.
// A group of kind g is the set of ranks that agree on every coordinate but g's own (for ep: same
// tp, pp, edp; for edp: same tp, pp, ep); its members are listed by increasing g-coordinate, which
// is also the member's rank inside the group's communicator. Experts keep the TP split of the
// dense layers (expert tensor-parallel size = tp).
class GridLayout {
 public:
  // Every size >= 1 and ep dividing dp; otherwise a keel::Error naming the config key.
  explicit GridLayout(GridSizes sizes);
  // The layout a job of world_size ranks gets from the three config keys: dp = world / (tp·pp),
  // with an error that spells out the factorisation when tp·pp does not divide the world.
  static GridLayout for_world(int world_size, int tp, int pp, int ep = 1);

  const GridSizes& sizes() const { return sizes_; }
  int world_size() const { return sizes_.tp * sizes_.dp * sizes_.pp; }
  // Members per group of kind g (tp, dp, pp, ep, dp/ep, world).
  int size(Group g) const;
  // How many groups of kind g partition the world: world_size() / size(g).
  int num_groups(Group g) const { return world_size() / size(g); }

  // Throws unless world_size equals tp·dp·pp, saying the factorisation.
  void check_world_size(int world_size) const;

  GridCoord coord(int rank) const;
  // The global rank at (tp, dp, pp); ep and edp of c are ignored (they follow from dp).
  int rank_of(const GridCoord& c) const;

  // Which group of kind g holds rank, in [0, num_groups(g)): the color of the split.
  int group_id(Group g, int rank) const;
  // rank's position in that group: the key of the split, and its rank in the group's communicator.
  int index_in(Group g, int rank) const;
  // The global ranks of rank's group of kind g, in group-rank order.
  std::vector<int> members(Group g, int rank) const;
  // Every group of kind g, by group_id; together they partition the world.
  std::vector<std::vector<int>> all_groups(Group g) const;

  // The global rank of the previous / next pipeline stage (same tp and dp); none at the ends.
  std::optional<int> pipeline_prev(int rank) const;
  std::optional<int> pipeline_next(int rank) const;

  // "tp 2 × dp 4 (ep 2 × edp 2) × pp 1 = 8 ranks".
  std::string describe() const;

 private:
  void check_rank(int rank) const;
  GridSizes sizes_;
};

// The job's groups, one Communicator each, built once at start and passed by reference to whoever
// communicates (never a global). Construction is collective over the world communicator: every
// rank calls it with the same layout. The world communicator must outlive the grid; the grid owns
// the others. Each communicator is named after its group ("world", "dp", ...: Communicator::name)
// and the split ones carry the world's Activity, so hang reports say which group a rank waits in.
class ProcessGrid {
 public:
  ProcessGrid(Communicator& world, const GridLayout& layout);
  ProcessGrid(ProcessGrid&&) noexcept = default;
  ProcessGrid& operator=(ProcessGrid&&) noexcept = default;
  ProcessGrid(const ProcessGrid&) = delete;
  ProcessGrid& operator=(const ProcessGrid&) = delete;
  ~ProcessGrid() = default;

  const GridLayout& layout() const { return layout_; }
  int rank() const { return rank_; }  // global
  const GridCoord& coord() const { return coord_; }

  Communicator& comm(Group g) const;
  Communicator& tp() const { return comm(Group::kTensor); }
  Communicator& dp() const { return comm(Group::kData); }
  Communicator& pp() const { return comm(Group::kPipeline); }
  Communicator& ep() const { return comm(Group::kExpert); }
  Communicator& edp() const { return comm(Group::kExpertData); }
  Communicator& tp_dp() const { return comm(Group::kTensorData); }
  Communicator& tp_edp() const { return comm(Group::kTensorExpertData); }
  Communicator& world() const { return *world_; }

  // Every group's counters summed (world included), and reset of them all.
  CommStats total_stats() const;
  void reset_stats();
  // One line per group with traffic: "dp: all_reduce 3 calls 12.0 MiB, ...".
  std::string describe_stats() const;

 private:
  GridLayout layout_;
  Communicator* world_;
  int rank_;
  GridCoord coord_;
  // Indexed by Group; the kWorld slot stays empty (world_ is not owned).
  std::array<std::unique_ptr<Communicator>, kAllGroups.size()> groups_;
};

}  // namespace keel::parallel
