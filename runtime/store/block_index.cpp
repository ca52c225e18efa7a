#include "runtime/store/block_index.h"

#include <algorithm>
#include <sstream>

#include "kernels/error.h"
#include "parallel/communicator.h"

namespace keel::runtime {

BlockIndex::BlockIndex(const std::vector<BlockRecord>& all) {
  std::map<Key, int64_t> blocks;
  for (const BlockRecord& r : all) {
    const Key key{r.name, r.shard, r.row0, r.col0};
    const auto [at, added] = blocks.emplace(key, r.blocks);
    KEEL_CHECK(added || at->second == r.blocks,
               "'{}': two ranks hold the buffer of shard {} at ({}, {}) with {} and {} blocks "
               "(internal error)",
               r.name, r.shard, r.row0, r.col0, at->second, r.blocks);
  }
  // The map's order is the stacking order: by name, then shard, then corner.
  for (const auto& [key, n] : blocks) {
    int64_t& total = totals_[std::get<0>(key)];
    first_[key] = total;
    total += n;
  }
}

int64_t BlockIndex::total(const std::string& name) const {
  const auto it = totals_.find(name);
  KEEL_CHECK(it != totals_.end(), "no rank holds per-block state '{}' (internal error)", name);
  return it->second;
}

int64_t BlockIndex::first(const BlockRecord& r) const {
  const auto it = first_.find({r.name, r.shard, r.row0, r.col0});
  KEEL_CHECK(it != first_.end(),
             "per-block state '{}' of shard {} at ({}, {}) is not indexed "
             "(internal error)",
             r.name, r.shard, r.row0, r.col0);
  return it->second;
}

std::vector<BlockRecord> gather_block_records(parallel::Communicator& world,
                                              const std::vector<BlockRecord>& mine) {
  if (world.size() == 1) return mine;
  // As text, one record a line (names hold no spaces).
  std::ostringstream os;
  for (const BlockRecord& r : mine)
    os << r.name << ' ' << r.shard << ' ' << r.row0 << ' ' << r.col0 << ' ' << r.blocks << '\n';
  std::vector<BlockRecord> out;
  for (const std::string& text : parallel::all_gather_text(world, os.str())) {
    std::istringstream is(text);
    BlockRecord r;
    while (is >> r.name >> r.shard >> r.row0 >> r.col0 >> r.blocks) out.push_back(r);
  }
  return out;
}

}  // namespace keel::runtime
