// TFRecord framing: its masked CRC-32C (the CRC itself is tested in tests/kernels/test_hash.cpp),
// records built by hand, and the reader's errors on damaged files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "file_test_util.h"
#include "kernels/hash.h"
#include "runtime/train/tfrecord.h"

namespace keel::runtime {
namespace {

using keel::testing::expect_error;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(Crc32c, MaskIsTfRecords) {
  // ((crc >> 15) | (crc << 17)) + 0xa282ead8, with the rotation and the sum wrapping at 32 bits.
  EXPECT_EQ(mask_crc32c(0), 0xa282ead8u);
  EXPECT_EQ(mask_crc32c(0xE3069283u), ((0xE3069283u >> 15) | (0xE3069283u << 17)) + 0xa282ead8u);
  EXPECT_EQ(mask_crc32c(0xffffffffu), 0xa282ead7u);
}

TEST(TfRecord, FramingByHand) {
  std::string out;
  append_tfrecord(out, "hello");
  ASSERT_EQ(out.size(), 8u + 4u + 5u + 4u);
  EXPECT_EQ(out.substr(0, 8), std::string("\x05\0\0\0\0\0\0\0", 8));  // little-endian length
  auto u32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(out[at + i]);
    return v;
  };
  EXPECT_EQ(u32(8), mask_crc32c(crc32c(out.substr(0, 8))));
  EXPECT_EQ(out.substr(12, 5), "hello");
  EXPECT_EQ(u32(17), mask_crc32c(crc32c("hello")));
}

class TfRecordFile : public keel::testing::FileTest {
 protected:
  // Three records, the middle one empty; returns the file's path.
  std::string three_records() {
    std::string out;
    for (const char* data : {"first record", "", "third"}) append_tfrecord(out, data);
    return write("r.tfrecord", out);
  }
};

TEST_F(TfRecordFile, ReadsBackEveryRecord) {
  const std::vector<std::string> want = {"first record", "", "third"};
  EXPECT_EQ(read_tfrecords(three_records()), want);
  EXPECT_TRUE(read_tfrecords(write("empty", "")).empty());
}

TEST_F(TfRecordFile, ReportsTheDamagedRecord) {
  const std::string good = read_bytes(three_records());
  const size_t second = 12 + 12 + 4;  // where record 1 starts
  auto damaged = [&](size_t at) {
    std::string bytes = good;
    bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
    return write("damaged", bytes);
  };
  expect_error([&] { read_tfrecords(damaged(3)); }, "record 0 at byte 0 has a bad length CRC");
  expect_error([&] { read_tfrecords(damaged(12)); }, "record 0 at byte 0 has a bad data CRC");
  expect_error([&] { read_tfrecords(damaged(second + 9)); },
               "record 1 at byte 28 has a bad length");
  expect_error([&] { read_tfrecords(damaged(good.size() - 1)); }, "record 2");
  expect_error([&] { read_tfrecords(damaged(good.size() - 1)); }, "bad data CRC");
  expect_error([&] { read_tfrecords(damaged(2)); }, path("damaged"));
}

TEST_F(TfRecordFile, ReportsTruncation) {
  const std::string good = read_bytes(three_records());
  for (size_t cut = 1; cut < good.size(); ++cut) {
    if (cut == 28 || cut == 44) continue;  // record boundaries: a shorter file, still whole
    const std::string p = write("cut", good.substr(0, cut));
    try {
      read_tfrecords(p);
      ADD_FAILURE() << "no error for a file cut at byte " << cut;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("is truncated"), std::string::npos) << e.what();
    }
  }
  expect_error([&] { read_tfrecords(write("cut", good.substr(0, 50))); },
               "record 2 at byte 44 has 6 of its 12 header bytes");
  expect_error([&] { read_tfrecords(write("cut", good.substr(0, 60))); },
               "record 2 at byte 44 needs 21 bytes, the file has 16 left");
  EXPECT_EQ(read_tfrecords(write("cut", good.substr(0, 44))).size(), 2u);
}

TEST_F(TfRecordFile, MissingFileIsNamed) {
  expect_error([&] { read_tfrecords(path("absent")); }, "cannot open '" + path("absent") + "'");
}

}  // namespace
}  // namespace keel::runtime
