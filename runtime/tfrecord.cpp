#include "runtime/tfrecord.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "kernels/error.h"

namespace keel::runtime {

namespace {

constexpr size_t kHeaderBytes = 12;  // length (8) + its masked CRC (4)
constexpr size_t kFooterBytes = 4;   // the data's masked CRC

// Slicing-by-8 tables: kTables[0] is the classic byte-at-a-time table, kTables[k][b] the CRC of
// byte b followed by k zero bytes, so eight bytes fold in with eight lookups and no dependency
// chain between them (about 1 byte per cycle, plenty for a few records per step).
constexpr std::array<std::array<uint32_t, 256>, 8> make_tables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? 0x82F63B78u : 0u);
    t[0][b] = crc;
  }
  for (size_t k = 1; k < 8; ++k)
    for (size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xffu];
  return t;
}
constexpr auto kTables = make_tables();

// Little-endian loads and stores written out, so the format does not depend on the host.
uint64_t load_le(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void store_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xffu));
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size();
  uint32_t crc = 0xffffffffu;
  for (; n >= 8; p += 8, n -= 8) {
    const uint64_t w = load_le(p, 8) ^ crc;
    crc = kTables[7][w & 0xff] ^ kTables[6][(w >> 8) & 0xff] ^ kTables[5][(w >> 16) & 0xff] ^
          kTables[4][(w >> 24) & 0xff] ^ kTables[3][(w >> 32) & 0xff] ^
          kTables[2][(w >> 40) & 0xff] ^ kTables[1][(w >> 48) & 0xff] ^ kTables[0][w >> 56];
  }
  for (; n > 0; ++p, --n) crc = kTables[0][(crc ^ *p) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

void append_tfrecord(std::string& out, std::string_view data) {
  const size_t header_at = out.size();
  store_le(out, data.size(), 8);
  store_le(out, mask_crc32c(crc32c(std::string_view(out).substr(header_at, 8))), 4);
  out.append(data);
  store_le(out, mask_crc32c(crc32c(data)), 4);
}

std::vector<std::string> read_tfrecords(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  KEEL_CHECK(in.is_open(), "cannot open '{}': {}", path, std::strerror(errno));
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  KEEL_CHECK(!in.bad(), "cannot read '{}': {}", path, std::strerror(errno));

  std::vector<std::string> records;
  const auto* bytes = reinterpret_cast<const unsigned char*>(file.data());
  size_t at = 0;
  while (at < file.size()) {
    const size_t index = records.size();
    const size_t left = file.size() - at;
    KEEL_CHECK(left >= kHeaderBytes,
               "'{}' is truncated: record {} at byte {} has {} of its 12 header bytes", path, index,
               at, left);
    const uint64_t length = load_le(bytes + at, 8);
    KEEL_CHECK(
        mask_crc32c(crc32c(std::string_view(file).substr(at, 8))) == load_le(bytes + at + 8, 4),
        "'{}' is corrupt: record {} at byte {} has a bad length CRC", path, index, at);
    const size_t body = left - kHeaderBytes;  // written this way round, a huge length cannot wrap
    KEEL_CHECK(length <= body && body - length >= kFooterBytes,
               "'{}' is truncated: record {} at byte {} needs {} bytes, the file has {} left", path,
               index, at, length + kHeaderBytes + kFooterBytes, left);
    const std::string_view data = std::string_view(file).substr(at + kHeaderBytes, length);
    KEEL_CHECK(mask_crc32c(crc32c(data)) == load_le(bytes + at + kHeaderBytes + length, 4),
               "'{}' is corrupt: record {} at byte {} has a bad data CRC", path, index, at);
    records.emplace_back(data);
    at += kHeaderBytes + length + kFooterBytes;
  }
  return records;
}

}  // namespace keel::runtime
