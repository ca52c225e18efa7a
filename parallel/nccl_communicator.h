// The NCCL backend: a Communicator over CUDA device memory, one GPU per rank. NCCL's ranks are
// bootstrapped over any host communicator (MPI in a job; the one-rank SelfCommunicator alone):
// rank 0 makes the unique id and broadcasts it. Collectives run on the communicator's own stream,
// after the work already queued on the compute stream it is given; an asynchronous call returns a
// Work that waits on a CUDA event. Built when CMake finds the CUDA toolkit and NCCL (KEEL_NCCL).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <array>
#include <memory>
#include <string_view>

#include "parallel/communicator.h"

namespace keel::parallel {

// Throws keel::Error: "NCCL error <name> (<last error>) in <expr>", raised at file:line.
[[noreturn]] void raise_nccl_error(ncclResult_t result, const char* expr, const char* file,
                                   int line);

}  // namespace keel::parallel

// KEEL_NCCL(ncclAllReduce(...)): throws keel::Error unless the call returns ncclSuccess.
#define KEEL_NCCL(expr)                                                             \
  do {                                                                              \
    const ncclResult_t keel_nccl_rc_ = (expr);                                      \
    if (keel_nccl_rc_ != ncclSuccess)                                               \
      ::keel::parallel::raise_nccl_error(keel_nccl_rc_, #expr, __FILE__, __LINE__); \
  } while (0)

namespace keel::parallel {

class NcclCommunicator final : public Communicator {
 public:
  // Asynchronous calls that may be pending at once.
  static constexpr int kMaxInFlight = 32;

  // Collective over `bootstrap` (host memory): every rank joins one NCCL communicator of
  // bootstrap.size() ranks on CUDA device `device`, which must differ between the ranks of one
  // node. The rank order is bootstrap's.
  static std::unique_ptr<NcclCommunicator> create(Communicator& bootstrap, int device);
  // Waits for pending work and destroys the NCCL communicator; never throws (it warns).
  ~NcclCommunicator() override;

  std::string_view backend() const override { return "nccl"; }
  Device device() const override { return Device::cuda(device_); }
  // The stream the collectives run on.
  cudaStream_t stream() const { return stream_; }
  // Each later collective starts after the work queued on `compute` at the time of the call
  // (an event and a stream wait, no host synchronisation). Default: the legacy default stream.
  void set_compute_stream(cudaStream_t compute) { compute_ = compute; }

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
  void do_barrier() override;
  std::unique_ptr<Communicator> do_split(int color, int key) override;
  bool work_test(uint32_t slot) override;
  void work_wait(uint32_t slot) override;

 private:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device);
  // Waits for the stream, destroys the NCCL communicator and frees the CUDA objects; warns on
  // failure (the destructor, and a constructor that fails half way).
  void release() noexcept;
  // Makes the stream wait for the compute stream's queued work; call before enqueuing.
  void after_compute();
  // Completes an enqueued operation: a pending Work (async), or a stream synchronisation.
  Work finish(bool async);
  // Throws the communicator's asynchronous error, if NCCL has recorded one.
  void check_async_error();
  // Waits for the stream, then check_async_error().
  void synchronize();

  ncclComm_t comm_ = nullptr;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaStream_t compute_ = nullptr;
  cudaEvent_t compute_done_ = nullptr;
  std::array<cudaEvent_t, kMaxInFlight> events_{};
  std::array<bool, kMaxInFlight> busy_{};
  float* barrier_word_ = nullptr;  // one device float that barrier() all-reduces
};

}  // namespace keel::parallel
