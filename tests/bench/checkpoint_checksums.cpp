// keel_checkpoint_checksums: what checksums cost a checkpoint of a config's model. One rank's
// state (the fp32 weights and both AdamW moments of every parameter, as a 1-rank run saves it) is
// written as keel writes it (the CRC-32C of every tensor, spread over the threads, and meta.json's
// sums) and as keel wrote it before checksums (format version 1, the same bytes otherwise), in
// turns; then read back by read_state, verifying every tensor / verifying nothing (the version-1
// copy), from disk (each file's pages dropped first with posix_fadvise) and from the page cache.
// Also CRC-32C's own speed. bench_checkpoint.sh runs it.
//
// Usage: keel_checkpoint_checksums CONFIG.yaml DIR [--repeats R]
#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/hash.h"
#include "runtime/config/config.h"
#include "runtime/model/llama.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/durable_file.h"
#include "runtime/store/safetensors.h"

namespace keel::bench {
namespace {

namespace fs = std::filesystem;
using runtime::StatePiece;

double seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double best(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Drops the file's pages from the page cache, so the next read comes from the disk.
void drop_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// meta.json as format version 1 wrote it (without its own checksum and the files').
std::string version_1_meta(const std::string& dir, runtime::CheckpointInfo info) {
  info.sums = {runtime::StateFileSum{}};
  runtime::write_checkpoint_info(dir, info);
  std::ifstream in(dir + "/meta.json");
  nlohmann::json j = nlohmann::json::parse(
      std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  j.erase("checksum");
  j.erase("file_checksums");
  j["version"] = 1;
  return j.dump(1) + "\n";
}

// The checkpoint in dir as format version 1 wrote it: the state file without the tensors'
// checksums (the same bytes of state otherwise), then meta.json.
void write_version_1(const std::string& dir, const std::vector<StatePiece>& pieces,
                     const std::string& meta) {
  std::map<std::string, std::string> metadata = {{"keel_state", "1"}};
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const StatePiece& p : pieces) {
    metadata[p.name] = "0 0 " + std::to_string(p.rows) + " " + std::to_string(p.cols);
    tensors.emplace_back(p.name, Tensor(p.storage(), p.dtype(), {p.rows, p.cols}));
  }
  runtime::write_safetensors(dir + "/" + runtime::state_file_name(0), tensors, metadata);
  runtime::write_text_durably(dir + "/meta.json", meta);
}

int run(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: keel_checkpoint_checksums CONFIG.yaml DIR [--repeats R]\n");
    return 2;
  }
  const std::string config_path = argv[1], dir = argv[2];
  int repeats = 3;
  for (int i = 3; i + 1 < argc; i += 2)
    if (std::string(argv[i]) == "--repeats") repeats = std::max(1, std::atoi(argv[i + 1]));
  const runtime::Config config = runtime::load_config(config_path);
  const runtime::LlamaModel layout(config.model, 1, 1, false,
                                   runtime::ModelHolds{false, false, false});

  // Weights and two moments of every parameter, whole, filled with bytes no disk compresses.
  std::vector<std::vector<float>> buffers;
  std::vector<StatePiece> pieces;
  runtime::CheckpointInfo info;
  info.optimizer = "adamw";
  info.config_yaml = runtime::config_to_yaml(config);
  info.files = {runtime::state_file_name(0)};
  int64_t params = 0;
  uint64_t x = 12345;
  for (const runtime::Parameter& p : layout.parameters()) {
    const int64_t rows = p.global_shape[0], cols = p.global_shape.numel() / rows;
    params += rows * cols;
    for (const std::string& name : {p.name, runtime::optimizer_state_name("exp_avg", p.name),
                                    runtime::optimizer_state_name("exp_avg_sq", p.name)}) {
      buffers.emplace_back(static_cast<size_t>(rows * cols));
      for (float& v : buffers.back()) v = static_cast<float>((x = splitmix64(x)) >> 40) * 1e-7f;
      pieces.push_back(
          {name, rows, cols, {0, 0, rows, cols, cols}, buffers.back().data(), rows * cols});
      info.shapes[name] = {rows, cols};
    }
  }
  double bytes = 0;
  for (const auto& b : buffers) bytes += static_cast<double>(b.size() * sizeof(float));

  // CRC-32C alone, on one thread, over all of it.
  uint32_t crc = 0;
  const double crc_s = seconds([&] {
    for (const auto& b : buffers) crc ^= crc32c(b.data(), b.size() * sizeof(float));
  });
  const double portable_s = seconds(
      [&] { crc ^= crc32c_portable(buffers[0].data(), buffers[0].size() * sizeof(float)); });
  const double portable_bytes = static_cast<double>(buffers[0].size() * sizeof(float));
  // As write_state_file spreads them over the threads (best of 3).
  double threads_s = 1e30;
  for (int r = 0; r < 3; ++r)
    threads_s = std::min(threads_s, seconds([&] {
                           std::vector<uint32_t> crcs(buffers.size());
#pragma omp parallel for schedule(dynamic, 1)
                           for (size_t i = 0; i < buffers.size(); ++i)
                             crcs[i] = crc32c(buffers[i].data(), buffers[i].size() * sizeof(float));
                           for (uint32_t c : crcs) crc ^= c;
                         }));

  const std::string with = dir + "/with", without = dir + "/without";
  fs::create_directories(with);
  fs::create_directories(without);
  const std::string meta_1 = version_1_meta(without, info);
  std::vector<double> save_with, save_without, cold_with, cold_without, warm_with, warm_without;
  // In turns, each going first every other time, so that neither gains from the other's place.
  auto save_both = [&](bool with_first) {
    for (int k = 0; k < 2; ++k) {
      if ((k == 0) == with_first)
        save_with.push_back(seconds([&] {
          runtime::CheckpointInfo i = info;
          i.sums = {runtime::write_state_file(with + "/" + runtime::state_file_name(0), pieces)};
          runtime::write_checkpoint_info(with, i);
        }));
      else
        save_without.push_back(seconds([&] { write_version_1(without, pieces, meta_1); }));
    }
  };
  for (int r = 0; r < repeats; ++r) save_both(r % 2 == 1);
  for (int r = 0; r < repeats; ++r) {
    const std::tuple<std::string, std::vector<double>*, std::vector<double>*> loads[] = {
        {without, &cold_without, &warm_without}, {with, &cold_with, &warm_with}};
    for (int k = 0; k < 2; ++k) {
      const auto& [d, cold, warm] = loads[(k + r) % 2];
      const runtime::CheckpointInfo read_info = runtime::read_checkpoint_info(d);
      drop_pages(d + "/" + runtime::state_file_name(0));
      cold->push_back(seconds([&] { runtime::read_state(d, read_info, pieces); }));
      warm->push_back(seconds([&] { runtime::read_state(d, read_info, pieces); }));
    }
  }
  if (runtime::read_checkpoint_info(without).version != 1 ||
      runtime::read_checkpoint_info(with).version != 2) {
    std::fprintf(stderr,
                 "keel_checkpoint_checksums: the two checkpoints are not versions 1 and 2\n");
    return 1;
  }

  std::printf(
      "model: %s, %.1f M parameters; one rank's state (weights + 2 AdamW moments) %.1f MB; "
      "%d threads; best of %d\n",
      config_path.c_str(), static_cast<double>(params) / 1e6, bytes / 1e6, omp_get_max_threads(),
      repeats);
  std::printf("crc32c: %.2f GB/s on one thread (portable tables: %.2f GB/s) [%08x]\n",
              bytes / crc_s / 1e9, portable_bytes / portable_s / 1e9, crc);
  std::printf("%-28s %16s %16s %12s\n", "", "no checksums s", "checksums s", "difference");
  auto row = [](const char* what, const std::vector<double>& a, const std::vector<double>& b) {
    const double x0 = best(a), x1 = best(b);
    std::printf("%-28s %16.3f %16.3f %+11.1f%%\n", what, x0, x1, 100.0 * (x1 - x0) / x0);
  };
  row("save (write, fsync)", save_without, save_with);
  row("load from disk", cold_without, cold_with);
  row("load from page cache", warm_without, warm_with);
  std::printf(
      "the checksums' own time: save %.3f s (every tensor over %d threads) = %.1f%% of the "
      "save; load %.3f s (one thread) = %.1f%% of the load from disk\n",
      threads_s, omp_get_max_threads(), 100.0 * threads_s / best(save_with), crc_s,
      100.0 * crc_s / best(cold_with));
  return 0;
}

}  // namespace
}  // namespace keel::bench

int main(int argc, char** argv) {
  try {
    return keel::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "keel_checkpoint_checksums: %s\n", e.what());
    return 1;
  }
}
