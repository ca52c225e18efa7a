// keel's export as Hugging Face transformers reads it (tests/reference/hf_export_ref.py): the same
// directory through keel's tokenizer and model must give transformers' prompt ids, logits and
// greedy continuation.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/op_test_util.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/model/llama.h"
#include "runtime/store/hf_format.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime {
namespace {

const std::string kExport = std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/hf_export";

nlohmann::json golden() {
  std::ifstream f(std::string(KEEL_SOURCE_DIR) +
                  "/tests/reference/golden/hf_export_transformers.json");
  return nlohmann::json::parse(f);
}

// A model over T positions holding the export's weights.
struct Exported {
  explicit Exported(int64_t T)
      : config(read_hf_config(kExport + "/config.json")), model(config, 1, T, false) {
    const SafeTensorsReader file(kExport + "/model.safetensors");
    for (Parameter& p : model.parameters()) {
      const Tensor w = file.get(p.name);
      EXPECT_EQ(w.numel(), p.value.numel()) << p.name;
      std::copy_n(w.data_as<const float>(), w.numel(), p.value.f32());
    }
  }
  ModelConfig config;
  LlamaModel model;
};

TEST(HfReference, TransformersReadsKeelsExportAsKeelDoes) {
  const nlohmann::json g = golden();
  const Tokenizer tokenizer = read_tokenizer_json(kExport + "/tokenizer.json");
  std::vector<int32_t> ids = {tokenizer.bos_id()};
  tokenizer.encode(g.at("prompt").get<std::string>(), ids);
  ASSERT_EQ(ids, g.at("ids").get<std::vector<int32_t>>());

  const auto T = static_cast<int64_t>(ids.size());
  Exported e(T);
  const int64_t V = e.config.vocab_size;
  std::vector<float> logits(static_cast<size_t>(T * V));
  std::vector<int32_t> targets(ids.size(), 0);
  e.model.forward(ids.data(), targets.data(), logits.data());
  EXPECT_LE(testing::rel_error(logits, g.at("logits").get<std::vector<double>>()), 1e-5);

  // Greedy decoding: causal attention makes position t's logits independent of what follows,
  // so one model over the whole length serves every step.
  const auto greedy = g.at("greedy_ids").get<std::vector<int32_t>>();
  const int64_t L = T + static_cast<int64_t>(greedy.size());
  Exported full(L);
  std::vector<int32_t> seq(static_cast<size_t>(L), 0), tg(static_cast<size_t>(L), 0);
  std::copy(ids.begin(), ids.end(), seq.begin());
  std::vector<float> all(static_cast<size_t>(L * V));
  for (int64_t t = T; t < L; ++t) {
    full.model.forward(seq.data(), tg.data(), all.data());
    const float* row = all.data() + (t - 1) * V;
    seq[static_cast<size_t>(t)] = static_cast<int32_t>(std::max_element(row, row + V) - row);
  }
  EXPECT_EQ(std::vector<int32_t>(seq.begin() + T, seq.end()), greedy);
  EXPECT_EQ(tokenizer.decode(greedy), g.at("greedy_text").get<std::string>());
}

}  // namespace
}  // namespace keel::runtime
