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
  MpiWorld(int* argc, char*** argv) : session_(argc, argv) {}
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

void agree(parallel::Communicator& comm, const std::function<void()>& f) {
  std::string error;
  bool failed = false;
  try {
    f();
  } catch (const std::exception& e) {
    error = e.what();
    failed = true;
  }
  // The lowest failing rank r as size - r, the largest over ranks; 0 where none failed.
  std::vector<int64_t> lowest = {failed ? comm.size() - comm.rank() : 0};
  if (comm.size() > 1) comm.all_reduce(parallel::host_view(lowest), parallel::ReduceOp::kMax);
  if (lowest[0] == 0) return;
  const int reporter = comm.size() - static_cast<int>(lowest[0]);
  throw AgreedError(reporter, reporter == comm.rank() ? error : "");
}

#if KEEL_HAS_MPI
std::unique_ptr<World> open_world(int* argc, char*** argv) {
  return std::make_unique<MpiWorld>(argc, argv);
}
#else
std::unique_ptr<World> open_world(int*, char***) { return std::make_unique<SelfWorld>(); }
#endif

}  // namespace keel::launcher
