#include "runtime/store/checkpoint_verify.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>

#include "kernels/error.h"
#include "kernels/memory_plan.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/state_file.h"

namespace keel::runtime {
namespace fs = std::filesystem;

namespace {

bool same_rect(const parallel::ShardRect& a, const parallel::ShardRect& b) {
  return a.row0 == b.row0 && a.col0 == b.col0 && a.rows == b.rows && a.cols == b.cols;
}

}  // namespace

CheckpointCheck verify_checkpoint(const std::string& dir) {
  CheckpointCheck c{dir, {}, {}};
  auto line = [&](const std::string& file, const std::string& what) {
    std::string text = "  " + file;
    text.append(std::max<size_t>(26, text.size() + 2) - text.size(), ' ');
    c.lines.push_back(text + what);
  };
  CheckpointInfo info;
  try {
    info = read_checkpoint_info(dir, "");
  } catch (const Error& e) {
    c.problems.push_back(e.what());
    line("meta.json", "DAMAGED");
    return c;
  }
  const bool checksummed = !info.sums.empty();
  line("meta.json", format("ok: step {}, {} state file{}, {} tensors{}; written by {}", info.step,
                           info.files.size(), info.files.size() == 1 ? "" : "s", info.shapes.size(),
                           checksummed ? ", checksum matches"
                                       : " (version 1: written before checksums, so only the "
                                         "files' structure can be checked)",
                           written_by(info)));

  std::map<std::string, std::vector<parallel::ShardRect>> rects;  // each tensor's, distinct
  bool every_file_read = true;
  for (size_t i = 0; i < info.files.size(); ++i) {
    const std::string& name = info.files[i];
    const std::string path = dir + "/" + name;
    if (!fs::exists(path)) {
      c.problems.push_back(
          format("{} is missing (meta.json lists {} state files)", path, info.files.size()));
      line(name, "MISSING");
      every_file_read = false;
      continue;
    }
    std::unique_ptr<StateFile> file;
    try {
      file = std::make_unique<StateFile>(path, checksummed ? &info.sums[i] : nullptr, "");
    } catch (const Error& e) {
      c.problems.push_back(e.what());
      line(name, "DAMAGED: its size or header");
      every_file_read = false;
      continue;
    }
    const std::vector<std::string> names = file->header().names();
    size_t bad = 0, bytes = 0;
    for (const std::string& t : names) {
      StoredPiece p;
      try {
        p = file->piece(t);
        file->verify(p);
      } catch (const Error& e) {
        ++bad;
        c.problems.push_back(e.what());
        continue;
      }
      bytes += p.bytes();
      const auto shape = info.shapes.find(t);
      if (shape == info.shapes.end()) {
        c.problems.push_back(format("{}: tensor '{}' is not one meta.json lists", path, t));
        continue;
      }
      const auto [rows, cols] = shape->second;
      const parallel::ShardRect& r = p.rect;
      if (r.row0 + r.rows > rows || r.col0 + r.cols > cols) {
        c.problems.push_back(format(
            "{}: tensor '{}' holds rows [{}, {}) and columns [{}, {}), outside its global shape "
            "{}x{} in meta.json",
            path, t, r.row0, r.row0 + r.rows, r.col0, r.col0 + r.cols, rows, cols));
        continue;
      }
      std::vector<parallel::ShardRect>& held = rects[t];
      if (std::none_of(held.begin(), held.end(),
                       [&](const parallel::ShardRect& x) { return same_rect(x, r); }))
        held.push_back(r);
    }
    if (bad > 0) {
      every_file_read = false;
      line(name, format("DAMAGED: {} of its {} tensors", bad, names.size()));
    } else {
      line(name, format("ok: {} tensors, {}{}", names.size(), format_mib(bytes),
                        file->checksummed() ? ", checksums match" : ""));
    }
  }
  // With every file whole, each listed tensor must be covered exactly: the distinct rectangles
  // of its shards (a rectangle several ranks keep whole counts once) tile it.
  if (every_file_read) {
    for (const auto& [t, shape] : info.shapes) {
      int64_t covered = 0;
      for (const parallel::ShardRect& r : rects[t]) covered += r.rows * r.cols;
      if (covered != shape.first * shape.second)
        c.problems.push_back(format("checkpoint {}: its files hold {} of the {} values of '{}'",
                                    dir, covered, shape.first * shape.second, t));
    }
  }
  return c;
}

}  // namespace keel::runtime
