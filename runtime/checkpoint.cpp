#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/error.h"
#include "runtime/durable_file.h"
#include "runtime/safetensors.h"

namespace keel::runtime {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "keel-checkpoint";
constexpr int kVersion = 1;
constexpr const char* kInfoFile = "meta.json";
constexpr const char* kLatest = "latest";
constexpr const char* kOptimizerPrefix = "optimizer.";
constexpr const char* kStateFormatKey = "keel_state";  // marks a state file in its metadata

std::string errno_text() { return std::strerror(errno); }

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "step_%08lld", static_cast<long long>(step));
  return name;
}

// The step of a "step_<digits>" name, or -1 for any other name.
int64_t step_of(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step_") != 0) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

std::string rect_text(const parallel::ShardRect& r) {
  return std::to_string(r.row0) + " " + std::to_string(r.col0) + " " + std::to_string(r.rows) +
         " " + std::to_string(r.cols);
}

// A state file: its parsed header (the data is read with pread, so that only the bytes a rank
// needs are read, straight into its buffers, without faulting in the mapping's pages).
struct StateFile {
  explicit StateFile(const std::string& path) : header(path), fd(::open(path.c_str(), O_RDONLY)) {
    KEEL_CHECK(fd >= 0, "cannot open {}: {}", path, errno_text());
  }
  ~StateFile() { ::close(fd); }
  StateFile(const StateFile&) = delete;
  StateFile& operator=(const StateFile&) = delete;
  SafeTensorsReader header;
  int fd;
};

// One state file's tensor: its rectangle, where its stored elements start in the file, and their
// size (F32 or U8).
struct StoredPiece {
  parallel::ShardRect rect;
  size_t offset;
  size_t elem_size;
  int64_t elems;  // stored, rect.ld per row
};

StoredPiece stored_piece(const SafeTensorsReader& file, const std::string& name) {
  const Tensor t = file.get(name);
  const auto meta = file.metadata().find(name);
  KEEL_CHECK(meta != file.metadata().end(), "{}: tensor '{}' has no rectangle in the metadata",
             file.path(), name);
  KEEL_CHECK((t.dtype() == DType::F32 || t.dtype() == DType::U8) && t.shape().rank() == 2,
             "{}: tensor '{}' must be a 2-D F32 or U8 array, got {} {}", file.path(), name,
             dtype_name(t.dtype()), t.shape().str());
  parallel::ShardRect r;
  std::istringstream in(meta->second);
  in >> r.row0 >> r.col0 >> r.rows >> r.cols;
  r.ld = t.shape()[1];
  KEEL_CHECK(!in.fail() && r.row0 >= 0 && r.col0 >= 0 && r.rows >= 0 && r.cols >= 0 &&
                 r.rows <= t.shape()[0] && r.cols <= r.ld,
             "{}: the rectangle '{}' of tensor '{}' does not fit its stored {}x{} floats",
             file.path(), meta->second, name, t.shape()[0], r.ld);
  return {r, file.file_offset(name), dtype_size(t.dtype()), t.numel()};
}

void read_exactly(const StateFile& file, size_t offset, char* dst, size_t n) {
  char* p = dst;
  while (n > 0) {
    const ssize_t got = ::pread(file.fd, p, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    KEEL_CHECK(got > 0, "cannot read {}: {}", file.header.path(),
               got < 0 ? errno_text() : std::string("the file ends early"));
    p += got;
    offset += static_cast<size_t>(got);
    n -= static_cast<size_t>(got);
  }
}

// Reads the overlap of a stored rectangle into a piece; returns the elements copied. When whole
// rows of the same width overlap, they are contiguous on both sides and read in one call.
int64_t copy_overlap(const StateFile& file, const StoredPiece& from, const StatePiece& to) {
  const size_t e = from.elem_size;
  const parallel::ShardRect& a = from.rect;
  const parallel::ShardRect& b = to.rect;
  const int64_t r0 = std::max(a.row0, b.row0), r1 = std::min(a.row0 + a.rows, b.row0 + b.rows);
  const int64_t c0 = std::max(a.col0, b.col0), c1 = std::min(a.col0 + a.cols, b.col0 + b.cols);
  if (r0 >= r1 || c0 >= c1) return 0;
  auto src_at = [&](int64_t r) {
    return from.offset + static_cast<size_t>((r - a.row0) * a.ld + (c0 - a.col0)) * e;
  };
  char* dst = static_cast<char*>(to.storage()) +
              static_cast<size_t>((r0 - b.row0) * b.ld + (c0 - b.col0)) * e;
  const size_t row_bytes = static_cast<size_t>(b.ld) * e;
  if (c1 - c0 == a.ld && a.ld == b.ld) {
    read_exactly(file, src_at(r0), dst, static_cast<size_t>((r1 - r0) * a.ld) * e);
  } else {
    for (int64_t r = r0; r < r1; ++r)
      read_exactly(file, src_at(r), dst + static_cast<size_t>(r - r0) * row_bytes,
                   static_cast<size_t>(c1 - c0) * e);
  }
  return (r1 - r0) * (c1 - c0);
}

// As copy_overlap, for 8-bit codes into a float piece: each code dequantized with the absmax of
// the block of the stored buffer it sits in.
int64_t dequantize_overlap(const StateFile& file, const StoredPiece& from, const StatePiece& to,
                           const Dequantization& q) {
  const parallel::ShardRect& a = from.rect;
  const parallel::ShardRect& b = to.rect;
  const int64_t r0 = std::max(a.row0, b.row0), r1 = std::min(a.row0 + a.rows, b.row0 + b.rows);
  const int64_t c0 = std::max(a.col0, b.col0), c1 = std::min(a.col0 + a.cols, b.col0 + b.cols);
  if (r0 >= r1 || c0 >= c1) return 0;
  KEEL_CHECK(file.header.contains(q.absmax),
             "{} holds '{}' as 8-bit codes but not their scales '{}'; the file is damaged",
             file.header.path(), to.name, q.absmax);
  const StoredPiece scale = stored_piece(file.header, q.absmax);
  KEEL_CHECK(scale.elem_size == sizeof(float), "{}: '{}' must be F32", file.header.path(),
             q.absmax);
  const int64_t last = (r1 - 1 - a.row0) * a.ld + (c1 - 1 - a.col0);
  KEEL_CHECK(last / q.block_size < scale.elems,
             "{}: '{}' has {} blocks of {} codes, too few for '{}' ({} codes); was it saved with "
             "another optimizer.block_size?",
             file.header.path(), q.absmax, scale.elems, q.block_size, to.name, from.elems);
  std::vector<float> absmax(static_cast<size_t>(scale.elems));
  read_exactly(file, scale.offset, reinterpret_cast<char*>(absmax.data()),
               absmax.size() * sizeof(float));
  // Whole stored rows r0..r1 are contiguous in the file: one read.
  std::vector<uint8_t> codes(static_cast<size_t>((r1 - r0) * a.ld));
  read_exactly(file, from.offset + static_cast<size_t>((r0 - a.row0) * a.ld),
               reinterpret_cast<char*>(codes.data()), codes.size());
  const std::array<float, 256>& map = *q.map;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* code = codes.data() + (r - r0) * a.ld;
    const int64_t row_at = (r - a.row0) * a.ld;  // the stored row's index in the saved buffer
    float* out = to.data + (r - b.row0) * b.ld;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t at = c - a.col0;
      out[c - b.col0] = map[code[at]] * absmax[static_cast<size_t>((row_at + at) / q.block_size)];
    }
  }
  return (r1 - r0) * (c1 - c0);
}

std::vector<std::unique_ptr<StateFile>> open_state_files(const std::string& dir,
                                                         const CheckpointInfo& info) {
  std::vector<std::unique_ptr<StateFile>> files;
  for (const std::string& name : info.files) {
    const std::string path = dir + "/" + name;
    KEEL_CHECK(fs::exists(path),
               "checkpoint {} is missing {} (it was written by {} ranks, each with its own file); "
               "the directory is incomplete or was copied only in part",
               dir, name, info.files.size());
    files.push_back(std::make_unique<StateFile>(path));
    KEEL_CHECK(files.back()->header.metadata().count(kStateFormatKey),
               "{} is not a keel state file (no '{}' in its metadata)", path, kStateFormatKey);
  }
  return files;
}

// Fills piece p from the files: zeroed (padding stays zero), then copy(file, stored) for each
// file's rectangle of it, a rectangle several files hold (state every rank keeps whole, as
// Adafactor's means of a matrix's unsplit side) read and counted once; checks that the
// checkpoint has the tensor, of p's global shape, and that the files cover p's rectangle.
template <class Copy>
void read_piece(const std::vector<std::unique_ptr<StateFile>>& files, const std::string& dir,
                const CheckpointInfo& info, const StatePiece& p, Copy&& copy) {
  const auto shape = info.shapes.find(p.name);
  KEEL_CHECK(shape != info.shapes.end(),
             "checkpoint {} has no '{}': it was written by another model or optimizer", dir,
             p.name);
  KEEL_CHECK(shape->second == std::make_pair(p.rows, p.cols),
             "'{}' is {}x{} in checkpoint {} but {}x{} in this model: the checkpoint is of "
             "another model shape",
             p.name, shape->second.first, shape->second.second, dir, p.rows, p.cols);
  std::memset(p.storage(), 0, static_cast<size_t>(p.elems) * dtype_size(p.dtype()));
  int64_t covered = 0;
  std::vector<parallel::ShardRect> read;
  for (const auto& file : files) {
    if (!file->header.contains(p.name)) continue;
    const StoredPiece stored = stored_piece(file->header, p.name);
    const parallel::ShardRect& r = stored.rect;
    if (std::any_of(read.begin(), read.end(), [&](const parallel::ShardRect& x) {
          return x.row0 == r.row0 && x.col0 == r.col0 && x.rows == r.rows && x.cols == r.cols;
        }))
      continue;
    read.push_back(r);
    covered += copy(*file, stored);
  }
  KEEL_CHECK(covered == p.rect.rows * p.rect.cols,
             "checkpoint {}: its files hold {} of the {} values of '{}' this rank needs; a "
             "state file is missing or damaged",
             dir, covered, p.rect.rows * p.rect.cols, p.name);
}

}  // namespace

std::string optimizer_state_name(std::string_view state, const std::string& param) {
  return std::string(kOptimizerPrefix) + std::string(state) + "." + param;
}

bool is_optimizer_state(const std::string& name) { return name.starts_with(kOptimizerPrefix); }

std::string state_file_name(int rank) {
  char name[40];
  std::snprintf(name, sizeof name, "rank_%05d.safetensors", rank);
  return name;
}

void write_state_file(const std::string& path, const std::vector<StatePiece>& pieces) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::map<std::string, std::string> metadata = {{kStateFormatKey, std::to_string(kVersion)}};
  for (const StatePiece& p : pieces) {
    KEEL_CHECK(p.rect.ld > 0 && p.elems % p.rect.ld == 0,
               "state '{}': {} floats do not make rows of {}", p.name, p.elems, p.rect.ld);
    tensors.emplace_back(p.name, Tensor(p.storage(), p.dtype(), {p.elems / p.rect.ld, p.rect.ld}));
    metadata[p.name] = rect_text(p.rect);
  }
  write_safetensors(path, tensors, metadata);
}

struct StateReader::Files {
  std::vector<std::unique_ptr<StateFile>> open;
};

StateReader::StateReader(std::string dir, const CheckpointInfo& info)
    : dir_(std::move(dir)), info_(info), files_(std::make_unique<Files>()) {
  files_->open = open_state_files(dir_, info_);
}

StateReader::~StateReader() = default;

void StateReader::read(const std::vector<StatePiece>& pieces) const {
  for (const StatePiece& p : pieces) {
    read_piece(files_->open, dir_, info_, p, [&](const StateFile& file, const StoredPiece& stored) {
      KEEL_CHECK(stored.elem_size == dtype_size(p.dtype()),
                 "checkpoint {}: '{}' is stored as {}-byte elements, and this run keeps it in {}: "
                 "it was written by another optimizer",
                 dir_, p.name, stored.elem_size, dtype_size(p.dtype()));
      return copy_overlap(file, stored, p);
    });
  }
}

void StateReader::read_dequantized(const StatePiece& piece, const Dequantization& codes) const {
  KEEL_CHECK(piece.data && codes.map && codes.block_size > 0,
             "read_dequantized: '{}' needs a float piece, a map and a block size", piece.name);
  read_piece(files_->open, dir_, info_, piece,
             [&](const StateFile& file, const StoredPiece& stored) {
               return stored.elem_size == 1 ? dequantize_overlap(file, stored, piece, codes)
                                            : copy_overlap(file, stored, piece);
             });
}

void read_state(const std::string& dir, const CheckpointInfo& info,
                const std::vector<StatePiece>& pieces) {
  StateReader(dir, info).read(pieces);
}

void write_checkpoint_info(const std::string& dir, const CheckpointInfo& info) {
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kVersion;
  j["step"] = info.step;
  j["samples_consumed"] = info.samples_consumed;
  j["seed"] = info.seed;
  j["data_parallel_size"] = info.data_parallel_size;
  j["zero_stage"] = info.zero_stage;
  j["optimizer"] = info.optimizer;
  j["files"] = info.files;
  nlohmann::json shapes = nlohmann::json::object();
  for (const auto& [name, shape] : info.shapes) shapes[name] = {shape.first, shape.second};
  j["tensors"] = shapes;
  j["config"] = info.config_yaml;
  write_text_durably(dir + "/" + kInfoFile, j.dump(1) + "\n");
}

CheckpointInfo read_checkpoint_info(const std::string& dir) {
  const std::string path = dir + "/" + kInfoFile;
  std::ifstream f(path, std::ios::binary);
  KEEL_CHECK(f.good(),
             "no checkpoint at {}: {} is missing (a checkpoint directory holds {} and "
             "rank_*.safetensors files)",
             dir, kInfoFile, kInfoFile);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("{} is not valid JSON ({}); the checkpoint is damaged", path, e.what());
  }
  CheckpointInfo info;
  try {
    KEEL_CHECK(j.value("format", "") == kFormat, "{} is not a keel checkpoint (format '{}')", path,
               j.value("format", ""));
    const int version = j.at("version").get<int>();
    KEEL_CHECK(version == kVersion,
               "{} is a keel checkpoint of version {}; this keel reads version {}", path, version,
               kVersion);
    info.step = j.at("step").get<int64_t>();
    info.samples_consumed = j.at("samples_consumed").get<int64_t>();
    info.seed = j.at("seed").get<uint64_t>();
    info.data_parallel_size = j.at("data_parallel_size").get<int>();
    info.zero_stage = j.at("zero_stage").get<int>();
    info.optimizer = j.at("optimizer").get<std::string>();
    info.files = j.at("files").get<std::vector<std::string>>();
    for (const auto& [name, shape] : j.at("tensors").items())
      info.shapes[name] = {shape.at(0).get<int64_t>(), shape.at(1).get<int64_t>()};
    info.config_yaml = j.at("config").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("{}: a field is missing or of the wrong type ({}); the checkpoint is damaged", path,
              e.what());
  }
  KEEL_CHECK(info.step >= 0 && info.samples_consumed >= 0 && !info.files.empty(),
             "{}: step {}, samples {} and {} files make no checkpoint", path, info.step,
             info.samples_consumed, info.files.size());
  return info;
}

// --- the store ----------------------------------------------------------------------------------

std::string CheckpointStore::staging(int64_t step) const {
  return root_ + "/" + step_name(step) + ".tmp";
}

void CheckpointStore::begin(int64_t step) const {
  const std::string dir = staging(step);
  std::error_code ec;
  fs::remove_all(dir, ec);
  KEEL_CHECK(!ec, "cannot clear '{}': {}", dir, ec.message());
  fs::create_directories(dir, ec);
  KEEL_CHECK(!ec, "cannot create checkpoint directory '{}': {}", dir, ec.message());
}

std::string CheckpointStore::commit(int64_t step, int64_t keep) const {
  const std::string tmp = staging(step), name = step_name(step), final_dir = root_ + "/" + name;
  sync_path(tmp, true);  // its files were fsynced by their writers
  std::error_code ec;
  // A checkpoint of the same step from an earlier run is replaced.
  if (fs::exists(final_dir)) {
    fs::remove_all(final_dir, ec);
    KEEL_CHECK(!ec, "cannot replace '{}': {}", final_dir, ec.message());
  }
  KEEL_CHECK(::rename(tmp.c_str(), final_dir.c_str()) == 0, "cannot rename '{}' to '{}': {}", tmp,
             final_dir, errno_text());
  sync_path(root_, true);
  write_text_durably(root_ + "/" + kLatest, name + "\n");
  sync_path(root_, true);

  // Older checkpoints beyond the limit, and temporary directories of saves that crashed.
  std::vector<std::string> steps = list();
  for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < steps.size(); ++i)
    if (steps[i] != name) fs::remove_all(root_ + "/" + steps[i], ec);
  for (const fs::directory_entry& e : fs::directory_iterator(root_)) {
    const std::string entry = e.path().filename().string();
    if (entry.size() > 4 && entry.ends_with(".tmp") && e.is_directory() &&
        step_of(entry.substr(0, entry.size() - 4)) >= 0)
      fs::remove_all(e.path(), ec);
  }
  return final_dir;
}

std::string CheckpointStore::latest() const {
  const std::string path = root_ + "/" + kLatest;
  std::ifstream f(path);
  if (!f.good()) return "";
  std::string name;
  std::getline(f, name);
  KEEL_CHECK(step_of(name) >= 0, "{} names '{}', which is not a checkpoint (step_<number>)", path,
             name);
  const std::string dir = root_ + "/" + name;
  KEEL_CHECK(fs::exists(dir + "/" + kInfoFile),
             "{} names {}, which holds no {}: the checkpoint was removed or damaged; point "
             "training.resume_from_checkpoint at another one, or at 'none' to start afresh",
             path, name, kInfoFile);
  return dir;
}

std::vector<std::string> CheckpointStore::list() const {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(root_, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && step_of(name) >= 0) found.emplace_back(step_of(name), name);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

bool holds_checkpoint(const std::string& path) {
  return fs::exists(path + "/" + kInfoFile) || fs::exists(path + "/" + kLatest) ||
         fs::exists(path + "/checkpoints/" + kLatest);
}

std::string find_checkpoint(const std::string& spec, const std::string& output_dir) {
  if (spec == "none") return "";
  if (spec == "auto") return CheckpointStore(output_dir + "/checkpoints").latest();
  if (fs::exists(spec + "/" + kInfoFile)) return spec;
  if (fs::exists(spec + "/" + kLatest)) return CheckpointStore(spec).latest();
  if (fs::exists(spec + "/checkpoints/" + kLatest))
    return CheckpointStore(spec + "/checkpoints").latest();
  KEEL_FAIL(
      "training.resume_from_checkpoint: '{}' holds no checkpoint (expected a directory with {}, "
      "or a checkpoints directory or run directory with a '{}' file)",
      spec, kInfoFile, kLatest);
}

}  // namespace keel::runtime
