// How a model is split. As a pipeline stage (runtime/model/llama.h): a model cut into stages — each
// a contiguous range of layers, the embedding on the first, the head on the last — run one
// micro-batch as the whole model does, bit for bit: the loss, and every parameter's gradient under
// its own name, with the hidden state handed forward and its gradient handed back by the caller.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "runtime/model/llama.h"
#include "runtime/model_test_util.h"

namespace keel::runtime {
namespace {

using test::batch;
using test::kB;
using test::kT;
using test::small_model;

// The stages' loss and every parameter's gradient, after one micro-batch through stages cut at
// `cuts` (layer indices), against the whole model's.
void expect_stages_equal_the_whole(const std::vector<int>& cuts, bool checkpointing) {
  const ModelConfig config = small_model();
  std::vector<int32_t> tokens, targets;
  batch(tokens, targets);
  const float scale = 1.0f / 29.0f;

  LlamaModel whole(config, kB, kT, checkpointing);
  whole.init_weights(7);
  whole.zero_grad();
  const double want = whole.forward_backward(tokens.data(), targets.data(), scale);

  std::vector<std::unique_ptr<LlamaModel>> stages;
  std::vector<int> bounds = {0};
  bounds.insert(bounds.end(), cuts.begin(), cuts.end());
  bounds.push_back(static_cast<int>(config.num_hidden_layers));
  for (size_t s = 0; s + 1 < bounds.size(); ++s) {
    ModelSplit split;
    split.first_layer = bounds[s], split.last_layer = bounds[s + 1];
    stages.push_back(
        std::make_unique<LlamaModel>(config, kB, kT, checkpointing, ModelHolds{}, split));
    stages.back()->init_weights(7);
    stages.back()->zero_grad();
  }
  ASSERT_TRUE(stages.front()->first_stage());
  ASSERT_TRUE(stages.back()->last_stage());
  double got = 0.0;
  for (size_t s = 0; s < stages.size(); ++s) {
    const float* input = s == 0 ? nullptr : stages[s - 1]->stage_output();
    got += stages[s]->stage_forward(tokens.data(), input, targets.data(), scale);
  }
  for (size_t s = stages.size(); s-- > 0;)
    stages[s]->stage_backward(s + 1 == stages.size() ? nullptr : stages[s + 1]->stage_input_grad());
  EXPECT_EQ(got, want);

  // Every parameter on exactly one stage, with the whole model's gradient, bit for bit.
  size_t seen = 0;
  for (const auto& stage : stages) {
    EXPECT_EQ(stage->num_layers(),
              stage->units().size() - stage->first_stage() - stage->last_stage());
    for (const Parameter& p : stage->parameters()) {
      ++seen;
      const Parameter& w = whole.parameter_by_name(p.name);
      ASSERT_EQ(p.grad.numel(), w.grad.numel()) << p.name;
      EXPECT_EQ(std::memcmp(p.value.f32(), w.value.f32(), p.value.numel() * sizeof(float)), 0)
          << p.name;
      EXPECT_EQ(std::memcmp(p.grad.f32(), w.grad.f32(), p.grad.numel() * sizeof(float)), 0)
          << p.name;
    }
  }
  EXPECT_EQ(seen, whole.parameters().size());
}

TEST(ModelStage, TwoStagesRunAsTheWholeModel) { expect_stages_equal_the_whole({3}, false); }

TEST(ModelStage, FourStagesOfOneLayerWithCheckpointing) {
  expect_stages_equal_the_whole({1, 2, 3}, true);
}

// A stage names its layers by their place in the whole model, and holds only its units.
TEST(ModelStage, AStageHoldsItsLayersUnderTheirNames) {
  ModelSplit split;
  split.first_layer = 1, split.last_layer = 3;
  const LlamaModel middle(small_model(), kB, kT, false, ModelHolds{}, split);
  EXPECT_FALSE(middle.first_stage());
  EXPECT_FALSE(middle.last_stage());
  EXPECT_EQ(middle.first_layer(), 1);
  ASSERT_EQ(middle.units().size(), 2u);
  EXPECT_EQ(middle.units()[0].name, "layers.1");
  EXPECT_EQ(middle.units()[1].name, "layers.2");
  EXPECT_EQ(middle.parameters().front().name, "model.layers.1.input_layernorm.weight");
  EXPECT_EQ(middle.weight_orders(), (std::vector<std::vector<int>>{{0, 1, 1, 0}}));
}

TEST(ModelStage, BadRangesAreOneLine) {
  auto error = [](ModelConfig c, int first, int last) -> std::string {
    ModelSplit split;
    split.first_layer = first, split.last_layer = last;
    try {
      const LlamaModel m(c, kB, kT, false, ModelHolds{false, false, false}, split);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error(small_model(), 2, 2).find("holds layers [2, 2) of the model's 4"),
            std::string::npos);
  EXPECT_NE(error(small_model(), 1, 5).find("no layer past the last"), std::string::npos);
}

// Named stages: the first and the last may hold no blocks (the embedding, the head alone); a
// middle one may not, and the first starts at layer 0.
TEST(ModelStage, NamedEndStagesMayHoldNoBlocks) {
  auto stage = [](int s, int n, int first, int last) {
    ModelSplit split;
    split.first_layer = first, split.last_layer = last;
    split.pipeline_stage = s, split.pipeline_stages = n;
    return std::make_unique<LlamaModel>(small_model(), kB, kT, false,
                                        ModelHolds{false, false, false}, split);
  };
  const auto head = stage(2, 3, 4, 4);
  EXPECT_TRUE(head->last_stage());
  EXPECT_FALSE(head->first_stage());
  EXPECT_EQ(head->units().size(), 1u);
  const auto embedding = stage(0, 3, 0, 0);
  EXPECT_TRUE(embedding->first_stage());
  EXPECT_FALSE(embedding->last_stage());
  EXPECT_EQ(embedding->units().size(), 1u);
  // After an empty first stage, layer 0 starts the second, which embeds nothing.
  EXPECT_FALSE(stage(1, 3, 0, 4)->first_stage());
  EXPECT_THROW(stage(1, 3, 2, 2), Error);
  EXPECT_THROW(stage(0, 2, 1, 4), Error);
}

// ZeRO 3 prefetches each unit when the one before it in this order is acquired: only the stage
// that runs the head reads the tied embedding after it, and an interleaved stage's chunks each
// have their own order (units numbered on the stage: the embedding or its copy first).
TEST(ModelStage, WeightOrdersAreWhatEachChunkAsksFor) {
  ModelConfig tied = small_model();
  tied.tie_word_embeddings = true;
  auto stage = [&](int s, int n, std::vector<std::pair<int, int>> chunks) {
    ModelSplit split;
    split.pipeline_stage = s, split.pipeline_stages = n;
    split.first_layer = chunks.front().first, split.last_layer = chunks.front().second;
    if (chunks.size() > 1) {
      split.chunk_layers = chunks;
      split.chunk_slots.assign(chunks.size(), 1);
    }
    return LlamaModel(tied, kB, kT, false, ModelHolds{false, false, false}, split);
  };
  using Orders = std::vector<std::vector<int>>;
  EXPECT_EQ(stage(0, 3, {{0, 1}}).weight_orders(), (Orders{{0, 1, 1}}));
  EXPECT_EQ(stage(1, 3, {{1, 3}}).weight_orders(), (Orders{{0, 1, 1, 0}}));
  // The last stage: the copy (unit 0), layer 3 (1), the head (2) and its tied weights again.
  EXPECT_EQ(stage(2, 3, {{3, 4}}).weight_orders(), (Orders{{1, 2, 0, 1}}));
  // Interleaved, 2 stages of 2 chunks: stage 0 holds layers 0 and 2, stage 1 layers 1 and 3.
  EXPECT_EQ(stage(0, 2, {{0, 1}, {2, 3}}).weight_orders(), (Orders{{0, 1, 1}, {2, 2}}));
  EXPECT_EQ(stage(1, 2, {{1, 2}, {3, 4}}).weight_orders(), (Orders{{1, 1}, {2, 3, 0, 2}}));
}

// Tied embeddings across stages: the last stage holds a copy of the embedding (unit 0, marked
// tied_copy) for its head; the first holds the tensor itself and no lm_head.
TEST(ModelStage, TheLastStageHoldsACopyOfATiedEmbedding) {
  ModelConfig tied = small_model();
  tied.tie_word_embeddings = true;
  ModelSplit split;
  split.first_layer = 2, split.pipeline_stage = 1, split.pipeline_stages = 2;
  const LlamaModel last(tied, kB, kT, false, ModelHolds{false, false, false}, split);
  ASSERT_EQ(last.units().size(), 4u);  // the copy, two blocks, the head
  EXPECT_EQ(last.units()[0].name, "embed_tokens");
  const Parameter& copy = last.parameter_by_name("model.embed_tokens.weight");
  EXPECT_TRUE(copy.tied_copy);
  EXPECT_FALSE(last.units()[0].params[0].counted);  // not in ZeRO's norm
  split.first_layer = 0, split.last_layer = 2, split.pipeline_stage = 0;
  const LlamaModel first(tied, kB, kT, false, ModelHolds{false, false, false}, split);
  EXPECT_FALSE(first.parameter_by_name("model.embed_tokens.weight").tied_copy);
  EXPECT_EQ(first.units().size(), 3u);
}

// Tensor parallelism: each chunk of logits rows costs collectives over the TP group, so every
// rank must cut the same chunks, although an uneven vocabulary gives the ranks slices of
// different widths (32769 rows: 16385 and 16384, which would round to chunks of 496 and 512).
TEST(ModelSplit, TensorParallelRanksCutTheLogitsAlike) {
  ModelConfig c = small_model();
  c.vocab_size = 32769;
  c.max_position_embeddings = 256;
  std::vector<int64_t> chunks;
  for (int rank = 0; rank < 2; ++rank) {
    ModelSplit split;
    split.tp_size = 2, split.tp_rank = rank;
    const LlamaModel m(c, 4, 256, false, ModelHolds{false, false, false}, split);
    chunks.push_back(m.logits_chunk_rows());
  }
  EXPECT_EQ(chunks[0], chunks[1]);
  EXPECT_LT(chunks[0], 4 * 256);  // several chunks: the case where they could differ
}

}  // namespace
}  // namespace keel::runtime
