// Token shards and the loader over them: shards round trip at both token widths, every kind of
// damaged shard is an error naming the file, sequences never cross shards, a shard of another
// tokenizer or a larger vocabulary than the model's is refused; a prepared directory is checked
// against the shard list of its prepare.json (missing, extra, cut, changed shards); keel
// prepare's documents, split and refusals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "file_test_util.h"
#include "kernels/error.h"
#include "runtime/data/bpe_train.h"
#include "runtime/data/data.h"
#include "runtime/data/prepare.h"
#include "runtime/data/token_shard.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/train/tfrecord.h"

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

// A directory keel prepare wrote with the bytes tokenizer: 1050 bytes of text, the first 966 (90 %
// to a line end) in training shards of 300 tokens (train_00000 to train_00003), 84 in val_00000.
std::string lines_of(const std::string& word) {
  std::string text;
  for (int i = 0; i < 50; ++i) text += "line " + std::to_string(100 + i) + " of the " + word + "\n";
  return text;
}

PrepareReport prepare_bytes(const std::string& input, const std::string& out) {
  PrepareOptions o;
  o.inputs = {input};
  o.out_dir = out;
  o.tokenizer = "bytes";
  o.val_fraction = 0.1;
  o.shard_tokens = 300;
  std::ostringstream log;
  return prepare_data(o, log);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  return nlohmann::json::parse(f);
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

TEST_F(TokenDataTest, PrepareListsEveryShardWithItsCountAndChecksum) {
  const PrepareReport r = prepare_bytes(write("d.txt", lines_of("text")), path("d"));
  ASSERT_EQ(r.train_shards, 4);
  ASSERT_EQ(r.val_shards, 1);
  const nlohmann::json j = read_json(path("d/prepare.json"));
  ASSERT_TRUE(j.contains("command") && j.contains("shards")) << j.dump(1);
  EXPECT_EQ(j["command"], "keel prepare " + path("d.txt") + " --out " + path("d") +
                              " --tokenizer bytes --val-fraction 0.1 --text-key text "
                              "--shard-tokens 300 --seed 1234");
  ASSERT_EQ(j["shards"].size(), 5u);
  int64_t train_tokens = 0;
  for (const nlohmann::json& e : j["shards"]) {
    const std::string file = e["file"], split = e["split"];
    EXPECT_EQ(file.substr(0, split.size() + 1), split + "_") << file;
    const std::string bytes = file_bytes(path("d/") + file);
    EXPECT_EQ(e["bytes"], bytes.size()) << file;
    EXPECT_EQ(e["tokens"], (bytes.size() - 64) / 2) << file;  // bytes: 2 bytes a token
    EXPECT_EQ(e["crc32c"], crc32c(bytes)) << file;
    if (split == "train") train_tokens += e["tokens"].get<int64_t>();
  }
  EXPECT_EQ(j["shards"][0]["file"], "train_00000.tokens");
  EXPECT_EQ(j["shards"][4]["file"], "val_00000.tokens");
  EXPECT_EQ(train_tokens, r.train_tokens);
  const TokenData data(path("d"), Tokenizer::bytes(), 4);
  EXPECT_EQ(data.num_tokens(), r.train_tokens);
  EXPECT_EQ(data.note(), "");  // checked
}

TEST_F(TokenDataTest, AMissingShardIsRefused) {
  prepare_bytes(write("d.txt", lines_of("text")), path("d"));
  fs::remove(path("d/train_00002.tokens"));
  expect_error([&] { TokenData d(path("d"), Tokenizer::bytes(), 4); },
               "prepared data " + path("d") +
                   " lacks train_00002.tokens (300 tokens), which its prepare.json lists: the "
                   "directory is incomplete and a run would train on part of the data; copy " +
                   path("d") +
                   " again whole from where it was prepared, or remove it and run again: keel "
                   "prepare " +
                   path("d.txt") + " --out " + path("d"));
  // Validation too, even when every validation shard is gone (auto would find none).
  fs::remove(path("d/val_00000.tokens"));
  DataConfig data;
  data.train = path("d");
  data.seq_length = 4;
  expect_error([&] { open_validation(data, Tokenizer::bytes()); },
               "lacks val_00000.tokens (84 tokens), which its prepare.json lists");
}

TEST_F(TokenDataTest, AnExtraShardIsRefused) {
  prepare_bytes(write("d.txt", lines_of("text")), path("d"));
  fs::copy_file(path("d/train_00000.tokens"), path("d/train_00004.tokens"));
  expect_error([&] { TokenData d(path("d"), Tokenizer::bytes(), 4); },
               "prepared data " + path("d") +
                   " holds train_00004.tokens, which its prepare.json does not list");
}

TEST_F(TokenDataTest, AShardOfAnotherCountIsRefused) {
  prepare_bytes(write("d.txt", lines_of("text")), path("d"));
  write_token_shard(path("d/train_00001.tokens"), iota_tokens(200, 0, 256),
                    {256, 1, Tokenizer::bytes().fingerprint()});
  expect_error([&] { TokenData d(path("d"), Tokenizer::bytes(), 4); },
               "token shard " + path("d/train_00001.tokens") + " holds 200 tokens (464 bytes), " +
                   "but " + path("d") + "/prepare.json lists 300 tokens (664 bytes)");
}

TEST_F(TokenDataTest, AChangedShardIsRefused) {
  prepare_bytes(write("d.txt", lines_of("text")), path("d"));
  std::string bytes = file_bytes(path("d/train_00003.tokens"));
  const uint32_t before = crc32c(bytes);
  bytes[64 + 2 * 17] ^= 1;  // token 17 becomes another byte: a valid shard still
  write("d/train_00003.tokens", bytes);
  TokenShard still_valid(path("d/train_00003.tokens"));
  char crc[16];
  std::snprintf(crc, sizeof crc, "0x%08x", before);
  const std::string want = ", but " + path("d") + "/prepare.json lists " + crc +
                           ": its bytes changed after keel prepare";
  expect_error([&] { TokenData d(path("d"), Tokenizer::bytes(), 4); },
               "token shard " + path("d/train_00003.tokens") + " has CRC-32C 0x");
  expect_error([&] { TokenData d(path("d"), Tokenizer::bytes(), 4); }, want);
  // A lone shard is checked against the list beside it.
  expect_error([&] { TokenData d(path("d/train_00003.tokens"), Tokenizer::bytes(), 4); }, want);
}

TEST_F(TokenDataTest, DirectoriesWithoutAShardListAreReadWithANote) {
  prepare_bytes(write("d.txt", lines_of("text")), path("d"));
  nlohmann::json j = read_json(path("d/prepare.json"));
  j.erase("shards");
  j.erase("command");
  write("d/prepare.json", j.dump(1));  // as keel prepare wrote it before the list
  fs::remove(path("d/train_00002.tokens"));
  const TokenData old(path("d"), Tokenizer::bytes(), 4);
  EXPECT_EQ(old.num_shards(), 3);
  EXPECT_EQ(old.note(), path("d") +
                            "/prepare.json lists no shards (an older keel prepare wrote it), so a "
                            "missing or changed shard would go unnoticed; run keel prepare again "
                            "into a new directory to have its shards checked");
  write("d/prepare.json", R"({"shards": [{"file": "train_00000.tokens"}]})");
  expect_error([&] { TokenData d(path("d"), Tokenizer::bytes(), 4); },
               path("d") + "/prepare.json is damaged (");
  fs::remove(path("d/prepare.json"));
  const TokenData none(path("d"), Tokenizer::bytes(), 4);
  EXPECT_NE(none.note().find(path("d") + " has no prepare.json"), std::string::npos) << none.note();
}

TEST_F(TokenDataTest, AShardBeyondTheModelsVocabularyIsRefusedWhenOpened) {
  // The header promises a 1000-token vocabulary; every token is a byte (< 256) but one.
  std::vector<int32_t> tokens = iota_tokens(400, 0, 256);
  tokens[390] = 700;
  write_token_shard(path("big.tokens"), tokens, {1000, 1, Tokenizer::bytes().fingerprint()});
  expect_error([&] { TokenData d(path("big.tokens"), Tokenizer::bytes(), 4, "train", 256); },
               "token shard " + path("big.tokens") +
                   " holds tokens of a 1000-token vocabulary, more than the model's 256; set "
                   "model.vocab_size to 1000 or more");
  EXPECT_EQ(TokenData(path("big.tokens"), Tokenizer::bytes(), 4, "train", 1000).num_tokens(), 400);
}

TEST_F(TokenDataTest, TheFingerprintFollowsTheDataNotThePath) {
  prepare_bytes(write("a.txt", lines_of("text")), path("a"));
  prepare_bytes(write("b.txt", lines_of("text")), path("b"));
  prepare_bytes(write("c.txt", lines_of("test")), path("c"));  // one letter differs on each line
  const Tokenizer bytes = Tokenizer::bytes();
  const TokenData a(path("a"), bytes, 4), b(path("b"), bytes, 4), c(path("c"), bytes, 4);
  EXPECT_EQ(a.num_tokens(), c.num_tokens());
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  EXPECT_NE(a.fingerprint(), c.fingerprint());
  const TokenData a_val(path("a"), bytes, 4, "val"), c_val(path("c"), bytes, 4, "val");
  EXPECT_NE(data_fingerprint(a, &a_val), data_fingerprint(a, &c_val));
  EXPECT_NE(data_fingerprint(a, &a_val), data_fingerprint(a, nullptr));
  const TokenData text_a(path("a.txt"), bytes, 4), text_c(path("c.txt"), bytes, 4);
  EXPECT_NE(text_a.fingerprint(), text_c.fingerprint());
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
