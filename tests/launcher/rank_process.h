// The processes of a running multi-rank job, for tests that signal one rank of it: a rank's pid
// found by its command line and Open MPI's OMPI_COMM_WORLD_RANK, the readers they need, and the
// end of every process of a job a test leaves behind.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace keel::test {

// A file's bytes; NUL-separated lists (/proc's cmdline, environ) come back with NULs as spaces.
inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (char& c : s)
    if (c == '\0') c = ' ';
  return s;
}

// The pid of the `keel train` process of world rank `rank` whose command line names `marker`
// (mpirun's own command line names it too, but mpirun has no rank), or 0.
inline pid_t rank_pid(int rank, const std::string& marker) {
  const std::string var = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + " ";
  const std::string tag = " " + var;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (slurp(e.path() / "cmdline").find(marker) == std::string::npos) continue;
    const std::string env = slurp(e.path() / "environ");
    if (env.rfind(var, 0) == 0 || env.find(tag) != std::string::npos)
      return static_cast<pid_t>(std::stol(name));
  }
  return 0;
}

// Lines in a file (0 while it does not exist).
inline size_t lines(const std::string& path) {
  std::ifstream f(path);
  size_t n = 0;
  for (std::string line; std::getline(f, line);) ++n;
  return n;
}

// Kills (SIGCONT, then SIGKILL) every process but this one whose command line names `marker`:
// mpirun, its shell and the ranks of a job a test left hanging or stopped.
inline void end_processes(const std::string& marker) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto pid = static_cast<pid_t>(std::stol(name));
    if (pid == ::getpid() || slurp(e.path() / "cmdline").find(marker) == std::string::npos)
      continue;
    ::kill(pid, SIGCONT);
    ::kill(pid, SIGKILL);
  }
}

}  // namespace keel::test
