// Token shards and the loader over them: shards round trip at both token widths, every kind of
// damaged shard is an error naming the file, sequences never cross shards, a shard of another
// tokenizer is refused; keel prepare's documents, split and refusals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>

#include "file_test_util.h"
#include "kernels/error.h"
#include "runtime/bpe_train.h"
#include "runtime/data.h"
#include "runtime/prepare.h"
#include "runtime/token_shard.h"
#include "runtime/tokenizer_json.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;

using TokenDataTest = testing::FileTest;

using testing::expect_error;

std::vector<int32_t> iota_tokens(int64_t n, int32_t start, int32_t modulo) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    t[static_cast<size_t>(i)] = (start + static_cast<int32_t>(i)) % modulo;
  return t;
}

TEST_F(TokenDataTest, ShardsRoundTripAtBothWidths) {
  for (int64_t vocab : {300, 65536, 70000}) {
    const auto tokens = iota_tokens(5000, 7, static_cast<int32_t>(vocab));
    write_token_shard(path("a.tokens"), tokens, {vocab, 3, 42});
    const TokenShard s(path("a.tokens"));
    EXPECT_EQ(s.token_bytes(), vocab <= 65536 ? 2 : 4);
    EXPECT_EQ(s.size(), 5000);
    EXPECT_EQ(s.info().vocab_size, vocab);
    EXPECT_EQ(s.info().num_documents, 3);
    EXPECT_EQ(s.info().tokenizer_fingerprint, 42u);
    EXPECT_EQ(fs::file_size(path("a.tokens")),
              64u + 5000u * static_cast<unsigned>(s.token_bytes()));
    std::vector<int32_t> back(5000);
    s.read(0, 5000, back.data());
    EXPECT_EQ(back, tokens);
  }
  expect_error(
      [&] {
        write_token_shard(path("b.tokens"), std::vector<int32_t>{1, 300}, {300, 1, 0});
      },
      "token 300 at 1 is outside the vocabulary [0, 300)");
}

TEST_F(TokenDataTest, DamagedShardsAreClearErrors) {
  write_token_shard(path("good.tokens"), iota_tokens(100, 0, 50), {50, 1, 0});
  std::string bytes;
  {
    std::ifstream f(path("good.tokens"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  expect_error([&] { TokenShard s(path("absent.tokens")); }, "cannot open token shard");
  expect_error([&] { TokenShard s(write("short.tokens", bytes.substr(0, 10))); },
               "shorter than the 64-byte header");
  std::string magic = bytes;
  magic[0] = 'X';
  expect_error([&] { TokenShard s(write("magic.tokens", magic)); }, "is not a token shard");
  std::string version = bytes;
  version[8] = 9;
  expect_error([&] { TokenShard s(write("version.tokens", version)); }, "of format version 9");
  expect_error([&] { TokenShard s(write("cut.tokens", bytes.substr(0, bytes.size() - 2))); },
               "but its header promises 100 tokens of 2 bytes (264 bytes in all); the file is "
               "truncated");
  std::string big = bytes;
  big[64 + 2 * 10] = 60;  // token 10 becomes 60, outside the vocabulary of 50
  expect_error([&] { TokenShard s(write("big.tokens", big)); },
               "holds token 60, outside its vocabulary of 50");
}

TEST_F(TokenDataTest, SequencesNeverCrossShardsAndCoverEveryOne) {
  const Tokenizer bytes_tok = Tokenizer::bytes();
  fs::create_directories(path("d"));
  // Shards of 25, 9 and 31 tokens with T = 4: (25-1)/4 + (9-1)/4 + (31-1)/4 = 6 + 2 + 7.
  int32_t next = 0;
  for (auto [name, n] : {std::pair{"train_00000.tokens", 25},
                         {"train_00001.tokens", 9},
                         {"train_00002.tokens", 31},
                         {"val_00000.tokens", 5}}) {
    write_token_shard(path("d/") + name, iota_tokens(n, next, 256),
                      {256, 1, bytes_tok.fingerprint()});
    next += n;
  }
  const TokenData data(path("d"), bytes_tok, 4);
  EXPECT_EQ(data.num_shards(), 3);
  EXPECT_EQ(data.num_tokens(), 65);
  ASSERT_EQ(data.num_sequences(), 15);
  const std::vector<int32_t> firsts = {0, 4, 8, 12, 16, 20, 25, 29, 34, 38, 42, 46, 50, 54, 58};
  for (int64_t i = 0; i < 15; ++i) {
    int32_t tokens[4], targets[4];
    data.sequence(i, tokens, targets);
    for (int t = 0; t < 4; ++t) {
      EXPECT_EQ(tokens[t], firsts[static_cast<size_t>(i)] + t) << i;
      EXPECT_EQ(targets[t], firsts[static_cast<size_t>(i)] + t + 1) << i;
    }
  }
  const TokenData val(path("d"), bytes_tok, 4, "val");
  EXPECT_EQ(val.num_sequences(), 1);

  const Tokenizer other = BpeTrainer({.vocab_size = 262}).train();
  expect_error([&] { TokenData d(path("d"), other, 4); },
               "was made with another tokenizer than the one this run uses");
  fs::create_directories(path("empty"));
  expect_error([&] { TokenData d(path("empty"), bytes_tok, 4); },
               "holds no train_*.tokens shards; make them with keel prepare");
  expect_error([&] { TokenData d(path("d"), bytes_tok, 40); },
               "fewer than one sequence of data.seq_length + 1 = 41");
}

TEST_F(TokenDataTest, TextWithABpeTokenizerIsOneDocumentInBosAndEos) {
  const std::string text = "In the beginning God created the heaven and the earth.\n";
  BpeTrainer trainer({.vocab_size = 300});
  trainer.add_text(text);
  const Tokenizer t = trainer.train();
  const TokenData data(write("a.txt", text), t, 4);
  std::vector<int32_t> expected = {t.bos_id()};
  for (int32_t id : t.encode(text)) expected.push_back(id);
  expected.push_back(t.eos_id());
  EXPECT_EQ(data.num_tokens(), static_cast<int64_t>(expected.size()));
  int32_t tokens[4], targets[4];
  data.sequence(0, tokens, targets);
  EXPECT_EQ(std::vector<int32_t>(tokens, tokens + 4),
            std::vector<int32_t>(expected.begin(), expected.begin() + 4));
}

std::vector<int32_t> all_tokens(const std::string& shard) {
  const TokenShard s(shard);
  std::vector<int32_t> t(static_cast<size_t>(s.size()));
  s.read(0, s.size(), t.data());
  return t;
}

TEST_F(TokenDataTest, PrepareWritesDocumentsBetweenBosAndEosAndSplitsValidation) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Line " + std::to_string(i) + " of the text, 日本語.\n";
  std::string jsonl;
  for (int i = 0; i < 300; ++i)
    jsonl += R"({"text": "record )" + std::to_string(i) +
             R"(", "id": 1})"
             "\n";
  PrepareOptions o;
  o.inputs = {write("a.txt", text), write("b.jsonl", jsonl)};
  o.out_dir = path("out");
  o.vocab_size = 400;
  o.val_fraction = 0.1;
  o.shard_tokens = 1000;
  std::ostringstream log;
  const PrepareReport r = prepare_data(o, log);
  EXPECT_EQ(r.documents, 301);
  EXPECT_GT(r.train_shards, 1);  // shards of 1000 tokens
  const Tokenizer t = read_tokenizer_json(path("out/tokenizer.json"));
  EXPECT_EQ(t.vocab_size(), 400);

  std::vector<int32_t> train, val;
  for (int64_t s = 0; s < r.train_shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "out/train_%05lld.tokens", static_cast<long long>(s));
    const auto part = all_tokens(path(name));
    EXPECT_EQ(static_cast<int64_t>(part.size()),
              s + 1 < r.train_shards ? 1000 : r.train_tokens % 1000);
    train.insert(train.end(), part.begin(), part.end());
  }
  val = all_tokens(path("out/val_00000.tokens"));
  // The text file: its first 90 % (to a line end) in training, the rest in validation; every
  // JSONL record whole on one side, about 10 % of them in validation.
  const std::string decoded_train = t.decode(train), decoded_val = t.decode(val);
  const std::string bos(kBosToken), eos(kEosToken);
  const size_t cut = decoded_train.find(eos);
  ASSERT_NE(cut, std::string::npos);
  const std::string head = decoded_train.substr(bos.size(), cut - bos.size());
  EXPECT_EQ(text.substr(0, head.size()), head);
  EXPECT_NE(decoded_val.find(bos + text.substr(head.size()) + eos), std::string::npos);
  int in_val = 0;
  for (int i = 0; i < 300; ++i) {
    const std::string doc = bos + "record " + std::to_string(i) + eos;
    const bool tr = decoded_train.find(doc) != std::string::npos;
    const bool va = decoded_val.find(doc) != std::string::npos;
    EXPECT_NE(tr, va) << i;
    in_val += va;
  }
  EXPECT_GT(in_val, 15);
  EXPECT_LT(in_val, 45);

  // The same tokenizer given back encodes the same shards; the directory is not overwritten.
  expect_error([&] { prepare_data(o, log); }, "already holds prepared data");
  PrepareOptions again = o;
  again.out_dir = path("again");
  again.vocab_size = 0;
  again.tokenizer = path("out/tokenizer.json");
  prepare_data(again, log);
  EXPECT_EQ(all_tokens(path("again/val_00000.tokens")), val);
}

TEST_F(TokenDataTest, PrepareRefusesBadInput) {
  std::ostringstream log;
  PrepareOptions o;
  o.out_dir = path("out");
  o.vocab_size = 300;
  o.inputs = {write("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 3}\n")};
  expect_error([&] { prepare_data(o, log); }, "bad.jsonl:2: the record has no string field 'text'");
  o.inputs = {write("bad2.jsonl", "{\"text\": \"ok\"}\n{oops\n")};
  expect_error([&] { prepare_data(o, log); }, "bad2.jsonl:2: not valid JSON");
  o.inputs = {path("absent.txt")};
  expect_error([&] { prepare_data(o, log); }, "cannot open input");
  o.inputs = {write("ok.txt", "text")};
  o.tokenizer = path("ok.txt");
  expect_error([&] { prepare_data(o, log); }, "needs one of --vocab-size N");
  o.vocab_size = 0;
  expect_error([&] { prepare_data(o, log); }, "is not valid JSON");
}

}  // namespace
}  // namespace keel::runtime
