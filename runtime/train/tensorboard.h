// TensorBoard event files: a writer of scalars (what a run logs per step) and a checked reader,
// over keel's own Protobuf definitions (runtime/proto/tensorboard_event.proto) in TFRecord framing
// (runtime/train/tfrecord.h). Built without Protobuf (KEEL_PROTOBUF=OFF) keel still builds:
// tensorboard_available() is false and the writer and the reader throw, saying how to fix it.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace keel::runtime {

// Whether this build can write and read event files (it was built with Protobuf).
bool tensorboard_available();

class TensorBoardWriter {
 public:
  // Creates log_dir (and its parents) and in it a new file named as TensorFlow names them,
  // events.out.tfevents.<unix seconds>.<hostname>.<pid> (.1, .2, … appended if that exists),
  // whose first record, written at once, is the file_version event "brain.Event:2".
  explicit TensorBoardWriter(const std::string& log_dir);
  // The same into log_dir/file_name (replaced if it exists), the file_version event stamped
  // wall_time: a file whose name and bytes depend on neither the host nor the clock (goldens).
  TensorBoardWriter(const std::string& log_dir, const std::string& file_name, double wall_time);
  // Flushes; a failure there is printed, not thrown.
  ~TensorBoardWriter();
  TensorBoardWriter(TensorBoardWriter&& other) noexcept
      : path_(std::move(other.path_)),
        fd_(std::exchange(other.fd_, -1)),
        pending_(std::move(other.pending_)) {}
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(TensorBoardWriter&&) = delete;

  // Queues one scalar event. TensorBoard keeps scalars as float, so value is rounded to float;
  // NaN and infinities are kept (TensorBoard shows them). wall_time: seconds since the epoch.
  void add_scalar(const std::string& tag, int64_t step, double value, double wall_time);
  // Writes the queued events with one write(2). Call it after each step's scalars: the file then
  // holds whole records only, so a run that dies leaves one TensorBoard reads to the last flush.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void start(double wall_time);  // writes the file_version event

  std::string path_;
  int fd_ = -1;
  std::string pending_;  // framed records not yet written
};

struct TensorBoardScalar {
  std::string tag;
  int64_t step = 0;
  double wall_time = 0;  // seconds since the epoch
  float value = 0;
};

// Every scalar (Summary value with a simple_value, as keel, PyTorch and tensorboardX write them)
// of the event file at path, in file order; other events and values are skipped. Checks both CRCs
// of every record, that each parses as an Event and that the first is a file_version
// "brain.Event:…"; errors name the file, the record and the problem.
std::vector<TensorBoardScalar> read_tensorboard_scalars(const std::string& path);

}  // namespace keel::runtime
