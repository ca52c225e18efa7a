// TensorBoard event files: what the writer writes reads back exactly, its bytes are Protobuf's
// wire format as TensorFlow numbers the fields (decoded here by hand), damage is reported by
// record, and TensorBoard itself reads the committed golden (tests/reference/tensorboard_ref.py).
// Every test but one skips in a build without Protobuf; that one checks the error it gives.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "file_test_util.h"
#include "runtime/train/tensorboard.h"
#include "runtime/train/tfrecord.h"

namespace keel::runtime {
namespace {

using keel::testing::expect_error;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

uint64_t load_le(std::string_view bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
  return v;
}

std::string le_bytes(auto value) {
  std::string out(sizeof value, '\0');
  std::memcpy(out.data(), &value, sizeof value);  // the test host is little-endian, like TFRecord
  return out;
}

// Concatenation without operator+ on literals (GCC 12 misreads those as overlapping copies).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::string out;
  (out.append(parts), ...);
  return out;
}

// The records of an event file, framing parsed here rather than by read_tfrecords.
std::vector<std::string> records_by_hand(const std::string& bytes) {
  std::vector<std::string> records;
  for (size_t at = 0; at < bytes.size();) {
    const uint64_t length = load_le(bytes, at, 8);
    EXPECT_EQ(load_le(bytes, at + 8, 4), mask_crc32c(crc32c(bytes.substr(at, 8))));
    records.push_back(bytes.substr(at + 12, length));
    EXPECT_EQ(load_le(bytes, at + 12 + length, 4), mask_crc32c(crc32c(records.back())));
    at += 12 + length + 4;
  }
  return records;
}

bool same_scalar(const TensorBoardScalar& a, const TensorBoardScalar& b) {
  const bool same_value = std::isnan(a.value) ? std::isnan(b.value) : a.value == b.value;
  return a.tag == b.tag && a.step == b.step && a.wall_time == b.wall_time && same_value;
}

class TensorBoard : public keel::testing::FileTest {
 protected:
  void SetUp() override {
    if (!tensorboard_available()) GTEST_SKIP() << "keel was built without Protobuf";
    FileTest::SetUp();
  }
};

TEST_F(TensorBoard, ScalarsReadBackExactly) {
  const std::vector<TensorBoardScalar> want = {
      {"train/loss", 1, 1.7e9 + 0.5, 10.25f}, {"train/learning_rate", 1, 1.7e9 + 0.5, 3e-4f},
      {"train/loss", 2, 1.7e9 + 1.75, 0.0f},  // a zero is still a value (oneof presence)
      {"eval/loss", 2, 1.7e9 + 2, -1.5f},     {"train/loss", 3, 1.7e9 + 3, std::nanf("")},
      {"train/loss", 4, 1.7e9 + 4, INFINITY}, {"train/loss", 0, 0, 1e-30f},
  };
  std::string file;
  {
    TensorBoardWriter writer(path("logs/run1"));  // parents are created
    file = writer.path();
    for (const TensorBoardScalar& s : want) {
      writer.add_scalar(s.tag, s.step, s.value, s.wall_time);
      writer.flush();
    }
  }
  const std::vector<TensorBoardScalar> got = read_tensorboard_scalars(file);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_TRUE(same_scalar(got[i], want[i])) << "scalar " << i << ": " << got[i].tag;

  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string name = std::filesystem::path(file).filename().string();
  EXPECT_TRUE(
      std::regex_match(name, std::regex(R"(events\.out\.tfevents\.\d{10}\.)" +
                                        std::regex_replace(host, std::regex(R"(\.)"), R"(\.)") +
                                        "\\." + std::to_string(::getpid()))))
      << name;
  EXPECT_EQ(std::filesystem::path(file).parent_path(), path("logs/run1"));
}

TEST_F(TensorBoard, BytesAreTensorFlowsWireFormat) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  std::string file;
  {
    TensorBoardWriter writer(dir_, "events.test", 1.25);
    writer.add_scalar("loss", 3, 2.5, 100.5);
    file = writer.path();
  }
  const std::vector<std::string> records = records_by_hand(read_bytes(file));
  ASSERT_EQ(records.size(), 2u);
  // Event{wall_time (1, fixed64) = 1.25, file_version (3, bytes) = "brain.Event:2"}.
  EXPECT_EQ(records[0], cat("\x09", le_bytes(1.25), "\x1a\x0d", "brain.Event:2"));
  // Event{wall_time = 100.5, step (2, varint) = 3, summary (5, bytes) =
  //   Summary{value (1, bytes) = Value{tag (1, bytes) = "loss", simple_value (2, fixed32) = 2.5}}}.
  const std::string value = cat("\x0a\x04", "loss", "\x15", le_bytes(2.5f));
  const std::string summary = cat("\x0a", std::string(1, static_cast<char>(value.size())), value);
  EXPECT_EQ(records[1], cat("\x09", le_bytes(100.5), "\x10\x03", "\x2a",
                            std::string(1, static_cast<char>(summary.size())), summary));
}

TEST_F(TensorBoard, FlushWritesWholeRecordsAndTheDestructorFlushes) {
  std::string file;
  size_t header = 0;
  {
    TensorBoardWriter writer(dir_, "events.test", 0);
    file = writer.path();
    header = std::filesystem::file_size(file);  // the file_version event is written at once
    EXPECT_GT(header, 0u);
    writer.add_scalar("a", 1, 1.0, 1.0);
    writer.add_scalar("b", 1, 2.0, 1.0);
    EXPECT_EQ(std::filesystem::file_size(file), header);
    EXPECT_TRUE(read_tensorboard_scalars(file).empty());
    writer.flush();
    EXPECT_EQ(read_tensorboard_scalars(file).size(), 2u);
    writer.add_scalar("a", 2, 3.0, 2.0);
  }
  EXPECT_EQ(read_tensorboard_scalars(file).size(), 3u);
}

TEST_F(TensorBoard, WritersOfOneSecondGetTheirOwnFiles) {
  TensorBoardWriter a(dir_), b(dir_), c(dir_);
  EXPECT_NE(a.path(), b.path());
  EXPECT_NE(b.path(), c.path());
  EXPECT_NE(a.path(), c.path());
}

TEST_F(TensorBoard, AGivenNameReplacesTheFile) {
  write("events.test", "old contents");
  { TensorBoardWriter writer(dir_, "events.test", 5); }
  EXPECT_TRUE(read_tensorboard_scalars(path("events.test")).empty());
}

TEST_F(TensorBoard, ErrorsNameThePath) {
  write("plain", "a file, not a directory");
  expect_error([&] { TensorBoardWriter writer(path("plain/logs")); },
               keel::format("cannot create the TensorBoard directory '{}'", path("plain/logs")));
  std::filesystem::create_directories(path("taken/events.test"));  // a directory in the way
  expect_error([&] { TensorBoardWriter writer(path("taken"), "events.test", 0); },
               keel::format("cannot create '{}': Is a directory", path("taken/events.test")));
  TensorBoardWriter writer(dir_, "events.test", 0);
  expect_error([&] { writer.add_scalar("", 7, 1.0, 0); }, "a TensorBoard scalar needs a tag");
}

class TensorBoardDamage : public TensorBoard {
 protected:
  // An event file of the file_version event and three scalars; returns its bytes.
  std::string good() {
    {
      TensorBoardWriter writer(dir_, "good", 1);
      for (int step = 1; step <= 3; ++step) writer.add_scalar("loss", step, 1.0 / step, step);
    }
    return read_bytes(path("good"));
  }
};

TEST_F(TensorBoardDamage, FlippedByteIsABadCrc) {
  std::string bytes = good();
  const size_t record_size = (bytes.size() - records_by_hand(bytes)[0].size() - 16) / 3;
  const size_t third_scalar = bytes.size() - record_size;  // record 3
  bytes[third_scalar + 14] = static_cast<char>(bytes[third_scalar + 14] ^ 1);
  expect_error([&] { read_tensorboard_scalars(write("bad", bytes)); },
               keel::format("'{}' is corrupt: record 3 at byte {} has a bad data CRC", path("bad"),
                            third_scalar));
}

TEST_F(TensorBoardDamage, CutFileIsTruncated) {
  const std::string bytes = good();
  expect_error([&] { read_tensorboard_scalars(write("cut", bytes.substr(0, bytes.size() - 1))); },
               keel::format("'{}' is truncated: record 3", path("cut")));
}

TEST_F(TensorBoardDamage, UnparsableEventIsNamed) {
  std::string bytes = good();
  append_tfrecord(bytes, "\xff\xff");  // a varint that never ends
  expect_error([&] { read_tensorboard_scalars(write("junk", bytes)); },
               keel::format("'{}': record 4 is not a TensorBoard event", path("junk")));
}

TEST_F(TensorBoardDamage, FileWithoutFileVersionIsNotAnEventFile) {
  const std::string bytes = good();
  const size_t first = 16 + records_by_hand(bytes)[0].size();
  expect_error([&] { read_tensorboard_scalars(write("headless", bytes.substr(first))); },
               "is not a TensorBoard event file: its first event has no file_version");
  std::string other;
  append_tfrecord(other, "");  // an Event with nothing set
  expect_error([&] { read_tensorboard_scalars(write("empty_event", other)); },
               "is not a TensorBoard event file");
}

// The one test that runs without Protobuf: the error must say how to get TensorBoard files.
TEST(TensorBoardWithoutProtobuf, SaysHowToGetIt) {
  if (tensorboard_available()) GTEST_SKIP() << "keel was built with Protobuf";
  expect_error([] { TensorBoardWriter writer("/tmp"); },
               "keel was built without Protobuf, so it cannot write TensorBoard event files; "
               "install protobuf-compiler and libprotobuf-dev and rebuild");
  expect_error([] { read_tensorboard_scalars("/tmp/x"); }, "cannot read TensorBoard event files");
}

// ---- the golden TensorBoard reads (tests/reference/tensorboard_ref.py) -----------------------

const std::string kGoldenDir = std::string(KEEL_SOURCE_DIR) + "/tests/reference/golden";
constexpr char kGoldenName[] = "events.out.tfevents.0.keel";
constexpr double kGoldenStart = 1767225600.0;  // 2026-01-01T00:00:00Z

// A short run's worth of scalars, from arithmetic that rounds the same on every machine (no libm).
std::vector<TensorBoardScalar> golden_scalars() {
  std::vector<TensorBoardScalar> out;
  for (int64_t step = 0; step <= 10; ++step) {
    const double t = kGoldenStart + 1.5 * static_cast<double>(step);
    const double s = static_cast<double>(step);
    auto add = [&](const char* tag, double v) {
      out.push_back({tag, step, t, static_cast<float>(v)});
    };
    add("train/loss", 10.75 - 0.5 * s + 1.0 / (s + 3.0));
    add("train/learning_rate", 3e-4 * std::min(1.0, s / 4.0));  // 0 at step 0: still a value
    add("train/tokens_per_second", 123456.7 + 1000.0 * s);
    if (step % 5 == 0 && step > 0) add("eval/loss", 10.9 - 0.45 * s);
  }
  return out;
}

void write_golden(const std::string& dir) {
  TensorBoardWriter writer(dir, kGoldenName, kGoldenStart);
  int64_t step = -1;
  for (const TensorBoardScalar& s : golden_scalars()) {
    if (s.step != step) writer.flush();  // one write per step, as the trainer does
    step = s.step;
    writer.add_scalar(s.tag, s.step, s.value, s.wall_time);
  }
}

TEST_F(TensorBoard, CommittedGoldenIsWhatTheWriterWrites) {
  // tensorboard_ref.py --keel-tests regenerates the committed file through this variable.
  if (const char* out = std::getenv("KEEL_WRITE_TENSORBOARD_GOLDEN")) write_golden(out);
  write_golden(dir_);
  const std::string committed = kGoldenDir + "/tensorboard/" + kGoldenName;
  ASSERT_TRUE(std::filesystem::exists(committed)) << committed;
  EXPECT_TRUE(read_bytes(path(kGoldenName)) == read_bytes(committed))
      << "the writer no longer writes the committed golden byte for byte; if that is intended, "
         "regenerate it (tests/reference/README.md)";
  const std::vector<TensorBoardScalar> got = read_tensorboard_scalars(committed);
  const std::vector<TensorBoardScalar> want = golden_scalars();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(same_scalar(got[i], want[i])) << i;
}

TEST_F(TensorBoard, TensorBoardReadsTheScalarsKeelWrote) {
  std::ifstream f(kGoldenDir + "/tensorboard_scalars.json");
  ASSERT_TRUE(f.is_open()) << "run tests/reference/tensorboard_ref.py";
  const nlohmann::json g = nlohmann::json::parse(f);
  EXPECT_EQ(g.at("file_version").get<double>(), 2.0);
  EXPECT_TRUE(g.at("other_tags").empty()) << g.at("other_tags").dump();
  // What EventAccumulator reported, tag by tag, in step order.
  std::map<std::string, std::vector<TensorBoardScalar>> want;
  for (const TensorBoardScalar& s : golden_scalars()) want[s.tag].push_back(s);
  const nlohmann::json& seen = g.at("scalars");
  ASSERT_EQ(seen.size(), want.size());
  for (const auto& [tag, scalars] : want) {
    ASSERT_TRUE(seen.contains(tag)) << tag;
    const nlohmann::json& events = seen.at(tag);
    ASSERT_EQ(events.size(), scalars.size()) << tag;
    for (size_t i = 0; i < scalars.size(); ++i) {
      const TensorBoardScalar got{tag, events[i].at("step").get<int64_t>(),
                                  events[i].at("wall_time").get<double>(),
                                  static_cast<float>(events[i].at("value").get<double>())};
      EXPECT_TRUE(same_scalar(got, scalars[i])) << tag << " event " << i;
    }
  }
}

}  // namespace
}  // namespace keel::runtime
