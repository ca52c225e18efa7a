#include "runtime/train/moe_metrics.h"

#include <algorithm>
#include <numeric>

namespace keel::runtime {

MoeStepStats gather_moe_stats(const LlamaModel& model, const parallel::ProcessGrid& grid) {
  const ModelConfig& c = model.config();
  if (!c.moe()) return {};
  // Per MoE layer of the model: the routed choices per expert, then the sums of MoeStats.
  const int64_t E = c.num_local_experts, L = c.num_moe_layers(), width = E + 7;
  std::vector<double> sums(static_cast<size_t>(L * width), 0.0);
  if (grid.tp().rank() == 0) {
    for (int64_t l = 0; l < model.num_layers(); ++l) {
      if (!model.moe_layer(l)) continue;
      const int64_t global = model.layer_index(l);
      int64_t index = 0;  // among the MoE layers
      for (int64_t g = 0; g < global; ++g) index += c.moe_layer(g) ? 1 : 0;
      const MoeStats& s = model.moe_stats()[static_cast<size_t>(l)];
      double* row = sums.data() + index * width;
      std::copy(s.routed.begin(), s.routed.end(), row);
      const double rest[7] = {s.slots, s.dropped, s.aux, s.sequences, s.z, s.entropy, s.rows};
      std::copy(rest, rest + 7, row + E);
    }
  }
  grid.world().all_reduce(Tensor(sums.data(), DType::F64, {L * width}));
  MoeStepStats out;
  for (int64_t g = 0; g < c.num_hidden_layers; ++g)
    if (c.moe_layer(g)) out.layers.push_back(static_cast<int>(g));
  double slots = 0, dropped = 0;
  for (int64_t l = 0; l < L; ++l) {
    const double* row = sums.data() + l * width;
    const double max = *std::max_element(row, row + E);
    const double mean = std::accumulate(row, row + E, 0.0) / static_cast<double>(E);
    out.load_imbalance.push_back(mean > 0 ? max / mean : 0.0);
    std::vector<double>& share = out.expert_share.emplace_back(row, row + E);
    for (double& x : share) x = mean > 0 ? x / (mean * static_cast<double>(E)) : 0.0;
    const double* r = row + E;  // slots, dropped, aux, sequences, z, entropy, rows
    slots += r[0], dropped += r[1];
    // Each a mean over the layer's sequences or rows, then over the layers.
    out.aux_loss += r[3] > 0 ? r[2] / r[3] / static_cast<double>(L) : 0.0;
    out.z_loss += r[6] > 0 ? r[4] / r[6] / static_cast<double>(L) : 0.0;
    out.router_entropy += r[6] > 0 ? r[5] / r[6] / static_cast<double>(L) : 0.0;
  }
  out.dropped_fraction = slots > 0 ? dropped / slots : 0.0;
  return out;
}

}  // namespace keel::runtime
