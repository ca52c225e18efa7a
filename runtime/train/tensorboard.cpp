#include "runtime/train/tensorboard.h"

#include <unistd.h>

#include <cstdio>

#include "kernels/error.h"

// Two whole implementations: the real one with Protobuf, and one that says how to get it.
#if KEEL_HAVE_PROTOBUF

#include <fcntl.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "runtime/proto/tensorboard_event.pb.h"
#include "runtime/store/durable_file.h"
#include "runtime/train/tfrecord.h"

namespace keel::runtime {

namespace {

constexpr char kFileVersion[] = "brain.Event:2";
constexpr char kFileVersionPrefix[] = "brain.Event:";

void create_log_dir(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  KEEL_CHECK(!ec, "cannot create the TensorBoard directory '{}': {}", log_dir, ec.message());
}

int open_events_file(const std::string& path, bool exclusive) {
  const int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (exclusive ? O_EXCL : O_TRUNC);
  return ::open(path.c_str(), flags, 0644);
}

std::string hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

std::string file_version_record(double wall_time) {
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_file_version(kFileVersion);
  std::string out;
  append_tfrecord(out, event.SerializeAsString());
  return out;
}

}  // namespace

bool tensorboard_available() { return true; }

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  create_log_dir(log_dir);
  const auto now = std::time(nullptr);
  char stamp[32];
  std::snprintf(stamp, sizeof stamp, "%010lld", static_cast<long long>(now));
  const std::string base = log_dir + "/events.out.tfevents." + stamp + "." + hostname() + "." +
                           std::to_string(::getpid());
  // Two writers of one process in one second would share a name: O_EXCL finds the next free one.
  for (int n = 0; fd_ < 0; ++n) {
    path_ = n == 0 ? base : base + "." + std::to_string(n);
    fd_ = open_events_file(path_, true);
    KEEL_CHECK(fd_ >= 0 || errno == EEXIST, "cannot create '{}': {}", path_, std::strerror(errno));
  }
  start(static_cast<double>(now));
}

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir, const std::string& file_name,
                                     double wall_time)
    : path_(log_dir + "/" + file_name) {
  create_log_dir(log_dir);
  fd_ = open_events_file(path_, false);
  KEEL_CHECK(fd_ >= 0, "cannot create '{}': {}", path_, std::strerror(errno));
  start(wall_time);
}

void TensorBoardWriter::start(double wall_time) {
  pending_ = file_version_record(wall_time);
  try {
    flush();
  } catch (...) {
    ::close(std::exchange(fd_, -1));  // the destructor of a half-made writer does not run
    throw;
  }
}

void TensorBoardWriter::add_scalar(const std::string& tag, int64_t step, double value,
                                   double wall_time) {
  KEEL_CHECK(!tag.empty(), "a TensorBoard scalar needs a tag (step {} of '{}')", step, path_);
  tensorboard::Event event;
  event.set_wall_time(wall_time);
  event.set_step(step);
  tensorboard::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  append_tfrecord(pending_, event.SerializeAsString());
}

void TensorBoardWriter::flush() {
  if (pending_.empty()) return;
  // Taken out first: after a failed write the same records are not written twice.
  const std::string out = std::exchange(pending_, {});
  write_all(fd_, out.data(), out.size(), path_);
}

std::vector<TensorBoardScalar> read_tensorboard_scalars(const std::string& path) {
  const std::vector<std::string> records = read_tfrecords(path);
  std::vector<TensorBoardScalar> scalars;
  for (size_t i = 0; i < records.size(); ++i) {
    tensorboard::Event event;
    KEEL_CHECK(event.ParseFromString(records[i]),
               "'{}': record {} is not a TensorBoard event (its bytes do not parse)", path, i);
    if (i == 0)
      KEEL_CHECK(event.has_file_version() && event.file_version().starts_with(kFileVersionPrefix),
                 "'{}' is not a TensorBoard event file: its first event has no file_version "
                 "\"{}…\"",
                 path, kFileVersionPrefix);
    if (!event.has_summary()) continue;
    for (const tensorboard::Summary::Value& v : event.summary().value())
      if (v.has_simple_value())
        scalars.push_back({v.tag(), event.step(), event.wall_time(), v.simple_value()});
  }
  return scalars;
}

}  // namespace keel::runtime

#else  // !KEEL_HAVE_PROTOBUF

namespace keel::runtime {

namespace {

[[noreturn]] void no_protobuf(const char* what) {
  KEEL_FAIL(
      "keel was built without Protobuf, so it cannot {} TensorBoard event files; install "
      "protobuf-compiler and libprotobuf-dev and rebuild",
      what);
}

}  // namespace

bool tensorboard_available() { return false; }

TensorBoardWriter::TensorBoardWriter(const std::string&) { no_protobuf("write"); }

TensorBoardWriter::TensorBoardWriter(const std::string&, const std::string&, double) {
  no_protobuf("write");
}

void TensorBoardWriter::add_scalar(const std::string&, int64_t, double, double) {
  no_protobuf("write");
}

void TensorBoardWriter::flush() { no_protobuf("write"); }

std::vector<TensorBoardScalar> read_tensorboard_scalars(const std::string&) { no_protobuf("read"); }

}  // namespace keel::runtime

#endif  // KEEL_HAVE_PROTOBUF

namespace keel::runtime {

// The same in both builds: without Protobuf no writer is ever constructed, so fd_ is -1.
TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ < 0) return;
  try {
    flush();
  } catch (const Error& e) {
    std::fprintf(stderr, "keel: warning: TensorBoard events lost: %s\n", e.what());
  }
  ::close(fd_);
}

}  // namespace keel::runtime
