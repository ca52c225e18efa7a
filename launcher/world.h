// The ranks of a job as the launcher sees them: under mpirun (a build with MPI) an MPI session and
// its world communicator; otherwise, or in a build without MPI, one rank alone.
#pragma once

#include <memory>
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

// Starts MPI when this build has it (a process started without mpirun is a world of one).
std::unique_ptr<World> open_world(int* argc, char*** argv);

}  // namespace keel::launcher
