#include "runtime/store/state_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>
#include <vector>

#include "kernels/error.h"
#include "kernels/hash.h"

namespace keel::runtime {
namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFormatKey = "keel_state";  // marks a state file in its metadata
constexpr const char* kChecksumsKey = "keel_crc32c";   // {tensor: crc_hex} as JSON text
constexpr size_t kLengthBytes = 8;                     // safetensors' header length

std::string errno_text() { return std::strerror(errno); }

std::string rect_text(const parallel::ShardRect& r) {
  return std::to_string(r.row0) + " " + std::to_string(r.col0) + " " + std::to_string(r.rows) +
         " " + std::to_string(r.cols);
}

// Opens path as safetensors, after checking its size and header against sum (when given), so
// that a damaged header is reported as such rather than as whatever it now fails to parse as.
SafeTensorsReader open_checked(const std::string& path, const StateFileSum* sum,
                               const std::string& fix) {
  if (sum != nullptr) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(path, ec);
    KEEL_CHECK(!ec, "cannot read {}: {}", path, ec.message());
    KEEL_CHECK(size == sum->bytes,
               "{} is {} bytes but meta.json records {}: the file was truncated or replaced "
               "after it was saved{}",
               path, size, sum->bytes, fix);
    std::ifstream in(path, std::ios::binary);
    std::string header(kLengthBytes, '\0');
    in.read(header.data(), kLengthBytes);
    uint64_t length = 0;
    for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(header[i]);
    if (in && length <= size - kLengthBytes) {
      header.resize(kLengthBytes + length);
      in.read(header.data() + kLengthBytes, static_cast<std::streamsize>(length));
    }
    const uint32_t crc = crc32c(header);
    KEEL_CHECK(in && crc == sum->header_crc32c,
               "{}: its header (the names, shapes, rectangles and checksums of its tensors) does "
               "not match the checksum meta.json records (CRC-32C {}, saved {}): the file was "
               "damaged after it was saved{}",
               path, crc_hex(crc), crc_hex(sum->header_crc32c), fix);
  }
  try {
    return SafeTensorsReader(path);
  } catch (const Error& e) {
    KEEL_FAIL("{} (the state file is damaged){}", e.what(), fix);
  }
}

}  // namespace

std::string crc_hex(uint32_t crc) {
  char text[16];
  std::snprintf(text, sizeof text, "%08x", crc);
  return text;
}

bool parse_crc_hex(const std::string& text, uint32_t* crc) {
  if (text.size() != 8) return false;
  uint32_t v = 0;
  for (const char c : text) {
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return false;
    v = (v << 4) | static_cast<uint32_t>(digit);
  }
  *crc = v;
  return true;
}

std::string damaged_fix(const std::string& checkpoint_dir) {
  fs::path dir(checkpoint_dir);
  if (dir.filename().empty()) dir = dir.parent_path();
  const std::string name = dir.filename().string();
  const std::string root = dir.has_parent_path() ? dir.parent_path().string() : ".";
  std::string earlier;
  if (name.starts_with("step_"))
    for (const std::string& s : CheckpointStore(root).list())
      if (s < name) earlier = s;
  if (earlier.empty())
    return "; " + root + " holds no earlier checkpoint: start afresh (--resume none)";
  return "; use an earlier checkpoint instead (to resume training: --resume " + root + "/" +
         earlier + ", the newest before it; 'keel verify --all " + root + "' checks every one)";
}

// ---- writing ---------------------------------------------------------------------------------

StateFileSum write_state_file(const std::string& path, const std::vector<StatePiece>& pieces) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata = {
      {kStateFormatKey, std::to_string(kCheckpointVersion)}};
  for (const StatePiece& p : pieces) {
    KEEL_CHECK(p.rect.ld > 0 && p.elems % p.rect.ld == 0,
               "state '{}': {} floats do not make rows of {}", p.name, p.elems, p.rect.ld);
    tensors.emplace_back(p.name, Tensor(p.storage(), p.dtype(), {p.elems / p.rect.ld, p.rect.ld}));
    metadata[p.name] = rect_text(p.rect);
  }
  // Each tensor's CRC-32C, spread over the threads: a rank's state is a few large tensors and
  // many small ones.
  std::vector<uint32_t> crcs(pieces.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < pieces.size(); ++i)
    crcs[i] = crc32c(tensors[i].second.data(), tensors[i].second.nbytes());
  nlohmann::json sums = nlohmann::json::object();
  for (size_t i = 0; i < pieces.size(); ++i) sums[pieces[i].name] = crc_hex(crcs[i]);
  metadata[kChecksumsKey] = sums.dump();

  const std::string header = write_safetensors(path, tensors, metadata);
  StateFileSum sum{header.size(), crc32c(header)};
  for (const auto& t : tensors) sum.bytes += t.second.nbytes();
  return sum;
}

// ---- reading ---------------------------------------------------------------------------------

StateFile::StateFile(const std::string& path, const StateFileSum* sum, std::string fix)
    : header_(open_checked(path, sum, fix)),
      fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)),
      fix_(std::move(fix)) {
  KEEL_CHECK(fd_ >= 0, "cannot open {}: {}", path, errno_text());
  try {
    const std::map<std::string, std::string>& meta = header_.metadata();
    KEEL_CHECK(meta.count(kStateFormatKey), "{} is not a keel state file (no '{}' in its metadata)",
               path, kStateFormatKey);
    const auto sums = meta.find(kChecksumsKey);
    KEEL_CHECK(sums != meta.end() || sum == nullptr,
               "{} holds no checksums of its tensors ('{}' in its metadata), though meta.json "
               "records checksums: the file is not the one that was saved{}",
               path, kChecksumsKey, fix_);
    if (sums == meta.end()) return;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(sums->second);
    } catch (const nlohmann::json::exception& e) {
      KEEL_FAIL("{}: the checksums of its tensors are not JSON ({}): the file is damaged{}", path,
                e.what(), fix_);
    }
    KEEL_CHECK(j.is_object(), "{}: the checksums of its tensors are not a JSON object{}", path,
               fix_);
    for (const auto& [name, value] : j.items()) {
      uint32_t crc = 0;
      KEEL_CHECK(value.is_string() && parse_crc_hex(value.get<std::string>(), &crc),
                 "{}: the checksum of tensor '{}' is {}, not 8 hex digits: the file is damaged{}",
                 path, name, value.dump(), fix_);
      crcs_[name] = crc;
    }
    for (const std::string& name : header_.names())
      KEEL_CHECK(crcs_.count(name), "{}: tensor '{}' has no checksum: the file is damaged{}", path,
                 name, fix_);
    checksummed_ = true;
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

StateFile::~StateFile() { ::close(fd_); }

StoredPiece StateFile::piece(const std::string& name) const {
  const Tensor t = header_.get(name);
  const auto meta = header_.metadata().find(name);
  KEEL_CHECK(meta != header_.metadata().end(), "{}: tensor '{}' has no rectangle in the metadata",
             path(), name);
  KEEL_CHECK((t.dtype() == DType::F32 || t.dtype() == DType::U8) && t.shape().rank() == 2,
             "{}: tensor '{}' must be a 2-D F32 or U8 array, got {} {}", path(), name,
             dtype_name(t.dtype()), t.shape().str());
  parallel::ShardRect r;
  std::istringstream in(meta->second);
  in >> r.row0 >> r.col0 >> r.rows >> r.cols;
  r.ld = t.shape()[1];
  KEEL_CHECK(!in.fail() && r.row0 >= 0 && r.col0 >= 0 && r.rows >= 0 && r.cols >= 0 &&
                 r.rows <= t.shape()[0] && r.cols <= r.ld,
             "{}: the rectangle '{}' of tensor '{}' does not fit its stored {}x{} floats", path(),
             meta->second, name, t.shape()[0], r.ld);
  return {name, r, header_.file_offset(name), dtype_size(t.dtype()), t.numel()};
}

void StateFile::read(size_t offset, char* dst, size_t n) const {
  while (n > 0) {
    const ssize_t got = ::pread(fd_, dst, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    KEEL_CHECK(got > 0, "cannot read {}: {}", path(),
               got < 0 ? errno_text() : std::string("the file ends early"));
    dst += got;
    offset += static_cast<size_t>(got);
    n -= static_cast<size_t>(got);
  }
}

void StateFile::verify(const StoredPiece& p) const {
  if (!checksummed_ || verified_.count(p.name)) return;
  constexpr size_t kChunk = size_t{8} << 20;  // bounded memory, and few calls
  std::vector<char> buffer(std::min(p.bytes(), kChunk));
  uint32_t crc = 0;
  for (size_t done = 0; done < p.bytes();) {
    const size_t n = std::min(kChunk, p.bytes() - done);
    read(p.offset + done, buffer.data(), n);
    crc = crc32c(buffer.data(), n, crc);
    done += n;
  }
  check(p, crc);
}

void StateFile::verify_bytes(const StoredPiece& p, const void* bytes) const {
  if (!checksummed_ || verified_.count(p.name)) return;
  check(p, crc32c(bytes, p.bytes()));
}

void StateFile::check(const StoredPiece& p, uint32_t crc) const {
  const uint32_t saved = crcs_.at(p.name);
  KEEL_CHECK(crc == saved,
             "{}: tensor '{}' does not match its checksum (CRC-32C {}, saved {}): its bytes were "
             "damaged after the checkpoint was saved{}",
             path(), p.name, crc_hex(crc), crc_hex(saved), fix_);
  verified_.insert(p.name);
}

}  // namespace keel::runtime
