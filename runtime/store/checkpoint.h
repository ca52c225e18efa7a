// Checkpoints: one directory per saved step under <output_dir>/checkpoints, holding meta.json (the
// step, the data position, the config, who wrote it, every tensor's global shape) and one
// safetensors file per writing rank with that rank's rectangles of the training state. A directory
// is written under a temporary name, fsynced and renamed before `latest` names it, so a crash at
// any point leaves `latest` on a complete checkpoint; any layout reads what any other wrote.
// Checksums make damage after the save an error, never silently wrong state: each tensor's
// CRC-32C is in its file's header, each file's size and header CRC-32C in meta.json, and
// meta.json carries its own; readers check whatever they read.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/dtype.h"
#include "parallel/zero_layout.h"

namespace keel::runtime {

// One tensor of training state as this rank holds it: a rectangle of a global (rows × cols)
// tensor (a vector is n × 1), stored in `elems` elements, row-major with rect.ld per row: floats
// at data, or (8-bit optimizer codes) bytes at `bytes`, stored as U8.
struct StatePiece {
  std::string name;            // "model.norm.weight", "optimizer.exp_avg.model.norm.weight"
  int64_t rows = 0, cols = 0;  // global shape
  parallel::ShardRect rect;
  float* data = nullptr;
  int64_t elems = 0;
  uint8_t* bytes = nullptr;  // instead of data
  DType dtype() const { return bytes ? DType::U8 : DType::F32; }
  void* storage() const { return bytes ? static_cast<void*>(bytes) : static_cast<void*>(data); }
};

// What meta.json records of a state file, so that a reader knows it holds the bytes that were
// written: its size, and the CRC-32C of its header (which holds the CRC-32C of each tensor).
struct StateFileSum {
  uint64_t bytes = 0;
  uint32_t header_crc32c = 0;
  bool operator==(const StateFileSum&) const = default;
};

struct CheckpointInfo {
  int version = 2;               // of the format read; 1: written before checksums (sums empty)
  int64_t step = 0;              // optimizer steps completed
  int64_t samples_consumed = 0;  // global samples of the data order trained on so far
  uint64_t seed = 0;             // of the data order
  // The layout of the run that wrote it (a checkpoint written before TP records dp alone).
  int data_parallel_size = 1;
  int tensor_parallel_size = 1;
  int pipeline_parallel_size = 1;
  int expert_parallel_size = 1;
  int zero_stage = 0;
  std::string optimizer;           // optimizer.type
  std::string config_yaml;         // the writing run's resolved config
  std::vector<std::string> files;  // state files, one per writing rank, relative to the directory
  std::vector<StateFileSum> sums;  // one per file (empty in a version-1 checkpoint)
  std::map<std::string, std::pair<int64_t, int64_t>> shapes;  // every tensor's global shape
};

// The name of an optimizer state tensor of a parameter in checkpoints:
// optimizer_state_name("exp_avg", "model.norm.weight") == "optimizer.exp_avg.model.norm.weight".
std::string optimizer_state_name(std::string_view state, const std::string& param);
// Whether a checkpoint tensor is optimizer state rather than a parameter.
bool is_optimizer_state(const std::string& name);

// The layout that wrote a checkpoint, for messages: "2 data-parallel ranks, ZeRO 3", or with
// tensor parallelism "4 ranks (2 tensor-parallel x 2 data-parallel), ZeRO 1".
std::string written_by(const CheckpointInfo& info);

// The state file of world rank r: "rank_00003.safetensors".
std::string state_file_name(int rank);
// Writes pieces to path (safetensors, durably), each with its rectangle and the CRC-32C of its
// bytes in the file's metadata; returns what meta.json must record of the file.
StateFileSum write_state_file(const std::string& path, const std::vector<StatePiece>& pieces);
// Fills every piece from the state files of the checkpoint in dir, whatever layout wrote them:
// the piece is zeroed (padding stays zero) and each rectangle of the files that overlaps it is
// copied in (one that several files hold, state every rank keeps whole, once). Each state file is
// checked against meta.json (size, header checksum) and each stored tensor a piece overlaps
// against its checksum, read whole once. Errors name the checkpoint and the tensor: one the
// checkpoint lacks, a global shape that differs, values that no file covers (a rank's file
// missing), bytes that do not match their checksum (with how to carry on).
void read_state(const std::string& dir, const CheckpointInfo& info,
                const std::vector<StatePiece>& pieces);

// How 8-bit codes in a state file turn back into values: tensor `absmax` of the same file holds
// one float per block of block_size codes of the stored buffer, and code c is map[c] times its
// block's absmax.
struct Dequantization {
  std::string absmax;
  int64_t block_size = 256;
  const std::array<float, 256>* map = nullptr;
};
// The state files of a checkpoint, opened once (their headers parsed) for any number of reads:
// read() is read_state, read_dequantized() the same for one fp32 piece that the writing run may
// have kept in 8 bits: from a file that stored it as U8 codes each value is dequantized with the
// absmax of the block it was saved in (whatever blocks that rank cut), from one that stored it as
// F32 it is read as it is. This is how 8-bit state moves to other shards or block settings, and
// between fp32 and 8-bit optimizers.
class StateReader {
 public:
  StateReader(std::string dir, const CheckpointInfo& info);
  ~StateReader();
  StateReader(const StateReader&) = delete;
  StateReader& operator=(const StateReader&) = delete;
  void read(const std::vector<StatePiece>& pieces) const;
  void read_dequantized(const StatePiece& piece, const Dequantization& codes) const;

 private:
  struct Files;  // the opened state files (runtime/store/state_file.h)
  std::string dir_;
  const CheckpointInfo& info_;
  std::unique_ptr<Files> files_;
};

// meta.json of a checkpoint directory, written durably with a checksum of its own text (a line
// "checksum" of the CRC-32C of every other byte) / read and checked: a checksum that does not
// match, or a version-2 file without one, is an error; version 1 (no checksums) still reads.
// info.sums must hold one entry per file.
void write_checkpoint_info(const std::string& dir, const CheckpointInfo& info);
CheckpointInfo read_checkpoint_info(const std::string& dir);

// The checkpoints of one run: step_<8 digits> directories and the `latest` file naming one.
class CheckpointStore {
 public:
  explicit CheckpointStore(std::string root) : root_(std::move(root)) {}
  const std::string& root() const { return root_; }
  // The temporary directory a checkpoint of `step` is written into before commit().
  std::string staging(int64_t step) const;
  // Creates staging(step) empty (removing what a crashed save left there).
  void begin(int64_t step) const;
  // staging(step), complete (its files written durably, runtime/store/durable_file.h), becomes
  // step_<step>: the directory is fsynced and renamed, and `latest` is rewritten (temporary file,
  // fsync, rename) to name it. Then all but the newest `keep` checkpoints are removed (keep 0
  // removes none; the latest never is), with any temporary directory a crash left. Returns the
  // checkpoint's directory.
  std::string commit(int64_t step, int64_t keep) const;
  // The directory `latest` names, or "" when there is none.
  std::string latest() const;
  // The step directories present, oldest first.
  std::vector<std::string> list() const;

 private:
  std::string root_;
};

// The checkpoint that training.resume_from_checkpoint names: "auto" is the latest of the run's
// own store (<output_dir>/checkpoints), or "" when it has none; "none" is ""; anything else is a
// path to a checkpoint directory, a store (its latest) or a run's output_dir, and an error when it
// holds none.
std::string find_checkpoint(const std::string& spec, const std::string& output_dir);
// Whether path is a checkpoint directory, a store with `latest`, or a run directory whose store
// has one: what find_checkpoint(path, path) resolves.
bool holds_checkpoint(const std::string& path);

}  // namespace keel::runtime
