#include "runtime/train/memory_limit.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "kernels/error.h"

namespace keel::runtime {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// The whole file, or "" when it cannot be read (a file of /proc or /sys that this kernel lacks).
std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream text;
  text << f.rdbuf();
  return text.str();
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  for (size_t at = 0;;) {
    const size_t next = s.find(sep, at);
    parts.push_back(s.substr(at, next == std::string_view::npos ? next : next - at));
    if (next == std::string_view::npos) return parts;
    at = next + 1;
  }
}

// Where a cgroup of hierarchy `dir` of /proc/self/cgroup lives: the mount of that hierarchy whose
// root is a prefix of it, and each ancestor directory up to that mount point.
void add_limit_files(std::string_view cgroup_path, std::string_view mount_root,
                     std::string_view mount_point, const char* file,
                     std::vector<std::string>& out) {
  std::string rel;  // the cgroup's path below the mounted root, "" when it is the root
  if (mount_root == "/")
    rel = std::string(cgroup_path);
  else if (cgroup_path.substr(0, mount_root.size()) == mount_root)
    rel = std::string(cgroup_path.substr(mount_root.size()));
  // Otherwise the cgroup is outside what is mounted (a container's view): its root only.
  while (!rel.empty() && rel.back() == '/') rel.pop_back();
  for (;;) {
    out.push_back(std::string(mount_point) + rel + "/" + file);
    if (rel.empty()) return;
    rel.resize(rel.rfind('/'));
  }
}

}  // namespace

uint64_t parse_memory_size(std::string_view text, std::string_view what) {
  const std::string_view t = trim(text);
  size_t used = 0;
  double number = -1;
  const std::string digits(t);
  try {
    number = std::stod(digits, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = lower(trim(t.substr(used)));
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1},       {"b", 1},        {"k", 0x1p10},   {"kib", 0x1p10}, {"kb", 1e3},
      {"m", 0x1p20}, {"mib", 0x1p20}, {"mb", 1e6},     {"g", 0x1p30},   {"gib", 0x1p30},
      {"gb", 1e9},   {"t", 0x1p40},   {"tib", 0x1p40}, {"tb", 1e12}};
  double scale = 0;
  for (const auto& [name, s] : kUnits)
    if (unit == name) scale = s;
  const double bytes = number * scale;
  KEEL_CHECK(used > 0 && scale > 0 && std::isfinite(bytes) && bytes >= 1 && bytes < 0x1p63,
             "{} is '{}'; write a size such as 12GiB, 512MiB, 24GB or a number of bytes (or "
             "'none' to turn the memory check off, 'auto' to detect the limit)",
             what, text);
  return static_cast<uint64_t>(bytes);
}

std::string format_memory(uint64_t bytes) {
  char buf[32];
  if (bytes >= (uint64_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(bytes) / 0x1p30);
  else
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / 0x1p20);
  return buf;
}

uint64_t parse_meminfo(std::string_view meminfo, std::string_view field) {
  for (std::string_view line : split(meminfo, '\n')) {
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || line.substr(0, colon) != field) continue;
    const std::string rest(trim(line.substr(colon + 1)));  // "24683784 kB"
    const uint64_t n = std::strtoull(rest.c_str(), nullptr, 10);
    return rest.find("kB") != std::string::npos ? n * 1024 : n;
  }
  return 0;
}

uint64_t parse_cgroup_limit(std::string_view text) {
  const std::string t(trim(text));
  if (t.empty() || t == "max") return 0;
  char* end = nullptr;
  const uint64_t n = std::strtoull(t.c_str(), &end, 10);
  if (end == t.c_str() || *end != '\0') return 0;  // not a number: no limit we can use
  // v1 writes "no limit" as the largest page counter in bytes, 2^63 less a page.
  return n >= (uint64_t{1} << 62) ? 0 : n;
}

std::vector<std::string> cgroup_limit_files(std::string_view proc_self_cgroup,
                                            std::string_view mountinfo) {
  // This process's cgroup on the v2 hierarchy ("0::/path") and on v1's memory controller
  // ("4:memory:/path", the controller possibly among others: "5:cpu,memory:/path").
  std::string v2, v1;
  bool have_v2 = false, have_v1 = false;
  for (std::string_view line : split(proc_self_cgroup, '\n')) {
    const std::vector<std::string_view> f = split(line, ':');
    if (f.size() < 3) continue;
    const std::string_view path = line.substr(f[0].size() + f[1].size() + 2);
    if (f[0] == "0" && f[1].empty()) {
      v2 = path, have_v2 = true;
    } else {
      for (std::string_view c : split(f[1], ','))
        if (c == "memory") v1 = path, have_v1 = true;
    }
  }
  // mountinfo: "id parent major:minor root mount-point options ... - fstype source super-options".
  std::vector<std::string> files;
  for (std::string_view line : split(mountinfo, '\n')) {
    const size_t dash = line.find(" - ");
    if (dash == std::string_view::npos) continue;
    const std::vector<std::string_view> f = split(line.substr(0, dash), ' ');
    const std::vector<std::string_view> tail = split(line.substr(dash + 3), ' ');
    if (f.size() < 5 || tail.size() < 3) continue;
    if (tail[0] == "cgroup2" && have_v2) add_limit_files(v2, f[3], f[4], "memory.max", files);
    if (tail[0] == "cgroup" && have_v1) {
      for (std::string_view o : split(tail[2], ','))
        if (o == "memory") add_limit_files(v1, f[3], f[4], "memory.limit_in_bytes", files);
    }
  }
  return files;
}

HostMemory read_host_memory() {
  HostMemory host;
  const std::string meminfo = read_text("/proc/meminfo");
  host.physical = parse_meminfo(meminfo, "MemTotal");
  host.available = parse_meminfo(meminfo, "MemAvailable");
  if (host.physical == 0) {  // no /proc: the page count
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0) host.physical = static_cast<uint64_t>(pages) * page;
  }
  for (const std::string& file :
       cgroup_limit_files(read_text("/proc/self/cgroup"), read_text("/proc/self/mountinfo"))) {
    const uint64_t limit = parse_cgroup_limit(read_text(file));
    if (limit && (host.cgroup == 0 || limit < host.cgroup)) host.cgroup = limit;
  }
  rlimit as{};
  if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY)
    host.address_space = as.rlim_cur;
  return host;
}

MemoryLimit rank_memory_limit(const HostMemory& host, int ranks_on_host) {
  const uint64_t ranks = static_cast<uint64_t>(std::max(ranks_on_host, 1));
  uint64_t host_bytes = host.physical;
  if (host.cgroup && (host_bytes == 0 || host.cgroup < host_bytes)) host_bytes = host.cgroup;
  uint64_t share = host_bytes / ranks;
  if (host.address_space && (share == 0 || host.address_space < share)) share = host.address_space;
  MemoryLimit limit;
  if (share == 0) {  // nothing known: no check
    limit.origin = "no memory size could be read from /proc/meminfo";
    return limit;
  }
  const uint64_t margin = kMarginBytes + static_cast<uint64_t>(kMarginShare * share);
  limit.bytes = share > margin ? share - margin : 1;
  limit.free = host.available / ranks;
  std::ostringstream os;
  os << format_memory(host.physical) << " of memory, cgroup "
     << (host.cgroup ? format_memory(host.cgroup) : std::string("none"));
  if (host.address_space) os << ", RLIMIT_AS " << format_memory(host.address_space);
  os << ", " << ranks << (ranks == 1 ? " rank" : " ranks") << " on this host, less "
     << format_memory(margin) << " for what the plan does not count";
  limit.origin = os.str();
  return limit;
}

MemoryLimit resolve_memory_limit(const std::string& setting, const char* env, int ranks_on_host) {
  std::string value = setting, origin = "training.memory_limit";
  if (setting == "auto" && env && *env) value = env, origin = "KEEL_MEMORY_LIMIT";
  if (value == "none") return MemoryLimit{0, 0, origin + " is none"};
  if (value == "auto") return rank_memory_limit(read_host_memory(), ranks_on_host);
  MemoryLimit limit;
  limit.bytes = parse_memory_size(value, origin);
  limit.origin = origin + " is " + value;
  return limit;
}

int launcher_ranks_on_host() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"}) {
    const char* v = std::getenv(name);
    if (v && std::atoi(v) > 0) return std::atoi(v);
  }
  return 1;
}

}  // namespace keel::runtime
