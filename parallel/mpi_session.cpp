#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "parallel/mpi_communicator.h"

namespace keel::parallel {

namespace {

const char* thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv, int level, int min_level)
    : uncaught_at_start_(std::uncaught_exceptions()) {
  int initialized = 0;
  KEEL_MPI(MPI_Initialized(&initialized));
  KEEL_CHECK(!initialized, "MPI is already initialized: make one MpiSession per process");
  int provided = 0;
  // Errors inside MPI_Init_thread itself abort (MPI's default handler): there is no rank yet.
  KEEL_MPI(MPI_Init_thread(argc, argv, level, &provided));
  try {
    KEEL_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    const int needed = min_level < 0 ? level : min_level;
    KEEL_CHECK(provided >= needed, "this MPI library provides {} but keel needs {}",
               thread_level_name(provided), thread_level_name(needed));
    world_ = MpiCommunicator::duplicate(MPI_COMM_WORLD);
  } catch (...) {
    MPI_Finalize();
    throw;
  }
}

MpiSession::~MpiSession() {
  if (std::uncaught_exceptions() > uncaught_at_start_)
    abort(1,
          "an exception is unwinding past the MPI session; finalizing would leave the other "
          "ranks waiting");
  world_.reset();
  if (MPI_Finalize() != MPI_SUCCESS) std::fprintf(stderr, "keel: warning: MPI_Finalize failed\n");
}

void MpiSession::abort(int code, std::string_view why) noexcept {
  const WorldPosition at = world_position();
  const std::string line =
      format("keel: rank {} of {}: {}; aborting the job\n", at.rank, at.size, why);
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  std::fflush(stdout);
  if (at.running) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace keel::parallel
