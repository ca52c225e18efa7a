// The parameters of a model with experts, total and active per token, against a count by hand,
// and the bytes each rank spends on its experts under each ZeRO stage and a pipeline.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/config_test_util.h"
#include "runtime/model/llama.h"
#include "runtime/train/memory_report.h"
#include "runtime/train/moe_params.h"

namespace keel::runtime {
namespace {

using test::expect_mentions;

// C = 32, 4 heads of D = 8 (2 kv heads), MLP 16, vocabulary 64; layer 0 dense, layer 1 four
// experts, two per token.
const char* const kModel = R"(
model: {vocab_size: 64, hidden_size: 32, intermediate_size: 16, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 32,
        tie_word_embeddings: false, num_local_experts: 4, num_experts_per_tok: 2, moe_layers: [1]}
data: {train: data/tiny.txt, seq_length: 16}
training: {max_steps: 2, per_device_train_batch_size: 2, report_to: none}
)";

Config moe(const std::vector<std::string>& sets = {}) { return parse_config(kModel, sets); }

TEST(MoeParams, TotalAndActiveMatchACountByHand) {
  const ParamCount c = count_parameters(moe().model);
  // Per layer: q 32·32 + k 16·32 + v 16·32 + o 32·32 = 3072, two layers.
  EXPECT_EQ(c.attention, 2 * 3072);
  // The one router: 4 experts × 32.
  EXPECT_EQ(c.routers, 4 * 32);
  // An expert (as a dense MLP): gate 16·32 + up 16·32 + down 32·16 = 1536; four of them, two
  // active.
  EXPECT_EQ(c.experts, 4 * 1536);
  EXPECT_EQ(c.active_experts, 2 * 1536);
  EXPECT_EQ(c.dense_mlps, 1536);
  EXPECT_EQ(c.embedding_head, 2 * 64 * 32);
  // Two norms per layer and the final one, 32 each.
  EXPECT_EQ(c.norms, 5 * 32);
  EXPECT_EQ(c.total(), 6144 + 128 + 6144 + 1536 + 4096 + 160);   // 18208
  EXPECT_EQ(c.active(), 6144 + 128 + 3072 + 1536 + 4096 + 160);  // 15136
  // The model itself counts the same total.
  const LlamaModel model(moe().model, 1, 1, false, ModelHolds{.allocate = false});
  EXPECT_EQ(c.total(), model.num_parameters());

  // Tied: one 64 × 32 matrix for the embedding and the head. Top-1 of every layer: each layer's
  // one expert of four active, two routers.
  const ParamCount tied = count_parameters(
      moe({"model.tie_word_embeddings=true", "model.num_experts_per_tok=1", "model.moe_layers=[]"})
          .model);
  EXPECT_EQ(tied.embedding_head, 64 * 32);
  EXPECT_EQ(tied.dense_mlps, 0);
  EXPECT_EQ(tied.routers, 2 * 4 * 32);
  EXPECT_EQ(tied.experts, 2 * 4 * 1536);
  EXPECT_EQ(tied.active(), 6144 + 256 + 2 * 1536 + 2048 + 160);
  // Without experts everything is active.
  const ParamCount dense =
      count_parameters(moe({"model.num_local_experts=0", "model.moe_layers=[]"}).model);
  EXPECT_EQ(dense.experts, 0);
  EXPECT_EQ(dense.active(), dense.total());
  EXPECT_EQ(dense.dense_mlps, 2 * 1536);
}

TEST(MoeParams, ExpertBytesPerRankByZeroStage) {
  // Four experts of 1536 floats each, 6144 bytes: 24576 bytes of weights.
  const size_t full = 4 * 1536 * 4;
  std::vector<ExpertBytes> b = plan_expert_bytes(moe(), 1);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(b[0].moe_layers, 1);
  EXPECT_EQ(b[0].experts_per_layer, 4);
  EXPECT_EQ(b[0].first_expert, 0);
  EXPECT_EQ(b[0].weights, full);
  EXPECT_EQ(b[0].gradients, full);
  EXPECT_EQ(b[0].optimizer, 2 * full);  // AdamW's two moments
  // 8-bit AdamW quantizes tensors of min_8bit_size floats and more (the 512-float expert
  // matrices only when the threshold is below them): one byte a moment, and a float per 64-value
  // block of each, 8 floats padded to the plan's 64-byte alignment; 12 matrices, the plan ending
  // where its last buffer does (32 bytes before the padding).
  b = plan_expert_bytes(
      moe({"optimizer.type=adamw_8bit", "optimizer.min_8bit_size=256", "optimizer.block_size=64"}),
      1);
  EXPECT_EQ(b[0].optimizer, 12u * (2 * 512 + 2 * 64) - 32);

  // ZeRO over 2 ranks splits each expert matrix in half: 256 of its 512 floats here.
  const size_t half = full / 2;
  b = plan_expert_bytes(moe({"parallel.zero_stage=1"}), 2);
  EXPECT_EQ(b[0].weights, full);
  EXPECT_EQ(b[0].gradients, full + half);      // the model's, and the summed shard
  EXPECT_EQ(b[0].optimizer, 2 * half + half);  // moments and the fp32 master of the shard
  b = plan_expert_bytes(moe({"parallel.zero_stage=2"}), 2);
  EXPECT_EQ(b[0].weights, full);
  EXPECT_EQ(b[0].gradients, half);
  EXPECT_EQ(b[0].optimizer, 3 * half);
  b = plan_expert_bytes(moe({"parallel.zero_stage=3"}), 2);
  EXPECT_EQ(b[0].weights, 0u);  // gathered a layer at a time, in buffers every layer shares
  EXPECT_EQ(b[0].gradients, half);
  EXPECT_EQ(b[0].optimizer, 3 * half);
  // Each ZeRO stage's expert bytes are part of its plan.
  for (const int stage : {0, 1, 2, 3}) {
    const Config c = moe({"parallel.zero_stage=" + std::to_string(stage)});
    EXPECT_LT(plan_expert_bytes(c, 2)[0].total(), plan_rank_memory(c, 2).total());
  }
}

TEST(MoeParams, ExpertBytesFollowThePipelineStages) {
  // Two stages, a layer each: the dense layer 0 on stage 0, the MoE layer 1 on stage 1.
  const Config c = moe({"parallel.pipeline_model_parallel_size=2"});
  const std::vector<ExpertBytes> b = plan_expert_bytes(c, 1);
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].moe_layers, 0);
  EXPECT_EQ(b[0].total(), 0u);
  EXPECT_EQ(b[1].moe_layers, 1);
  EXPECT_EQ(b[1].weights, 4u * 1536 * 4);
}

TEST(MoeParams, DescribeNamesTotalActiveAndEachStagesExperts) {
  const Config c = moe({"parallel.pipeline_model_parallel_size=2"});
  const std::vector<RankMemory> stages = plan_stage_memory(c, 1);
  const std::string text = describe_moe(c, 1, {stages[0].total(), stages[1].total()});
  expect_mentions(text,
                  {"4 experts in each of 1 MoE layers (of 2), 2 per token", "(18208)",
                   "active per token (15136, 83.1 %)", "2 of 4 experts 3.1 K (all 4: 6.1 K)",
                   "dense MLPs 1.5 K", "experts per rank of stage 0: none",
                   "experts per rank of stage 1: 4 of 4 (experts 0-3) in each of 1 MoE layers"});
  EXPECT_EQ(describe_moe(moe({"model.num_local_experts=0", "model.moe_layers=[]"}), 1, {0}), "");
}

}  // namespace
}  // namespace keel::runtime
