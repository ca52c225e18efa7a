// ModelConfig's derived facts about its mixture-of-experts layers.
#include <algorithm>
#include <cmath>

#include "kernels/error.h"
#include "runtime/config/config.h"
#include "runtime/config/int_list.h"

namespace keel::runtime {

namespace {
// model.moe_layers as indices, or one error naming the key and the fix.
std::vector<int64_t> listed_moe_layers(const ModelConfig& m) {
  const std::optional<std::vector<int64_t>> layers = parse_int_list(m.moe_layers);
  KEEL_CHECK(layers.has_value(),
             "model.moe_layers is '{}'; list the indices of the layers whose MLP is a mixture "
             "of experts, e.g. [1, 3, 5] (or leave it empty for every model.moe_layer_freq-th)",
             m.moe_layers);
  for (int64_t l : *layers)
    KEEL_CHECK(l < m.num_hidden_layers,
               "model.moe_layers names layer {}, but the model has {} layers (0 to {}); list "
               "indices below model.num_hidden_layers",
               l, m.num_hidden_layers, m.num_hidden_layers - 1);
  return *layers;
}
}  // namespace

bool ModelConfig::moe_layer(int64_t l) const {
  if (!moe()) return false;
  if (moe_layers.empty()) return l % moe_layer_freq == 0;
  const std::vector<int64_t> listed = listed_moe_layers(*this);
  return std::find(listed.begin(), listed.end(), l) != listed.end();
}

int64_t ModelConfig::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l) n += moe_layer(l) ? 1 : 0;
  return n;
}

int64_t ModelConfig::expert_capacity(int64_t T) const {
  if (!moe_token_dropping) return 0;
  const double slots = static_cast<double>(T * num_experts_per_tok) / num_local_experts;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(moe_expert_capacity_factor * slots)));
}

}  // namespace keel::runtime
