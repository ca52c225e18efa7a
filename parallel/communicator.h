// The Communicator interface every collective in keel goes through, its move-only Work handle for
// asynchronous calls, and CommStats, the per-communicator counters of calls and bytes that tests
// hold against theory. Backends (MPI on host memory now, NCCL on device memory later) implement
// the protected do_* hooks; the public calls validate arguments and count bytes once, here, so
// every backend checks and counts alike. The contract is written out in docs/PARALLEL.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "kernels/tensor.h"
#include "parallel/activity.h"

namespace keel::parallel {

enum class ReduceOp : uint8_t { kSum, kMax };
std::string_view reduce_op_name(ReduceOp op);

// The operations CommStats counts, one counter each.
enum class CommOp : uint8_t {
  kAllReduce,
  kReduceScatter,
  kAllGather,
  kBroadcast,
  kSend,
  kRecv,
  kAllToAll,
  kAllToAllV,
  kBarrier,
};
inline constexpr int kNumCommOps = 9;
// "all_reduce", "reduce_scatter", ...
std::string_view comm_op_name(CommOp op);
// "150 B", "1.5 KiB", "12.0 MiB".
std::string format_bytes(uint64_t bytes);
// "all_reduce over dp, 4.0 MiB".
std::string describe_collective(CommOp op, const char* group, uint64_t bytes);

// Bytes, as CommStats counts them: the algorithm-independent bus bytes of a call on one rank, that
// is the traffic each rank's link must carry under a bandwidth-optimal algorithm (the "bus
// bandwidth" convention of nccl-tests), for a payload of n bytes on a group of N ranks:
//   all_reduce      2·n·(N−1)/N     n = the buffer
//   reduce_scatter  n·(N−1)/N       n = the full input (N chunks)
//   all_gather      n·(N−1)/N       n = the full output (N chunks)
//   all_to_all      n·(N−1)/N       n = the full input (the chunks that leave the rank)
//   broadcast       n (N > 1)       every rank but one forwards the whole buffer in a pipeline
//   send / recv     n               counted on the sender (send) and the receiver (recv)
//   all_to_all_v    Σ_{j≠rank} send_count[j]·element size   (exact: what leaves this rank)
//   barrier         0
// Every formula is 0 when N = 1; fractions are rounded down. A call is counted once the backend
// has issued it without error (an asynchronous one when it starts, not when it completes).
uint64_t all_reduce_bytes(uint64_t n, int ranks);
uint64_t reduce_scatter_bytes(uint64_t full_bytes, int ranks);
uint64_t all_gather_bytes(uint64_t full_bytes, int ranks);
uint64_t broadcast_bytes(uint64_t n, int ranks);

struct OpCounter {
  uint64_t calls = 0;
  uint64_t bytes = 0;
  bool operator==(const OpCounter&) const = default;
};

class CommStats {
 public:
  const OpCounter& operator[](CommOp op) const { return ops_[static_cast<size_t>(op)]; }
  void add(CommOp op, uint64_t bytes);
  void reset() { ops_ = {}; }
  uint64_t total_bytes() const;
  uint64_t total_calls() const;
  CommStats& operator+=(const CommStats& o);
  // "all_reduce 3 calls 12.0 MiB, reduce_scatter ..." (ops never called are left out).
  std::string describe() const;

 private:
  std::array<OpCounter, kNumCommOps> ops_{};
};

class Communicator;

// The handle of an asynchronous call: the buffers it names must stay alive and untouched until
// wait() returns or test() returns true. Move-only; a handle destroyed while still pending waits
// for its operation (a warning, never an exception, if that fails). A default-constructed handle
// is complete. It must not outlive its communicator.
class [[nodiscard]] Work {
 public:
  Work() = default;
  ~Work();
  Work(Work&& o) noexcept;
  Work& operator=(Work&& o) noexcept;
  Work(const Work&) = delete;
  Work& operator=(const Work&) = delete;

  // Blocks until the operation is done; throws keel::Error if it failed. Free once complete.
  void wait();
  // True when the operation is done (then wait() returns at once). Also drives progress: MPI
  // advances non-blocking collectives only inside MPI calls, so a loop that overlaps compute with
  // communication should test() now and then.
  bool test();
  bool pending() const { return owner_ != nullptr; }

 private:
  friend class Communicator;
  Work(Communicator* owner, uint32_t slot) : owner_(owner), slot_(slot) {}
  void wait_noexcept() noexcept;
  Communicator* owner_ = nullptr;
  uint32_t slot_ = 0;
  // What wait() blocks in, for the owner's Activity.
  CommOp op_{};
  uint64_t bytes_ = 0;
};

// A group of ranks and the collectives among them. Buffers are Tensors (contiguous; any shape,
// only the element count matters) on the communicator's device(): host memory for MPI. For speed
// they should be long-lived, pre-faulted memory (a MemoryPlan or HostBuffer): keel's own code
// allocates nothing per call, and the MPI backend routes large blocking reductions through a ring
// on persistent scratch because MPI's own allocate per call (docs/PARALLEL.md).
//
// Every rank of the group must make the same calls in the same order with matching sizes. Not
// thread-safe: one thread per communicator. MPI runs with MPI_THREAD_MULTIPLE so that the
// heartbeat thread (parallel/heartbeat.h) can talk over its own duplicate of the world while the
// training thread is inside a collective; keel's communicators are still each used by one thread.
// Errors are keel::Error: bad arguments before anything is sent, backend failures with the
// backend's message.
//
// Ops: all_reduce and reduce_scatter take ReduceOp kSum or kMax on F32, F64, I32, I64 and BF16
// (BF16 adds in fp32 and rounds each partial result to bf16); movement ops take any dtype.
class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // "mpi", "self", ...
  virtual std::string_view backend() const = 0;
  // Where buffers must live.
  virtual Device device() const { return Device::cpu(); }

  // x ← op over ranks of x, in place.
  void all_reduce(Tensor x, ReduceOp op = ReduceOp::kSum);
  Work all_reduce_async(Tensor x, ReduceOp op = ReduceOp::kSum);

  // in holds size() equal chunks; out ← op over ranks of chunk rank(). out either does not overlap
  // in, or is exactly in's chunk rank() (the ZeRO layout: the shard is a slice of the full
  // gradient buffer), in which case the rest of in is left undefined.
  void reduce_scatter(Tensor out, Tensor in, ReduceOp op = ReduceOp::kSum);
  Work reduce_scatter_async(Tensor out, Tensor in, ReduceOp op = ReduceOp::kSum);

  // Chunk j of out ← in of rank j. in either does not overlap out, or is exactly out's chunk
  // rank() (gather in place).
  void all_gather(Tensor out, Tensor in);
  Work all_gather_async(Tensor out, Tensor in);

  // x ← x of root.
  void broadcast(Tensor x, int root);
  Work broadcast_async(Tensor x, int root);

  // Point to point with a peer of this group (not oneself); tags in [0, kMaxTag] match a send to
  // its recv, which must have the same element count and dtype. Tags above kMaxTag (up to 32767,
  // the least every MPI supports) are reserved for the backends' own messages.
  static constexpr int kMaxTag = 32000;
  void send(Tensor x, int dst, int tag = 0);
  Work send_async(Tensor x, int dst, int tag = 0);
  void recv(Tensor x, int src, int tag = 0);
  Work recv_async(Tensor x, int src, int tag = 0);

  // Chunk j of in (size() equal chunks) goes to rank j and lands in chunk rank() of its out.
  // MoE dispatch uses it to exchange per-expert token counts before all_to_all_v.
  void all_to_all(Tensor out, Tensor in);
  Work all_to_all_async(Tensor out, Tensor in);

  // send_counts[j] elements go to rank j, taken consecutively from the start of in (rank 0's
  // first); recv_counts[j] elements arrive from rank j, stored consecutively from the start of
  // out. recv_counts[j] must equal rank j's send_counts[rank()]. The count spans are copied when
  // the call is issued. in and out must not overlap.
  void all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                    std::span<const int64_t> send_counts);
  Work all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                          std::span<const int64_t> send_counts);

  void barrier();

  // A new communicator over the ranks of this one that pass the same color, ordered by key (ties
  // by rank here). Collective over this communicator. color kNoColor takes no part and gets
  // nullptr. The child starts with zeroed stats.
  static constexpr int kNoColor = -1;
  std::unique_ptr<Communicator> split(int color, int key);

  // How many ranks of this group run on this rank's host, itself included: they share its memory
  // (runtime/train/memory_limit.h divides the host's memory by it). Collective over this
  // communicator.
  int ranks_on_host() { return do_ranks_on_host(); }

  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_.reset(); }

  // Where this communicator records the blocking collective it is in (and an asynchronous one
  // while Work::wait() blocks), for hang reports: null (the default) records nothing. name is
  // the group's, as reports say it ("world", "dp", ...), a literal: the heartbeat thread reads it.
  // Communicators split from this one inherit both; ProcessGrid renames its groups.
  void set_activity(Activity* activity) { activity_ = activity; }
  Activity* activity() const { return activity_; }
  void set_name(const char* name) { name_ = name; }
  const char* name() const { return name_; }

 protected:
  Communicator(int rank, int size);

  // The backend's implementations, called after validation and counting. With async false they
  // complete before returning and return an empty Work; with async true they may return a pending
  // Work made by make_work().
  virtual Work do_all_reduce(Tensor x, ReduceOp op, bool async) = 0;
  virtual Work do_reduce_scatter(Tensor out, Tensor in, ReduceOp op, bool async) = 0;
  virtual Work do_all_gather(Tensor out, Tensor in, bool async) = 0;
  virtual Work do_broadcast(Tensor x, int root, bool async) = 0;
  virtual Work do_send(Tensor x, int dst, int tag, bool async) = 0;
  virtual Work do_recv(Tensor x, int src, int tag, bool async) = 0;
  virtual Work do_all_to_all(Tensor out, Tensor in, bool async) = 0;
  virtual Work do_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                               std::span<const int64_t> send_counts, bool async) = 0;
  virtual void do_barrier() = 0;
  virtual std::unique_ptr<Communicator> do_split(int color, int key) = 0;
  // Not pure, so that a backend that cannot tell (NCCL: its ranks' hosts are its bootstrap's) need
  // not pretend: the default throws, naming the backend.
  virtual int do_ranks_on_host();

  // Pending-operation slots are the backend's: a Work names one by number. work_test returns true
  // once the slot's operation is done and then releases the slot; work_wait blocks, releases the
  // slot (also when it fails) and throws on failure.
  Work make_work(uint32_t slot) { return Work(this, slot); }
  virtual bool work_test(uint32_t slot) = 0;
  virtual void work_wait(uint32_t slot) = 0;

 private:
  friend class Work;
  void check_buffer(const Tensor& t, const char* what, const char* op) const;
  void check_reducible(const Tensor& t, const char* op) const;
  void check_peer(int peer, const char* what, const char* op) const;
  Work checked_all_reduce(Tensor x, ReduceOp op, bool async);
  Work checked_reduce_scatter(Tensor out, Tensor in, ReduceOp op, bool async);
  Work checked_all_gather(Tensor out, Tensor in, bool async);
  Work checked_broadcast(Tensor x, int root, bool async);
  Work checked_send(Tensor x, int dst, int tag, bool async);
  Work checked_recv(Tensor x, int src, int tag, bool async);
  Work checked_all_to_all(Tensor out, Tensor in, bool async);
  Work checked_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                            std::span<const int64_t> send_counts, bool async);

  // start() (the backend's do_*) inside an Activity::Scope when the call blocks; an asynchronous
  // call's Work is stamped with op and bytes instead, recorded while its wait() blocks.
  template <class Start>
  Work issue(CommOp op, uint64_t bytes, bool async, Start start);

  int rank_;
  int size_;
  CommStats stats_;
  Activity* activity_ = nullptr;
  const char* name_ = "";
};

// Tensor views of host arrays, for callers that hold plain vectors (tests, small metadata).
template <class T>
constexpr DType host_dtype() {
  if constexpr (std::is_same_v<T, float>) return DType::F32;
  if constexpr (std::is_same_v<T, double>) return DType::F64;
  if constexpr (std::is_same_v<T, int32_t>) return DType::I32;
  if constexpr (std::is_same_v<T, int64_t>) return DType::I64;
  if constexpr (std::is_same_v<T, int8_t>) return DType::I8;
  if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, std::byte>) return DType::U8;
  static_assert(sizeof(T) == 0 || std::is_same_v<T, float> || std::is_same_v<T, double> ||
                    std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t> ||
                    std::is_same_v<T, int8_t> || std::is_same_v<T, uint8_t> ||
                    std::is_same_v<T, std::byte>,
                "no keel DType for this element type (bf16 is uint16_t: use host_view_bf16)");
  return DType::U8;
}

template <class T>
Tensor host_view(T* data, size_t n) {
  return Tensor(data, host_dtype<T>(), Shape{static_cast<int64_t>(n)});
}
template <class T>
Tensor host_view(std::vector<T>& v) {
  return host_view(v.data(), v.size());
}
// bf16 values stored as their 16 bits (kernels/dtype.h's f32_to_bf16).
inline Tensor host_view_bf16(uint16_t* data, size_t n) {
  return Tensor(data, DType::BF16, Shape{static_cast<int64_t>(n)});
}
inline Tensor host_view_bf16(std::vector<uint16_t>& v) {
  return host_view_bf16(v.data(), v.size());
}

// Every rank's `text`, in rank order (collective over comm; for metadata, not data: padded to the
// longest, with no NUL bytes inside).
std::vector<std::string> all_gather_text(Communicator& comm, const std::string& text);

}  // namespace keel::parallel
