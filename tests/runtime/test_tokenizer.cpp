// Byte-level BPE: the pre-tokenization patterns piece by piece, round trips on any bytes, merges
// learned on small corpora checked by hand, tokenizer.json written and read back, a GPT-2 style
// tokenizer.json encoding as the reference algorithm does, and each bad tokenizer.json an error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>

#include "file_test_util.h"
#include "kernels/error.h"
#include "runtime/data/bpe_train.h"
#include "runtime/data/tokenizer.h"
#include "runtime/data/tokenizer_json.h"

namespace keel::runtime {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> pieces(std::string_view text, SplitPattern p) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size();) {
    const size_t e = piece_end(text, i, p);
    EXPECT_GT(e, i);
    out.emplace_back(text.substr(i, e - i));
    i = e;
  }
  return out;
}

using Pieces = std::vector<std::string>;

TEST(PreTokenize, Gpt2Pattern) {
  const auto p = SplitPattern::kGpt2;
  EXPECT_EQ(pieces("Hello world", p), (Pieces{"Hello", " world"}));
  EXPECT_EQ(pieces("I'm here, it's 2024!!", p),
            (Pieces{"I", "'m", " here", ",", " it", "'s", " 2024", "!!"}));
  // A whitespace run gives its last space to the word after it; a run at the end stays whole.
  EXPECT_EQ(pieces("a   b\n\nc  ", p), (Pieces{"a", "  ", " b", "\n", "\n", "c", "  "}));
  EXPECT_EQ(pieces("x\ny", p), (Pieces{"x", "\n", "y"}));
  EXPECT_EQ(pieces("DON'T", p), (Pieces{"DON", "'", "T"}));  // case-sensitive contractions
  EXPECT_EQ(pieces("日本語 テキスト123", p), (Pieces{"日本語", " テキスト", "123"}));
  EXPECT_EQ(pieces("a\u3000\u3000b", p), (Pieces{"a", "\u3000", "\u3000", "b"}));  // ' ' only
}

TEST(PreTokenize, Llama3Pattern) {
  const auto p = SplitPattern::kLlama3;
  EXPECT_EQ(pieces("Hello world", p), (Pieces{"Hello", " world"}));
  EXPECT_EQ(pieces("DON'T stop", p), (Pieces{"DON", "'T", " stop"}));  // case-insensitive
  EXPECT_EQ(pieces("1234567", p), (Pieces{"123", "456", "7"}));
  EXPECT_EQ(pieces("(hello)", p), (Pieces{"(hello", ")"}));  // one leading non-letter
  EXPECT_EQ(pieces("end.\n\nNext", p), (Pieces{"end", ".\n\n", "Next"}));
  EXPECT_EQ(pieces("a \n  \n b", p), (Pieces{"a", " \n  \n", " b"}));
  EXPECT_EQ(pieces("x   ", p), (Pieces{"x", "   "}));
  EXPECT_EQ(pieces("x  y", p), (Pieces{"x", " ", " y"}));
}

TEST(PreTokenize, InvalidUtf8BytesArePiecesOfTheirOwnClass) {
  const std::string text = "ab\xff\xfe cd\xc3";  // two stray bytes and a truncated sequence
  EXPECT_EQ(pieces(text, SplitPattern::kGpt2), (Pieces{"ab", "\xff\xfe", " cd", "\xc3"}));
  EXPECT_EQ(pieces(text, SplitPattern::kLlama3), (Pieces{"ab", "\xff\xfe", " cd", "\xc3"}));
}

TEST(PreTokenize, SafeSplitPointsDoNotChangeThePieces) {
  const std::string text = "One.\nTwo three.\n  Four\n\nFive's 12345 six\nSeven";
  for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3}) {
    Pieces joined;
    for (size_t at = 0; at < text.size();) {
      const size_t end = safe_split_point(text, at + 1);
      for (auto& s : pieces(std::string_view(text).substr(at, end - at), p)) joined.push_back(s);
      at = end;
    }
    EXPECT_EQ(joined, pieces(text, p));
  }
}

Tokenizer train(const std::string& corpus, int64_t merges, SplitPattern p = SplitPattern::kGpt2) {
  BpeTrainer trainer({.vocab_size = 256 + merges + 3, .pattern = p});
  trainer.add_text(corpus);
  return trainer.train();
}

std::vector<std::string> merge_texts(const Tokenizer& t) {
  std::vector<std::string> out;
  for (const auto& [l, r] : t.merges()) out.push_back(t.token(l) + "+" + t.token(r));
  return out;
}

TEST(BpeTrain, LearnsTheMostFrequentPairFirst) {
  // Pieces "ab" ×1, " ab" ×2, " abc" ×1: (a,b) is seen 4 times, then (" ", ab) 3, (" ab", c) 1.
  const Tokenizer t = train("ab ab ab abc", 3);
  EXPECT_EQ(merge_texts(t), (std::vector<std::string>{"a+b", " +ab", " ab+c"}));
  EXPECT_EQ(t.vocab_size(), 256 + 3 + 3);
  EXPECT_EQ(t.encode("ab abc ab"), (std::vector<int32_t>{256, 258, 257}));
  EXPECT_EQ(t.token(t.bos_id()), "");
  EXPECT_EQ(t.decode(std::vector<int32_t>{t.bos_id(), 256, t.eos_id()}),
            "<|begin_of_text|>ab<|end_of_text|>");
  EXPECT_EQ(t.bos_id(), 259);
  EXPECT_EQ(t.eos_id(), 260);
  EXPECT_EQ(t.pad_id(), 261);
}

TEST(BpeTrain, BreaksTiesInGpt2ByteOrder) {
  // Pieces "xy" and " yx", each pair seen once. Hugging Face numbers bytes with the printable
  // ones first, so (x,y) and (y,x) come before (" ", y) although ' ' < 'x' as bytes.
  const Tokenizer t = train("xy yx", 3);
  EXPECT_EQ(merge_texts(t), (std::vector<std::string>{"x+y", "y+x", " +yx"}));
}

TEST(BpeTrain, StopsWhenNothingIsLeftToMerge) {
  const Tokenizer t = train("aaaa", 100);
  EXPECT_EQ(merge_texts(t), (std::vector<std::string>{"a+a", "aa+aa"}));
  EXPECT_EQ(t.encode("aaaaaaa"), (std::vector<int32_t>{257, 256, 'a'}));
}

TEST(BpeTrain, TooSmallAVocabularyIsAnError) {
  try {
    BpeTrainer trainer({.vocab_size = 200});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("at least 259"), std::string::npos) << e.what();
  }
}

const std::string kMultilingual =
    "The quick brown fox — jumps over 13 lazy dogs.\n"
    "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。\n"
    "Привет, мир! Ça va? Größe: 42 °C. مرحبا بالعالم 🙂👍🏽\n"
    "\t  indented\r\n  code(x) { return x*2; }  \n";

TEST(Tokenizer, RoundTripsAnyBytes) {
  const Tokenizer t = train(kMultilingual + kMultilingual, 60, SplitPattern::kLlama3);
  EXPECT_EQ(t.decode(t.encode(kMultilingual)), kMultilingual);
  EXPECT_LT(t.encode(kMultilingual).size(), kMultilingual.size());
  std::mt19937 rng(7);
  const Tokenizer by_pattern[] = {train(kMultilingual, 40, SplitPattern::kGpt2),
                                  train(kMultilingual, 40, SplitPattern::kLlama3)};
  for (int trial = 0; trial < 200; ++trial) {
    std::string s(rng() % 200, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    for (const Tokenizer& tp : by_pattern) ASSERT_EQ(tp.decode(tp.encode(s)), s);
  }
}

using TokenizerFiles = testing::FileTest;

TEST_F(TokenizerFiles, WrittenTokenizerJsonReadsBackIdentically) {
  for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3}) {
    const Tokenizer t = train(kMultilingual + kMultilingual, 80, p);
    const std::string path = dir_ + "/tokenizer.json";
    write_tokenizer_json(t, path);
    const Tokenizer back = read_tokenizer_json(path);
    EXPECT_EQ(back.fingerprint(), t.fingerprint());
    EXPECT_EQ(back.vocab_size(), t.vocab_size());
    EXPECT_EQ(back.merges(), t.merges());
    EXPECT_EQ(back.pattern(), p);
    EXPECT_EQ(back.bos_id(), t.bos_id());
    EXPECT_EQ(back.encode(kMultilingual), t.encode(kMultilingual));
    EXPECT_EQ(tokenizer_json(back), tokenizer_json(t));
  }
}

// The reference algorithm: merge the one adjacent pair of lowest rank, leftmost first, until no
// pair has a rank; bytes map to tokens through GPT-2's printable stand-ins.
std::vector<std::string> reference_bpe(
    const std::string& piece, const std::vector<std::pair<std::string, std::string>>& merges) {
  std::vector<std::string> s;
  for (char c : piece) s.push_back(byte_char(static_cast<uint8_t>(c)));
  while (true) {
    size_t best = merges.size(), at = 0;
    for (size_t i = 0; i + 1 < s.size(); ++i)
      for (size_t r = 0; r < best; ++r)
        if (merges[r].first == s[i] && merges[r].second == s[i + 1]) {
          best = r;
          at = i;
        }
    if (best == merges.size()) return s;
    s[at] += s[at + 1];
    s.erase(s.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
}

TEST_F(TokenizerFiles, Gpt2StyleTokenizerJsonEncodesAsTheReferenceAlgorithm) {
  // GPT-2's own layout: vocab numbered in byte-map order, merges as "a b" strings, and the
  // end-of-text token in both vocab and added_tokens.
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"Ġ", "t"},   {"h", "e"}, {"Ġt", "he"}, {"i", "n"},  {"Ġ", "a"}, {"e", "r"},  {"Ġa", "n"},
      {"Ġan", "d"}, {"e", "e"}, {"ee", "e"},  {"Ġ", "ĠĠ"}, {"Ġ", "Ġ"}, {"ĠĠ", "ĠĠ"}};
  nlohmann::json vocab = nlohmann::json::object();
  int id = 0;
  std::vector<std::string> byte_tokens;
  for (int b = 0; b < 256; ++b) byte_tokens.push_back(byte_char(static_cast<uint8_t>(b)));
  std::sort(byte_tokens.begin(), byte_tokens.end(), [](const std::string& a, const std::string& b) {
    auto cp = [](const std::string& s) {
      const auto c0 = static_cast<uint8_t>(s[0]);
      return c0 < 0x80 ? c0 : ((c0 & 0x1fu) << 6) | (static_cast<uint8_t>(s[1]) & 0x3fu);
    };
    return cp(a) < cp(b);
  });
  for (const std::string& t : byte_tokens) vocab[t] = id++;
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [l, r] : merges) {
    if (!vocab.contains(l + r)) vocab[l + r] = id++;
    merge_list.push_back(l + " " + r);
  }
  vocab["<|endoftext|>"] = id;
  const nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", {{{"id", id}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  const Tokenizer t = read_tokenizer_json(write("gpt2.json", j.dump()));
  EXPECT_EQ(t.eos_id(), id);
  EXPECT_EQ(t.bos_id(), -1);
  const std::string text = "the cat and the theatre in there, eeeeee      spaces\n\n";
  std::vector<int32_t> expected;
  for (const std::string& piece : pieces(text, SplitPattern::kGpt2))
    for (const std::string& tok : reference_bpe(piece, merges)) expected.push_back(vocab.at(tok));
  EXPECT_EQ(t.encode(text), expected);
  EXPECT_EQ(t.decode(expected), text);
}

using testing::expect_error;

TEST_F(TokenizerFiles, BadTokenizerJsonIsAClearError) {
  const Tokenizer t = train(kMultilingual, 20);
  nlohmann::json good = nlohmann::json::parse(tokenizer_json(t));
  expect_error([&] { read_tokenizer_json(dir_ + "/absent.json"); }, "cannot open tokenizer");
  expect_error([&] { read_tokenizer_json(write("cut.json", tokenizer_json(t).substr(0, 500))); },
               "is not valid JSON");
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = good;
    edit(j);
    return write("bad.json", j.dump());
  };
  expect_error([&] { read_tokenizer_json(with([](auto& j) { j["model"]["type"] = "Unigram"; })); },
               "model type 'Unigram'");
  expect_error(
      [&] {
        read_tokenizer_json(with([](auto& j) { j["normalizer"] = {{"type", "NFC"}}; }));
      },
      "normalizer (NFC)");
  expect_error(
      [&] {
        read_tokenizer_json(with([](auto& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }));
      },
      "pre_tokenizer type 'Whitespace'");
  expect_error(
      [&] { read_tokenizer_json(with([](auto& j) { j["model"]["merges"].push_back("zz qq"); })); },
      "names a token not in vocab");
  expect_error([&] { read_tokenizer_json(with([](auto& j) { j["model"].erase("vocab"); })); },
               "a field is missing");
  expect_error([&] { read_tokenizer_json(with([](auto& j) { j["model"]["vocab"].erase("a"); })); },
               "no token has id 97");
}

}  // namespace
}  // namespace keel::runtime
