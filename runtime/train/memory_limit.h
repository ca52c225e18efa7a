// What one rank may hold in memory, for the admission check that refuses a plan before it is
// allocated (runtime/train/memory_fit.h): the host's memory, its cgroup's limit and the
// address-space rlimit, shared among the ranks on the host, or the limit that training.memory_limit
// or KEEL_MEMORY_LIMIT names. The parsers take the kernel files' text, so tests need no such host.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace keel::runtime {

// Bytes of "12GiB", "11.5 GiB", "512MiB", "24GB" (10^9, as Hugging Face's max_memory reads it),
// "64k" or "1000000" (bytes). Throws, naming `what`, for anything else.
uint64_t parse_memory_size(std::string_view text, std::string_view what);

// "11.5 GiB", or "512.0 MiB" under a GiB.
std::string format_memory(uint64_t bytes);

// A field of /proc/meminfo ("MemTotal", "MemAvailable") in bytes; 0 when absent.
uint64_t parse_meminfo(std::string_view meminfo, std::string_view field);

// A cgroup memory limit file's value (v2 memory.max, v1 memory.limit_in_bytes); 0 for none: "max",
// or v1's "unlimited" (the largest page count, 2^63 rounded down to a page).
uint64_t parse_cgroup_limit(std::string_view text);

// The limit files that bound this process, from the text of /proc/self/cgroup and
// /proc/self/mountinfo: memory.max (v2) and memory.limit_in_bytes (v1) of its cgroup and of each
// ancestor up to the mounted root (a parent's limit binds its children too). Paths on the
// mounted hierarchies; some may not exist (v2 without the memory controller enabled).
std::vector<std::string> cgroup_limit_files(std::string_view proc_self_cgroup,
                                            std::string_view mountinfo);

// The memory facts of this host and process; 0: none (no limit) or unknown.
struct HostMemory {
  uint64_t physical = 0;       // MemTotal
  uint64_t available = 0;      // MemAvailable now: what other processes leave free
  uint64_t cgroup = 0;         // the tightest limit of cgroup_limit_files
  uint64_t address_space = 0;  // RLIMIT_AS, per process
};
HostMemory read_host_memory();

// What one rank may plan: bytes 0 means no limit (the admission is off).
struct MemoryLimit {
  uint64_t bytes = 0;
  uint64_t free = 0;   // MemAvailable per rank on the host (0: unknown), for a warning only
  std::string origin;  // how bytes was found: "24.0 GiB of memory, cgroup none, 2 ranks on ..."
};

// The part of the host's memory one of `ranks_on_host` ranks can have: min(MemTotal, cgroup) /
// ranks and at most RLIMIT_AS (a per-process limit), less a margin for what a plan does not count
// (kMarginBytes, kMarginShare).
MemoryLimit rank_memory_limit(const HostMemory& host, int ranks_on_host);

// The margin: kMarginBytes for what every process holds besides its plan (code, libraries,
// OpenMP and MPI buffers, the tokens of a text file: about 70 MiB on one rank of configs/
// tiny.yaml), and kMarginShare of the rank's share for the kernel, the host's other processes
// (MemTotal is not all usable) and the huge-page rounding of each plan's block. Data files are
// mapped, so their pages are page cache that the kernel reclaims, and are not counted.
inline constexpr uint64_t kMarginBytes = uint64_t{256} << 20;
inline constexpr double kMarginShare = 0.05;

// The limit a run admits against. `setting` is training.memory_limit: "none" (no check), a size
// (what one rank may plan, taken as it is), or "auto": KEEL_MEMORY_LIMIT's value when `env` is
// set (the same forms), else rank_memory_limit of this host. Throws for a malformed size.
MemoryLimit resolve_memory_limit(const std::string& setting, const char* env, int ranks_on_host);

// The ranks on this host when the world cannot tell (a build without MPI started by mpirun runs
// one-rank worlds): OMPI_COMM_WORLD_LOCAL_SIZE (Open MPI) or MPI_LOCALNRANKS (MPICH), else 1.
int launcher_ranks_on_host();

}  // namespace keel::runtime
