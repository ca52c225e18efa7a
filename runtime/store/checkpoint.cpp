#include "runtime/store/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>

#include "kernels/error.h"
#include "kernels/hash.h"
#include "runtime/store/durable_file.h"
#include "runtime/store/safetensors.h"
#include "runtime/store/state_file.h"

namespace keel::runtime {
namespace fs = std::filesystem;

namespace {

constexpr const char* kFormat = "keel-checkpoint";
constexpr const char* kInfoFile = "meta.json";
constexpr const char* kLatest = "latest";
constexpr const char* kOptimizerPrefix = "optimizer.";

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

// Reads the overlap of a stored rectangle into a piece; returns the elements copied. When whole
// rows of the same width overlap, they are contiguous on both sides and read in one call. The
// stored tensor is verified against its checksum first, or, when the read is all of it, after.
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
    const size_t at = src_at(r0), n = static_cast<size_t>((r1 - r0) * a.ld) * e;
    const bool whole = at == from.offset && n == from.bytes();
    if (!whole) file.verify(from);
    file.read(at, dst, n);
    if (whole) file.verify_bytes(from, dst);
  } else {
    file.verify(from);
    for (int64_t r = r0; r < r1; ++r)
      file.read(src_at(r), dst + static_cast<size_t>(r - r0) * row_bytes,
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
  KEEL_CHECK(file.header().contains(q.absmax),
             "{} holds '{}' as 8-bit codes but not their scales '{}'; the file is damaged",
             file.path(), to.name, q.absmax);
  const StoredPiece scale = file.piece(q.absmax);
  KEEL_CHECK(scale.elem_size == sizeof(float), "{}: '{}' must be F32", file.path(), q.absmax);
  const int64_t last = (r1 - 1 - a.row0) * a.ld + (c1 - 1 - a.col0);
  KEEL_CHECK(last / q.block_size < scale.elems,
             "{}: '{}' has {} blocks of {} codes, too few for '{}' ({} codes); was it saved with "
             "another optimizer.block_size?",
             file.path(), q.absmax, scale.elems, q.block_size, to.name, from.elems);
  std::vector<float> absmax(static_cast<size_t>(scale.elems));
  file.read(scale.offset, reinterpret_cast<char*>(absmax.data()), absmax.size() * sizeof(float));
  file.verify_bytes(scale, absmax.data());
  file.verify(from);
  // Whole stored rows r0..r1 are contiguous in the file: one read.
  std::vector<uint8_t> codes(static_cast<size_t>((r1 - r0) * a.ld));
  file.read(from.offset + static_cast<size_t>((r0 - a.row0) * a.ld),
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

// The state files of a checkpoint, each checked against meta.json's record of it (version 2).
std::vector<std::unique_ptr<StateFile>> open_state_files(const std::string& dir,
                                                         const CheckpointInfo& info) {
  KEEL_CHECK(info.sums.empty() || info.sums.size() == info.files.size(),
             "checkpoint {}: {} state files but {} checksums of them", dir, info.files.size(),
             info.sums.size());
  std::vector<std::unique_ptr<StateFile>> files;
  const std::string fix = damaged_fix(dir);
  for (size_t i = 0; i < info.files.size(); ++i) {
    const std::string& name = info.files[i];
    const std::string path = dir + "/" + name;
    KEEL_CHECK(fs::exists(path),
               "checkpoint {} is missing {} (it was written by {} ranks, each with its own file); "
               "the directory is incomplete or was copied only in part",
               dir, name, info.files.size());
    files.push_back(
        std::make_unique<StateFile>(path, info.sums.empty() ? nullptr : &info.sums[i], fix));
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
    if (!file->header().contains(p.name)) continue;
    const StoredPiece stored = file->piece(p.name);
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

std::string written_by(const CheckpointInfo& info) {
  const int dp = info.data_parallel_size, tp = info.tensor_parallel_size;
  const int pp = info.pipeline_parallel_size, ep = info.expert_parallel_size;
  std::string text;
  if (tp == 1 && pp == 1 && ep == 1) {
    text = format("{} data-parallel rank{}", dp, dp > 1 ? "s" : "");
  } else {
    text = format("{} ranks ({} tensor-parallel x {} data-parallel", tp * dp * pp, tp, dp);
    if (pp > 1) text += format(" x {} pipeline", pp);
    if (ep > 1) text += format(", {} expert-parallel", ep);
    text += ")";
  }
  return text + format(", ZeRO {}", info.zero_stage);
}

std::string state_file_name(int rank) {
  char name[40];
  std::snprintf(name, sizeof name, "rank_%05d.safetensors", rank);
  return name;
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

// meta.json's first line after "{" holds the CRC-32C of every other byte of the file, so that
// any change to it, even one JSON would read the same, is found; the line is spliced into the
// JSON text rather than hashed as a field, so no canonical form of the JSON is needed.
constexpr std::string_view kChecksumLine = " \"checksum\": \"crc32c:";

void write_checkpoint_info(const std::string& dir, const CheckpointInfo& info) {
  KEEL_CHECK(info.sums.size() == info.files.size(),
             "write_checkpoint_info: {} state files but {} checksums", info.files.size(),
             info.sums.size());
  nlohmann::json j;
  j["format"] = kFormat;
  j["version"] = kCheckpointVersion;
  j["step"] = info.step;
  j["samples_consumed"] = info.samples_consumed;
  j["seed"] = info.seed;
  j["data_parallel_size"] = info.data_parallel_size;
  j["tensor_parallel_size"] = info.tensor_parallel_size;
  j["pipeline_parallel_size"] = info.pipeline_parallel_size;
  j["expert_parallel_size"] = info.expert_parallel_size;
  j["zero_stage"] = info.zero_stage;
  j["optimizer"] = info.optimizer;
  j["files"] = info.files;
  nlohmann::json sums = nlohmann::json::object();
  for (size_t i = 0; i < info.files.size(); ++i)
    sums[info.files[i]] = {{"bytes", info.sums[i].bytes},
                           {"header_crc32c", crc_hex(info.sums[i].header_crc32c)}};
  j["file_checksums"] = sums;
  nlohmann::json shapes = nlohmann::json::object();
  for (const auto& [name, shape] : info.shapes) shapes[name] = {shape.first, shape.second};
  j["tensors"] = shapes;
  j["config"] = info.config_yaml;
  const std::string body = j.dump(1) + "\n";  // "{\n" then one key a line
  write_text_durably(dir + "/" + kInfoFile, "{\n" + std::string(kChecksumLine) +
                                                crc_hex(crc32c(body)) + "\",\n" + body.substr(2));
}

CheckpointInfo read_checkpoint_info(const std::string& dir) {
  return read_checkpoint_info(dir, damaged_fix(dir));
}

CheckpointInfo read_checkpoint_info(const std::string& dir, const std::string& fix) {
  const std::string path = dir + "/" + kInfoFile;
  std::ifstream f(path, std::ios::binary);
  KEEL_CHECK(f.good(),
             "no checkpoint at {}: {} is missing (a checkpoint directory holds {} and "
             "rank_*.safetensors files)",
             dir, kInfoFile, kInfoFile);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("{} is not valid JSON ({}); the checkpoint is damaged{}", path, e.what(), fix);
  }
  // The checksum, wherever there is one, before anything else of the file is believed.
  const bool has_checksum = text.starts_with("{\n" + std::string(kChecksumLine));
  if (has_checksum) {
    const size_t at = 2 + kChecksumLine.size(), end = text.find('\n', 2);
    uint32_t saved = 0;
    KEEL_CHECK(end == at + 10 && text.compare(at + 8, 2, "\",") == 0 &&
                   parse_crc_hex(text.substr(at, 8), &saved),
               "{}: its checksum line is damaged; the checkpoint is damaged{}", path, fix);
    const uint32_t got = crc32c("{\n" + text.substr(end + 1));
    KEEL_CHECK(got == saved,
               "{} does not match its checksum (CRC-32C {}, saved {}): it was changed or damaged "
               "after it was written{}",
               path, crc_hex(got), crc_hex(saved), fix);
  }
  CheckpointInfo info;
  try {
    KEEL_CHECK(j.value("format", "") == kFormat, "{} is not a keel checkpoint (format '{}')", path,
               j.value("format", ""));
    info.version = j.at("version").get<int>();
    KEEL_CHECK(info.version == 1 || info.version == kCheckpointVersion,
               "{} is a keel checkpoint of version {}; this keel reads versions 1 to {}", path,
               info.version, kCheckpointVersion);
    KEEL_CHECK(has_checksum || info.version == 1,
               "{} has no checksum line, which version {} writes: it was edited or damaged{}", path,
               info.version, fix);
    info.step = j.at("step").get<int64_t>();
    info.samples_consumed = j.at("samples_consumed").get<int64_t>();
    info.seed = j.at("seed").get<uint64_t>();
    info.data_parallel_size = j.at("data_parallel_size").get<int>();
    // Absent from checkpoints written before tensor parallelism: one rank of each.
    info.tensor_parallel_size = j.value("tensor_parallel_size", 1);
    info.pipeline_parallel_size = j.value("pipeline_parallel_size", 1);
    info.expert_parallel_size = j.value("expert_parallel_size", 1);
    info.zero_stage = j.at("zero_stage").get<int>();
    info.optimizer = j.at("optimizer").get<std::string>();
    info.files = j.at("files").get<std::vector<std::string>>();
    for (const auto& [name, shape] : j.at("tensors").items())
      info.shapes[name] = {shape.at(0).get<int64_t>(), shape.at(1).get<int64_t>()};
    info.config_yaml = j.at("config").get<std::string>();
    if (info.version >= 2) {
      const nlohmann::json& sums = j.at("file_checksums");
      for (const std::string& name : info.files) {
        StateFileSum sum;
        sum.bytes = sums.at(name).at("bytes").get<uint64_t>();
        KEEL_CHECK(
            parse_crc_hex(sums.at(name).at("header_crc32c").get<std::string>(), &sum.header_crc32c),
            "{}: the header checksum of {} is not 8 hex digits", path, name);
        info.sums.push_back(sum);
      }
    }
  } catch (const nlohmann::json::exception& e) {
    KEEL_FAIL("{}: a field is missing or of the wrong type ({}); the checkpoint is damaged{}", path,
              e.what(), fix);
  }
  KEEL_CHECK(info.step >= 0 && info.samples_consumed >= 0 && !info.files.empty(),
             "{}: step {}, samples {} and {} files make no checkpoint", path, info.step,
             info.samples_consumed, info.files.size());
  KEEL_CHECK(info.data_parallel_size >= 1 && info.tensor_parallel_size >= 1 &&
                 info.pipeline_parallel_size >= 1 && info.expert_parallel_size >= 1,
             "{}: a layout of dp {}, tp {}, pp {}, ep {} ranks makes no checkpoint; the checkpoint "
             "is damaged{}",
             path, info.data_parallel_size, info.tensor_parallel_size, info.pipeline_parallel_size,
             info.expert_parallel_size, fix);
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
