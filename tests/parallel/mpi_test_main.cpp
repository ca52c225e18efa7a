// main() of the multi-rank GoogleTest binary, run under mpirun: every rank runs every test. Rank 0
// prints GoogleTest's usual report; the other ranks print only their failures, each line tagged
// "[rank R]", so N ranks' output stays readable. The exit code is non-zero on every rank when any
// rank had a failure, so mpirun (and ctest) fail too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "mpi_test_env.h"

namespace keel::parallel::testing {

namespace {
MpiCommunicator* g_world = nullptr;  // test-only: GoogleTest's TEST bodies take no arguments
}  // namespace

MpiCommunicator& world() { return *g_world; }

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}

  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::string text = std::string(r.file_name() ? r.file_name() : "?") + ":" +
                       std::to_string(r.line_number()) + ": Failure\n" + r.summary();
    // Every line tagged, so that lines of several ranks interleaved on the terminal still say
    // whose they are.
    size_t start = 0;
    while (start < text.size()) {
      const size_t end = std::min(text.find('\n', start), text.size());
      std::fprintf(stderr, "[rank %d] %.*s\n", rank_, static_cast<int>(end - start),
                   text.data() + start);
      start = end + 1;
    }
  }
  void OnTestEnd(const ::testing::TestInfo& info) override {
    if (info.result()->Failed())
      std::fprintf(stderr, "[rank %d] FAILED %s.%s\n", rank_, info.test_suite_name(), info.name());
  }

 private:
  int rank_;
};

}  // namespace
}  // namespace keel::parallel::testing

int main(int argc, char** argv) {
  // MPI_THREAD_MULTIPLE, as keel train opens it: the heartbeat tests run its thread.
  keel::parallel::MpiSession session(&argc, &argv, MPI_THREAD_MULTIPLE);
  keel::parallel::testing::g_world = &session.world();
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = session.rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new keel::parallel::testing::RankFailurePrinter(rank));
  }
  const int mine = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int failed_ranks = 0;
  MPI_Allreduce(&mine, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0 && failed_ranks > 0)
    std::fprintf(stderr, "%d of %d ranks had failures (the others' lines start with [rank R])\n",
                 failed_ranks, session.size());
  std::fflush(stdout);
  std::fflush(stderr);
  return failed_ranks > 0 ? 1 : 0;
}
