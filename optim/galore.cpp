#include "optim/galore.h"

#include <algorithm>
#include <sstream>
#include <string_view>

#include "kernels/error.h"
#include "kernels/low_rank.h"
#include "kernels/ops.h"
#include "optim/galore_layout.h"

namespace keel::optim {

namespace {

using galore::block_width;
using galore::GaloreLayout;
using galore::GaloreSlots;
using galore::sketch_size;

// The inner optimizer's state of R is named with this prefix ("galore.exp_avg").
constexpr std::string_view kInnerPrefix = "galore.";

bool targeted(const std::string& name, const std::string& targets) {
  for (std::string_view rest = targets; !rest.empty();) {
    const size_t comma = rest.find(',');
    const std::string_view t = rest.substr(0, comma);
    if (!t.empty() && name.find(t) != std::string::npos) return true;
    rest = comma == std::string_view::npos ? "" : rest.substr(comma + 1);
  }
  return false;
}

GaloreLayout layout_of(const ParamRef& p, const GaloreConfig& g, int rank) {
  GaloreLayout l;
  if (g.rank <= 0 || !p.matrix() || !targeted(p.name, g.targets)) return l;
  l.on = true;
  const bool rows_long = p.rows >= p.cols;  // the short side is the columns on a tie
  const int64_t ld = p.rect.ld;
  KEEL_CHECK(ld > 0 && p.n % ld == 0, "GaLore: '{}' holds {} values in rows of {}", p.name, p.n,
             ld);
  const bool all_cols = p.rect.col0 == 0 && p.rect.cols == p.cols;
  const bool all_rows = p.rect.row0 == 0 && p.rect.rows == p.rows;
  KEEL_CHECK(all_cols || all_rows,
             "GaLore: '{}' ({}x{}) is held as rows [{}, {}) and columns [{}, {}); a part must span "
             "whole rows or whole columns",
             p.name, p.rows, p.cols, p.rect.row0, p.rect.row0 + p.rect.rows, p.rect.col0,
             p.rect.col0 + p.rect.cols);
  l.rows_split = all_cols && all_rows ? rows_long : all_cols;
  l.whole_short = l.rows_split == rows_long;
  l.S = l.rows_split ? p.cols : p.rows;
  l.L = l.rows_split ? p.rows : p.cols;
  l.Lk = l.rows_split ? p.n / ld : ld;
  KEEL_CHECK((l.rows_split ? ld : p.n / ld) == l.S,
             "GaLore: '{}' ({}x{}) holds {} values in rows of {}, not whole {}", p.name, p.rows,
             p.cols, p.n, ld, l.rows_split ? "rows" : "columns");
  // The reference rule: std projects the short side, reverse_std the long one; left projects
  // the rows and right the columns, whichever side they are.
  bool project_cols = rows_long;  // std
  if (g.proj_type == "reverse_std") project_cols = !rows_long;
  if (g.proj_type == "right") project_cols = true;
  if (g.proj_type == "left") project_cols = false;
  l.whole_side = project_cols == l.rows_split;  // S is the columns when the rows are split
  l.r = std::min({g.rank, p.rows, p.cols});     // G's rank is at most its short side
  l.block = (l.S + p.parts - 1) / p.parts;
  l.chunk = l.r * l.block;
  l.inner = l.whole_side ? l.Lk * l.r : l.chunk;
  const int64_t offset = l.rows_split ? p.rect.row0 : p.rect.col0;
  const int64_t real = l.rows_split ? p.rect.rows : p.rect.cols;  // split-side vectors, no padding
  if (!l.whole_side) {
    const int64_t from = rank * l.block, held = block_width(l, rank);
    if (l.rows_split) {  // R (r × S): this rank's columns
      l.r_rows = l.r, l.r_cols = l.S, l.r_rect = {0, from, l.r, held, l.block};
    } else {  // R (S × r): this rank's rows
      l.r_rows = l.S, l.r_cols = l.r, l.r_rect = {from, 0, held, l.r, l.r};
    }
    l.p_rows = l.r, l.p_cols = l.L, l.p_rect = {0, offset, l.r, real, l.Lk};
    return l;
  }
  if (l.rows_split) {
    l.r_rows = l.L, l.r_cols = l.r, l.r_rect = {offset, 0, real, l.r, l.r};
  } else {
    l.r_rows = l.r, l.r_cols = l.L, l.r_rect = {0, offset, l.r, real, l.Lk};
  }
  l.p_rows = l.r, l.p_cols = l.S, l.p_rect = {0, 0, l.r, l.S, l.S};
  return l;
}

// Lays out the projectors in state and the largest workspace any tensor needs in work.
void declare(const std::vector<ParamRef>& params, const OptimizerConfig& config, MemoryPlan& state,
             MemoryPlan& work, std::vector<GaloreLayout>& layouts, GaloreSlots& s) {
  const GaloreConfig& g = config.galore;
  const bool randomized = g.projector == "randomized";
  int64_t inner = 1, staging = 1, gram = 1, gram_scratch = 1, eig = 1, eig_int = 1, r_max = 1;
  int64_t basis = 1, sketch = 1, qr = 1, small = 1, small_vectors = 1, product = 1;
  int64_t split_vectors = 1;
  const kernels::Ops& k = kernels::ops(Device::cpu());  // the plans below are host memory
  for (const ParamRef& p : params) {
    GaloreLayout l = layout_of(p, g, p.group ? p.group->rank() : 0);  // a plan: rank 0's
    if (l.on) {
      l.projector =
          state.add("galore_projector." + p.name, DType::F32, {l.r, l.whole_side ? l.S : l.Lk});
      inner = std::max(inner, l.inner);
      if (!l.whole_side) staging = std::max(staging, p.parts * l.chunk);
      r_max = std::max(r_max, l.r);
      basis = std::max(basis, l.r * l.S);
      if (!l.whole_short) split_vectors = std::max(split_vectors, l.r * l.Lk);
      if (randomized) {
        const int64_t q = sketch_size(l, g);
        sketch = std::max(sketch, q * l.S);
        qr = std::max(qr, k.orthonormalize_scratch(q));
        small = std::max(small, q * q);
        small_vectors = std::max(small_vectors, l.r * q);
        product = std::max(product, q * l.Lk);
        const kernels::cpu::EigenScratch e = k.eigen_scratch(q, l.r);
        eig = std::max(eig, e.doubles), eig_int = std::max(eig_int, e.ints);
      } else {
        gram = std::max(gram, l.S * l.S);
        gram_scratch = std::max(gram_scratch, kernels::cpu::kGramBlock * l.S);
        const kernels::cpu::EigenScratch e = k.eigen_scratch(l.S, l.r);
        eig = std::max(eig, e.doubles), eig_int = std::max(eig_int, e.ints);
      }
    }
    layouts.push_back(l);
  }
  s.grad = work.add("projected gradient", DType::F32, {inner});
  s.delta = work.add("projected update", DType::F32, {inner});
  s.staging = work.add("projected staging", DType::F32, {staging});
  s.basis = work.add("basis", DType::F64, {basis});
  s.basis_f = work.add("basis fp32", DType::F32, {basis});
  s.values = work.add("eigenvalues", DType::F64, {r_max});
  s.split_vectors = work.add("split-side vectors", DType::F32, {split_vectors});
  s.signs = work.add("signs", DType::F64, {2, r_max});
  s.eig = work.add("eigen scratch", DType::F64, {eig});
  s.eig_int = work.add("eigen scratch (int)", DType::I32, {eig_int});
  if (randomized) {
    s.sketch = work.add("sketch", DType::F64, {sketch});
    s.sketch_f = work.add("sketch fp32", DType::F32, {sketch});
    s.qr = work.add("QR scratch", DType::F64, {qr});
    s.small = work.add("projected Gram", DType::F64, {small});
    s.small_f = work.add("projected Gram fp32", DType::F32, {small});
    s.small_vectors = work.add("projected Gram vectors", DType::F64, {small_vectors});
    s.product = work.add("sketch product", DType::F32, {product});
  } else {
    s.gram = work.add("Gram", DType::F64, {gram});
    s.gram_scratch = work.add("Gram scratch", DType::F64, {gram_scratch});
  }
}

// The tensors the inner optimizer steps: R (in the workspace, one tensor at a time) for the
// projected ones, the tensor itself for the others.
std::vector<ParamRef> inner_refs(const std::vector<ParamRef>& params,
                                 const std::vector<GaloreLayout>& layouts, float* grad,
                                 float* delta) {
  std::vector<ParamRef> out;
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamRef& p = params[i];
    const GaloreLayout& l = layouts[i];
    if (!l.on) {
      out.push_back(p);
      continue;
    }
    ParamRef r{p.name, delta, grad, l.inner, false, p.quantize};
    r.rows = l.r_rows, r.cols = l.r_cols, r.rect = l.r_rect;
    r.group = p.group, r.parts = p.parts;
    // Sliced as the tensor is (a part held alike counted once), or a block of its own per rank.
    r.counted = l.whole_side ? p.counted : true;
    out.push_back(r);
  }
  return out;
}

OptimizerConfig inner_config(const OptimizerConfig& config) {
  OptimizerConfig c = config;
  c.galore.rank = 0;
  return c;
}

}  // namespace

GaLore::GaLore(std::vector<ParamRef> params, const OptimizerConfig& config)
    : params_(std::move(params)), config_(config), slots_(std::make_unique<GaloreSlots>()) {
  declare(params_, config_, state_, work_, layouts_, *slots_);
  state_.allocate();
  work_.allocate();
  inner_ = make_optimizer(
      inner_refs(params_, layouts_, work_[slots_->grad].f32(), work_[slots_->delta].f32()),
      inner_config(config_));
}

GaLore::~GaLore() = default;

OptimizerBytes GaLore::plan_bytes(const OptimizerConfig& config,
                                  const std::vector<ParamRef>& params) {
  MemoryPlan state("GaLore projectors"), work("GaLore workspace");
  std::vector<GaloreLayout> layouts;
  GaloreSlots slots;
  declare(params, config, state, work, layouts, slots);
  const OptimizerBytes inner =
      optimizer_plan_bytes(inner_config(config), inner_refs(params, layouts, nullptr, nullptr));
  return {state.bytes() + inner.state, work.bytes() + inner.workspace};
}

bool GaLore::projected(size_t i) const { return layouts_[i].on; }

size_t GaLore::state_bytes() const { return state_.bytes() + inner_->state_bytes(); }

size_t GaLore::workspace_bytes() const { return work_.bytes() + inner_->workspace_bytes(); }

std::string GaLore::describe() const {
  const GaloreConfig& g = config_.galore;
  std::ostringstream os;
  os << "GaLore rank " << g.rank << " (" << g.proj_type << ", " << g.projector
     << " projector, refreshed every " << g.update_proj_gap << " steps, scale " << g.scale
     << ") on " << describe_share(params_, [&](size_t i) { return projected(i); })
     << "; their projected gradients and the other tensors: " << inner_->describe();
  return os.str();
}

std::string GaLore::describe_memory() const {
  return state_.describe() + work_.describe() + inner_->describe_memory();
}

void GaLore::step_tensors(size_t first, size_t last, double lr, double grad_scale) {
  inner_->set_steps_taken(t_);
  // The reference refreshes at its steps 0, T, 2T, ... (counted before the step).
  const bool refresh_now = (t_ - 1) % config_.galore.update_proj_gap == 0;
  size_t plain = first;  // start of a run of tensors stepped as they are
  for (size_t i = first; i < last; ++i) {
    if (!layouts_[i].on) continue;
    if (plain < i) inner_->step_tensors(plain, i, lr, grad_scale);
    if (refresh_now) refresh(i);
    project(i);
    inner_->step_tensors(i, i + 1, lr, grad_scale);
    project_back(i, lr);
    plain = i + 1;
  }
  if (plain < last) inner_->step_tensors(plain, last, lr, grad_scale);
}

void GaLore::project(size_t i) {
  const GaloreLayout& l = layouts_[i];
  const kernels::Ops& k = kernels::ops(state_[l.projector].device());
  const ParamRef& p = params_[i];
  float* R = work_[slots_->grad].f32();
  float* D = work_[slots_->delta].f32();
  const float* P = state_[l.projector].f32();
  const int64_t ld = p.rect.ld;
  std::fill_n(D, l.inner, 0.0f);
  if (l.whole_side) {
    if (l.rows_split) {  // R (Lk × r) = G (Lk × S) · Vᵀ
      k.gemm(false, true, l.Lk, l.r, l.S, 1.0f, p.grad, ld, P, l.S, 0.0f, R, l.r, {});
    } else {  // R (r × Lk) = V · G (S × Lk)
      k.gemm(false, false, l.r, l.Lk, l.S, 1.0f, P, l.S, p.grad, ld, 0.0f, R, l.Lk, {});
    }
    return;
  }
  // The split side: this rank's part of the sum over ranks, laid out as the ranks' blocks one
  // after another, then each rank keeps its block.
  parallel::Communicator* group = group_of(i);
  const int n = group ? group->size() : 1;
  float* full = group ? work_[slots_->staging].f32() : R;
  if (l.rows_split) {  // R (r × S) = U (r × Lk) · G (Lk × S), block b its columns (r × block)
    for (int b = 0; b < n; ++b) {
      const int64_t from = b * l.block, cols = block_width(l, b);
      float* out = full + b * l.chunk;
      if (cols < l.block) std::fill_n(out, l.chunk, 0.0f);
      if (cols > 0)
        k.gemm(false, false, l.r, cols, l.Lk, 1.0f, P, l.Lk, p.grad + from, ld, 0.0f, out, l.block,
               {});
    }
  } else {  // R (S × r) = G (S × Lk) · Uᵀ, block b its rows (block × r)
    k.gemm(false, true, l.S, l.r, l.Lk, 1.0f, p.grad, ld, P, l.Lk, 0.0f, full, l.r, {});
    std::fill(full + l.S * l.r, full + n * l.chunk, 0.0f);
  }
  if (!p.counted) std::fill_n(full, n * l.chunk, 0.0f);  // another rank of the group adds this
  if (group)
    group->reduce_scatter(parallel::host_view(R, static_cast<size_t>(l.chunk)),
                          parallel::host_view(full, static_cast<size_t>(n * l.chunk)));
}

void GaLore::project_back(size_t i, double lr) {
  const GaloreLayout& l = layouts_[i];
  const kernels::Ops& k = kernels::ops(state_[l.projector].device());
  const ParamRef& p = params_[i];
  const float* D = work_[slots_->delta].f32();  // −lr · the inner optimizer's step direction
  const float* P = state_[l.projector].f32();
  const int64_t ld = p.rect.ld;
  // W ← (1 − lr·wd) W + α · back(D): decay first, as torch's AdamW does.
  const float decay = p.weight_decay ? static_cast<float>(1.0 - lr * config_.weight_decay) : 1.0f;
  const auto alpha = static_cast<float>(config_.galore.scale);
  if (l.whole_side) {
    if (l.rows_split) {  // (Lk × S) += D (Lk × r) · V
      k.gemm(false, false, l.Lk, l.S, l.r, alpha, D, l.r, P, l.S, decay, p.value, ld, {});
    } else {  // (S × Lk) += Vᵀ · D (r × Lk)
      k.gemm(true, false, l.S, l.Lk, l.r, alpha, P, l.S, D, l.Lk, decay, p.value, ld, {});
    }
    return;
  }
  parallel::Communicator* group = group_of(i);
  const int n = group ? group->size() : 1;
  const float* full = D;
  if (group) {
    float* staging = work_[slots_->staging].f32();
    group->all_gather(parallel::host_view(staging, static_cast<size_t>(n * l.chunk)),
                      parallel::host_view(const_cast<float*>(D), static_cast<size_t>(l.chunk)));
    full = staging;
  }
  if (l.rows_split) {  // (Lk × S) += Uᵀ · D (r × S), block by block of columns
    for (int b = 0; b < n; ++b) {
      const int64_t from = b * l.block, cols = block_width(l, b);
      if (cols > 0)
        k.gemm(true, false, l.Lk, cols, l.r, alpha, P, l.Lk, full + b * l.chunk, l.block, decay,
               p.value + from, ld, {});
    }
  } else {  // (S × Lk) += D (S × r) · U
    k.gemm(false, false, l.S, l.Lk, l.r, alpha, full, l.r, P, l.Lk, decay, p.value, ld, {});
  }
}

std::vector<StateTensor> GaLore::state(size_t i) {
  const GaloreLayout& l = layouts_[i];
  if (!l.on) return inner_->state(i);
  std::vector<StateTensor> out = {{"galore_projector", state_[l.projector].f32(), nullptr,
                                   l.r * (l.whole_side ? l.S : l.Lk), StateLayout::kOwnRect,
                                   l.p_rows, l.p_cols, l.p_rect}};
  out.front().alike = l.whole_side;  // V, the same on every rank of the group
  for (StateTensor s : inner_->state(i)) {
    s.name = std::string(kInnerPrefix) + s.name;
    if (s.layout == StateLayout::kElementwise)  // shaped as R
      s.layout = StateLayout::kOwnRect, s.rows = l.r_rows, s.cols = l.r_cols, s.rect = l.r_rect;
    if (s.layout == StateLayout::kPerBlock) s.rect = l.r_rect;  // cut from R's part
    // Projecting the split side, each rank of the group holds its own block of R.
    s.distinct = !l.whole_side;
    out.push_back(s);
  }
  return out;
}

void GaLore::load_state(size_t i, const std::string& name, const float* values) {
  if (!layouts_[i].on) return inner_->load_state(i, name, values);
  // The inner optimizer's state of R, laid out as its own buffer is (r_rect with its ld).
  if (name.starts_with(kInnerPrefix))
    return inner_->load_state(i, name.substr(kInnerPrefix.size()), values);
  Optimizer::load_state(i, name, values);  // the projector
}

}  // namespace keel::optim
