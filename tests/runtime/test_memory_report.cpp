// The memory plan of a pipelined run, stage by stage: each stage plans its own layers with the
// activation slots its schedule keeps alive at the peak (GPipe all m micro-batches, 1F1B
// min(m, p - s) on stage s), the stages together hold each parameter, gradient and optimizer
// moment of the whole model once, and the largest stage is what every rank must hold.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "runtime/config_test_util.h"
#include "runtime/train/memory_report.h"

namespace keel::runtime {
namespace {

using test::error_of;
using test::expect_mentions;

// Four layers, so that four stages hold one each and two stages two.
const char* const kModel = R"(
model: {vocab_size: 256, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 4,
        num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64,
        tie_word_embeddings: false}
data: {train: data/kjv.txt.gz, tokenizer: bytes, seq_length: 32}
training: {max_steps: 2, per_device_train_batch_size: 2, report_to: none}
)";

Config pipelined(int p, const std::string& schedule, int m,
                 const std::vector<std::string>& more = {}) {
  std::vector<std::string> sets = {"parallel.pipeline_model_parallel_size=" + std::to_string(p),
                                   "parallel.pipeline_schedule=" + schedule,
                                   "training.gradient_accumulation_steps=" + std::to_string(m)};
  sets.insert(sets.end(), more.begin(), more.end());
  return parse_config(kModel, sets);
}

TEST(MemoryReport, EachStagePlansItsLayersWithTheSchedulesSlots) {
  for (const bool checkpointing : {false, true}) {
    const std::vector<std::string> more = {"training.gradient_checkpointing=" +
                                           std::string(checkpointing ? "true" : "false")};
    for (const int p : {2, 4}) {
      for (const std::string schedule : {"gpipe", "1f1b"}) {
        for (const int m : {2, 4, 8}) {
          SCOPED_TRACE(::testing::Message() << "pp " << p << ", " << schedule << ", " << m
                                            << " micro-batches, checkpointing " << checkpointing);
          const Config c = pipelined(p, schedule, m, more);
          const Config one = pipelined(1, schedule, m, more);
          const RankMemory whole = plan_rank_memory(one, 1);
          const std::vector<RankMemory> stages = plan_stage_memory(c, 1);
          ASSERT_EQ(stages.size(), static_cast<size_t>(p));
          size_t parameters = 0, gradients = 0, optimizer = 0;
          uint64_t peak = 0;
          for (int s = 0; s < p; ++s) {
            const RankMemory& m_s = stages[static_cast<size_t>(s)];
            const int slots = schedule == "gpipe" ? m : std::min(m, p - s);
            EXPECT_EQ(m_s.activation_slots, slots) << "stage " << s;
            EXPECT_EQ(m_s.total(), plan_rank_memory(c, 1, s).total()) << "stage " << s;
            // The same stage under the other schedule differs by its slots alone.
            const RankMemory other = plan_rank_memory(
                pipelined(p, schedule == "gpipe" ? "1f1b" : "gpipe", m, more), 1, s, slots);
            EXPECT_EQ(other.total(), m_s.total()) << "stage " << s;
            parameters += m_s.parameters, gradients += m_s.gradients, optimizer += m_s.optimizer;
            peak = std::max<uint64_t>(peak, m_s.total());
          }
          EXPECT_EQ(parameters, whole.parameters);
          EXPECT_EQ(gradients, whole.gradients);
          EXPECT_EQ(optimizer, whole.optimizer);
          EXPECT_EQ(plan_peak_bytes(c, 1), peak);
        }
      }
    }
  }
}

// Without a pipeline there is one stage, the whole model, as before.
TEST(MemoryReport, OneStageWithoutAPipeline) {
  const Config c = pipelined(1, "1f1b", 4);
  const std::vector<RankMemory> stages = plan_stage_memory(c, 2);
  ASSERT_EQ(stages.size(), 1u);
  EXPECT_EQ(stages[0].total(), plan_rank_memory(c, 2).total());
  EXPECT_EQ(stages[0].activation_slots, 1);
  EXPECT_EQ(plan_peak_bytes(c, 2), stages[0].total());
  EXPECT_EQ(describe_layout(c, 2).find("pipeline"), std::string::npos) << describe_layout(c, 2);
  expect_mentions(error_of([&] { plan_rank_memory(c, 1, 1); }),
                  {"pipeline stage 1 planned, but the config has 1 (stages 0 to 0)"});
}

// The bubble as the textbook formula gives it for GPipe and 1F1B, beside the simulation's.
TEST(MemoryReport, TheBubbleIsTheFormulasAndTheSimulations) {
  struct Case {
    int p, m;
    const char* schedule;
    const char* says;
  };
  for (const Case& k :
       {Case{4, 4, "1f1b",
             "bubble (p-1)/(m+p-1) = 3/(4+3) = 42.9 % of the step, "
             "42.9 % as simulated"},
        Case{4, 4, "gpipe", "bubble (p-1)/(m+p-1) = 3/(4+3) = 42.9 % of the step"},
        Case{2, 8, "1f1b", "= 1/(8+1) = 11.1 % of the step, 11.1 % as simulated"},
        Case{4, 2, "1f1b", "= 3/(2+3) = 60.0 % of the step, 60.0 % as simulated"}}) {
    const Config c = pipelined(k.p, k.schedule, k.m);
    const PipelineLayout layout = pipeline_layout(c);
    const double formula = static_cast<double>(k.p - 1) / (k.m + k.p - 1);
    EXPECT_NEAR(layout.plan.bubble_fraction, formula, 1e-12) << k.says;
    const std::string layout_text = describe_layout(c, 1);
    expect_mentions(layout_text,
                    {"keel: 1 rank x " + std::to_string(k.p) + " pipeline stages",
                     std::string("keel: pipeline ") + k.schedule + ", " + std::to_string(k.m) +
                         " micro-batches a step over " + std::to_string(k.p) + " stages: ",
                     k.says});
    EXPECT_EQ(describe_bubble(layout), layout_text.substr(layout_text.find("keel: pipeline ")));
  }
}

// Each stage's line names what it holds: the embedding on the first, the head on the last.
TEST(MemoryReport, EachStageLineNamesItsLayers) {
  const Config c = pipelined(4, "1f1b", 4, {"parallel.pipeline_layers=[0,3,1,0]"});
  const PipelineLayout layout = pipeline_layout(c);
  const std::vector<RankMemory> stages = plan_stage_memory(c, 1);
  const char* const holds[] = {"(embedding)", "(layers 0-2)", "(layer 3)", "(head)"};
  for (int s = 0; s < 4; ++s) {
    const RankMemory& m = stages[static_cast<size_t>(s)];
    EXPECT_EQ(describe_stage_memory(layout, s, m), "keel: pipeline stage " + std::to_string(s) +
                                                       " " + holds[s] + ": " +
                                                       describe_memory(m).substr(6))
        << describe_stage_memory(layout, s, m);
  }
  // The stages that hold no layer keep no activations of blocks: less than one layer's stage.
  EXPECT_LT(stages[0].activation_slot_bytes, stages[2].activation_slot_bytes);
  EXPECT_LT(stages[3].parameters, stages[1].parameters);
}

}  // namespace
}  // namespace keel::runtime
