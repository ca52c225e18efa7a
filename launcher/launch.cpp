#include "launcher/launch.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "kernels/error.h"

namespace keel::launcher {

const char* const kLaunchUsage =
    R"(usage: keel launch -n N CONFIG.yaml [--resume CKPT] [--set section.key=value ...]

Runs `keel train CONFIG.yaml ...` on N ranks of this machine through mpirun, with:
  --oversubscribe         when N exceeds the cores
  --allow-run-as-root     when run as root
  --bind-to none          ranks share the cores with their OpenMP threads
  OMP_NUM_THREADS         cores / N per rank (unless already set), OMP_WAIT_POLICY=PASSIVE
The mpirun used is $KEEL_MPIRUN, else the first mpirun on PATH. The command it runs is printed
first. For several machines, call mpirun with a hostfile on `keel train` yourself.
)";

int run_launch(const std::vector<std::string>& args) {
  int ranks = 0;
  std::vector<std::string> train_args;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kLaunchUsage;
      return 0;
    }
    if ((a == "-n" || a == "--nproc") && i + 1 < args.size()) {
      const std::string& v = args[++i];
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      KEEL_CHECK(end && *end == '\0' && n >= 1 && n <= 4096,
                 "keel launch: -n takes a number of ranks (1 to 4096), got '{}'", v);
      ranks = static_cast<int>(n);
    } else {
      train_args.push_back(a);
    }
  }
  KEEL_CHECK(ranks >= 1, "keel launch needs the number of ranks: keel launch -n N CONFIG.yaml");
  KEEL_CHECK(!train_args.empty(), "keel launch needs a config: keel launch -n N CONFIG.yaml");

  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  KEEL_CHECK(len > 0, "keel launch: cannot find its own executable: {}", std::strerror(errno));
  self[len] = '\0';

  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const char* env_mpirun = std::getenv("KEEL_MPIRUN");
  std::vector<std::string> cmd = {env_mpirun && *env_mpirun ? env_mpirun : "mpirun"};
  if (geteuid() == 0) cmd.push_back("--allow-run-as-root");
  if (ranks > cores) cmd.push_back("--oversubscribe");
  cmd.insert(cmd.end(), {"--bind-to", "none"});
  if (!std::getenv("OMP_NUM_THREADS"))
    setenv("OMP_NUM_THREADS", std::to_string(std::max(1, cores / ranks)).c_str(), 1);
  if (!std::getenv("OMP_WAIT_POLICY")) setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  cmd.insert(cmd.end(), {"-x", "OMP_NUM_THREADS", "-x", "OMP_WAIT_POLICY", "-np",
                         std::to_string(ranks), self, "train"});
  cmd.insert(cmd.end(), train_args.begin(), train_args.end());

  std::cout << "keel launch: OMP_NUM_THREADS=" << std::getenv("OMP_NUM_THREADS");
  for (const std::string& c : cmd) std::cout << " " << c;
  std::cout << std::endl;
  std::vector<char*> argv;
  for (std::string& c : cmd) argv.push_back(c.data());
  argv.push_back(nullptr);
  execvp(argv[0], argv.data());
  KEEL_FAIL(
      "keel launch: cannot run '{}': {}; install Open MPI (scripts/setup.sh does) or set "
      "KEEL_MPIRUN",
      cmd[0], std::strerror(errno));
}

}  // namespace keel::launcher
