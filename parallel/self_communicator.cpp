#include "parallel/self_communicator.h"

#include <cstring>

namespace keel::parallel {

namespace {

// in and out hold the same bytes unless they are the same memory (in place).
void copy_bytes(const Tensor& out, const Tensor& in, size_t bytes) {
  if (bytes != 0 && out.data() != in.data()) std::memmove(out.data(), in.data(), bytes);
}

}  // namespace

// Every operation completes at once, so no Work is ever pending.

Work SelfCommunicator::do_all_reduce(Tensor, ReduceOp, bool) { return Work(); }

Work SelfCommunicator::do_reduce_scatter(Tensor out, Tensor in, ReduceOp, bool) {
  copy_bytes(out, in, out.nbytes());
  return Work();
}

Work SelfCommunicator::do_all_gather(Tensor out, Tensor in, bool) {
  copy_bytes(out, in, in.nbytes());
  return Work();
}

Work SelfCommunicator::do_broadcast(Tensor, int, bool) { return Work(); }

// Unreachable: the base class rejects a peer equal to oneself, the only rank there is.
Work SelfCommunicator::do_send(Tensor, int, int, bool) {
  KEEL_FAIL("send on a communicator of one rank");
}

Work SelfCommunicator::do_recv(Tensor, int, int, bool) {
  KEEL_FAIL("recv on a communicator of one rank");
}

Work SelfCommunicator::do_all_to_all(Tensor out, Tensor in, bool) {
  copy_bytes(out, in, in.nbytes());
  return Work();
}

Work SelfCommunicator::do_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                                       std::span<const int64_t> send_counts, bool) {
  KEEL_CHECK(recv_counts[0] == send_counts[0],
             "all_to_all_v: rank 0 sends itself {} elements but expects {}", send_counts[0],
             recv_counts[0]);
  copy_bytes(out, in, static_cast<size_t>(send_counts[0]) * dtype_size(in.dtype()));
  return Work();
}

std::unique_ptr<Communicator> SelfCommunicator::do_split(int color, int) {
  if (color == kNoColor) return nullptr;
  return std::make_unique<SelfCommunicator>();
}

bool SelfCommunicator::work_test(uint32_t) { return true; }

void SelfCommunicator::work_wait(uint32_t) {}

}  // namespace keel::parallel
