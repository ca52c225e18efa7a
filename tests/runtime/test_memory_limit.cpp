// What one rank may hold: sizes as users write them, the kernel's files as text (meminfo, the
// cgroup v1 and v2 limits found through /proc/self/cgroup and mountinfo, as on a bare host, a
// container and a hybrid mount), and the share of the host a rank gets.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/config_test_util.h"
#include "runtime/train/memory_limit.h"

namespace keel::runtime {
namespace {

using test::error_of;
using test::expect_mentions;

constexpr uint64_t kGiB = uint64_t{1} << 30, kMiB = uint64_t{1} << 20;

TEST(MemoryLimit, SizesAreReadAsHuggingFaceAndDockerWriteThem) {
  EXPECT_EQ(parse_memory_size("12GiB", "x"), 12 * kGiB);
  EXPECT_EQ(parse_memory_size(" 11.5 GiB ", "x"), static_cast<uint64_t>(11.5 * kGiB));
  EXPECT_EQ(parse_memory_size("512MiB", "x"), 512 * kMiB);
  EXPECT_EQ(parse_memory_size("512mib", "x"), 512 * kMiB);
  EXPECT_EQ(parse_memory_size("24GB", "x"), 24'000'000'000u);  // decimal, as accelerate reads it
  EXPECT_EQ(parse_memory_size("2g", "x"), 2 * kGiB);           // docker's binary letters
  EXPECT_EQ(parse_memory_size("64k", "x"), 64u << 10);
  EXPECT_EQ(parse_memory_size("1000000", "x"), 1'000'000u);
  for (const char* bad : {"", "GiB", "12 parsecs", "-1GiB", "0", "1e30", "twelve"})
    expect_mentions(error_of([&] { parse_memory_size(bad, "training.memory_limit"); }),
                    {"training.memory_limit is '" + std::string(bad) + "'", "12GiB", "'none'"});
}

TEST(MemoryLimit, FormatsGiBAboveOneAndMiBBelow) {
  EXPECT_EQ(format_memory(36 * kGiB + kGiB / 5), "36.2 GiB");
  EXPECT_EQ(format_memory(512 * kMiB), "512.0 MiB");
}

TEST(MemoryLimit, MeminfoFieldsAreBytes) {
  const std::string meminfo =
      "MemTotal:       24683784 kB\nMemFree:         1000000 kB\nMemAvailable:   23834596 kB\n";
  EXPECT_EQ(parse_meminfo(meminfo, "MemTotal"), 24683784ull * 1024);
  EXPECT_EQ(parse_meminfo(meminfo, "MemAvailable"), 23834596ull * 1024);
  EXPECT_EQ(parse_meminfo(meminfo, "SwapTotal"), 0u);
  EXPECT_EQ(parse_meminfo("", "MemTotal"), 0u);
}

TEST(MemoryLimit, CgroupValuesWithoutALimitAreNone) {
  EXPECT_EQ(parse_cgroup_limit("max\n"), 0u);                  // v2
  EXPECT_EQ(parse_cgroup_limit("9223372036854771712\n"), 0u);  // v1's "unlimited"
  EXPECT_EQ(parse_cgroup_limit("25769803776\n"), 24 * kGiB);
  EXPECT_EQ(parse_cgroup_limit(""), 0u);  // no such file
  EXPECT_EQ(parse_cgroup_limit("garbage"), 0u);
}

// A systemd host on cgroup v2: the process's own cgroup and each ancestor bound it.
TEST(MemoryLimit, CgroupV2FilesAreTheCgroupAndItsAncestors) {
  const std::string cgroup = "0::/user.slice/user-1000.slice/session-3.scope\n";
  const std::string mountinfo =
      "22 28 0:21 / /proc rw,nosuid - proc proc rw\n"
      "26 23 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
      "rw,nsdelegate,memory_recursiveprot\n";
  EXPECT_EQ(cgroup_limit_files(cgroup, mountinfo),
            (std::vector<std::string>{
                "/sys/fs/cgroup/user.slice/user-1000.slice/session-3.scope/memory.max",
                "/sys/fs/cgroup/user.slice/user-1000.slice/memory.max",
                "/sys/fs/cgroup/user.slice/memory.max", "/sys/fs/cgroup/memory.max"}));
}

// A container with its own cgroup namespace: its cgroup is the mounted root.
TEST(MemoryLimit, CgroupV2ContainerLimitIsAtTheMountPoint) {
  const std::string mountinfo =
      "700 690 0:30 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw,nsdelegate\n";
  EXPECT_EQ(cgroup_limit_files("0::/\n", mountinfo),
            std::vector<std::string>{"/sys/fs/cgroup/memory.max"});
}

// Hybrid: v1 controllers (memory among them) and an empty v2 hierarchy at unified/, as on the
// machine these tests were written on; and a v1 container whose mount root is its cgroup.
TEST(MemoryLimit, CgroupV1FilesFollowTheMemoryController) {
  const std::string cgroup =
      "9:name=systemd:/\n4:memory:/process_api/ee33\n3:cpuset:/\n1:cpu,cpuacct:/\n0::/\n";
  const std::string mountinfo =
      "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
      "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
  EXPECT_EQ(
      cgroup_limit_files(cgroup, mountinfo),
      (std::vector<std::string>{"/sys/fs/cgroup/memory/process_api/ee33/memory.limit_in_bytes",
                                "/sys/fs/cgroup/memory/process_api/memory.limit_in_bytes",
                                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                "/sys/fs/cgroup/unified/memory.max"}));
  const std::string docker =
      "1234 1200 0:40 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory,hugetlb\n";
  EXPECT_EQ(cgroup_limit_files("5:hugetlb,memory:/docker/abc\n", docker),
            std::vector<std::string>{"/sys/fs/cgroup/memory/memory.limit_in_bytes"});
}

TEST(MemoryLimit, RanksShareTheHostOrItsCgroupButNotTheAddressSpaceLimit) {
  HostMemory host{24 * kGiB, 20 * kGiB, 0, 0};
  MemoryLimit one = rank_memory_limit(host, 1), two = rank_memory_limit(host, 2);
  const auto less_margin = [](uint64_t share) {
    return share - kMarginBytes - static_cast<uint64_t>(kMarginShare * share);
  };
  EXPECT_EQ(one.bytes, less_margin(24 * kGiB));
  EXPECT_EQ(two.bytes, less_margin(12 * kGiB));
  EXPECT_EQ(two.free, 10 * kGiB);
  expect_mentions(two.origin, {"24.0 GiB of memory", "cgroup none", "2 ranks on this host",
                               "for what the plan does not count"});
  host.cgroup = 8 * kGiB;  // a container's limit below the host's memory binds
  two = rank_memory_limit(host, 2);
  EXPECT_EQ(two.bytes, less_margin(4 * kGiB));
  expect_mentions(two.origin, {"cgroup 8.0 GiB"});
  host.address_space = 3 * kGiB;  // RLIMIT_AS is per process: not shared
  EXPECT_EQ(rank_memory_limit(host, 2).bytes, less_margin(3 * kGiB));
  EXPECT_EQ(rank_memory_limit(host, 1).bytes, less_margin(3 * kGiB));
  expect_mentions(rank_memory_limit(host, 1).origin, {"RLIMIT_AS 3.0 GiB", "1 rank on"});
  EXPECT_EQ(rank_memory_limit(HostMemory{}, 1).bytes, 0u);  // nothing known: no check
}

TEST(MemoryLimit, ThisHostHasMemory) {
  const HostMemory host = read_host_memory();
  EXPECT_GT(host.physical, 64 * kMiB);
  EXPECT_LE(host.available, host.physical);
  EXPECT_GT(rank_memory_limit(host, 1).bytes, 0u);
}

TEST(MemoryLimit, TheConfigKeyThenTheEnvironmentThenTheHost) {
  EXPECT_EQ(resolve_memory_limit("none", "1GiB", 1).bytes, 0u);
  const MemoryLimit set = resolve_memory_limit("12GiB", "1GiB", 4);  // taken as it is: per rank
  EXPECT_EQ(set.bytes, 12 * kGiB);
  EXPECT_EQ(set.origin, "training.memory_limit is 12GiB");
  const MemoryLimit env = resolve_memory_limit("auto", "1GiB", 4);
  EXPECT_EQ(env.bytes, kGiB);
  EXPECT_EQ(env.origin, "KEEL_MEMORY_LIMIT is 1GiB");
  EXPECT_EQ(resolve_memory_limit("auto", "none", 1).bytes, 0u);
  EXPECT_EQ(resolve_memory_limit("auto", nullptr, 1).bytes,
            rank_memory_limit(read_host_memory(), 1).bytes);
  expect_mentions(error_of([] { resolve_memory_limit("auto", "lots", 1); }),
                  {"KEEL_MEMORY_LIMIT is 'lots'"});
}

TEST(MemoryLimit, ConfigKeyIsCheckedWhenRead) {
  EXPECT_EQ(parse_config(test::kMinimalYaml).training.memory_limit, "auto");
  EXPECT_EQ(parse_config(test::kMinimalYaml, {"training.memory_limit=12GiB"}).training.memory_limit,
            "12GiB");
  EXPECT_EQ(parse_config(test::kMinimalYaml, {"training.memory_limit=none"}).training.memory_limit,
            "none");
  expect_mentions(test::parse_error(test::kMinimalYaml, {"training.memory_limit=12 GiBs"}),
                  {"training.memory_limit is '12 GiBs'", "12GiB"});
}

}  // namespace
}  // namespace keel::runtime
