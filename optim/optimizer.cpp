#include "optim/optimizer.h"

#include <algorithm>
#include <cstdio>

#include "kernels/error.h"
#include "optim/adafactor.h"
#include "optim/adamw.h"
#include "optim/adamw_8bit.h"
#include "optim/galore.h"

namespace keel::optim {

void Optimizer::load_state(size_t i, const std::string& name, const float* values) {
  for (const StateTensor& s : state(i)) {
    if (s.name != name || s.layout == StateLayout::kPerBlock) continue;
    KEEL_CHECK(s.data, "optimizer state '{}' of tensor {} is not kept in fp32", name, i);
    std::copy_n(values, s.elems, s.data);
    return;
  }
  KEEL_FAIL("the optimizer keeps no state '{}' for tensor {} that values can set", name, i);
}

std::string describe_share(const std::vector<ParamRef>& params,
                           const std::function<bool(size_t)>& picked) {
  int64_t count = 0, values = 0, all = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    all += params[i].n;
    if (!picked(i)) continue;
    ++count;
    values += params[i].n;
  }
  char share[32];
  std::snprintf(share, sizeof share, "%.1f", all ? 100.0 * static_cast<double>(values) / all : 0.0);
  return std::to_string(count) + " of " + std::to_string(params.size()) + " tensors (" + share +
         " % of the values)";
}

kernels::cpu::AdamWHyper adamw_hyper(const OptimizerConfig& config, double lr, double grad_scale,
                                     int64_t step) {
  kernels::cpu::AdamWHyper h;
  h.lr = static_cast<float>(lr);
  h.beta1 = static_cast<float>(config.beta1);
  h.beta2 = static_cast<float>(config.beta2);
  h.eps = static_cast<float>(config.eps);
  h.step = step;
  h.grad_scale = static_cast<float>(grad_scale);
  return h;
}

std::unique_ptr<Optimizer> make_optimizer(std::vector<ParamRef> params,
                                          const OptimizerConfig& config) {
  if (config.galore.rank > 0) return std::make_unique<GaLore>(std::move(params), config);
  if (config.type == "adamw") return std::make_unique<AdamW>(std::move(params), config);
  if (config.type == "adamw_8bit") return std::make_unique<AdamW8bit>(std::move(params), config);
  if (config.type == "adafactor") return std::make_unique<Adafactor>(std::move(params), config);
  KEEL_FAIL("optimizer.type '{}' is not one of adamw, adamw_8bit, adafactor", config.type);
}

OptimizerBytes optimizer_plan_bytes(const OptimizerConfig& config,
                                    const std::vector<ParamRef>& params) {
  if (config.galore.rank > 0) return GaLore::plan_bytes(config, params);
  if (config.type == "adamw_8bit") return {AdamW8bit::plan_bytes(config, params)};
  if (config.type == "adafactor") return {Adafactor::plan_bytes(config, params)};
  std::vector<int64_t> sizes;
  for (const ParamRef& p : params) sizes.push_back(p.n);
  return {AdamW::plan_bytes(sizes)};
}

}  // namespace keel::optim
