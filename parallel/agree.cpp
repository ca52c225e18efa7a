#include "parallel/agree.h"

#include <vector>

namespace keel::parallel {

void agree(Communicator& comm, const std::function<void()>& f) {
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
  if (comm.size() > 1) comm.all_reduce(host_view(lowest), ReduceOp::kMax);
  if (lowest[0] == 0) return;
  const int reporter = comm.size() - static_cast<int>(lowest[0]);
  throw AgreedError(reporter, reporter == comm.rank() ? error : "");
}

}  // namespace keel::parallel
