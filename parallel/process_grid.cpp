#include "parallel/process_grid.h"

#include <cstdint>

#include "kernels/error.h"

namespace keel::parallel {

namespace {

constexpr const char* kTpKey = "parallel.tensor_model_parallel_size";
constexpr const char* kPpKey = "parallel.pipeline_model_parallel_size";
constexpr const char* kEpKey = "parallel.expert_model_parallel_size";
// Far beyond any job, and small enough that tp·dp·pp and every rank fit an int.
constexpr int64_t kMaxWorld = int64_t{1} << 24;

}  // namespace

std::string_view group_name(Group g) {
  switch (g) {
    case Group::kTensor: return "tp";
    case Group::kData: return "dp";
    case Group::kPipeline: return "pp";
    case Group::kExpert: return "ep";
    case Group::kExpertData: return "edp";
    case Group::kTensorData: return "tp_dp";
    case Group::kTensorExpertData: return "tp_edp";
    case Group::kWorld: return "world";
  }
  return "?";
}

// ---- GridLayout ---------------------------------------------------------------------------------

GridLayout::GridLayout(GridSizes sizes) : sizes_(sizes) {
  KEEL_CHECK(sizes.tp >= 1, "{} is {}; it must be >= 1", kTpKey, sizes.tp);
  KEEL_CHECK(sizes.pp >= 1, "{} is {}; it must be >= 1", kPpKey, sizes.pp);
  KEEL_CHECK(sizes.ep >= 1, "{} is {}; it must be >= 1", kEpKey, sizes.ep);
  KEEL_CHECK(sizes.dp >= 1, "the data-parallel size is {}; it must be >= 1", sizes.dp);
  const int64_t world = int64_t{sizes.tp} * sizes.dp * sizes.pp;
  KEEL_CHECK(world <= kMaxWorld, "tp {} × dp {} × pp {} = {} ranks is more than keel supports ({})",
             sizes.tp, sizes.dp, sizes.pp, world, kMaxWorld);
  KEEL_CHECK(sizes.dp % sizes.ep == 0,
             "{} ({}) must divide the data-parallel size ({}): expert parallelism splits the "
             "data-parallel ranks; pick one of the divisors of {}",
             kEpKey, sizes.ep, sizes.dp, sizes.dp);
}

GridLayout GridLayout::for_world(int world_size, int tp, int pp, int ep) {
  KEEL_CHECK(world_size >= 1, "the world size is {}; a job has at least one rank", world_size);
  KEEL_CHECK(tp >= 1, "{} is {}; it must be >= 1", kTpKey, tp);
  KEEL_CHECK(pp >= 1, "{} is {}; it must be >= 1", kPpKey, pp);
  const int64_t model = int64_t{tp} * pp;
  KEEL_CHECK(world_size % model == 0,
             "the world size {} is not a multiple of {} ({}) × {} ({}) = {}: the ranks factor as "
             "tensor × data × pipeline parallel, with the data-parallel size = world / (tp × pp); "
             "launch a multiple of {} ranks or change those sizes",
             world_size, kTpKey, tp, kPpKey, pp, model, model);
  const int dp = static_cast<int>(world_size / model);
  KEEL_CHECK(ep >= 1, "{} is {}; it must be >= 1", kEpKey, ep);
  KEEL_CHECK(dp % ep == 0,
             "{} ({}) must divide the data-parallel size {} (= world size {} / ({} {} × {} {})): "
             "expert parallelism splits the data-parallel ranks",
             kEpKey, ep, dp, world_size, kTpKey, tp, kPpKey, pp);
  return GridLayout(GridSizes{tp, dp, pp, ep});
}

int GridLayout::size(Group g) const {
  switch (g) {
    case Group::kTensor: return sizes_.tp;
    case Group::kData: return sizes_.dp;
    case Group::kPipeline: return sizes_.pp;
    case Group::kExpert: return sizes_.ep;
    case Group::kExpertData: return sizes_.dp / sizes_.ep;
    case Group::kTensorData: return sizes_.tp * sizes_.dp;
    case Group::kTensorExpertData: return sizes_.tp * (sizes_.dp / sizes_.ep);
    case Group::kWorld: return world_size();
  }
  return 0;
}

void GridLayout::check_world_size(int world_size) const {
  KEEL_CHECK(
      world_size == this->world_size(),
      "the job has {} ranks but the grid needs {} × {} × {} = {}: {} ({}) × data-parallel size "
      "({}) × {} ({})",
      world_size, sizes_.tp, sizes_.dp, sizes_.pp, this->world_size(), kTpKey, sizes_.tp, sizes_.dp,
      kPpKey, sizes_.pp);
}

void GridLayout::check_rank(int rank) const {
  KEEL_CHECK(0 <= rank && rank < world_size(), "rank {} is outside the grid's {} ranks", rank,
             world_size());
}

GridCoord GridLayout::coord(int rank) const {
  check_rank(rank);
  GridCoord c;
  c.tp = rank % sizes_.tp;
  c.dp = rank / sizes_.tp % sizes_.dp;
  c.pp = rank / (sizes_.tp * sizes_.dp);
  c.ep = c.dp % sizes_.ep;
  c.edp = c.dp / sizes_.ep;
  return c;
}

int GridLayout::rank_of(const GridCoord& c) const {
  KEEL_CHECK(0 <= c.tp && c.tp < sizes_.tp && 0 <= c.dp && c.dp < sizes_.dp && 0 <= c.pp &&
                 c.pp < sizes_.pp,
             "grid coordinate (tp {}, dp {}, pp {}) is outside {}", c.tp, c.dp, c.pp, describe());
  return c.tp + sizes_.tp * (c.dp + sizes_.dp * c.pp);
}

int GridLayout::group_id(Group g, int rank) const {
  const GridCoord c = coord(rank);
  const int tp = sizes_.tp, dp = sizes_.dp;
  switch (g) {
    case Group::kTensor: return c.dp + dp * c.pp;
    case Group::kData: return c.tp + tp * c.pp;
    case Group::kPipeline: return c.tp + tp * c.dp;
    case Group::kExpert: return c.tp + tp * (c.edp + size(Group::kExpertData) * c.pp);
    case Group::kExpertData: return c.tp + tp * (c.ep + sizes_.ep * c.pp);
    case Group::kTensorData: return c.pp;
    case Group::kTensorExpertData: return c.ep + sizes_.ep * c.pp;
    case Group::kWorld: return 0;
  }
  return 0;
}

int GridLayout::index_in(Group g, int rank) const {
  const GridCoord c = coord(rank);
  switch (g) {
    case Group::kTensor: return c.tp;
    case Group::kData: return c.dp;
    case Group::kPipeline: return c.pp;
    case Group::kExpert: return c.ep;
    case Group::kExpertData: return c.edp;
    case Group::kTensorData: return c.tp + sizes_.tp * c.dp;
    case Group::kTensorExpertData: return c.tp + sizes_.tp * c.edp;
    case Group::kWorld: return rank;
  }
  return 0;
}

std::vector<int> GridLayout::members(Group g, int rank) const {
  const GridCoord c = coord(rank);
  std::vector<int> out;
  out.reserve(static_cast<size_t>(size(g)));
  for (int i = 0; i < size(g); ++i) {
    GridCoord m = c;
    switch (g) {
      case Group::kTensor: m.tp = i; break;
      case Group::kData: m.dp = i; break;
      case Group::kPipeline: m.pp = i; break;
      case Group::kExpert: m.dp = i + sizes_.ep * c.edp; break;
      case Group::kExpertData: m.dp = c.ep + sizes_.ep * i; break;
      case Group::kTensorData: m.tp = i % sizes_.tp, m.dp = i / sizes_.tp; break;
      case Group::kTensorExpertData:
        m.tp = i % sizes_.tp, m.dp = c.ep + sizes_.ep * (i / sizes_.tp);
        break;
      case Group::kWorld: out.push_back(i); continue;
    }
    out.push_back(rank_of(m));
  }
  return out;
}

std::vector<std::vector<int>> GridLayout::all_groups(Group g) const {
  std::vector<std::vector<int>> groups(static_cast<size_t>(num_groups(g)));
  for (int r = 0; r < world_size(); ++r) {
    std::vector<int>& grp = groups[static_cast<size_t>(group_id(g, r))];
    if (grp.empty()) grp = members(g, r);
  }
  return groups;
}

std::optional<int> GridLayout::pipeline_prev(int rank) const {
  GridCoord c = coord(rank);
  if (c.pp == 0) return std::nullopt;
  --c.pp;
  return rank_of(c);
}

std::optional<int> GridLayout::pipeline_next(int rank) const {
  GridCoord c = coord(rank);
  if (c.pp + 1 == sizes_.pp) return std::nullopt;
  ++c.pp;
  return rank_of(c);
}

std::string GridLayout::describe() const {
  return format("tp {} × dp {} (ep {} × edp {}) × pp {} = {} ranks", sizes_.tp, sizes_.dp,
                sizes_.ep, sizes_.dp / sizes_.ep, sizes_.pp, world_size());
}

// ---- ProcessGrid --------------------------------------------------------------------------------

ProcessGrid::ProcessGrid(Communicator& world, const GridLayout& layout)
    : layout_(layout), world_(&world), rank_(world.rank()), coord_(layout.coord(0)) {
  layout_.check_world_size(world.size());
  coord_ = layout_.coord(rank_);
  // Hang reports name the group a rank is blocked in; the split children inherit the world's
  // Activity (Communicator::set_activity), if it has one.
  world.set_name(group_name(Group::kWorld).data());
  for (Group g : kAllGroups) {
    if (g == Group::kWorld) continue;
    // Color: which group; key: the position in it, so a member's rank in the new communicator is
    // its index in layout.members().
    std::unique_ptr<Communicator> c =
        world.split(layout_.group_id(g, rank_), layout_.index_in(g, rank_));
    KEEL_CHECK(c && c->size() == layout_.size(g) && c->rank() == layout_.index_in(g, rank_),
               "splitting the {} group of rank {} gave rank {} of {}, expected {} of {}",
               group_name(g), rank_, c ? c->rank() : -1, c ? c->size() : 0,
               layout_.index_in(g, rank_), layout_.size(g));
    c->set_name(group_name(g).data());  // a literal: NUL-terminated, lives for ever
    groups_[static_cast<size_t>(g)] = std::move(c);
  }
}

Communicator& ProcessGrid::comm(Group g) const {
  if (g == Group::kWorld) return *world_;
  return *groups_[static_cast<size_t>(g)];
}

CommStats ProcessGrid::total_stats() const {
  CommStats total;
  for (Group g : kAllGroups) total += comm(g).stats();
  return total;
}

void ProcessGrid::reset_stats() {
  for (Group g : kAllGroups) comm(g).reset_stats();
}

std::string ProcessGrid::describe_stats() const {
  std::string s;
  for (Group g : kAllGroups) {
    const CommStats& st = comm(g).stats();
    if (st.total_calls() == 0) continue;
    if (!s.empty()) s += "\n";
    s += format("{}: {}", group_name(g), st.describe());
  }
  return s.empty() ? "no communication" : s;
}

}  // namespace keel::parallel
