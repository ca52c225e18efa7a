// A checkpoint's state file (rank_<r>.safetensors) as keel reads it: each tensor a rectangle of a
// global tensor, the rectangle and the CRC-32C of the tensor's bytes in the file's metadata; the
// file's size and the CRC-32C of its header in meta.json. Used by checkpoint.cpp (resumes read
// pieces) and checkpoint_verify.cpp (keel verify checks whole files).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "parallel/zero_layout.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/safetensors.h"

namespace keel::runtime {

// The checkpoint format this keel writes. 2 added checksums (version 1, without them, still
// reads, unverified).
inline constexpr int kCheckpointVersion = 2;

// A CRC-32C as meta.json and state files spell it: 8 lowercase hex digits.
std::string crc_hex(uint32_t crc);
// Parses crc_hex's text; false for anything else.
bool parse_crc_hex(const std::string& text, uint32_t* crc);

// How to carry on without a damaged checkpoint, ending each error about one: the newest earlier
// checkpoint of its run when there is one, and `keel verify --all` to find the good ones.
std::string damaged_fix(const std::string& checkpoint_dir);

// read_checkpoint_info, with the errors about a damaged meta.json ending with `fix` (keel verify
// names the fix once for all the problems it finds).
CheckpointInfo read_checkpoint_info(const std::string& dir, const std::string& fix);

// One stored tensor of a state file: its rectangle, where its stored elements start in the file,
// their size (F32 or U8) and count.
struct StoredPiece {
  std::string name;
  parallel::ShardRect rect;
  size_t offset = 0;
  size_t elem_size = 0;
  int64_t elems = 0;  // stored, rect.ld per row
  size_t bytes() const { return static_cast<size_t>(elems) * elem_size; }
};

// A state file opened for reading: its header parsed, its data read with pread (only the bytes a
// rank needs, straight into its buffers, without faulting in a mapping's pages). With `sum`
// (meta.json's record of it) the file's size and header are checked against it first, and each
// tensor's bytes can be checked against the CRC-32C in the header; without (a version-1
// checkpoint) nothing is. Every error names the file and ends with `fix`.
class StateFile {
 public:
  StateFile(const std::string& path, const StateFileSum* sum, std::string fix);
  ~StateFile();
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;

  const SafeTensorsReader& header() const { return header_; }
  const std::string& path() const { return header_.path(); }
  bool checksummed() const { return checksummed_; }
  // Tensor `name` of the file, its rectangle checked against its stored size.
  StoredPiece piece(const std::string& name) const;
  // n bytes at offset of the file into dst.
  void read(size_t offset, char* dst, size_t n) const;
  // Reads all of p and checks it against its CRC-32C, once per tensor for the life of this
  // object; nothing without checksums.
  void verify(const StoredPiece& p) const;
  // The same for p's bytes that the caller has read whole into `bytes`.
  void verify_bytes(const StoredPiece& p, const void* bytes) const;

 private:
  void check(const StoredPiece& p, uint32_t crc) const;

  SafeTensorsReader header_;
  int fd_;
  std::string fix_;
  bool checksummed_ = false;
  std::map<std::string, uint32_t> crcs_;  // each tensor's, from the header
  mutable std::set<std::string> verified_;
};

}  // namespace keel::runtime
