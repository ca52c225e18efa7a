// The MPI backend: MpiSession (MPI_Init_thread / MPI_Finalize as an RAII object, and the job-wide
// abort), MpiCommunicator (Communicator over an MPI communicator, host memory), and KEEL_MPI, the
// check that turns an MPI error code into a keel::Error with MPI's message. Built when CMake finds
// MPI (KEEL_MPI=AUTO/ON); docs/PARALLEL.md describes the contract.
#pragma once

#include <mpi.h>

#include <array>
#include <memory>
#include <string_view>
#include <vector>

#include "kernels/memory_plan.h"
#include "parallel/communicator.h"

namespace keel::parallel {

// Where this process stands in MPI_COMM_WORLD, for messages: not running (rank -1 of 0) before
// MPI_Init and after MPI_Finalize.
struct WorldPosition {
  bool running = false;
  int rank = -1, size = 0;
};
WorldPosition world_position() noexcept;

// Throws keel::Error: "<MPI's error string> in <expr> (rank R of N)", raised at file:line.
[[noreturn]] void raise_mpi_error(int code, const char* expr, const char* file, int line);

// The MPI datatype that moves elements of a DType (BF16 and F16 as 16-bit words).
MPI_Datatype mpi_type(DType dtype);

}  // namespace keel::parallel

// KEEL_MPI(MPI_Allreduce(...)): throws keel::Error when the call does not return MPI_SUCCESS.
// Needs MPI_ERRORS_RETURN on the communicator, which keel sets on every one it makes.
#define KEEL_MPI(expr)                                                            \
  do {                                                                            \
    const int keel_mpi_rc_ = (expr);                                              \
    if (keel_mpi_rc_ != MPI_SUCCESS)                                              \
      ::keel::parallel::raise_mpi_error(keel_mpi_rc_, #expr, __FILE__, __LINE__); \
  } while (0)

namespace keel::parallel {

// When MpiCommunicator runs its own ring instead of MPI's collective. MPI's reduction algorithms
// malloc temporary buffers inside each call (as large as the message), and above glibc's mmap
// threshold every such call pays fresh page faults; keel's ring reuses two persistent pre-faulted
// segments. docs/PARALLEL.md has the measurements behind the defaults.
struct MpiTuning {
  // all_reduce and reduce_scatter of at least this many bytes (the full buffer) run the ring
  // (asynchronous reduce_scatter too, without blocking); smaller ones, asynchronous all_reduce,
  // and the other collectives use MPI's.
  size_t ring_min_bytes = size_t{1} << 20;
  // The ring moves and reduces this many bytes per message; its scratch is two segments, mapped on
  // the first ring call and shared by every communicator split from the same one.
  size_t segment_bytes = size_t{4} << 20;
  // Asynchronous reduce_scatter of at least ring_min_bytes runs a non-blocking ring, advanced by
  // test() and wait(), with segments of this size: two per pending call, kept for the next.
  size_t async_segment_bytes = size_t{1} << 20;
};

class MpiCommunicator final : public Communicator {
 public:
  // Asynchronous calls that may be pending at once on one communicator.
  static constexpr int kMaxInFlight = 32;
  // The tag of the ring's messages: above every user tag, so they never match a send or recv.
  static constexpr int kRingTag = kMaxTag + 1;
  // Tags of the non-blocking rings: kAsyncRingTag + (call number mod kAsyncRingTags), so that
  // rings in flight together never match each other's messages.
  static constexpr int kAsyncRingTag = kRingTag + 1;
  static constexpr int kAsyncRingTags = 2 * kMaxInFlight;

  // A communicator over a duplicate of comm (so keel's messages never match anyone else's); the
  // caller keeps comm. Collective over comm.
  static std::unique_ptr<MpiCommunicator> duplicate(MPI_Comm comm);
  // Waits for pending operations, frees the MPI communicator; never throws.
  ~MpiCommunicator() override;

  std::string_view backend() const override { return "mpi"; }
  MPI_Comm handle() const { return comm_; }

  // Communicators split from this one inherit its tuning.
  void set_tuning(const MpiTuning& tuning);
  const MpiTuning& tuning() const { return tuning_; }

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
  // MPI_Comm_split_type(MPI_COMM_TYPE_SHARED): the ranks that can share memory with this one.
  int do_ranks_on_host() override;
  bool work_test(uint32_t slot) override;
  void work_wait(uint32_t slot) override;

 private:
  // A non-blocking ring reduce-scatter in progress (mpi_ring.cpp): the blocking ring's
  // steps, each a posted MPI_Irecv + MPI_Isend completed by test() or wait(). Its two segments
  // stay with the slot for its next use, so a steady stream of calls allocates nothing.
  struct AsyncRing {
    bool active = false;
    const char* src = nullptr;  // the input, size() chunks
    char* dst = nullptr;        // the reduced chunk rank()
    int64_t n = 0;              // elements of the input
    DType dtype = DType::F32;
    ReduceOp op = ReduceOp::kSum;
    int tag = 0;         // one per call in flight, the same on every rank
    int64_t seg = 0;     // elements per segment
    int64_t offset = 0;  // the segment under way, from the start of each chunk
    int step = 0;        // of the size() − 1 steps of that segment
    bool posted = false;
    std::array<MPI_Request, 2> requests = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
    HostBuffer recv, partial;
  };

  // One asynchronous operation in flight, and what to do when it completes.
  struct Pending {
    MPI_Request request = MPI_REQUEST_NULL;
    bool busy = false;
    // An in-place reduce_scatter leaves the result at the start of the input; moved here after.
    void* copy_to = nullptr;
    const void* copy_from = nullptr;
    size_t copy_bytes = 0;
    // A receive checks that the message had the expected size.
    MPI_Datatype recv_type = MPI_DATATYPE_NULL;
    int recv_count = -1;
    int peer = 0;
    int tag = 0;
    // all_to_all_v: send counts, send displacements, receive counts, receive displacements
    // (4 × size ints), which MPI reads until completion. Sized on the slot's first use.
    std::vector<int> counts;
    AsyncRing ring;
  };

  struct RingScratch;

  // Takes ownership of comm.
  MpiCommunicator(MPI_Comm comm, int rank, int size);
  static std::unique_ptr<MpiCommunicator> adopt(MPI_Comm comm);
  bool use_ring(size_t bytes, bool async) const;
  // The ring's two segments, mapped on first use.
  static std::shared_ptr<RingScratch> new_scratch();
  RingScratch& scratch();
  // Reduce-scatter over the ring: chunk i of in is elements [i·n/N, (i+1)·n/N); out receives the
  // reduced chunk rank(). in is only read; out may be in's chunk rank() itself.
  void ring_reduce_scatter(const Tensor& in, void* out, ReduceOp op);
  // All-gather over the ring, in place: chunk rank() of x (split as above) goes to everyone.
  void ring_all_gather(const Tensor& x);
  // The ring reduce-scatter started on slot s without blocking (mpi_ring.cpp).
  void start_async_ring(uint32_t s, const Tensor& in, void* out, ReduceOp op);
  // Advances slot s's ring as far as its messages have arrived (block: to the end); true when
  // it is complete.
  bool advance_async_ring(uint32_t s, bool block);
  // advance_async_ring, then the slot released once the ring completes or fails.
  bool drive_async_ring(uint32_t s, bool block);
  MPI_Op mpi_op(ReduceOp op, DType dtype) const;
  uint32_t acquire_slot();
  void release_slot(uint32_t slot);
  // Runs what a completed slot still owes (copy, size check) and releases it.
  void finish(uint32_t slot, const MPI_Status& status);
  // Fills counts (4 × size ints) for MPI_Alltoallv from 64-bit element counts.
  void fill_counts(std::span<const int64_t> recv_counts, std::span<const int64_t> send_counts,
                   std::vector<int>& counts) const;

  MPI_Comm comm_ = MPI_COMM_NULL;
  MpiTuning tuning_;
  std::shared_ptr<RingScratch> scratch_;  // shared with the communicators split from this one
  MPI_Op bf16_sum_ = MPI_OP_NULL;
  MPI_Op bf16_max_ = MPI_OP_NULL;
  std::array<Pending, kMaxInFlight> pending_;
  uint32_t async_rings_started_ = 0;  // names each call's tag, identically on every rank
  std::vector<int> blocking_counts_;  // all_to_all_v's arrays for blocking calls, 4 × size
};

// MPI for the life of the process: MPI_Init_thread on construction, MPI_Finalize on destruction,
// and the world communicator (a duplicate of MPI_COMM_WORLD). One per process, made first in main
// and destroyed last; the ProcessGrid and every communicator must be gone before it is.
//
// If it is destroyed by an exception unwinding the stack, finalizing would leave the other ranks
// waiting in their next collective forever, so it aborts the whole job instead (MPI_Abort).
class MpiSession {
 public:
  // level: the thread support to ask for. FUNNELED (the default): only the thread that made the
  // session calls MPI. The launcher asks for MULTIPLE, for its heartbeat thread, and takes
  // FUNNELED (min_level) from a library without it: hang detection then refuses to start, saying
  // why, while runs without it (control.hang_timeout: 0) go on. min_level -1: level itself.
  explicit MpiSession(int* argc = nullptr, char*** argv = nullptr, int level = MPI_THREAD_FUNNELED,
                      int min_level = -1);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  MpiCommunicator& world() const { return *world_; }
  int rank() const { return world_->rank(); }
  int size() const { return world_->size(); }

  // Prints "keel: rank R of N: <why>; aborting the job" on stderr and ends every rank of the job
  // with exit code `code` (MPI_Abort on MPI_COMM_WORLD). For the launcher's last-chance handler:
  // catch, call this, and no rank hangs.
  [[noreturn]] static void abort(int code, std::string_view why) noexcept;

 private:
  std::unique_ptr<MpiCommunicator> world_;
  int uncaught_at_start_ = 0;
};

}  // namespace keel::parallel
