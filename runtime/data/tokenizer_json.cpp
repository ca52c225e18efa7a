#include "runtime/data/tokenizer_json.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "kernels/error.h"
#include "runtime/store/durable_file.h"

namespace keel::runtime {

namespace {

using Json = nlohmann::ordered_json;

std::array<uint32_t, 256> byte_code_points() {
  std::array<uint32_t, 256> cps{};
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    cps[b] = printable ? b : next++;
  }
  return cps;
}

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

// The bytes a byte-level token string stands for; false if a character is not in the map.
bool token_bytes(const std::string& token, std::string& bytes) {
  static const std::array<int, 324> byte_of = [] {
    std::array<int, 324> inv{};
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[byte_code_point(static_cast<uint8_t>(b))] = b;
    return inv;
  }();
  bytes.clear();
  for (size_t i = 0; i < token.size();) {
    const auto c = static_cast<uint8_t>(token[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xe0) == 0xc0 && i + 1 < token.size()) {
      cp = ((c & 0x1fu) << 6) | (static_cast<uint8_t>(token[i + 1]) & 0x3fu);
      i += 2;
    } else {
      return false;
    }
    if (cp >= byte_of.size() || byte_of[cp] < 0) return false;
    bytes += static_cast<char>(byte_of[cp]);
  }
  return true;
}

std::string hf_token(const std::string& bytes) {
  std::string s;
  for (char c : bytes) s += byte_char(static_cast<uint8_t>(c));
  return s;
}

Json byte_level(bool use_regex) {
  return Json{{"type", "ByteLevel"},
              {"add_prefix_space", false},
              {"trim_offsets", true},
              {"use_regex", use_regex}};
}

// The split pattern a pre_tokenizer object stands for; an error for anything else.
SplitPattern read_pattern(const Json& pre, const std::string& path) {
  const std::string type = pre.value("type", "");
  auto check_byte_level = [&](const Json& bl) {
    KEEL_CHECK(!bl.value("add_prefix_space", false),
               "{}: pre_tokenizer ByteLevel with add_prefix_space is not supported; set it to "
               "false",
               path);
  };
  if (type == "ByteLevel") {
    check_byte_level(pre);
    KEEL_CHECK(pre.value("use_regex", true),
               "{}: a ByteLevel pre_tokenizer without use_regex and without a Split before it "
               "does not split text; keel needs one of the GPT-2 or LLaMA 3 patterns",
               path);
    return SplitPattern::kGpt2;
  }
  if (type == "Sequence") {
    const Json& parts = pre.at("pretokenizers");
    KEEL_CHECK(parts.size() == 2 && parts[0].value("type", "") == "Split" &&
                   parts[1].value("type", "") == "ByteLevel" && !parts[1].value("use_regex", true),
               "{}: pre_tokenizer Sequence must be [Split, ByteLevel (use_regex false)], as in "
               "LLaMA 3",
               path);
    check_byte_level(parts[1]);
    const Json& split = parts[0];
    KEEL_CHECK(split.value("behavior", "") == "Isolated" && !split.value("invert", false),
               "{}: the Split pre_tokenizer must isolate matches (behavior Isolated, invert false)",
               path);
    const std::string regex = split.at("pattern").value("Regex", "");
    for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3})
      if (regex == pattern_regex(p)) return p;
    KEEL_FAIL(
        "{}: the Split pattern '{}' is neither GPT-2's nor LLaMA 3's, the two keel "
        "implements",
        path, regex);
  }
  KEEL_FAIL("{}: pre_tokenizer type '{}' is not byte-level BPE's (ByteLevel, or Split + ByteLevel)",
            path, type);
}

}  // namespace

uint32_t byte_code_point(uint8_t byte) {
  static const std::array<uint32_t, 256> cps = byte_code_points();
  return cps[byte];
}

std::string byte_char(uint8_t byte) { return utf8(byte_code_point(byte)); }

Tokenizer read_tokenizer_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  KEEL_CHECK(f.good(), "cannot open tokenizer {}: {}", path, std::strerror(errno));
  Json j;
  try {
    j = Json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("tokenizer {} is not valid JSON ({})", path, e.what());
  }
  try {
    const Json& model = j.at("model");
    KEEL_CHECK(model.value("type", "BPE") == "BPE",
               "tokenizer {}: model type '{}'; keel reads byte-level BPE tokenizers only", path,
               model.value("type", ""));
    KEEL_CHECK(!model.value("byte_fallback", false) &&
                   model.value("continuing_subword_prefix", Json()).is_null() &&
                   model.value("end_of_word_suffix", Json()).is_null(),
               "tokenizer {}: a BPE with byte_fallback, continuing_subword_prefix or "
               "end_of_word_suffix is not byte-level BPE (SentencePiece-style tokenizers such as "
               "LLaMA 2's are not supported)",
               path);
    KEEL_CHECK(j.value("normalizer", Json()).is_null(),
               "tokenizer {}: it has a normalizer ({}); byte-level BPE tokenizers have none", path,
               j["normalizer"].value("type", "?"));
    const SplitPattern pattern = read_pattern(j.at("pre_tokenizer"), path);

    std::vector<SpecialToken> specials;
    for (const Json& t : j.value("added_tokens", Json::array()))
      specials.push_back({t.at("content").get<std::string>(), t.at("id").get<int32_t>()});
    int64_t size = 0;
    for (const SpecialToken& s : specials) size = std::max<int64_t>(size, s.id + 1);
    const Json& vocab = model.at("vocab");
    for (const auto& [token, id] : vocab.items())
      size = std::max<int64_t>(size, id.get<int64_t>() + 1);
    std::vector<std::string> tokens(static_cast<size_t>(size));
    std::vector<bool> taken(static_cast<size_t>(size), false);
    for (const SpecialToken& s : specials) taken[static_cast<size_t>(s.id)] = true;
    std::unordered_map<std::string, int32_t> ids;
    std::string bytes;
    for (const auto& [token, value] : vocab.items()) {
      const auto id = value.get<int32_t>();
      KEEL_CHECK(id >= 0, "tokenizer {}: token '{}' has the negative id {}", path, token, id);
      ids[token] = id;
      if (taken[static_cast<size_t>(id)]) continue;  // a special token also listed in vocab
      KEEL_CHECK(token_bytes(token, bytes),
                 "tokenizer {}: vocab token '{}' (id {}) is not a byte-level token (its "
                 "characters must come from GPT-2's byte map)",
                 path, token, id);
      tokens[static_cast<size_t>(id)] = bytes;
      taken[static_cast<size_t>(id)] = true;
    }
    for (int64_t id = 0; id < size; ++id)
      KEEL_CHECK(taken[static_cast<size_t>(id)],
                 "tokenizer {}: no token has id {} (ids must run from 0 to {} without gaps)", path,
                 id, size - 1);

    std::vector<std::pair<int32_t, int32_t>> merges;
    for (const Json& m : model.at("merges")) {
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        KEEL_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos,
                   "tokenizer {}: merge '{}' is not two tokens separated by one space", path, s);
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else {
        left = m.at(0).get<std::string>();
        right = m.at(1).get<std::string>();
      }
      const auto l = ids.find(left), r = ids.find(right);
      KEEL_CHECK(l != ids.end() && r != ids.end(),
                 "tokenizer {}: merge {} ('{}' + '{}') names a token not in vocab", path,
                 merges.size(), left, right);
      merges.emplace_back(l->second, r->second);
    }
    try {
      return Tokenizer(std::move(tokens), std::move(merges), std::move(specials), pattern,
                       model.value("ignore_merges", false));
    } catch (const Error& e) {
      KEEL_FAIL("tokenizer {}: {}", path, e.what());
    }
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("tokenizer {}: a field is missing or of the wrong type ({})", path, e.what());
  }
}

Tokenizer load_tokenizer(const std::string& spec) {
  return spec == "bytes" ? Tokenizer::bytes() : read_tokenizer_json(spec);
}

std::string tokenizer_json(const Tokenizer& t) {
  Json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  Json added = Json::array();
  for (const SpecialToken& s : t.specials())
    added.push_back({{"id", s.id},
                     {"content", s.content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  if (t.pattern() == SplitPattern::kGpt2) {
    j["pre_tokenizer"] = byte_level(true);
  } else {
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         Json::array({Json{{"type", "Split"},
                           {"pattern", {{"Regex", std::string(pattern_regex(t.pattern()))}}},
                           {"behavior", "Isolated"},
                           {"invert", false}},
                      byte_level(false)})}};
  }
  if (t.bos_id() >= 0) {
    const std::string bos = t.decode(std::vector<int32_t>{t.bos_id()});
    auto special = [&](int type_id) {
      return Json{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* id, int type_id) {
      return Json{{"Sequence", {{"id", id}, {"type_id", type_id}}}};
    };
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", Json::array({special(0), seq("A", 0)})},
        {"pair", Json::array({special(0), seq("A", 0), special(1), seq("B", 1)})},
        {"special_tokens",
         {{bos,
           {{"id", bos}, {"ids", Json::array({t.bos_id()})}, {"tokens", Json::array({bos})}}}}}};
  } else {
    j["post_processor"] = nullptr;
  }
  j["decoder"] = byte_level(true);
  Json vocab = Json::object();
  for (int32_t id = 0; id < t.vocab_size(); ++id)
    if (!t.is_special(id)) vocab[hf_token(t.token(id))] = id;
  Json merges = Json::array();
  for (const auto& [l, r] : t.merges())
    merges.push_back(hf_token(t.token(l)) + " " + hf_token(t.token(r)));
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", t.ignore_merges()},
                {"vocab", vocab},
                {"merges", merges}};
  return j.dump(1, ' ', false) + "\n";
}

void write_tokenizer_json(const Tokenizer& tokenizer, const std::string& path) {
  write_text_durably(path, tokenizer_json(tokenizer));
}

}  // namespace keel::runtime
