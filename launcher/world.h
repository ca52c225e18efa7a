// The ranks of a job as the launcher sees them: under mpirun (a build with MPI) an MPI session and
// its world communicator; otherwise, or in a build without MPI, one rank alone.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "parallel/communicator.h"

namespace keel::launcher {

class World {
 public:
  virtual ~World() = default;
  virtual parallel::Communicator& comm() = 0;
  // Ends every rank of the job with `code` after printing why (one rank alone: just exits).
  [[noreturn]] virtual void abort(int code, std::string_view why) = 0;
};

// A failure that every rank of the job learned of at the same point, with no collective left
// waiting on anyone: the launcher prints it once, on `reporter` (the lowest rank that failed; the
// other ranks carry no message), and every rank ends cleanly with MPI_Finalize, not MPI_Abort.
class AgreedError : public std::runtime_error {
 public:
  AgreedError(int reporter, const std::string& message)
      : std::runtime_error(message), reporter_(reporter) {}
  int reporter() const { return reporter_; }

 private:
  int reporter_;
};

// Runs f, which must call no collective, on every rank, then agrees in one all-reduce on whether
// it failed anywhere: returns where it succeeded on every rank, else throws AgreedError on every
// rank. For what all ranks do alike before they train (read the config, lock the run directory),
// so that a mistake there is one line, not one per rank and mpirun's abort banner.
void agree(parallel::Communicator& comm, const std::function<void()>& f);

// Starts MPI when this build has it (a process started without mpirun is a world of one).
std::unique_ptr<World> open_world(int* argc, char*** argv);

}  // namespace keel::launcher
