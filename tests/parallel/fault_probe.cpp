// A job in which rank 1 fails while rank 0 waits in a barrier, for fault_check.cmake: the whole job
// must end (non-zero, with a message naming the rank) instead of hanging. Modes:
//   abort   rank 1 catches a keel::Error and calls MpiSession::abort, as the launcher will;
//   unwind  rank 1's exception unwinds past the MpiSession, whose destructor aborts the job;
//   crash   rank 1 dies of a signal (std::abort), which mpirun must notice.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "parallel/mpi_communicator.h"

namespace {

void fail_on_rank_one(keel::parallel::MpiSession& session, const std::string& mode) {
  if (session.rank() != 1) {
    session.world().barrier();  // never returns: rank 1 does not come
    return;
  }
  if (mode == "crash") std::abort();
  KEEL_FAIL("probe failure in mode {}", mode);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "abort";
  try {
    keel::parallel::MpiSession session(&argc, &argv);
    if (mode == "abort") {
      try {
        fail_on_rank_one(session, mode);
      } catch (const keel::Error& e) {
        keel::parallel::MpiSession::abort(3, e.what());
      }
    } else {
      fail_on_rank_one(session, mode);
    }
  } catch (const keel::Error& e) {
    // Not reached in unwind mode: the session's destructor aborts the job first.
    std::fprintf(stderr, "probe: caught after the session: %s\n", e.what());
    return 2;
  }
  std::printf("probe: rank finished normally (the test expects this never to happen)\n");
  return 0;
}
