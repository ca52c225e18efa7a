// keel_data_open: what opening prepared data costs at the start of every run, split into the scan
// every shard always had (map it, check each token against the vocabulary) and the CRC-32C pass
// that checks it against prepare.json, on one thread and on all. docs/DATA.md quotes it.
//
// Usage: keel_data_open DIR              time opening DIR (a directory keel prepare wrote)
//        keel_data_open DIR --make GB    first write GB of random byte-token shards (64 MiB each),
//                                        a tokenizer.json and a prepare.json to DIR
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/hash.h"
#include "runtime/data/data.h"
#include "runtime/data/shard_manifest.h"
#include "runtime/data/token_shard.h"
#include "runtime/data/tokenizer_json.h"

namespace keel::bench {
namespace {

namespace fs = std::filesystem;
using runtime::TokenShard;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void make(const std::string& dir, double gb) {
  constexpr int64_t kShardTokens = int64_t{1} << 25;  // keel prepare's default: 64 MiB of uint16
  const auto shards = static_cast<int64_t>(gb * 1e9 / (2.0 * kShardTokens) + 0.5);
  const runtime::Tokenizer bytes = runtime::Tokenizer::bytes();
  fs::create_directories(dir);
  runtime::write_tokenizer_json(bytes, dir + "/tokenizer.json");
  std::vector<int32_t> tokens(static_cast<size_t>(kShardTokens));
  std::vector<runtime::ShardEntry> list;
  for (int64_t s = 0; s < shards; ++s) {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = static_cast<int32_t>(splitmix64(static_cast<uint64_t>(s) << 32 | i) & 0xff);
    char name[64];
    std::snprintf(name, sizeof name, "train_%05lld.tokens", static_cast<long long>(s));
    const std::string path = dir + "/" + name;
    runtime::write_token_shard(path, tokens, {256, 1, bytes.fingerprint()});
    list.push_back(runtime::describe_shard(TokenShard(path), "train"));
  }
  nlohmann::ordered_json j;
  runtime::add_shard_list(j, "keel_data_open " + dir + " --make " + std::to_string(gb), list);
  std::ofstream(dir + "/prepare.json") << j.dump(1) << "\n";
}

int run(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: keel_data_open DIR [--make GB]\n");
    return 2;
  }
  const std::string dir = argv[1];
  if (argc == 4 && std::string(argv[2]) == "--make") make(dir, std::atof(argv[3]));
  std::vector<std::string> paths;
  int64_t bytes = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().starts_with("train_")) {
      paths.push_back(e.path().string());
      bytes += static_cast<int64_t>(e.file_size());
    }
  const double gb = static_cast<double>(bytes) / 1e9;
  std::printf("%s: %zu training shards, %.3f GB, %d threads\n", dir.c_str(), paths.size(), gb,
              omp_get_max_threads());

  auto t0 = std::chrono::steady_clock::now();
  std::vector<TokenShard> shards;
  for (const std::string& p : paths) shards.emplace_back(p);
  const double scan = seconds_since(t0);
  uint32_t sink = 0;
  t0 = std::chrono::steady_clock::now();
  for (const TokenShard& s : shards) sink ^= runtime::shard_checksum(s.file_bytes());
  const double crc_one = seconds_since(t0);
  const uint32_t one_thread = sink;
  sink = 0;
  t0 = std::chrono::steady_clock::now();
#pragma omp parallel for schedule(dynamic, 1) reduction(^ : sink)
  for (size_t i = 0; i < shards.size(); ++i)
    sink ^= runtime::shard_checksum(shards[i].file_bytes());
  const double crc_all = seconds_since(t0);
  shards.clear();
  const runtime::ResolvedTokenizer tokenizer = runtime::resolve_tokenizer("auto", dir);
  t0 = std::chrono::steady_clock::now();
  const runtime::TokenData data(dir, tokenizer.tokenizer, 256);
  const double open = seconds_since(t0);

  std::printf("map + token scan (before the shard list) %.3f s  (%.2f s/GB)\n", scan, scan / gb);
  std::printf("CRC-32C, 1 thread                        %.3f s  (%.2f GB/s)\n", crc_one,
              gb / crc_one);
  std::printf("CRC-32C, %d threads                       %.3f s  (%.2f GB/s)\n",
              omp_get_max_threads(), crc_all, gb / crc_all);
  std::printf("TokenData (scan + list + CRC), all       %.3f s  (%.2f s/GB; %s)\n", open, open / gb,
              data.note().empty() ? "checked" : "unchecked");
  // Comparing the passes' results uses them, so neither is optimized away.
  std::printf("checksums' XOR %08x, %s on all threads\n", one_thread,
              one_thread == sink ? "the same" : "DIFFERENT");
  return one_thread == sink ? 0 : 1;
}

}  // namespace
}  // namespace keel::bench

int main(int argc, char** argv) { return keel::bench::run(argc, argv); }
