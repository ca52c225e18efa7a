#include "parallel/mpi_communicator.h"

#include <climits>
#include <cstdio>
#include <cstring>

#include "parallel/reduce.h"

namespace keel::parallel {

// ---- errors -------------------------------------------------------------------------------------

void raise_mpi_error(int code, const char* expr, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
    std::snprintf(text, sizeof text, "MPI error code %d", code);
  const WorldPosition at = world_position();
  raise_error(file, line,
              format("MPI failed: {} in {} (rank {} of {})", text, expr, at.rank, at.size));
}

WorldPosition world_position() noexcept {
  WorldPosition at;
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    at.running = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &at.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &at.size);
  }
  return at;
}

// ---- bf16 reductions: fp32 arithmetic, rounded back to bf16 once per pairwise step ------------

namespace {

extern "C" void keel_bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_buffers(inout, in, inout, *len, DType::BF16, ReduceOp::kSum);
}

extern "C" void keel_bf16_max(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_buffers(inout, in, inout, *len, DType::BF16, ReduceOp::kMax);
}

}  // namespace

MPI_Datatype mpi_type(DType d) {
  switch (d) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::I8: return MPI_INT8_T;
    case DType::U8: return MPI_UINT8_T;
    case DType::BF16:
    case DType::F16: return MPI_UINT16_T;  // moved as 16-bit words; BF16 reduces with user ops
  }
  return MPI_DATATYPE_NULL;
}

namespace {

// MPI counts are int: one call moves at most INT_MAX elements.
int mpi_count(int64_t n, const char* op) {
  KEEL_CHECK(n <= INT_MAX,
             "{}: {} elements is more than one MPI call can move ({}); split the buffer", op, n,
             INT_MAX);
  return static_cast<int>(n);
}

// Runs f on scope exit unless dismissed: an MPI_I* call that fails must not leak its slot.
template <class F>
class OnFailure {
 public:
  explicit OnFailure(F f) : f_(f) {}
  ~OnFailure() {
    if (armed_) f_();
  }
  OnFailure(const OnFailure&) = delete;
  OnFailure& operator=(const OnFailure&) = delete;
  void dismiss() { armed_ = false; }

 private:
  F f_;
  bool armed_ = true;
};

// True when the non-empty range of a starts inside b.
bool starts_inside(const Tensor& a, const Tensor& b) {
  const auto* pa = static_cast<const char*>(a.data());
  const auto* pb = static_cast<const char*>(b.data());
  return a.nbytes() != 0 && pa >= pb && pa < pb + b.nbytes();
}

}  // namespace

// ---- construction -------------------------------------------------------------------------------

MpiCommunicator::MpiCommunicator(MPI_Comm comm, int rank, int size)
    : Communicator(rank, size), comm_(comm), blocking_counts_(4 * static_cast<size_t>(size)) {
  KEEL_MPI(MPI_Op_create(&keel_bf16_sum, 1, &bf16_sum_));
  KEEL_MPI(MPI_Op_create(&keel_bf16_max, 1, &bf16_max_));
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::adopt(MPI_Comm comm) {
  // Errors come back as codes that KEEL_MPI turns into exceptions, instead of aborting the job
  // from inside MPI with no context.
  const int rc = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0, size = 0;
  if (rc == MPI_SUCCESS) {
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
  }
  if (rc != MPI_SUCCESS) {
    MPI_Comm_free(&comm);
    KEEL_MPI(rc);
  }
  try {
    return std::unique_ptr<MpiCommunicator>(new MpiCommunicator(comm, rank, size));
  } catch (...) {
    MPI_Comm_free(&comm);
    throw;
  }
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::duplicate(MPI_Comm comm) {
  MPI_Comm dup = MPI_COMM_NULL;
  KEEL_MPI(MPI_Comm_dup(comm, &dup));
  return adopt(dup);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;  // MPI already gone: nothing can be freed any more
  for (uint32_t s = 0; s < pending_.size(); ++s) {
    Pending& p = pending_[s];
    if (!p.busy) continue;
    if (p.ring.active) {  // the other ranks need this rank's part of the ring to finish theirs
      try {
        drive_async_ring(s, true);
      } catch (const std::exception& e) {
        std::fprintf(stderr,
                     "keel: warning: a pending ring reduce-scatter failed while its "
                     "communicator was destroyed: %s\n",
                     e.what());
      }
      continue;
    }
    if (MPI_Wait(&p.request, MPI_STATUS_IGNORE) != MPI_SUCCESS)
      std::fprintf(stderr,
                   "keel: warning: a pending MPI operation failed while its "
                   "communicator was destroyed\n");
    p.busy = false;
  }
  MPI_Op_free(&bf16_sum_);
  MPI_Op_free(&bf16_max_);
  MPI_Comm_free(&comm_);
}

MPI_Op MpiCommunicator::mpi_op(ReduceOp op, DType dtype) const {
  if (dtype == DType::BF16) return op == ReduceOp::kSum ? bf16_sum_ : bf16_max_;
  return op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
}

// ---- pending-operation slots --------------------------------------------------------------------

uint32_t MpiCommunicator::acquire_slot() {
  for (uint32_t s = 0; s < pending_.size(); ++s) {
    if (pending_[s].busy) continue;
    Pending& p = pending_[s];
    p.busy = true;
    p.request = MPI_REQUEST_NULL;
    p.copy_to = nullptr;
    p.copy_from = nullptr;
    p.copy_bytes = 0;
    p.recv_count = -1;
    return s;
  }
  KEEL_FAIL(
      "more than {} asynchronous operations are in flight on one communicator; wait() on "
      "some before starting more",
      kMaxInFlight);
}

void MpiCommunicator::release_slot(uint32_t slot) {
  pending_[slot].busy = false;
  pending_[slot].request = MPI_REQUEST_NULL;
}

void MpiCommunicator::finish(uint32_t slot, const MPI_Status& status) {
  const Pending& p = pending_[slot];
  void* const copy_to = p.copy_to;
  const void* const copy_from = p.copy_from;
  const size_t copy_bytes = p.copy_bytes;
  const MPI_Datatype recv_type = p.recv_type;
  const int recv_count = p.recv_count, peer = p.peer, tag = p.tag;
  release_slot(slot);
  if (copy_bytes != 0) std::memcpy(copy_to, copy_from, copy_bytes);
  if (recv_count >= 0) {
    MPI_Status st = status;
    int got = 0;
    KEEL_MPI(MPI_Get_count(&st, recv_type, &got));
    KEEL_CHECK(got == recv_count,
               "recv: expected {} elements from rank {} (tag {}) but the message held {}",
               recv_count, peer, tag, got);
  }
}

bool MpiCommunicator::drive_async_ring(uint32_t slot, bool block) {
  bool done = false;
  try {
    done = advance_async_ring(slot, block);
  } catch (...) {
    pending_[slot].ring.active = false;
    release_slot(slot);
    throw;
  }
  if (done) release_slot(slot);
  return done;
}

bool MpiCommunicator::work_test(uint32_t slot) {
  if (pending_[slot].ring.active) return drive_async_ring(slot, false);
  int flag = 0;
  MPI_Status status;
  const int rc = MPI_Test(&pending_[slot].request, &flag, &status);
  if (rc != MPI_SUCCESS) {
    release_slot(slot);
    KEEL_MPI(rc);
  }
  if (flag) finish(slot, status);
  return flag != 0;
}

void MpiCommunicator::work_wait(uint32_t slot) {
  if (pending_[slot].ring.active) {
    drive_async_ring(slot, true);
    return;
  }
  MPI_Status status;
  const int rc = MPI_Wait(&pending_[slot].request, &status);
  if (rc != MPI_SUCCESS) {
    release_slot(slot);
    KEEL_MPI(rc);
  }
  finish(slot, status);
}

// ---- collectives --------------------------------------------------------------------------------
// Each op: the blocking MPI call, or its MPI_I* twin on a slot. Nothing here allocates (the
// all_to_all_v slot arrays only on a slot's first use).

#define KEEL_MPI_START(call)                         \
  do {                                               \
    OnFailure guard([this, s] { release_slot(s); }); \
    KEEL_MPI(call);                                  \
    guard.dismiss();                                 \
  } while (0)

Work MpiCommunicator::do_all_reduce(Tensor x, ReduceOp op, bool async) {
  const int n = mpi_count(x.numel(), "all_reduce");
  const MPI_Datatype t = mpi_type(x.dtype());
  const MPI_Op o = mpi_op(op, x.dtype());
  if (use_ring(x.nbytes(), async)) {
    const int64_t mine = x.numel() * rank() / size();
    ring_reduce_scatter(x, static_cast<char*>(x.data()) + mine * dtype_size(x.dtype()), op);
    ring_all_gather(x);
    return Work();
  }
  if (!async) {
    KEEL_MPI(MPI_Allreduce(MPI_IN_PLACE, x.data(), n, t, o, comm_));
    return Work();
  }
  const uint32_t s = acquire_slot();
  KEEL_MPI_START(MPI_Iallreduce(MPI_IN_PLACE, x.data(), n, t, o, comm_, &pending_[s].request));
  return make_work(s);
}

Work MpiCommunicator::do_reduce_scatter(Tensor out, Tensor in, ReduceOp op, bool async) {
  const int n = mpi_count(out.numel(), "reduce_scatter");
  const MPI_Datatype t = mpi_type(in.dtype());
  const MPI_Op o = mpi_op(op, in.dtype());
  // The base class allows out to be exactly this rank's chunk of in. MPI has no such mode: reduce
  // in place (the result lands at the start of in), then move it to the chunk.
  const bool aliased = starts_inside(out, in);
  const void* send = aliased ? MPI_IN_PLACE : in.data();
  void* recv = aliased ? in.data() : out.data();
  const size_t move = (aliased && out.data() != in.data()) ? out.nbytes() : 0;
  if (use_ring(in.nbytes(), async)) {
    ring_reduce_scatter(in, out.data(), op);  // reads in, writes out: aliasing is fine
    return Work();
  }
  if (async && size() > 1 && in.nbytes() >= tuning_.ring_min_bytes) {
    const uint32_t s = acquire_slot();
    OnFailure guard([this, s] {
      pending_[s].ring.active = false;
      release_slot(s);
    });
    start_async_ring(s, in, out.data(), op);  // as the blocking ring: aliasing is fine
    guard.dismiss();
    return make_work(s);
  }
  if (!async) {
    KEEL_MPI(MPI_Reduce_scatter_block(send, recv, n, t, o, comm_));
    if (move != 0) std::memcpy(out.data(), in.data(), move);
    return Work();
  }
  const uint32_t s = acquire_slot();
  Pending& p = pending_[s];
  p.copy_to = out.data();
  p.copy_from = in.data();
  p.copy_bytes = move;
  KEEL_MPI_START(MPI_Ireduce_scatter_block(send, recv, n, t, o, comm_, &p.request));
  return make_work(s);
}

Work MpiCommunicator::do_all_gather(Tensor out, Tensor in, bool async) {
  const int n = mpi_count(in.numel(), "all_gather");
  const MPI_Datatype t = mpi_type(in.dtype());
  // The base class allows in to be exactly this rank's chunk of out: MPI's in-place gather.
  const bool in_place = starts_inside(in, out);
  const void* send = in_place ? MPI_IN_PLACE : in.data();
  const int send_n = in_place ? 0 : n;
  const MPI_Datatype send_t = in_place ? MPI_DATATYPE_NULL : t;
  if (!async) {
    KEEL_MPI(MPI_Allgather(send, send_n, send_t, out.data(), n, t, comm_));
    return Work();
  }
  const uint32_t s = acquire_slot();
  KEEL_MPI_START(
      MPI_Iallgather(send, send_n, send_t, out.data(), n, t, comm_, &pending_[s].request));
  return make_work(s);
}

Work MpiCommunicator::do_broadcast(Tensor x, int root, bool async) {
  const int n = mpi_count(x.numel(), "broadcast");
  const MPI_Datatype t = mpi_type(x.dtype());
  if (!async) {
    KEEL_MPI(MPI_Bcast(x.data(), n, t, root, comm_));
    return Work();
  }
  const uint32_t s = acquire_slot();
  KEEL_MPI_START(MPI_Ibcast(x.data(), n, t, root, comm_, &pending_[s].request));
  return make_work(s);
}

Work MpiCommunicator::do_send(Tensor x, int dst, int tag, bool async) {
  const int n = mpi_count(x.numel(), "send");
  const MPI_Datatype t = mpi_type(x.dtype());
  if (!async) {
    KEEL_MPI(MPI_Send(x.data(), n, t, dst, tag, comm_));
    return Work();
  }
  const uint32_t s = acquire_slot();
  KEEL_MPI_START(MPI_Isend(x.data(), n, t, dst, tag, comm_, &pending_[s].request));
  return make_work(s);
}

Work MpiCommunicator::do_recv(Tensor x, int src, int tag, bool async) {
  const int n = mpi_count(x.numel(), "recv");
  const MPI_Datatype t = mpi_type(x.dtype());
  if (!async) {
    MPI_Status status;
    KEEL_MPI(MPI_Recv(x.data(), n, t, src, tag, comm_, &status));
    int got = 0;
    KEEL_MPI(MPI_Get_count(&status, t, &got));
    KEEL_CHECK(got == n, "recv: expected {} elements from rank {} (tag {}) but the message held {}",
               n, src, tag, got);
    return Work();
  }
  const uint32_t s = acquire_slot();
  Pending& p = pending_[s];
  p.recv_type = t;
  p.recv_count = n;
  p.peer = src;
  p.tag = tag;
  KEEL_MPI_START(MPI_Irecv(x.data(), n, t, src, tag, comm_, &p.request));
  return make_work(s);
}

Work MpiCommunicator::do_all_to_all(Tensor out, Tensor in, bool async) {
  const int n = mpi_count(in.numel() / size(), "all_to_all");
  const MPI_Datatype t = mpi_type(in.dtype());
  if (!async) {
    KEEL_MPI(MPI_Alltoall(in.data(), n, t, out.data(), n, t, comm_));
    return Work();
  }
  const uint32_t s = acquire_slot();
  KEEL_MPI_START(MPI_Ialltoall(in.data(), n, t, out.data(), n, t, comm_, &pending_[s].request));
  return make_work(s);
}

void MpiCommunicator::fill_counts(std::span<const int64_t> recv_counts,
                                  std::span<const int64_t> send_counts,
                                  std::vector<int>& counts) const {
  const auto n = static_cast<size_t>(size());
  if (counts.size() != 4 * n) counts.resize(4 * n);
  int* sc = counts.data();
  int* sd = sc + n;
  int* rc = sd + n;
  int* rd = rc + n;
  int64_t soff = 0, roff = 0;
  for (size_t j = 0; j < n; ++j) {
    sc[j] = mpi_count(send_counts[j], "all_to_all_v");
    rc[j] = mpi_count(recv_counts[j], "all_to_all_v");
    sd[j] = mpi_count(soff, "all_to_all_v (send offset)");
    rd[j] = mpi_count(roff, "all_to_all_v (receive offset)");
    soff += send_counts[j];
    roff += recv_counts[j];
  }
}

Work MpiCommunicator::do_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                                      std::span<const int64_t> send_counts, bool async) {
  const MPI_Datatype t = mpi_type(in.dtype());
  const auto n = static_cast<size_t>(size());
  if (!async) {
    fill_counts(recv_counts, send_counts, blocking_counts_);
    const int* c = blocking_counts_.data();
    KEEL_MPI(MPI_Alltoallv(in.data(), c, c + n, t, out.data(), c + 2 * n, c + 3 * n, t, comm_));
    return Work();
  }
  const uint32_t s = acquire_slot();
  Pending& p = pending_[s];
  {
    OnFailure guard([this, s] { release_slot(s); });
    fill_counts(recv_counts, send_counts, p.counts);
    guard.dismiss();
  }
  const int* c = p.counts.data();
  KEEL_MPI_START(MPI_Ialltoallv(in.data(), c, c + n, t, out.data(), c + 2 * n, c + 3 * n, t, comm_,
                                &p.request));
  return make_work(s);
}

#undef KEEL_MPI_START

void MpiCommunicator::do_barrier() { KEEL_MPI(MPI_Barrier(comm_)); }

std::unique_ptr<Communicator> MpiCommunicator::do_split(int color, int key) {
  MPI_Comm child = MPI_COMM_NULL;
  KEEL_MPI(MPI_Comm_split(comm_, color == kNoColor ? MPI_UNDEFINED : color, key, &child));
  if (child == MPI_COMM_NULL) return nullptr;
  std::unique_ptr<MpiCommunicator> c = adopt(child);
  c->tuning_ = tuning_;
  // One scratch for the family: their blocking calls never run at the same time (one thread).
  if (!scratch_) scratch_ = new_scratch();
  c->scratch_ = scratch_;
  return c;
}

int MpiCommunicator::do_ranks_on_host() {
  MPI_Comm host = MPI_COMM_NULL;
  KEEL_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank(), MPI_INFO_NULL, &host));
  int size = 0;
  const int rc = MPI_Comm_size(host, &size);
  MPI_Comm_free(&host);
  KEEL_MPI(rc);
  return size;
}

}  // namespace keel::parallel
