// Scaffolding of the checkpoint tests: a few parameters sharded as ZeRO shards them, checkpoints
// of them written by any number of ranks (or as keel wrote them before checksums, version 1), and
// ways to damage a file by one bit or one byte.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "parallel/zero_layout.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime::checkpoint_testing {

// Parameters of both split directions, a vector, one smaller than the rank count.
inline const std::vector<parallel::ZeroParamSpec> kSpecs = {
    {"tall", 11, 4}, {"wide", 3, 10}, {"vector", 7, 1}, {"tiny", 2, 1}};

inline std::vector<float> full_values(const parallel::ZeroParamSpec& p, float base) {
  std::vector<float> v(static_cast<size_t>(p.rows * p.cols));
  std::iota(v.begin(), v.end(), base);
  return v;
}

// Distinct values for every tensor of kSpecs.
inline std::vector<std::vector<float>> all_full_values() {
  std::vector<std::vector<float>> full;
  for (size_t i = 0; i < kSpecs.size(); ++i)
    full.push_back(full_values(kSpecs[i], 1000.0f * static_cast<float>(i + 1)));
  return full;
}

// Every rank's shards of kSpecs under `ranks` ranks, as ZeRO packs them, and their pieces.
struct Sharded {
  parallel::ZeroLayout layout;
  std::vector<std::vector<float>> regions;  // one per rank
  std::vector<StatePiece> pieces(int k) {
    std::vector<StatePiece> out;
    for (size_t i = 0; i < kSpecs.size(); ++i)
      out.push_back({kSpecs[i].name, kSpecs[i].rows, kSpecs[i].cols, layout.rect(i, k),
                     regions[static_cast<size_t>(k)].data() + layout.shard(i).offset,
                     layout.shard(i).elems});
    return out;
  }
};

inline Sharded shard(int ranks, const std::vector<std::vector<float>>& full) {
  Sharded s{parallel::ZeroLayout(kSpecs, ranks), {}};
  std::vector<const float*> in;
  for (const auto& f : full) in.push_back(f.data());
  for (int k = 0; k < ranks; ++k) {
    s.regions.emplace_back(static_cast<size_t>(s.layout.region_elems()), -1.0f);
    s.layout.pack(s.regions.back().data(), k, in);
  }
  return s;
}

inline CheckpointInfo info_for(int ranks) {
  CheckpointInfo info;
  info.step = 7;
  info.samples_consumed = 56;
  info.seed = 42;
  info.data_parallel_size = ranks;
  info.zero_stage = 2;
  info.optimizer = "adamw";
  info.config_yaml = "model: {}\n";
  for (int k = 0; k < ranks; ++k) info.files.push_back(state_file_name(k));
  for (const auto& p : kSpecs) info.shapes[p.name] = {p.rows, p.cols};
  return info;
}

inline void write_checkpoint(const std::string& dir, int ranks, Sharded& s) {
  CheckpointInfo info = info_for(ranks);
  for (int k = 0; k < ranks; ++k)
    info.sums.push_back(write_state_file(dir + "/" + state_file_name(k), s.pieces(k)));
  write_checkpoint_info(dir, info);
}

inline std::string file_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// Flips one bit of byte `at` of the file.
inline void flip_bit(const std::string& path, size_t at, int bit) {
  std::string bytes = file_text(path);
  ASSERT_LT(at, bytes.size()) << path;
  bytes[at] = static_cast<char>(bytes[at] ^ (1 << bit));
  write_file(path, bytes);
}

// Replaces the one occurrence of `from` in the file by `to`.
inline void replace_once(const std::string& path, const std::string& from, const std::string& to) {
  std::string bytes = file_text(path);
  const size_t at = bytes.find(from);
  ASSERT_NE(at, std::string::npos) << "no '" << from << "' in " << path;
  ASSERT_EQ(bytes.find(from, at + 1), std::string::npos) << "'" << from << "' twice in " << path;
  write_file(path, bytes.replace(at, from.size(), to));
}

// The checkpoint as keel wrote it before checksums (format version 1): state files whose metadata
// holds "keel_state": "1" and each tensor's rectangle, meta.json without "checksum" and
// "file_checksums".
inline void write_version_1_checkpoint(const std::string& dir, int ranks, Sharded& s) {
  write_checkpoint(dir, ranks, s);
  for (int k = 0; k < ranks; ++k) {
    const std::string path = dir + "/" + state_file_name(k);
    std::map<std::string, std::string> metadata = {{"keel_state", "1"}};
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const StatePiece& p : s.pieces(k)) {
      const parallel::ShardRect& r = p.rect;
      metadata[p.name] = std::to_string(r.row0) + " " + std::to_string(r.col0) + " " +
                         std::to_string(r.rows) + " " + std::to_string(r.cols);
      tensors.emplace_back(p.name,
                           Tensor(p.storage(), p.dtype(), {p.elems / p.rect.ld, p.rect.ld}));
    }
    write_safetensors(path, tensors, metadata);
  }
  nlohmann::json j = nlohmann::json::parse(file_text(dir + "/meta.json"));
  j.erase("checksum");
  j.erase("file_checksums");
  j["version"] = 1;
  write_file(dir + "/meta.json", j.dump(1) + "\n");
}

}  // namespace keel::runtime::checkpoint_testing
