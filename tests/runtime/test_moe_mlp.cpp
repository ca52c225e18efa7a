// The MoE MLP (runtime/model/moe_mlp.h) against tests/reference/moe_ref.py's goldens, written from
// transformers' Mixtral block and checked against it: the router's logits, choices and weights,
// which slots a capacity drops, the output, the load-balancing and z-losses, and every gradient of
// Σ out·dout + a·aux + zc·z, for top-1, top-2 and a capacity that drops.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/op_test_util.h"
#include "runtime/config/config.h"
#include "runtime/model/moe_mlp.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime {
namespace {

constexpr double kTol = 1e-5;

const SafeTensorsReader& golden() {
  static const SafeTensorsReader file(std::string(KEEL_SOURCE_DIR) +
                                      "/tests/reference/golden/moe_mixtral.safetensors");
  return file;
}

template <class T>
std::vector<T> read(const std::string& name) {
  const Tensor t = golden().get(name);
  const T* p = t.data_as<const T>();
  return std::vector<T>(p, p + t.numel());
}

class MoeGolden : public ::testing::TestWithParam<std::string> {
 protected:
  double meta(const std::string& key) const {
    return std::stod(golden().metadata().at(GetParam() + "." + key));
  }
  std::string name(const std::string& tensor) const { return GetParam() + "." + tensor; }
  std::string expert(int64_t e, const char* w) const {
    return name("experts." + std::to_string(e) + "." + w + ".weight");
  }
};

template <class T>
T* data(std::vector<T>& v, int64_t n) {
  v.assign(static_cast<size_t>(n), T{});
  return v.data();
}

TEST_P(MoeGolden, ForwardAndBackwardAsTransformers) {
  const int64_t E = static_cast<int64_t>(meta("num_local_experts"));
  const int64_t k = static_cast<int64_t>(meta("num_experts_per_tok"));
  const int64_t C = static_cast<int64_t>(meta("hidden_size"));
  const int64_t I = static_cast<int64_t>(meta("intermediate_size"));
  const int64_t B = static_cast<int64_t>(meta("batch_size"));
  const int64_t T = static_cast<int64_t>(meta("seq_length"));
  const int64_t N = B * T;
  // The capacity as the config works it out: the golden's, ceil(factor·T·k/E).
  ModelConfig config;
  config.num_local_experts = E;
  config.num_experts_per_tok = k;
  config.moe_token_dropping = meta("capacity_factor") > 0;
  if (config.moe_token_dropping) config.moe_expert_capacity_factor = meta("capacity_factor");
  const int64_t capacity = config.expert_capacity(T);
  ASSERT_EQ(capacity, static_cast<int64_t>(meta("expert_capacity")));

  MoeMlp mlp({C, I, E, k, capacity, B, T, 1}, Device::cpu());
  // The objective's a·mean_b(aux_b) + zc·mean_rows(lse²), as sums over sequences and rows.
  mlp.set_loss_scale({static_cast<float>(meta("router_aux_loss_coef") / B),
                      static_cast<float>(meta("router_z_loss_coef") / N)});
  // Weights: the router, and each expert's w1 and w3 rows stacked, then each w2.
  const std::vector<float> x = read<float>(name("x")), dout = read<float>(name("dout"));
  const std::vector<float> router = read<float>(name("gate.weight"));
  std::vector<float> gate_up, down;
  for (int64_t e = 0; e < E; ++e) {
    for (const char* w : {"w1", "w3"}) {
      const std::vector<float> m = read<float>(expert(e, w));
      gate_up.insert(gate_up.end(), m.begin(), m.end());
    }
    const std::vector<float> m = read<float>(expert(e, "w2"));
    down.insert(down.end(), m.begin(), m.end());
  }
  const int64_t R = mlp.shape().max_expert_rows();
  std::vector<float> probs, lse, gate, choices, xe, gu, h, y, out, dx;
  std::vector<int32_t> sel, dest, src;
  std::vector<int64_t> counts, recv;
  const MoeActs a = {data(probs, N * E),   data(lse, N),     data(sel, N * k),    data(gate, N * k),
                     data(dest, N * k),    data(src, N * k), data(counts, E),     data(recv, E),
                     data(choices, B * E), data(xe, R * C),  data(gu, R * 2 * I), data(h, R * I),
                     data(y, N * k * C)};
  std::vector<float> logits, rows, ex, dh, dgu, dgate, aux;
  const MoeScratch s = {
      data(logits, N * E), data(rows, N * k * C), data(ex, R * C),    nullptr,
      data(dh, R * I),     data(dgu, R * 2 * I),  data(dgate, N * k), data(aux, B * E)};
  MoeStats stats;
  mlp.forward(data(out, N * C), x.data(), B, T, true, {router.data(), gate_up.data(), down.data()},
              a, s, &stats);

  EXPECT_LE(testing::rel_error(logits, read<double>(name("router_logits"))), kTol);
  EXPECT_EQ(sel, read<int32_t>(name("selected")));
  EXPECT_LE(testing::rel_error(gate, read<double>(name("routing_weights"))), kTol);
  std::vector<int32_t> kept;
  for (int32_t d : dest) kept.push_back(d >= 0 ? 1 : 0);
  EXPECT_EQ(kept, read<int32_t>(name("kept")));
  EXPECT_LE(testing::rel_error(out, read<double>(name("out"))), kTol);
  const std::vector<int32_t> per_expert = read<int32_t>(name("tokens_per_expert"));
  EXPECT_EQ(stats.tokens, std::vector<double>(per_expert.begin(), per_expert.end()));
  EXPECT_NEAR(stats.aux / B, read<double>(name("aux_loss"))[0], kTol);
  EXPECT_NEAR(stats.z / N, read<double>(name("z_loss"))[0], kTol * read<double>(name("z_loss"))[0]);
  EXPECT_EQ(stats.dropped, static_cast<double>(N * k - std::count(kept.begin(), kept.end(), 1)));

  std::vector<float> g_router(router.size()), g_gate_up(gate_up.size()), g_down(down.size());
  mlp.backward(data(dx, N * C), dout.data(), x.data(), B, T,
               {router.data(), gate_up.data(), down.data()},
               {g_router.data(), g_gate_up.data(), g_down.data()}, a, s);
  EXPECT_LE(testing::rel_error(dx, read<double>(name("grad.x"))), kTol);
  EXPECT_LE(testing::rel_error(g_router, read<double>(name("grad.gate.weight"))), kTol);
  // Every expert's w1, w3 and w2 gradients, each kind over all experts together (an expert no
  // token chose has none, which a relative error of its own could not measure).
  std::vector<float> got[3];
  std::vector<double> want[3];
  const char* kinds[3] = {"w1", "w3", "w2"};
  for (int64_t e = 0; e < E; ++e) {
    const float* from[3] = {g_gate_up.data() + e * 2 * I * C,
                            g_gate_up.data() + (e * 2 + 1) * I * C, g_down.data() + e * C * I};
    for (int w = 0; w < 3; ++w) {
      got[w].insert(got[w].end(), from[w], from[w] + I * C);
      const std::vector<double> g =
          read<double>(name("grad.experts." + std::to_string(e) + "." + kinds[w] + ".weight"));
      want[w].insert(want[w].end(), g.begin(), g.end());
    }
  }
  for (int w = 0; w < 3; ++w) EXPECT_LE(testing::rel_error(got[w], want[w]), kTol) << kinds[w];
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeGolden,
                         ::testing::Values("top2", "top2_capacity", "top1", "top2_e8"));

}  // namespace
}  // namespace keel::runtime
