#include "launcher/world.h"

#include <cstdlib>
#include <iostream>
#include <vector>

#include "parallel/self_communicator.h"
#if KEEL_HAS_MPI
#include "parallel/mpi_communicator.h"
#endif

namespace keel::launcher {

namespace {

class SelfWorld final : public World {
 public:
  parallel::Communicator& comm() override { return comm_; }
  [[noreturn]] void abort(int code, std::string_view why) override {
    std::cerr << "keel: error: " << why << "\n";
    std::exit(code);
  }

 private:
  parallel::SelfCommunicator comm_;
};

#if KEEL_HAS_MPI
class MpiWorld final : public World {
 public:
  // MPI_THREAD_MULTIPLE: the heartbeat thread (parallel/heartbeat.h) sends and receives on its
  // own communicator while the training thread is inside a collective. Open MPI provides it; a
  // library that does not still runs keel with control.hang_timeout: 0.
  MpiWorld(int* argc, char*** argv)
      : session_(argc, argv, MPI_THREAD_MULTIPLE, MPI_THREAD_FUNNELED) {}
  parallel::Communicator& comm() override { return session_.world(); }
  [[noreturn]] void abort(int code, std::string_view why) override {
    if (session_.size() == 1) {
      std::cerr << "keel: error: " << why << "\n";
      std::exit(code);
    }
    parallel::MpiSession::abort(code, why);
  }

 private:
  parallel::MpiSession session_;
};
#endif

}  // namespace

#if KEEL_HAS_MPI
std::unique_ptr<World> open_world(int* argc, char*** argv) {
  return std::make_unique<MpiWorld>(argc, argv);
}
#else
std::unique_ptr<World> open_world(int*, char***) { return std::make_unique<SelfWorld>(); }
#endif

}  // namespace keel::launcher
