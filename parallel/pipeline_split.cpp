#include "parallel/pipeline_split.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <sstream>

#include "kernels/error.h"

namespace keel::parallel {

namespace {

// Stage `stage` of `stages` holding layers [first, first + blocks).
double cost_of(int stage, int stages, int first, int blocks, const StageCosts& c) {
  return c.blocks(first, blocks) + (stage == 0 ? c.embedding : 0.0) +
         (stage == stages - 1 ? c.head : 0.0);
}

}  // namespace

double StageCosts::blocks(int first, int count) const {
  if (layers.empty()) return count * block;
  double sum = 0;
  for (int l = first; l < first + count; ++l) sum += layers.at(static_cast<size_t>(l));
  return sum;
}

std::vector<double> stage_costs(const std::vector<StageRange>& split, const StageCosts& costs) {
  std::vector<double> out;
  const int p = static_cast<int>(split.size());
  for (int s = 0; s < p; ++s) {
    const StageRange& r = split[static_cast<size_t>(s)];
    out.push_back(cost_of(s, p, r.first_layer, r.layers(), costs));
  }
  return out;
}

std::vector<StageRange> balanced_stages(int layers, int stages, const StageCosts& costs) {
  KEEL_CHECK(stages >= 1, "a pipeline needs at least one stage, got {}", stages);
  KEEL_CHECK(stages <= layers,
             "parallel.pipeline_model_parallel_size is {}, but the model has {} layers "
             "(model.num_hidden_layers) and every stage needs at least one; set "
             "parallel.pipeline_model_parallel_size to {} or fewer",
             stages, layers, layers);
  KEEL_CHECK(costs.block > 0, "a block's cost must be positive, got {}", costs.block);
  KEEL_CHECK(costs.layers.empty() || static_cast<int>(costs.layers.size()) == layers,
             "{} per-layer costs for {} layers (internal error)", costs.layers.size(), layers);
  for (double c : costs.layers) KEEL_CHECK(c > 0, "a block's cost must be positive, got {}", c);
  // Stage s holding `take` of the last n blocks starts at layer `layers - n`.
  // best[s][n]: the least possible most-expensive stage when stages s.. hold the last n blocks.
  const double inf = std::numeric_limits<double>::infinity();
  const auto P = static_cast<size_t>(stages), L = static_cast<size_t>(layers);
  std::vector<std::vector<double>> best(P + 1, std::vector<double>(L + 1, inf));
  best[P][0] = 0;
  for (int s = stages - 1; s >= 0; --s)
    for (int n = 1; n <= layers; ++n)
      for (int take = 1; take <= n - (stages - 1 - s); ++take) {
        const double rest = best[static_cast<size_t>(s) + 1][static_cast<size_t>(n - take)];
        const double worst = std::max(cost_of(s, stages, layers - n, take, costs), rest);
        double& b = best[static_cast<size_t>(s)][static_cast<size_t>(n)];
        b = std::min(b, worst);
      }
  // Among the splits whose most expensive stage is that cheap, the most even (least Σ cost²),
  // and among those the one with fewer blocks on earlier stages: under 1F1B stage s holds the
  // activations of p − s micro-batches, so the first stages are the ones short of memory.
  const double cap = best[0][L] * (1 + 1e-12);
  std::vector<std::vector<double>> even(P + 1, std::vector<double>(L + 1, inf));
  even[P][0] = 0;
  for (int s = stages - 1; s >= 0; --s)
    for (int n = 1; n <= layers; ++n)
      for (int take = 1; take <= n - (stages - 1 - s); ++take) {
        const double here = cost_of(s, stages, layers - n, take, costs);
        const double rest = even[static_cast<size_t>(s) + 1][static_cast<size_t>(n - take)];
        if (here > cap || rest == inf) continue;
        double& e = even[static_cast<size_t>(s)][static_cast<size_t>(n)];
        e = std::min(e, here * here + rest);
      }
  std::vector<StageRange> split;
  int first = 0;
  for (int s = 0; s < stages; ++s) {
    const int left = layers - first;
    int take = left;  // the last stage takes what is left
    if (s < stages - 1) {
      const double want = even[static_cast<size_t>(s)][static_cast<size_t>(left)];
      for (int t = 1; t <= left - (stages - 1 - s); ++t) {
        const double here = cost_of(s, stages, first, t, costs);
        const double rest = even[static_cast<size_t>(s) + 1][static_cast<size_t>(left - t)];
        if (here <= cap && rest != inf && here * here + rest <= want * (1 + 1e-12)) {
          take = t;
          break;
        }
      }
    }
    split.push_back({first, first + take});
    first += take;
  }
  return split;
}

std::vector<StageRange> listed_stages(const std::vector<int64_t>& counts, int layers, int stages) {
  KEEL_CHECK(static_cast<int>(counts.size()) == stages,
             "parallel.pipeline_layers lists {} stages, but parallel.pipeline_model_parallel_size "
             "is {}; list one number of layers per stage",
             counts.size(), stages);
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  KEEL_CHECK(total == layers,
             "parallel.pipeline_layers adds up to {} layers, but the model has {} "
             "(model.num_hidden_layers); make the counts add up to {}",
             total, layers, layers);
  std::vector<StageRange> split;
  int first = 0;
  for (int s = 0; s < stages; ++s) {
    const int64_t n = counts[static_cast<size_t>(s)];
    const bool end = s == 0 || s == stages - 1;
    KEEL_CHECK(n >= 1 || (end && n == 0),
               "parallel.pipeline_layers gives stage {} {} layers; every stage but the first and "
               "the last (which hold the embedding and the head) needs at least one",
               s, n);
    split.push_back({first, first + static_cast<int>(n)});
    first += static_cast<int>(n);
  }
  return split;
}

std::string describe_stages(const std::vector<StageRange>& split) {
  std::ostringstream out;  // not "[" + to_string(...): GCC 12 warns falsely (-Wrestrict)
  for (size_t s = 0; s < split.size(); ++s)
    out << (s ? " [" : "[") << split[s].first_layer << ", " << split[s].last_layer << ")";
  return out.str();
}

}  // namespace keel::parallel
