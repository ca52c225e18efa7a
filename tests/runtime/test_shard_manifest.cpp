// The checksum prepare.json records: shard_checksum (the CPU's CRC-32C instruction where the build
// has it) is exactly the table-driven crc32c() of runtime/tfrecord.h at every length and
// alignment, so lists written by either check with the other.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/hash.h"
#include "runtime/shard_manifest.h"
#include "runtime/tfrecord.h"

namespace keel::runtime {
namespace {

uint32_t checksum_of(std::string_view s) {
  return shard_checksum({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
}

TEST(ShardChecksum, IsCrc32cAtEveryLengthAndAlignment) {
  EXPECT_EQ(checksum_of("123456789"), 0xE3069283u);
  EXPECT_EQ(checksum_of(""), 0u);
  std::string bytes(1 << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(splitmix64(i) & 0xff);
  for (size_t offset = 0; offset < 8; ++offset)
    for (size_t n = 0; n < 70; ++n) {
      const std::string_view s(bytes.data() + offset, n);
      EXPECT_EQ(checksum_of(s), crc32c(s)) << offset << " " << n;
    }
  EXPECT_EQ(checksum_of(bytes), crc32c(bytes));
}

}  // namespace
}  // namespace keel::runtime
