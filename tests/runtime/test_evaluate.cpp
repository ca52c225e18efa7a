// Validation loss: evaluate() over a micro-batch that does not divide the sequences equals the
// mean of each sequence's loss computed alone; max_sequences takes the first ones; and
// data.validation finds a prepared directory's split or refuses a missing path.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "parallel/self_communicator.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/train/evaluate.h"
#include "tests/runtime/file_test_util.h"

namespace keel::runtime {
namespace {

class EvaluateTest : public testing::FileTest {};

TEST_F(EvaluateTest, MeanOfEverySequenceWhateverTheBatch) {
  std::string text;
  for (int i = 0; i < 90; ++i) text += "line " + std::to_string(i * 7919 % 1000) + " of text\n";
  const Tokenizer bytes = load_tokenizer("bytes");
  const int64_t T = 16;
  const TokenData data(write("val.txt", text), bytes, T);
  ASSERT_GT(data.num_sequences(), 40);
  ASSERT_NE(data.num_sequences() % 3, 0);  // the last batch of 3 is partial

  ModelConfig c;
  c.vocab_size = bytes.vocab_size(), c.hidden_size = 32, c.intermediate_size = 48;
  c.num_hidden_layers = 2, c.num_attention_heads = 4, c.max_position_embeddings = T;
  LlamaModel batched(c, 3, T, false), single(c, 1, T, false);
  batched.init_weights(1);
  single.init_weights(1);
  std::vector<int32_t> tokens(3 * T), targets(3 * T);
  parallel::SelfCommunicator one;

  auto reference = [&](int64_t n) {
    double sum = 0, count = 0;
    for (int64_t i = 0; i < n; ++i) {
      data.sequence(i, tokens.data(), targets.data());
      sum += single.forward(tokens.data(), targets.data(), nullptr);
      count += T;
    }
    return sum / count;
  };
  const EvalResult all = evaluate(batched, data, 0, one, tokens.data(), targets.data());
  EXPECT_EQ(all.sequences, data.num_sequences());
  EXPECT_EQ(all.tokens, data.num_sequences() * T);
  EXPECT_NEAR(all.loss, reference(data.num_sequences()), 1e-6 * all.loss);
  EXPECT_NEAR(all.perplexity(), std::exp(all.loss), 1e-9 * all.perplexity());
  EXPECT_NEAR(all.loss, std::log(static_cast<double>(c.vocab_size)), 0.1);  // an untrained model

  const EvalResult first = evaluate(batched, data, 7, one, tokens.data(), targets.data());
  EXPECT_EQ(first.sequences, 7);
  EXPECT_NEAR(first.loss, reference(7), 1e-6 * first.loss);
}

TEST_F(EvaluateTest, ValidationData) {
  const Tokenizer bytes = load_tokenizer("bytes");
  DataConfig d;
  d.train = write("train.txt", std::string(400, 'a'));
  d.seq_length = 8;
  EXPECT_EQ(open_validation(d, bytes), nullptr);  // auto, and a text file has no split
  d.validation = write("held_out.txt", std::string(100, 'b'));
  const auto v = open_validation(d, bytes);
  ASSERT_NE(v, nullptr);
  EXPECT_EQ(v->num_sequences(), (100 + 2 - 1) / 8);  // BOS and EOS around the text
  d.validation = "none";
  EXPECT_EQ(open_validation(d, bytes), nullptr);
  d.validation = path("missing.txt");
  testing::expect_error([&] { open_validation(d, bytes); },
                        "data.validation '" + path("missing.txt") + "' does not exist");
  d.validation = write("empty.txt", "");
  testing::expect_error([&] { open_validation(d, bytes); }, "data.validation '");
}

}  // namespace
}  // namespace keel::runtime
