// The communicator of a group of one: every collective is the identity (a copy where input and
// output differ). It lets single-process runs and tests without MPI build a ProcessGrid whose
// groups all have size 1, through the same interface the multi-rank runs use.
#pragma once

#include <memory>
#include <string_view>

#include "parallel/communicator.h"

namespace keel::parallel {

class SelfCommunicator final : public Communicator {
 public:
  SelfCommunicator() : Communicator(0, 1) {}
  std::string_view backend() const override { return "self"; }

 protected:
  Work do_all_reduce(Tensor x, ReduceOp op, bool async) override;
  Work do_reduce_scatter(Tensor out, Tensor in, ReduceOp op, bool async) override;
  Work do_all_gather(Tensor out, Tensor in, bool async) override;
  Work do_broadcast(Tensor x, int root, bool async) override;
  Work do_send(Tensor x, int dst, int tag, bool async) override;
  Work do_recv(Tensor x, int src, int tag, bool async) override;
  Work do_all_to_all(Tensor out, Tensor in, bool async) override;
  Work do_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                       std::span<const int64_t> send_counts, bool async) override;
  void do_barrier() override {}
  std::unique_ptr<Communicator> do_split(int color, int key) override;
  int do_ranks_on_host() override { return 1; }
  bool work_test(uint32_t slot) override;
  void work_wait(uint32_t slot) override;
};

}  // namespace keel::parallel
