// Failures every rank of a job learns of at the same point: printed once, and every rank ends
// cleanly (MPI_Finalize) instead of one rank aborting the job (MPI_Abort and mpirun's banner).
// Any layer may throw one where its ranks have agreed; the launcher catches it.
#pragma once

#include <functional>
#include <stdexcept>
#include <string>

#include "parallel/communicator.h"

namespace keel::parallel {

// A failure that every rank of the job learned of at the same point, with no collective left
// waiting on anyone: the launcher prints it once, on `reporter` (the other ranks may carry no
// message), and every rank ends cleanly with MPI_Finalize, not MPI_Abort.
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
// rank, reported by the lowest rank that failed (with its own message). For what all ranks do
// alike (read the config, lock the run directory, check that the plan fits), so that a mistake
// there is one line, not one per rank and mpirun's abort banner.
void agree(Communicator& comm, const std::function<void()>& f);

}  // namespace keel::parallel
