#include "runtime/data/prepare.h"

#include <charconv>
#include <chrono>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/error.h"
#include "kernels/hash.h"
#include "runtime/data/bpe_train.h"
#include "runtime/data/data.h"
#include "runtime/data/shard_manifest.h"
#include "runtime/data/token_shard.h"
#include "runtime/data/tokenizer_json.h"
#include "runtime/store/durable_file.h"

namespace keel::runtime {

namespace fs = std::filesystem;

namespace {

constexpr size_t kEncodeBatchBytes = size_t{64} << 20;  // text encoded per parallel batch
constexpr size_t kChunkBytes = size_t{1} << 20;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool is_jsonl(const std::string& path) {
  return path.ends_with(".jsonl") || path.ends_with(".jsonl.gz");
}

// The documents of every input, split into training and validation.
struct Corpus {
  std::deque<std::string> storage;  // file contents and JSONL records' texts (stable addresses)
  std::vector<std::string_view> train, val;
  int64_t bytes = 0, documents = 0;
  int64_t val_bytes() const {
    int64_t n = 0;
    for (std::string_view d : val) n += static_cast<int64_t>(d.size());
    return n;
  }
};

void read_jsonl(const std::string& path, const PrepareOptions& o, Corpus& c) {
  const std::string text = read_text_file(path, "input");
  c.bytes += static_cast<int64_t>(text.size());
  std::istringstream lines(text);
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      KEEL_FAIL("{}:{}: not valid JSON ({}); each line of a .jsonl file is one JSON object", path,
                number, e.what());
    }
    KEEL_CHECK(j.is_object() && j.contains(o.text_key) && j[o.text_key].is_string(),
               "{}:{}: the record has no string field '{}'; name the field that holds the text "
               "with --text-key",
               path, number, o.text_key);
    const auto index = static_cast<uint64_t>(c.train.size() + c.val.size());
    const double draw = static_cast<double>(splitmix64(o.seed ^ splitmix64(index)) >> 11) * 0x1p-53;
    c.storage.push_back(j[o.text_key].get<std::string>());
    ++c.documents;
    (draw < o.val_fraction ? c.val : c.train).push_back(c.storage.back());
  }
}

void read_text(const std::string& path, const PrepareOptions& o, Corpus& c) {
  c.storage.push_back(read_text_file(path, "input"));
  ++c.documents;
  const std::string_view text = c.storage.back();
  c.bytes += static_cast<int64_t>(text.size());
  size_t cut = text.size();
  if (o.val_fraction > 0) {
    const auto at = static_cast<size_t>(static_cast<double>(text.size()) * (1.0 - o.val_fraction));
    const size_t newline = text.find('\n', at);
    cut = newline == std::string_view::npos ? text.size() : newline + 1;
  }
  if (cut > 0) c.train.push_back(text.substr(0, cut));
  if (cut < text.size()) c.val.push_back(text.substr(cut));
}

// A word of a shell command line, quoted when the shell would change it.
std::string shell_word(const std::string& w) {
  constexpr std::string_view kPlain =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=.,/:@%";
  if (!w.empty() && w.find_first_not_of(kPlain) == std::string::npos) return w;
  std::string q = "'";
  for (char c : w) c == '\'' ? q.append("'\\''") : q.append(1, c);
  q.append(1, '\'');
  return q;
}

// The keel prepare command that writes the same directory again (what prepare.json records, and
// what an error about a damaged directory tells the user to run).
std::string prepare_command(const PrepareOptions& o) {
  std::ostringstream c;
  c << "keel prepare";
  for (const std::string& in : o.inputs) c << ' ' << shell_word(in);
  c << " --out " << shell_word(o.out_dir);
  if (o.tokenizer.empty())
    c << " --vocab-size " << o.vocab_size << " --pattern " << pattern_name(o.pattern);
  else
    c << " --tokenizer " << shell_word(o.tokenizer);
  char fraction[32];
  const auto end = std::to_chars(fraction, fraction + sizeof fraction, o.val_fraction).ptr;
  c << " --val-fraction " << std::string_view(fraction, end - fraction) << " --text-key "
    << shell_word(o.text_key) << " --shard-tokens " << o.shard_tokens << " --seed " << o.seed;
  return c.str();
}

// Encodes documents as BOS + tokens + EOS into shards <out>/<split>_NNNNN.tokens, and lists
// each one written (read back from the file) in `written`.
struct SplitWriter {
  std::string out_dir, split;
  const Tokenizer& tokenizer;
  int64_t shard_tokens;
  std::vector<ShardEntry>& written;
  std::vector<int32_t> pending{};
  int64_t pending_documents = 0, tokens = 0, shards = 0;
  double write_seconds = 0;

  void flush(bool all) {
    while (!pending.empty() && (all || static_cast<int64_t>(pending.size()) >= shard_tokens)) {
      const size_t n = std::min(pending.size(), static_cast<size_t>(shard_tokens));
      char name[64];
      std::snprintf(name, sizeof name, "%s_%05lld.tokens", split.c_str(),
                    static_cast<long long>(shards));
      const auto t0 = std::chrono::steady_clock::now();
      const std::string path = (fs::path(out_dir) / name).string();
      write_token_shard(path, std::span(pending).first(n),
                        {tokenizer.vocab_size(), pending_documents, tokenizer.fingerprint()});
      written.push_back(describe_shard(TokenShard(path), split));
      write_seconds += seconds_since(t0);
      pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(n));
      pending_documents = 0;
      tokens += static_cast<int64_t>(n);
      ++shards;
    }
  }
};

void encode_split(const std::vector<std::string_view>& docs, ParallelEncoder& encoder,
                  SplitWriter& w) {
  const Tokenizer& t = w.tokenizer;
  std::vector<std::string_view> chunks;
  std::vector<size_t> doc_chunks;  // chunks per document of the batch
  std::vector<std::vector<int32_t>> out;
  for (size_t d = 0; d < docs.size();) {
    chunks.clear();
    doc_chunks.clear();
    size_t bytes = 0;
    for (; d < docs.size() && (bytes < kEncodeBatchBytes || chunks.empty()); ++d) {
      const auto parts = split_into_chunks(docs[d], kChunkBytes);
      chunks.insert(chunks.end(), parts.begin(), parts.end());
      doc_chunks.push_back(parts.size());
      bytes += docs[d].size();
    }
    encoder.encode_batch(chunks, out);
    size_t c = 0;
    for (size_t n : doc_chunks) {
      if (t.bos_id() >= 0) w.pending.push_back(t.bos_id());
      for (size_t k = 0; k < n; ++k, ++c)
        w.pending.insert(w.pending.end(), out[c].begin(), out[c].end());
      if (t.eos_id() >= 0) w.pending.push_back(t.eos_id());
      ++w.pending_documents;
    }
    w.flush(false);
  }
  w.flush(true);
}

Tokenizer train_tokenizer(const PrepareOptions& o, const std::vector<std::string_view>& docs,
                          std::ostream& log) {
  BpeTrainer trainer({.vocab_size = o.vocab_size, .pattern = o.pattern});
  trainer.add_texts(docs);
  return trainer.train([&](int64_t done, int64_t wanted) {
    log << "keel: learned " << done << " of " << wanted << " merges\n" << std::flush;
  });
}

}  // namespace

PrepareReport prepare_data(const PrepareOptions& o, std::ostream& log) {
  KEEL_CHECK(!o.inputs.empty(), "keel prepare needs input files (text or JSONL)");
  KEEL_CHECK(!o.out_dir.empty(), "keel prepare needs --out DIR");
  KEEL_CHECK(o.val_fraction >= 0 && o.val_fraction < 1,
             "--val-fraction is {}; it must be in [0, 1)", o.val_fraction);
  KEEL_CHECK(o.shard_tokens >= 2, "--shard-tokens is {}; it must be at least 2", o.shard_tokens);
  KEEL_CHECK((o.vocab_size > 0) != !o.tokenizer.empty(),
             "keel prepare needs one of --vocab-size N (train a tokenizer) or --tokenizer "
             "tokenizer.json (use one)");
  fs::create_directories(o.out_dir);
  for (const auto& e : fs::directory_iterator(o.out_dir)) {
    const std::string name = e.path().filename().string();
    KEEL_CHECK(name != "tokenizer.json" && e.path().extension() != ".tokens",
               "{} already holds prepared data ({}); remove it or choose another --out", o.out_dir,
               name);
  }
  PrepareReport r;

  auto t0 = std::chrono::steady_clock::now();
  Corpus corpus;
  for (const std::string& path : o.inputs)
    is_jsonl(path) ? read_jsonl(path, o, corpus) : read_text(path, o, corpus);
  KEEL_CHECK(!corpus.train.empty(), "the inputs hold no training text");
  r.input_bytes = corpus.bytes;
  r.documents = corpus.documents;
  r.read_seconds = seconds_since(t0);
  log << "keel: read " << o.inputs.size() << " file(s), " << r.input_bytes / 1e6 << " MB, "
      << r.documents << " document(s) in " << r.read_seconds << " s; " << corpus.val_bytes() / 1e6
      << " MB held out for validation\n";

  t0 = std::chrono::steady_clock::now();
  const bool trained = o.tokenizer.empty();
  const Tokenizer tokenizer =
      trained ? train_tokenizer(o, corpus.train, log) : load_tokenizer(o.tokenizer);
  r.train_seconds = seconds_since(t0);
  r.vocab_size = tokenizer.vocab_size();
  if (trained)
    log << "keel: trained a " << r.vocab_size << "-token byte-level BPE ("
        << pattern_name(o.pattern) << " split) in " << r.train_seconds << " s ("
        << r.input_bytes / 1e6 / r.train_seconds << " MB/s)\n";
  write_tokenizer_json(tokenizer, (fs::path(o.out_dir) / "tokenizer.json").string());

  t0 = std::chrono::steady_clock::now();
  ParallelEncoder encoder(tokenizer);
  std::vector<ShardEntry> written;
  SplitWriter train{o.out_dir, "train", tokenizer, o.shard_tokens, written};
  SplitWriter val{o.out_dir, "val", tokenizer, o.shard_tokens, written};
  encode_split(corpus.train, encoder, train);
  encode_split(corpus.val, encoder, val);
  r.write_seconds = train.write_seconds + val.write_seconds;
  r.encode_seconds = seconds_since(t0) - r.write_seconds;
  r.train_tokens = train.tokens;
  r.val_tokens = val.tokens;
  r.train_shards = train.shards;
  r.val_shards = val.shards;
  log << "keel: encoded " << r.train_tokens << " training and " << r.val_tokens
      << " validation tokens ("
      << static_cast<double>(r.input_bytes) / static_cast<double>(r.train_tokens + r.val_tokens)
      << " bytes per token) in " << r.encode_seconds << " s ("
      << r.input_bytes / 1e6 / r.encode_seconds << " MB/s); wrote " << r.train_shards + r.val_shards
      << " shard(s) to " << o.out_dir << "\n";

  nlohmann::ordered_json j;
  j["inputs"] = o.inputs;
  j["tokenizer"] = trained ? "trained" : o.tokenizer;
  j["pattern"] = pattern_name(tokenizer.pattern());
  j["vocab_size"] = r.vocab_size;
  j["tokenizer_fingerprint"] = tokenizer.fingerprint();
  j["val_fraction"] = o.val_fraction;
  j["seed"] = o.seed;
  j["input_bytes"] = r.input_bytes;
  j["documents"] = r.documents;
  j["train_tokens"] = r.train_tokens;
  j["val_tokens"] = r.val_tokens;
  j["train_shards"] = r.train_shards;
  j["val_shards"] = r.val_shards;
  j["seconds"] = {{"read", r.read_seconds},
                  {"train_tokenizer", r.train_seconds},
                  {"encode", r.encode_seconds},
                  {"write", r.write_seconds}};
  add_shard_list(j, prepare_command(o), written);
  write_text_durably((fs::path(o.out_dir) / "prepare.json").string(), j.dump(1) + "\n");
  return r;
}

}  // namespace keel::runtime
