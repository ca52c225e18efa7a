// keel's byte-level BPE against the real clients' goldens (tests/reference/tokenizer_ref.py):
// Hugging Face `tokenizers` trained on the bundled corpus, its pre-tokenizer and its encoder on
// awkward texts (tiktoken agreed with it on every one when the goldens were made).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/data/bpe_train.h"
#include "runtime/data/data.h"
#include "runtime/data/tokenizer_json.h"

namespace keel::runtime {
namespace {

const std::string kGolden = std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden/";

nlohmann::json cases() {
  std::ifstream f(kGolden + "tokenizer_cases.json");
  return nlohmann::json::parse(f);
}

std::string kjv() {
  return read_text_file(std::string(KEEL_SOURCE_DIR) + "/data/kjv.txt.gz", "the demo corpus");
}

struct Reference {
  const char* name;
  SplitPattern pattern;
  int64_t vocab_size;
};
const Reference kReferences[] = {{"gpt2", SplitPattern::kGpt2, 1024},
                                 {"llama3", SplitPattern::kLlama3, 512}};

TEST(TokenizerReference, PiecesAndIdsMatchHuggingFace) {
  const nlohmann::json c = cases();
  const auto texts = c.at("texts").get<std::vector<std::string>>();
  for (const Reference& r : kReferences) {
    SCOPED_TRACE(r.name);
    const Tokenizer t = read_tokenizer_json(kGolden + "tokenizer_" + r.name + "_kjv.json");
    ASSERT_EQ(t.pattern(), r.pattern);
    const auto lengths = c.at(std::string(r.name) + "_piece_lengths");
    const auto ids = c.at(std::string(r.name) + "_ids");
    for (size_t i = 0; i < texts.size(); ++i) {
      std::vector<size_t> got;
      for (size_t at = 0; at < texts[i].size();) {
        const size_t end = piece_end(texts[i], at, r.pattern);
        got.push_back(end - at);
        at = end;
      }
      ASSERT_EQ(got, lengths[i].get<std::vector<size_t>>()) << "text " << i << ": " << texts[i];
      ASSERT_EQ(t.encode(texts[i]), ids[i].get<std::vector<int32_t>>()) << "text " << i;
      ASSERT_EQ(t.decode(t.encode(texts[i])), texts[i]);
    }
    const std::string head = kjv().substr(0, 4096);
    EXPECT_EQ(t.encode(head),
              c.at(std::string(r.name) + "_kjv_ids_first_4096_bytes").get<std::vector<int32_t>>());
  }
}

TEST(TokenizerReference, MergesLearnedMatchHuggingFaceTrainer) {
  const std::string text = kjv();
  for (const Reference& r : kReferences) {
    SCOPED_TRACE(r.name);
    const Tokenizer hf = read_tokenizer_json(kGolden + "tokenizer_" + r.name + "_kjv.json");
    BpeTrainer trainer({.vocab_size = r.vocab_size, .pattern = r.pattern, .special_tokens = {}});
    trainer.add_text(text);
    const Tokenizer keel = trainer.train();
    ASSERT_EQ(keel.num_merges(), hf.num_merges());
    for (int64_t m = 0; m < hf.num_merges(); ++m) {
      const auto [hl, hr] = hf.merges()[static_cast<size_t>(m)];
      const auto [kl, kr] = keel.merges()[static_cast<size_t>(m)];
      ASSERT_EQ(keel.token(kl) + "|" + keel.token(kr), hf.token(hl) + "|" + hf.token(hr))
          << "merge " << m;
    }
  }
}

}  // namespace
}  // namespace keel::runtime
