// Adafactor on ZeRO shards (optim/adafactor.h), without MPI: 2 to 4 ranks as threads of this
// process, each stepping its shards of a row-split matrix, a column-split one, a vector and a
// matrix too small to reach every rank, all padded, against the whole-tensor kernel that the
// golden test holds to Hugging Face's. Parameters and every state tensor match it within 1e-6, the
// padding stays zero, the state's rectangles say where it belongs, and a range of tensors costs
// two all-reduces.
#include <gtest/gtest.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/adafactor.h"
#include "kernels/error.h"
#include "optim/adafactor.h"
#include "parallel/zero_layout.h"

namespace keel::optim {
namespace {

using parallel::CommOp;
using parallel::Communicator;
using parallel::ReduceOp;
using parallel::Work;

// What the ranks of one group share: each rank's buffer of the all-reduce under way.
struct ThreadGroup {
  explicit ThreadGroup(int n) : buffers(static_cast<size_t>(n)), sync(n) {}
  std::vector<Tensor> buffers;
  std::barrier<> sync;
};

// A rank of a ThreadGroup. all_reduce (kSum on F64: all the optimizer uses) adds the ranks'
// buffers in rank order, so every rank gets the same bits; anything else is a test error.
class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank)
      : Communicator(rank, static_cast<int>(group.buffers.size())), group_(group) {}
  std::string_view backend() const override { return "threads"; }

 protected:
  Work do_all_reduce(Tensor x, ReduceOp op, bool async) override {
    KEEL_CHECK(!async && op == ReduceOp::kSum && x.dtype() == DType::F64,
               "the test communicator sums F64 only");
    group_.buffers[static_cast<size_t>(rank())] = x;
    group_.sync.arrive_and_wait();
    std::vector<double> sum(static_cast<size_t>(x.numel()), 0.0);
    for (const Tensor& b : group_.buffers) {
      KEEL_CHECK(b.numel() == x.numel(), "ranks all-reduce {} and {} values", b.numel(), x.numel());
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += b.data_as<double>()[i];
    }
    group_.sync.arrive_and_wait();  // every rank has read every buffer
    std::copy(sum.begin(), sum.end(), x.data_as<double>());
    return {};
  }
  Work do_reduce_scatter(Tensor, Tensor, ReduceOp, bool) override { unused(); }
  Work do_all_gather(Tensor, Tensor, bool) override { unused(); }
  Work do_broadcast(Tensor, int, bool) override { unused(); }
  Work do_send(Tensor, int, int, bool) override { unused(); }
  Work do_recv(Tensor, int, int, bool) override { unused(); }
  Work do_all_to_all(Tensor, Tensor, bool) override { unused(); }
  Work do_all_to_all_v(Tensor, std::span<const int64_t>, Tensor, std::span<const int64_t>,
                       bool) override {
    unused();
  }
  void do_barrier() override { group_.sync.arrive_and_wait(); }
  std::unique_ptr<Communicator> do_split(int, int) override { unused(); }
  bool work_test(uint32_t) override { return true; }
  void work_wait(uint32_t) override {}

 private:
  [[noreturn]] static void unused() { KEEL_FAIL("the test communicator has only all_reduce"); }
  ThreadGroup& group_;
};

// rows × cols, a vector n × 1 (ZeroLayout's convention).
const std::vector<parallel::ZeroParamSpec> kSpecs = {
    {"row_split", 13, 7}, {"col_split", 5, 11}, {"vector", 10, 1}, {"tiny", 2, 1}};
bool is_matrix(size_t i) { return i != 2; }

// Distinct, sign-varying values: parameters near ±0.5, gradients differing per step.
float value(size_t tensor, int64_t i) {
  return 0.5f * std::sin(0.7f * static_cast<float>(i) + static_cast<float>(tensor));
}
float gradient(size_t tensor, int64_t i, int step) {
  return 0.01f * std::cos(0.3f * static_cast<float>(i * (step + 1)) + static_cast<float>(tensor)) +
         0.002f * static_cast<float>(step);
}

// The reference: every tensor whole, stepped by the kernel alone.
struct Whole {
  Whole() {
    for (size_t i = 0; i < kSpecs.size(); ++i) {
      const int64_t n = kSpecs[i].rows * kSpecs[i].cols;
      values.emplace_back(static_cast<size_t>(n));
      for (int64_t j = 0; j < n; ++j) values[i][static_cast<size_t>(j)] = value(i, j);
      grads.emplace_back(static_cast<size_t>(n));
      row.emplace_back(static_cast<size_t>(kSpecs[i].rows), 0.0f);
      col.emplace_back(static_cast<size_t>(kSpecs[i].cols), 0.0f);
      sq.emplace_back(static_cast<size_t>(n), 0.0f);
      m.emplace_back(static_cast<size_t>(n), 0.0f);
    }
  }
  void step(int t, kernels::cpu::AdafactorHyper h) {
    h.step = t;
    for (size_t i = 0; i < kSpecs.size(); ++i) {
      for (size_t j = 0; j < grads[i].size(); ++j)
        grads[i][j] = gradient(i, static_cast<int64_t>(j), t);
      kernels::cpu::adafactor_step(values[i].data(), grads[i].data(), row[i].data(), col[i].data(),
                                   sq[i].data(), m[i].data(), kSpecs[i].rows, kSpecs[i].cols,
                                   is_matrix(i), h);
    }
  }
  std::vector<std::vector<float>> values, grads, row, col, sq, m;
};

// One rank's shards of every tensor, packed as ZeRO packs them, and its optimizer.
struct Rank {
  Rank(const parallel::ZeroLayout& layout, int k, ThreadGroup& group, const OptimizerConfig& c)
      : comm(group, k), values(static_cast<size_t>(layout.region_elems())), grads(values.size()) {
    const Whole start;
    std::vector<const float*> full;
    for (const auto& w : start.values) full.push_back(w.data());
    layout.pack(values.data(), k, full);
    std::vector<ParamRef> refs;
    for (size_t i = 0; i < kSpecs.size(); ++i) {
      const parallel::ZeroShard& s = layout.shard(i);
      refs.push_back(
          {kSpecs[i].name, values.data() + s.offset, grads.data() + s.offset, s.elems, true});
      refs.back().rect = layout.rect(i, k);
      if (is_matrix(i)) refs.back().rows = kSpecs[i].rows, refs.back().cols = kSpecs[i].cols;
      refs.back().group = &comm, refs.back().parts = layout.ranks();
    }
    opt = make_optimizer(refs, c);
  }
  ThreadCommunicator comm;
  std::vector<float> values, grads;
  std::unique_ptr<Optimizer> opt;
};

// Runs f(k) for every rank k on its own thread; rethrows the first error.
template <class F>
void on_every_rank(int ranks, F f) {
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  for (int k = 0; k < ranks; ++k)
    threads.emplace_back([&, k] {
      try {
        f(k);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(k)] = e.what();
      }
    });
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors) ASSERT_EQ(e, "");
}

// |got − want| ≤ tol · max |want| over the vector.
void expect_close(const std::vector<float>& got, const std::vector<float>& want,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0.0, diff = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(double{want[i]}));
    diff = std::max(diff, std::abs(double{got[i]} - want[i]));
  }
  EXPECT_LE(diff, 1e-6 * scale) << what;
}

struct Setting {
  std::string name;
  OptimizerConfig config;
};

std::vector<Setting> settings() {
  OptimizerConfig trainer;  // HF Trainer's: the fixed step, no first moment
  trainer.type = "adafactor";
  trainer.weight_decay = 0.1;
  OptimizerConfig paper = trainer;  // the paper's: relative step scaled by RMS(param), beta1
  paper.relative_step = paper.scale_parameter = true;
  paper.adafactor_beta1 = 0.9;
  return {{"trainer", trainer}, {"paper", paper}};
}

kernels::cpu::AdafactorHyper hyper_of(const OptimizerConfig& c, double lr) {
  kernels::cpu::AdafactorHyper h;
  h.lr = lr;
  h.relative_step = c.relative_step;
  h.scale_parameter = c.scale_parameter;
  h.beta1 = c.adafactor_beta1;
  h.weight_decay = c.weight_decay;
  return h;
}

// Checks every rank's shards and state against the whole tensors: values and element-wise state
// through the layout, the means through their rectangles, and zeros wherever padding lies.
void expect_matches(const std::vector<std::unique_ptr<Rank>>& ranks,
                    const parallel::ZeroLayout& layout, const Whole& want, bool first_moment,
                    const std::string& what) {
  const int n = static_cast<int>(ranks.size());
  for (size_t i = 0; i < kSpecs.size(); ++i) {
    const std::string at = what + ", " + kSpecs[i].name;
    std::vector<float> values(want.values[i].size(), 0.0f), sq = values, m = values;
    for (int k = 0; k < n; ++k) {
      const Rank& r = *ranks[static_cast<size_t>(k)];
      const parallel::ShardRect rect = layout.rect(i, k);
      const parallel::ZeroShard& shard = layout.shard(i);
      const int64_t cols = kSpecs[i].cols;
      for (const StateTensor& s : r.opt->state(i)) {
        if (s.layout == StateLayout::kOwnRect) {
          // A column of means: its rows [rect.row0, +rect.rows) of the whole, then zeros.
          const std::vector<float>& whole = s.name == "exp_avg_sq_row" ? want.row[i] : want.col[i];
          ASSERT_EQ(s.rows, static_cast<int64_t>(whole.size())) << at << " " << s.name;
          ASSERT_EQ(s.cols, 1) << at;
          const std::vector<float> got(s.data + 0, s.data + s.rect.rows);
          expect_close(got,
                       std::vector<float>(whole.begin() + s.rect.row0,
                                          whole.begin() + s.rect.row0 + s.rect.rows),
                       at + " " + s.name + " of rank " + std::to_string(k));
          for (int64_t j = s.rect.rows; j < s.elems; ++j)
            EXPECT_EQ(s.data[j], 0.0f) << at << " " << s.name << " padding " << j;
          // The split side holds this rank's part, the other side is whole everywhere.
          const bool split_side = (s.name == "exp_avg_sq_row") == (shard.dim == 0);
          EXPECT_EQ(s.rect.rows, split_side ? (shard.dim == 0 ? rect.rows : rect.cols)
                                            : static_cast<int64_t>(whole.size()))
              << at << " " << s.name;
          continue;
        }
        ASSERT_EQ(s.layout, StateLayout::kElementwise) << at;
        std::vector<float>& into = s.name == "exp_avg" ? m : sq;
        for (int64_t e = 0; e < s.elems; ++e) {
          const int64_t row = e / rect.ld, c = e % rect.ld;
          if (row < rect.rows && c < rect.cols)
            into[static_cast<size_t>((rect.row0 + row) * cols + rect.col0 + c)] = s.data[e];
          else
            EXPECT_EQ(s.data[e], 0.0f) << at << " " << s.name << " padding " << e;
        }
      }
      const float* v = r.values.data() + shard.offset;
      for (int64_t e = 0; e < shard.elems; ++e) {
        const int64_t row = e / rect.ld, c = e % rect.ld;
        if (row < rect.rows && c < rect.cols)
          values[static_cast<size_t>((rect.row0 + row) * cols + rect.col0 + c)] = v[e];
        else
          EXPECT_EQ(v[e], 0.0f) << at << " parameter padding " << e;
      }
    }
    expect_close(values, want.values[i], at + " parameter");
    if (!is_matrix(i)) expect_close(sq, want.sq[i], at + " second moment");
    if (first_moment) expect_close(m, want.m[i], at + " first moment");
  }
}

TEST(AdafactorShards, StepAsTheWholeTensor) {
  for (const Setting& setting : settings()) {
    for (int n : {2, 3, 4}) {
      const std::string what = setting.name + ", " + std::to_string(n) + " ranks";
      const parallel::ZeroLayout layout(kSpecs, n);
      ThreadGroup group(n);
      std::vector<std::unique_ptr<Rank>> ranks;
      for (int k = 0; k < n; ++k)
        ranks.push_back(std::make_unique<Rank>(layout, k, group, setting.config));
      Whole want;
      const double lr = 1e-2;
      for (int t = 1; t <= 3; ++t) {
        want.step(t, hyper_of(setting.config, lr));
        std::vector<const float*> full;
        for (const auto& g : want.grads) full.push_back(g.data());
        on_every_rank(n, [&](int k) {
          Rank& r = *ranks[static_cast<size_t>(k)];
          layout.pack(r.grads.data(), k, full);
          r.comm.reset_stats();
          if (t < 3) {
            r.opt->step(lr, 1.0);
          } else {  // in parts, as the per-layer update steps them
            r.opt->begin_step();
            r.opt->step_tensors(0, 1, lr, 1.0);
            r.opt->step_tensors(1, kSpecs.size(), lr, 1.0);
          }
        });
        for (const auto& r : ranks)
          EXPECT_EQ(r->comm.stats()[CommOp::kAllReduce].calls, t < 3 ? 2u : 4u)
              << what << ": one all-reduce per phase of each range";
        expect_matches(ranks, layout, want, setting.config.adafactor_beta1 > 0,
                       what + ", step " + std::to_string(t));
      }
    }
  }
}

// A row-split shard keeps its own rows' means (padding included) and every column's; a
// column-split one its columns' and every row's: keel plan counts what a rank holds.
TEST(AdafactorShards, StateIsTheShardsRowsOrColumnsAndTheOtherSideWhole) {
  OptimizerConfig c;
  c.type = "adafactor";
  const parallel::ZeroLayout layout({{"tall", 1000, 64}, {"wide", 64, 1000}}, 3);
  std::vector<ParamRef> refs;
  for (size_t i = 0; i < 2; ++i) {
    refs.push_back({layout.params()[i].name, nullptr, nullptr, layout.shard(i).elems, false});
    refs.back().rows = layout.params()[i].rows, refs.back().cols = layout.params()[i].cols;
    refs.back().rect = layout.rect(i, 2);  // the last rank: 332 rows or columns and 2 of padding
  }
  // 334 rows + 64 columns, 64 rows + 334 columns, each buffer aligned to 64 bytes.
  const size_t bytes = Adafactor::plan_bytes(c, refs);
  EXPECT_GE(bytes, 4u * 2 * (334 + 64));
  EXPECT_LE(bytes, 4u * 2 * (334 + 64) + 4 * 63);
}

}  // namespace
}  // namespace keel::optim
