#include "runtime/data/shard_manifest.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "kernels/error.h"
#include "kernels/hash.h"

namespace keel::runtime {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManifestName = "prepare.json";

std::string hex32(uint32_t v) {
  char s[16];
  std::snprintf(s, sizeof s, "0x%08x", v);
  return s;
}

std::string file_name(const std::string& path) { return fs::path(path).filename().string(); }

}  // namespace

uint32_t shard_checksum(std::span<const uint8_t> bytes) {
  return crc32c(bytes.data(), bytes.size());
}

ShardEntry describe_shard(const TokenShard& shard, const std::string& split) {
  const std::span<const uint8_t> bytes = shard.file_bytes();
  return {file_name(shard.path()), split, shard.size(), static_cast<int64_t>(bytes.size()),
          shard_checksum(bytes)};
}

const ShardEntry* ShardManifest::find(const std::string& file) const {
  const auto it = index.find(file);
  return it == index.end() ? nullptr : &shards[it->second];
}

std::string ShardManifest::fix() const {
  return "copy " + dir + " again whole from where it was prepared, or remove it and run again: " +
         (command.empty() ? "keel prepare, with the arguments its prepare.json records" : command);
}

std::string ShardManifest::unchecked_note() const {
  if (listed) return "";
  if (!found)
    return dir +
           " has no prepare.json (keel prepare did not finish there, or another tool wrote the "
           "shards), so a missing or changed shard would go unnoticed; prepare the data with "
           "keel prepare to have its shards checked";
  return dir + "/prepare.json lists no shards (an older keel prepare wrote it), so a missing or " +
         "changed shard would go unnoticed; run keel prepare again into a new directory to have " +
         "its shards checked";
}

ShardManifest read_shard_manifest(const std::string& dir) {
  ShardManifest m;
  m.dir = dir;
  const fs::path path = fs::path(dir) / kManifestName;
  std::ifstream f(path);
  if (!f.good()) return m;
  m.found = true;
  const std::string text{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (!j.contains("shards")) return m;
    m.command = j.at("command").get<std::string>();
    for (const nlohmann::json& s : j.at("shards")) {
      m.shards.push_back({s.at("file").get<std::string>(), s.at("split").get<std::string>(),
                          s.at("tokens").get<int64_t>(), s.at("bytes").get<int64_t>(),
                          s.at("crc32c").get<uint32_t>()});
    }
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("{} is damaged ({}), so the shards beside it cannot be checked; {}", path.string(),
              e.what(), m.fix());
  }
  for (size_t i = 0; i < m.shards.size(); ++i) m.index.emplace(m.shards[i].file, i);
  m.listed = true;
  return m;
}

void add_shard_list(nlohmann::ordered_json& j, const std::string& command,
                    const std::vector<ShardEntry>& shards) {
  j["command"] = command;
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const ShardEntry& s : shards) {
    list.push_back({{"file", s.file},
                    {"split", s.split},
                    {"tokens", s.tokens},
                    {"bytes", s.bytes},
                    {"crc32c", s.crc32c}});
  }
  j["shards"] = std::move(list);
}

void check_shard_names(const ShardManifest& m, const std::string& split,
                       const std::vector<std::string>& paths) {
  std::unordered_set<std::string> present;
  for (const std::string& p : paths) present.insert(file_name(p));
  for (const ShardEntry& e : m.shards) {
    KEEL_CHECK(e.split != split || present.contains(e.file),
               "prepared data {} lacks {} ({} tokens), which its prepare.json lists: the "
               "directory is incomplete and a run would train on part of the data; {}",
               m.dir, e.file, e.tokens, m.fix());
  }
  // An extra shard is refused rather than used or skipped: it was not checked, and either way
  // the run would train on other data than the user believes.
  for (const std::string& p : paths) {
    KEEL_CHECK(m.find(file_name(p)) != nullptr,
               "prepared data {} holds {}, which its prepare.json does not list: keel prepare "
               "did not write it there, so the data is not what was prepared; remove it, or "
               "prepare all the text into one directory with one keel prepare",
               m.dir, file_name(p));
  }
}

void check_shard(const ShardManifest& m, const ShardEntry& want, const TokenShard& shard,
                 uint32_t checksum) {
  const auto bytes = static_cast<int64_t>(shard.file_bytes().size());
  KEEL_CHECK(shard.size() == want.tokens && bytes == want.bytes,
             "token shard {} holds {} tokens ({} bytes), but {}/prepare.json lists {} tokens ({} "
             "bytes): it is not the file keel prepare wrote; {}",
             shard.path(), shard.size(), bytes, m.dir, want.tokens, want.bytes, m.fix());
  KEEL_CHECK(checksum == want.crc32c,
             "token shard {} has CRC-32C {}, but {}/prepare.json lists {}: its bytes changed "
             "after keel prepare wrote it (a damaged disk or copy, or an edit); {}",
             shard.path(), hex32(checksum), m.dir, hex32(want.crc32c), m.fix());
}

}  // namespace keel::runtime
