#include "optim/adafactor.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "kernels/adafactor.h"
#include "kernels/error.h"
#include "kernels/ops.h"

namespace keel::optim {
namespace {

using kernels::cpu::AdafactorHyper;
using kernels::cpu::AdafactorPart;
using kernels::cpu::AdafactorScale;

// The phases read and write the optimizer's host scratch (factors, partial sums) beside its state
// plan, so they run on the CPU's ops; the decay and step size are host arithmetic, called by name.
const kernels::Ops& host_ops() { return kernels::ops(Device::cpu()); }

// The part of a tensor held here: its rect, or all of it when it carries none.
parallel::ShardRect held(const ParamRef& p) {
  if (p.rect.ld > 0) return p.rect;
  if (p.matrix()) return {0, 0, p.rows, p.cols, p.cols};
  return {0, 0, p.n, 1, 1};
}

// Phase-1 sums of a tensor: Σ param², the values held, then for a matrix Σ of its row means and
// the column sums (row split) or the row sums (column split).
constexpr size_t kParamSq = 0, kCount = 1, kRest = 2;

}  // namespace

void Adafactor::declare(MemoryPlan& plan, const std::vector<ParamRef>& params,
                        const OptimizerConfig& config, std::vector<Slots>& slots) {
  for (const ParamRef& p : params) {
    Slots s{};
    s.factored = p.matrix();
    s.rect = held(p);
    const parallel::ShardRect& r = s.rect;
    KEEL_CHECK(r.ld >= r.cols && r.ld > 0 && p.n % r.ld == 0 && r.rows <= p.n / r.ld,
               "adafactor: '{}' holds {} values, which are not {} rows of {} floats", p.name, p.n,
               r.rows, r.ld);
    if (s.factored) {
      // ZeRO splits a matrix along one dimension, so a part spans whole rows or whole columns.
      s.row_split = r.cols == p.cols && r.col0 == 0;
      KEEL_CHECK(s.row_split || (r.rows == p.rows && r.row0 == 0),
                 "adafactor: '{}' holds rows [{}, {}) and columns [{}, {}) of its {}x{}; a shard "
                 "must span whole rows or whole columns for its row and column means",
                 p.name, r.row0, r.row0 + r.rows, r.col0, r.col0 + r.cols, p.rows, p.cols);
      // The split side keeps this part's means (with its padding), the other side all of them.
      s.row_len = s.row_split ? p.n / r.ld : p.rows;
      s.col_len = s.row_split ? p.cols : r.ld;
      s.row = plan.add("exp_avg_sq_row." + p.name, DType::F32, {s.row_len});
      s.col = plan.add("exp_avg_sq_col." + p.name, DType::F32, {s.col_len});
    } else {
      s.sq = plan.add("exp_avg_sq." + p.name, DType::F32, {p.n});
    }
    if (config.adafactor_beta1 > 0) s.m = plan.add("exp_avg." + p.name, DType::F32, {p.n});
    slots.push_back(s);
  }
}

Adafactor::Adafactor(std::vector<ParamRef> params, const OptimizerConfig& config)
    : params_(std::move(params)), config_(config) {
  declare(state_, params_, config_, slots_);
  state_.allocate();
  size_t at = 0;
  int64_t rows = 0, cols = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    Slots& s = slots_[i];
    s.sums_at = at;
    at += kRest;
    if (s.factored) at += static_cast<size_t>(s.row_split ? 1 + params_[i].cols : params_[i].rows);
    rows = std::max(rows, s.rect.rows);
    cols = std::max(cols, s.rect.cols);
  }
  sums_.resize(at);
  update_sq_.resize(params_.size());
  row_mean_.resize(params_.size());
  local_sums_.resize(static_cast<size_t>(std::max(rows, cols)));
  row_factor_.resize(static_cast<size_t>(rows));
  col_factor_.resize(static_cast<size_t>(cols));
}

size_t Adafactor::plan_bytes(const OptimizerConfig& config, const std::vector<ParamRef>& params) {
  MemoryPlan plan("optimizer state");
  std::vector<Slots> slots;
  declare(plan, params, config, slots);
  return plan.bytes();
}

std::string Adafactor::describe() const {
  std::ostringstream os;
  os << "adafactor: factored second moments for "
     << describe_share(params_, [&](size_t i) { return slots_[i].factored; }) << ", "
     << (config_.adafactor_beta1 > 0 ? "a first moment" : "no first moment") << ", "
     << (config_.relative_step ? "relative step" : "the trainer's learning rate")
     << ", updates clipped to RMS " << config_.clip_threshold;
  return os.str();
}

std::vector<StateTensor> Adafactor::state(size_t i) {
  const Slots& s = slots_[i];
  const ParamRef& p = params_[i];
  std::vector<StateTensor> out;
  if (s.factored) {
    // Means of rows (rows × 1) and of columns (cols × 1): the split side's rows held here, the
    // other side whole on every rank (the same values everywhere once its sums are reduced).
    const parallel::ShardRect& r = s.rect;
    const parallel::ShardRect rows = s.row_split ? parallel::ShardRect{r.row0, 0, r.rows, 1, 1}
                                                 : parallel::ShardRect{0, 0, p.rows, 1, 1};
    const parallel::ShardRect cols = s.row_split ? parallel::ShardRect{0, 0, p.cols, 1, 1}
                                                 : parallel::ShardRect{r.col0, 0, r.cols, 1, 1};
    out.push_back({"exp_avg_sq_row", state_[s.row].f32(), nullptr, s.row_len, StateLayout::kOwnRect,
                   p.rows, 1, rows});
    out.push_back({"exp_avg_sq_col", state_[s.col].f32(), nullptr, s.col_len, StateLayout::kOwnRect,
                   p.cols, 1, cols});
    out[s.row_split ? 1 : 0].alike = true;  // the side every rank of the group holds whole
  } else {
    out.push_back({"exp_avg_sq", state_[s.sq].f32(), nullptr, p.n});
  }
  if (config_.adafactor_beta1 > 0) out.push_back({"exp_avg", state_[s.m].f32(), nullptr, p.n});
  return out;
}

AdafactorHyper Adafactor::hyper(size_t i, double lr, double grad_scale) const {
  AdafactorHyper h;
  h.lr = lr;
  h.relative_step = config_.relative_step;
  h.scale_parameter = config_.scale_parameter;
  h.warmup_init = config_.warmup_init;
  h.decay_rate = config_.decay_rate;
  h.clip_threshold = config_.clip_threshold;
  h.beta1 = config_.adafactor_beta1;
  h.step = t_;
  h.grad_scale = static_cast<float>(grad_scale);
  h.weight_decay = params_[i].weight_decay ? config_.weight_decay : 0.0;
  return h;
}

void Adafactor::reduce(std::vector<double>& values, size_t first, size_t last,
                       const std::function<Segment(size_t)>& segment) {
  std::vector<parallel::Communicator*> groups;  // in order of first use: the same on every rank
  for (size_t i = first; i < last; ++i) {
    parallel::Communicator* g = params_[i].group;
    if (g && g->size() > 1 && std::find(groups.begin(), groups.end(), g) == groups.end())
      groups.push_back(g);
  }
  for (parallel::Communicator* g : groups) {
    packed_.clear();
    for (size_t i = first; i < last; ++i) {
      if (params_[i].group != g) continue;
      const auto [from, to] = segment(i);
      for (size_t j = from; j < to; ++j) packed_.push_back(params_[i].counted ? values[j] : 0.0);
    }
    g->all_reduce(parallel::host_view(packed_.data(), packed_.size()));
    size_t at = 0;
    for (size_t i = first; i < last; ++i) {
      if (params_[i].group != g) continue;
      const auto [from, to] = segment(i);
      for (size_t j = from; j < to; ++j) values[j] = packed_[at++];
    }
  }
}

void Adafactor::gather_sums(size_t i, const AdafactorHyper& h) {
  const Slots& s = slots_[i];
  const ParamRef& p = params_[i];
  const AdafactorPart part{p.value, p.grad, s.rect.rows, s.rect.cols, s.rect.ld};
  double* out = sums_.data() + s.sums_at;
  out[kCount] = static_cast<double>(s.rect.rows * s.rect.cols);
  if (!s.factored) {
    out[kParamSq] = host_ops().adafactor_sums(part, h, nullptr, nullptr);
    return;
  }
  const kernels::cpu::AdafactorDecay d = kernels::cpu::adafactor_decay(h);
  float* row = state_[s.row].f32();
  if (s.row_split) {  // whole rows here: their means now, Σ of them and the column sums to reduce
    out[kParamSq] = host_ops().adafactor_sums(part, h, local_sums_.data(), out + kRest + 1);
    host_ops().adafactor_update_means(row, local_sums_.data(), part.rows,
                                      static_cast<double>(p.cols), d);
    double row_sum = 0.0;
    for (int64_t r = 0; r < part.rows; ++r) row_sum += row[r];
    out[kRest] = row_sum;
  } else {  // whole columns here: their means now, the row sums to reduce
    out[kParamSq] = host_ops().adafactor_sums(part, h, out + kRest, local_sums_.data());
    host_ops().adafactor_update_means(state_[s.col].f32(), local_sums_.data(), part.cols,
                                      static_cast<double>(p.rows), d);
  }
}

AdafactorScale Adafactor::scale_of(size_t i) {
  const Slots& s = slots_[i];
  if (!s.factored) return {nullptr, nullptr, state_[s.sq].f32()};
  host_ops().adafactor_factors(row_factor_.data(), state_[s.row].f32(), s.rect.rows, row_mean_[i]);
  host_ops().adafactor_factors(col_factor_.data(), state_[s.col].f32(), s.rect.cols, 1.0f);
  return {row_factor_.data(), col_factor_.data(), nullptr};
}

double Adafactor::measure_update(size_t i, const AdafactorHyper& h) {
  const Slots& s = slots_[i];
  const ParamRef& p = params_[i];
  const AdafactorPart part{p.value, p.grad, s.rect.rows, s.rect.cols, s.rect.ld};
  const double* sums = sums_.data() + s.sums_at;
  const kernels::cpu::AdafactorDecay d = kernels::cpu::adafactor_decay(h);
  if (!s.factored) {
    host_ops().adafactor_second_moment(part, state_[s.sq].f32(), h, d);
  } else {
    KEEL_CHECK(sums[kCount] == static_cast<double>(p.rows * p.cols),
               "adafactor: the shards of '{}' hold {} values of its {}x{}; they must cover it "
               "exactly once",
               p.name, sums[kCount], p.rows, p.cols);
    const auto rows = static_cast<double>(p.rows);
    float* row = state_[s.row].f32();
    if (s.row_split) {
      host_ops().adafactor_update_means(state_[s.col].f32(), sums + kRest + 1, p.cols, rows, d);
      row_mean_[i] = static_cast<float>(sums[kRest] / rows);
    } else {
      host_ops().adafactor_update_means(row, sums + kRest, p.rows, static_cast<double>(p.cols), d);
      double row_sum = 0.0;
      for (int64_t r = 0; r < p.rows; ++r) row_sum += row[r];
      row_mean_[i] = static_cast<float>(row_sum / rows);
    }
  }
  return host_ops().adafactor_update_sum_sq(part, scale_of(i), h);
}

void Adafactor::step_tensors(size_t first, size_t last, double lr, double grad_scale) {
  if (first >= last) return;
  const size_t from = slots_[first].sums_at;
  const size_t to = last < slots_.size() ? slots_[last].sums_at : sums_.size();
  std::fill(sums_.begin() + static_cast<std::ptrdiff_t>(from),
            sums_.begin() + static_cast<std::ptrdiff_t>(to), 0.0);
  for (size_t i = first; i < last; ++i) gather_sums(i, hyper(i, lr, grad_scale));
  reduce(sums_, first, last, [&](size_t i) {
    return Segment{slots_[i].sums_at, i + 1 < slots_.size() ? slots_[i + 1].sums_at : sums_.size()};
  });
  for (size_t i = first; i < last; ++i) update_sq_[i] = measure_update(i, hyper(i, lr, grad_scale));
  reduce(update_sq_, first, last, [](size_t i) { return Segment{i, i + 1}; });
  for (size_t i = first; i < last; ++i) {
    const Slots& s = slots_[i];
    const ParamRef& p = params_[i];
    const AdafactorHyper h = hyper(i, lr, grad_scale);
    const double* sums = sums_.data() + s.sums_at;
    const double count = sums[kCount];
    const double step_size =
        kernels::cpu::adafactor_step_size(h, std::sqrt(sums[kParamSq] / count));
    float* m = config_.adafactor_beta1 > 0 ? state_[s.m].f32() : nullptr;
    host_ops().adafactor_apply({p.value, p.grad, s.rect.rows, s.rect.cols, s.rect.ld}, scale_of(i),
                               m, h, step_size, std::sqrt(update_sq_[i] / count));
  }
}

}  // namespace keel::optim
