// Where per-block optimizer state (8-bit absmax: one float per block of a rank's own buffer) sits
// in a checkpoint. Such state belongs to the buffer it was cut from, not to a rectangle of the
// parameter, so the checkpoint stacks the buffers' blocks into one (total × 1) tensor per state.
// Each distinct buffer, named by its DP shard and the corner of the parameter's rectangle it
// holds (TP's slice, then ZeRO's), gets its own rows: tensor-parallel ranks that hold a tensor
// alike share a key and so one copy, and buffers of different sizes (TP slices of a vocabulary
// the TP size does not divide) never collide. Keys sort by shard first, so a run without TP
// stacks its shards rank after rank, as checkpoints did before TP.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace keel::parallel {
class Communicator;
}

namespace keel::runtime {

// One rank's per-block state tensor: its checkpoint name, the buffer's key and its block count.
struct BlockRecord {
  std::string name;            // "optimizer.exp_avg_absmax.model.norm.weight"
  int64_t shard = 0;           // the rank's index in the group ZeRO shards over (0 without ZeRO)
  int64_t row0 = 0, col0 = 0;  // the corner of the rectangle of the parameter it holds
  int64_t blocks = 0;
};

class BlockIndex {
 public:
  // Every rank's records; the same buffer may appear several times (ranks holding it alike),
  // always with the same block count, else a keel::Error (internal error).
  explicit BlockIndex(const std::vector<BlockRecord>& all);
  // The stacked tensor's rows (blocks of every distinct buffer) for a name.
  int64_t total(const std::string& name) const;
  // The first row of the buffer of r in the stacked tensor.
  int64_t first(const BlockRecord& r) const;
  // Every name with its total, for meta.json.
  const std::map<std::string, int64_t>& totals() const { return totals_; }

 private:
  using Key = std::tuple<std::string, int64_t, int64_t, int64_t>;  // name, shard, row0, col0
  std::map<Key, int64_t> first_;
  std::map<std::string, int64_t> totals_;
};

// Every rank's records (collective over `world`, each rank giving its own).
std::vector<BlockRecord> gather_block_records(parallel::Communicator& world,
                                              const std::vector<BlockRecord>& mine);

}  // namespace keel::runtime
