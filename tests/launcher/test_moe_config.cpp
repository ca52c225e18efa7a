// configs/moe.yaml, the small Mixtral-style model, as shipped: keel plan counts its total and
// active parameters and its experts' bytes, and it trains (made small by --set) with the router's
// metrics in every logged step.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli_util.h"

namespace keel::test {
namespace {

TEST_F(Cli, MoeConfigPlansTotalAndActiveParameters) {
  const Result r = run("plan configs/moe.yaml");
  ASSERT_EQ(r.code, 0) << r.out;
  // 8 experts of 3·384·512 in each of 8 layers; a token passes through 2 of them, as many MLP
  // parameters as configs/tiny.yaml's dense 384 × 1024 MLP, and the router (8 × 384).
  EXPECT_NE(r.out.find("mixture of experts: 8 experts in each of 8 MoE layers (of 8), 2 per token; "
                       "41.12 M parameters (41122176), 12.81 M active per token (12810624, "
                       "31.2 %)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("dense MLPs 0, "), std::string::npos) << r.out;
  // Each expert 589824 floats, 64 of them: 144 MiB of weights, as many of gradients and twice
  // that of AdamW's moments.
  EXPECT_NE(r.out.find("experts per rank: 8 of 8 (experts 0-7) in each of 8 MoE layers, 576.0 MiB "
                       "of the plan's "),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("weights 144.0 MiB, gradients 144.0 MiB, optimizer state 288.0 MiB"),
            std::string::npos)
      << r.out;
  // ZeRO 2 over 2 ranks: each holds half of the experts' gradients, moments and fp32 master.
  const Result z = run("plan configs/moe.yaml --world-size 2 --set parallel.zero_stage=2");
  ASSERT_EQ(z.code, 0) << z.out;
  EXPECT_NE(z.out.find("weights 144.0 MiB, gradients 72.0 MiB, optimizer state 216.0 MiB"),
            std::string::npos)
      << z.out;
  // A dense model prints no such lines.
  const Result dense = run("plan configs/tiny.yaml");
  ASSERT_EQ(dense.code, 0) << dense.out;
  EXPECT_EQ(dense.out.find("experts"), std::string::npos) << dense.out;
}

// The shipped config trains, shrunk to seconds: every layer a mixture of 8 experts, top-2, with
// the load-balancing loss in the objective; each logged step has the router's metrics.
TEST_F(Cli, MoeConfigTrains) {
  const Result r = train(1, "configs/moe.yaml",
                         " --set model.hidden_size=64 --set model.intermediate_size=32"
                         " --set model.num_hidden_layers=2 --set model.num_attention_heads=4"
                         " --set data.seq_length=32 --set training.per_device_train_batch_size=2"
                         " --set training.max_steps=4 --set training.warmup_steps=1"
                         " --set training.logging_steps=1 --set training.report_to=none"
                         " --set training.output_dir=" +
                             out_dir());
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("| aux "), std::string::npos) << r.out;
  std::ifstream f(out_dir() + "/metrics.jsonl");
  std::string line;
  int steps = 0;
  double first = 0, last = 0;
  while (std::getline(f, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    ASSERT_TRUE(j.contains("aux_loss") && j.contains("load_imbalance")) << line;
    EXPECT_EQ(j["load_imbalance_per_layer"].size(), 2u) << line;  // every layer MoE
    // Top-2 of 8: the busiest expert takes between the mean and all tokens, 4 times the mean.
    EXPECT_GE(j["load_imbalance"].get<double>(), 1.0) << line;
    EXPECT_LE(j["load_imbalance"].get<double>(), 4.0) << line;
    EXPECT_EQ(j["moe_dropped_fraction"].get<double>(), 0.0) << line;  // dropless
    (steps == 0 ? first : last) = j["loss"].get<double>();
    ++steps;
  }
  EXPECT_EQ(steps, 4);
  EXPECT_TRUE(std::isfinite(last));
  EXPECT_LT(last, first) << "four steps of a byte-level model already lower the loss";
}

}  // namespace
}  // namespace keel::test
