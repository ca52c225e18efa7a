#include "runtime/train/tfrecord.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "kernels/error.h"

namespace keel::runtime {

namespace {

constexpr size_t kHeaderBytes = 12;  // length (8) + its masked CRC (4)
constexpr size_t kFooterBytes = 4;   // the data's masked CRC

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
