// CRC-32C twice: slicing-by-8 tables anywhere, and the SSE4.2 crc32 instruction on three
// interleaved streams where the compiler targets it (the two are tested against each other).
#include "kernels/hash.h"

#include <array>
#include <cstring>

#if defined(__SSE4_2__) && defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace keel {
namespace {

constexpr uint32_t kCrc32cPoly = 0x82F63B78u;  // reflected

// Slicing-by-8 tables: kTables[0] is the classic byte-at-a-time table, kTables[k][b] the CRC of
// byte b followed by k zero bytes, so eight bytes fold in with eight independent lookups.
constexpr std::array<std::array<uint32_t, 256>, 8> make_tables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? kCrc32cPoly : 0u);
    t[0][b] = crc;
  }
  for (size_t k = 1; k < 8; ++k)
    for (size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xffu];
  return t;
}
constexpr auto kTables = make_tables();

// Little-endian, whatever the host, and whatever the pointer's alignment.
uint64_t load_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

uint32_t crc32c_portable(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    const uint64_t w = load_le64(p) ^ crc;
    crc = kTables[7][w & 0xff] ^ kTables[6][(w >> 8) & 0xff] ^ kTables[5][(w >> 16) & 0xff] ^
          kTables[4][(w >> 24) & 0xff] ^ kTables[3][(w >> 32) & 0xff] ^
          kTables[2][(w >> 40) & 0xff] ^ kTables[1][(w >> 48) & 0xff] ^ kTables[0][w >> 56];
  }
  for (; n > 0; ++p, --n) crc = kTables[0][(crc ^ *p) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

#if defined(__SSE4_2__) && defined(__x86_64__)

namespace {

// The crc32 instruction has a latency of 3 cycles and a throughput of 1: three streams over
// three neighbouring blocks keep it busy, and the block CRCs are joined after. Since the CRC
// register is linear over GF(2), the register after blocks A B is (A's register run through
// |B| zero bytes) xor (B's register started from 0); running through a fixed number of zero
// bytes is a 32x32 bit matrix, applied a byte at a time from four tables (Mark Adler's crc32c.c).
using Gf2Matrix = std::array<uint32_t, 32>;  // column i: the image of bit i

constexpr uint32_t gf2_times(const Gf2Matrix& m, uint32_t v) {
  uint32_t sum = 0;
  for (int i = 0; v != 0; ++i, v >>= 1)
    if (v & 1u) sum ^= m[static_cast<size_t>(i)];
  return sum;
}

constexpr Gf2Matrix gf2_square(const Gf2Matrix& m) {
  Gf2Matrix sq{};
  for (size_t i = 0; i < 32; ++i) sq[i] = gf2_times(m, m[i]);
  return sq;
}

// The tables that run a register through `bytes` zero bytes (a power of two).
constexpr std::array<std::array<uint32_t, 256>, 4> zeros_tables(size_t bytes) {
  Gf2Matrix op{};  // one zero bit
  op[0] = kCrc32cPoly;
  for (size_t i = 1; i < 32; ++i) op[i] = 1u << (i - 1);
  for (size_t bits = 1; bits < bytes * 8; bits *= 2) op = gf2_square(op);
  std::array<std::array<uint32_t, 256>, 4> t{};
  for (uint32_t b = 0; b < 256; ++b)
    for (size_t k = 0; k < 4; ++k) t[k][b] = gf2_times(op, b << (8 * k));
  return t;
}

constexpr size_t kLong = 8192, kShort = 256;  // block sizes of the three streams
constexpr auto kLongZeros = zeros_tables(kLong);
constexpr auto kShortZeros = zeros_tables(kShort);

uint64_t shift(const std::array<std::array<uint32_t, 256>, 4>& z, uint64_t crc) {
  return z[0][crc & 0xff] ^ z[1][(crc >> 8) & 0xff] ^ z[2][(crc >> 16) & 0xff] ^ z[3][crc >> 24];
}

uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);  // x86-64 is little-endian
  return v;
}

// Three streams over blocks of `block` bytes while 3 blocks remain.
const unsigned char* three_streams(const unsigned char* p, size_t& n, uint64_t& crc0, size_t block,
                                   const std::array<std::array<uint32_t, 256>, 4>& zeros) {
  while (n >= 3 * block) {
    uint64_t crc1 = 0, crc2 = 0;
    for (const unsigned char* end = p + block; p < end; p += 8) {
      crc0 = _mm_crc32_u64(crc0, load64(p));
      crc1 = _mm_crc32_u64(crc1, load64(p + block));
      crc2 = _mm_crc32_u64(crc2, load64(p + 2 * block));
    }
    crc0 = shift(zeros, crc0) ^ crc1;
    crc0 = shift(zeros, crc0) ^ crc2;
    p += 2 * block;
    n -= 3 * block;
  }
  return p;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t crc0 = ~crc;
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; ++p, --n)
    crc0 = _mm_crc32_u8(static_cast<uint32_t>(crc0), *p);
  p = three_streams(p, n, crc0, kLong, kLongZeros);
  p = three_streams(p, n, crc0, kShort, kShortZeros);
  for (; n >= 8; p += 8, n -= 8) crc0 = _mm_crc32_u64(crc0, load64(p));
  for (; n > 0; ++p, --n) crc0 = _mm_crc32_u8(static_cast<uint32_t>(crc0), *p);
  return ~static_cast<uint32_t>(crc0);
}

#else

uint32_t crc32c(const void* data, size_t n, uint32_t crc) { return crc32c_portable(data, n, crc); }

#endif

}  // namespace keel
