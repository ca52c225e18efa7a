#include "launcher/verify.h"

#include <filesystem>
#include <iostream>

#include "kernels/error.h"
#include "launcher/command_line.h"
#include "runtime/store/checkpoint.h"
#include "runtime/store/checkpoint_verify.h"
#include "runtime/store/state_file.h"

namespace keel::launcher {

namespace fs = std::filesystem;

namespace {

constexpr const char* kVerifyUsage =
    R"(usage: keel verify CKPT [--all]

Checks a checkpoint without training: meta.json against its own checksum, each state file's size
and header against meta.json, every tensor's bytes against the CRC-32C saved with it, and that
every tensor meta.json lists is held whole by the files. Prints one line a file, then every
problem; exits 0 when the checkpoint is good, 1 when it is not.

CKPT: a checkpoint directory (step_N), a run's checkpoints/ or the run directory (their latest).

options:
  --all        check every checkpoint of the run instead, and name the newest good one
  -h, --help   show this help
)";

std::string plural(size_t n, const std::string& what) {
  return std::to_string(n) + " " + what + (n == 1 ? "" : "s");
}

// Checks one checkpoint, printing its lines and problems; whether it is good.
bool check(const std::string& dir) {
  std::cout << "keel: verifying " << dir << "\n";
  const runtime::CheckpointCheck c = runtime::verify_checkpoint(dir);
  for (const std::string& line : c.lines) std::cout << line << "\n";
  for (const std::string& problem : c.problems) std::cout << "  problem: " << problem << "\n";
  std::cout << "keel: " << dir << (c.good() ? " is good" : " is damaged") << "\n" << std::flush;
  return c.good();
}

// The step directories of the run that CKPT names (its store, or the store a step dir is in).
std::vector<std::string> every_checkpoint(const std::string& spec, std::string* root) {
  if (fs::exists(spec + "/meta.json"))
    *root = fs::path(spec).lexically_normal().parent_path().string();
  else if (fs::is_directory(spec + "/checkpoints"))
    *root = spec + "/checkpoints";
  else
    *root = spec;
  std::vector<std::string> dirs;
  for (const std::string& name : runtime::CheckpointStore(*root).list())
    dirs.push_back(*root + "/" + name);
  KEEL_CHECK(!dirs.empty(),
             "keel verify --all: {} holds no checkpoints (step_* directories); give a run "
             "directory, its checkpoints/ or one of its checkpoints",
             *root);
  return dirs;
}

}  // namespace

int run_verify(const std::vector<std::string>& args) {
  const CommandLine cl(args, "verify", {}, {"--all"});
  if (cl.help()) {
    std::cout << kVerifyUsage;
    return 0;
  }
  KEEL_CHECK(cl.positional().size() == 1, "usage: keel verify CKPT [--all] (keel verify --help)");
  std::string spec = cl.positional()[0];
  while (spec.size() > 1 && spec.back() == '/') spec.pop_back();  // "step_N/" names step_N
  if (!cl.has("--all")) {
    KEEL_CHECK(runtime::holds_checkpoint(spec),
               "keel verify: {} holds no checkpoint (give a step_N directory with meta.json, a "
               "run's checkpoints/ with `latest`, or the run directory)",
               spec);
    const std::string dir = runtime::find_checkpoint(spec, spec);
    if (check(dir)) return 0;
    std::cerr << "keel: error: checkpoint " << dir << " is damaged" << runtime::damaged_fix(dir)
              << "\n";
    return 1;
  }
  std::string root;
  const std::vector<std::string> dirs = every_checkpoint(spec, &root);
  std::string newest_good;
  size_t damaged = 0;
  for (const std::string& dir : dirs) {
    if (check(dir))
      newest_good = dir;
    else
      ++damaged;
  }
  std::cout << "keel: " << plural(dirs.size(), "checkpoint") << " in " << root << ": "
            << dirs.size() - damaged << " good, " << damaged << " damaged\n";
  if (damaged == 0) return 0;
  std::cerr << "keel: error: " << plural(damaged, "checkpoint") << " of " << root
            << (damaged == 1 ? " is" : " are") << " damaged; "
            << (newest_good.empty() ? "none is good: start afresh (--resume none)"
                                    : "the newest good one is " + newest_good +
                                          " (to resume training: --resume " + newest_good + ")")
            << "\n";
  return 1;
}

}  // namespace keel::launcher
