// The shards a prepared directory must hold, as keel prepare lists them in prepare.json: each
// shard's file, split, token count, size and CRC-32C, and the command that made them. Opening the
// directory checks its shards against the list, so a missing, extra, cut or changed shard stops
// the run with its name instead of training on part of the data.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/data/token_shard.h"

namespace keel::runtime {

struct ShardEntry {
  std::string file;   // the name inside the directory, e.g. train_00003.tokens
  std::string split;  // train or val
  int64_t tokens = 0;
  int64_t bytes = 0;
  uint32_t crc32c = 0;  // shard_checksum of the whole file, header included
};

// The checksum prepare.json records for a shard: CRC-32C of its bytes (kernels/hash.h, the
// SSE4.2 instruction where the build has it).
uint32_t shard_checksum(std::span<const uint8_t> bytes);

// The entry of an opened shard (its checksum read from the mapping).
ShardEntry describe_shard(const TokenShard& shard, const std::string& split);

// What a directory's prepare.json says about its shards.
struct ShardManifest {
  std::string dir;
  bool listed = false;  // false: no prepare.json, or one written before keel listed shards
  bool found = false;   // prepare.json exists
  std::string command;  // the keel prepare command that wrote the directory
  std::vector<ShardEntry> shards;
  std::unordered_map<std::string, size_t> index;  // file name -> its entry in shards

  // The entry of a file name, or null.
  const ShardEntry* find(const std::string& file) const;
  // What to do when the directory is not what keel prepare wrote.
  std::string fix() const;
  // Why the shards of an unlisted directory are not checked, and what to do ("" when listed).
  std::string unchecked_note() const;
};

ShardManifest read_shard_manifest(const std::string& dir);

// Adds "command" and "shards" to a prepare.json under construction.
void add_shard_list(nlohmann::ordered_json& prepare_json, const std::string& command,
                    const std::vector<ShardEntry>& shards);

// The shards of split present in the directory (paths in name order) are exactly those listed:
// the first listed one missing or the first present one not listed is an error naming it.
void check_shard_names(const ShardManifest& m, const std::string& split,
                       const std::vector<std::string>& paths);

// An opened shard matches its entry: token count, size and checksum (given, computed once).
void check_shard(const ShardManifest& m, const ShardEntry& want, const TokenShard& shard,
                 uint32_t checksum);

}  // namespace keel::runtime
