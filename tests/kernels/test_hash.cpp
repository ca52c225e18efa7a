// kernels/hash.h's CRC-32C: published test vectors, a bit-at-a-time reference on every length and
// alignment, the fast path against the portable one on buffers long enough for its three
// streams, and continuing a CRC over pieces.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>

#include "kernels/hash.h"

namespace keel {
namespace {

// CRC-32C one bit at a time, straight from the definition.
uint32_t crc32c_bitwise(std::string_view data) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : data) {
    crc ^= c;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? 0x82F63B78u : 0u);
  }
  return ~crc;
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(Crc32c, PublishedVectors) {
  for (auto* f : {+[](std::string_view s) { return crc32c(s); },
                  +[](std::string_view s) { return crc32c_portable(s.data(), s.size()); }}) {
    EXPECT_EQ(f("123456789"), 0xE3069283u);  // the "check" value of CRC-32C
    EXPECT_EQ(f(""), 0u);
    // RFC 3720 (iSCSI), appendix B.4.
    EXPECT_EQ(f(std::string(32, '\0')), 0x8A9136AAu);
    EXPECT_EQ(f(std::string(32, '\xff')), 0x62A8AB43u);
    std::string ascending;
    for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
    EXPECT_EQ(f(ascending), 0x46DD794Eu);
  }
  EXPECT_EQ(crc32c_bitwise("123456789"), 0xE3069283u);
}

TEST(Crc32c, MatchesBitwiseReferenceOnEveryLengthAndAlignment) {
  const std::string buffer = random_bytes(300, 7);
  for (size_t offset = 0; offset < 8; ++offset)
    for (size_t n = 0; n + offset <= buffer.size(); n += (n < 40 ? 1 : 37)) {
      const std::string_view piece = std::string_view(buffer).substr(offset, n);
      ASSERT_EQ(crc32c(piece), crc32c_bitwise(piece)) << "offset " << offset << " length " << n;
      ASSERT_EQ(crc32c_portable(piece.data(), n), crc32c_bitwise(piece))
          << "offset " << offset << " length " << n;
    }
}

// Lengths around the fast path's block sizes (3 x 256 and 3 x 8192 bytes), at every alignment:
// each joins the blocks' CRCs differently.
TEST(Crc32c, FastPathMatchesPortableOnLongBuffers) {
  const std::string buffer = random_bytes(3 * 8192 * 2 + 3 * 256 + 100, 11);
  for (size_t offset = 0; offset < 8; ++offset)
    for (size_t n : {767, 768, 769, 3 * 256 + 8, 1000, 24575, 24576, 24577, 24576 + 768 + 5, 49152,
                     3 * 8192 * 2 + 3 * 256 + 90}) {
      const std::string_view piece = std::string_view(buffer).substr(offset, n);
      ASSERT_EQ(crc32c(piece), crc32c_portable(piece.data(), n))
          << "offset " << offset << " length " << n;
    }
  EXPECT_EQ(crc32c(std::string_view(buffer).substr(0, 25000)),
            crc32c_bitwise(std::string_view(buffer).substr(0, 25000)));
}

TEST(Crc32c, ContinuesOverPieces) {
  const std::string buffer = random_bytes(60000, 3);
  const std::string_view all(buffer);
  const uint32_t whole = crc32c(all);
  for (size_t cut : {0, 1, 7, 4096, 30001, 60000}) {
    EXPECT_EQ(crc32c(all.substr(cut), crc32c(all.substr(0, cut))), whole) << "cut " << cut;
    EXPECT_EQ(crc32c_portable(all.data() + cut, all.size() - cut, crc32c_portable(all.data(), cut)),
              whole)
        << "cut " << cut;
  }
  // Any one flipped bit changes it.
  std::string flipped = buffer;
  for (size_t at : {0, 12345, 59999}) {
    flipped[at] ^= 0x10;
    EXPECT_NE(crc32c(flipped), whole) << "byte " << at;
    flipped[at] ^= 0x10;
  }
}

}  // namespace
}  // namespace keel
