// MpiCommunicator's own ring reduce-scatter and all-gather for large blocking reductions, over
// MPI_Sendrecv and two persistent pre-faulted segments: MPI's reduction collectives malloc a
// message-sized temporary inside every call (docs/PARALLEL.md, "Why keel has its own ring").
//
// The ring (N ranks, next = rank+1, prev = rank−1): reduce-scatter takes N−1 steps; at step s rank
// r sends its partial sum of chunk r−s−1 to next and receives prev's partial of chunk r−s−2, adds
// its own contribution, and after the last step holds chunk r reduced over all ranks. All-gather
// takes N−1 more steps passing the finished chunks around. Each rank sends (N−1)/N of the buffer
// per phase: the bus bytes CommStats counts. An asynchronous reduce-scatter runs the same steps
// without blocking: each step's receive and send are posted, and test() / wait() complete them,
// reduce, and post the next step.
#include <algorithm>
#include <climits>

#include "kernels/memory_plan.h"
#include "parallel/mpi_communicator.h"
#include "parallel/reduce.h"

namespace keel::parallel {

struct MpiCommunicator::RingScratch {
  HostBuffer recv;     // the segment arriving from prev
  HostBuffer partial;  // this rank's running partial sum, sent to next at the following step
};

namespace {

// Where chunk i of n elements over `ranks` begins: chunks differ in size by at most one element,
// and for n = ranks·m chunk i is [i·m, (i+1)·m).
int64_t chunk_begin(int64_t n, int ranks, int i) { return n * i / ranks; }

int ring_mod(int i, int ranks) { return ((i % ranks) + ranks) % ranks; }

// Elements of a chunk of length len that the segment at offset o holds: [o, o + seg) clipped.
int segment_len(int64_t len, int64_t o, int64_t seg) {
  return static_cast<int>(std::clamp<int64_t>(len - o, 0, seg));
}

}  // namespace

void MpiCommunicator::set_tuning(const MpiTuning& tuning) {
  KEEL_CHECK(tuning.segment_bytes >= 64 && tuning.segment_bytes <= (size_t{1} << 30),
             "MpiTuning::segment_bytes is {}; it must be in [64, 1 GiB]", tuning.segment_bytes);
  KEEL_CHECK(tuning.async_segment_bytes >= 64 && tuning.async_segment_bytes <= (size_t{1} << 30),
             "MpiTuning::async_segment_bytes is {}; it must be in [64, 1 GiB]",
             tuning.async_segment_bytes);
  tuning_ = tuning;
}

bool MpiCommunicator::use_ring(size_t bytes, bool async) const {
  return !async && size() > 1 && bytes >= tuning_.ring_min_bytes;
}

std::shared_ptr<MpiCommunicator::RingScratch> MpiCommunicator::new_scratch() {
  return std::make_shared<RingScratch>();
}

MpiCommunicator::RingScratch& MpiCommunicator::scratch() {
  if (!scratch_) scratch_ = new_scratch();
  if (scratch_->recv.size() < tuning_.segment_bytes) {
    scratch_->recv = HostBuffer(tuning_.segment_bytes);
    scratch_->partial = HostBuffer(tuning_.segment_bytes);
  }
  return *scratch_;
}

void MpiCommunicator::ring_reduce_scatter(const Tensor& in, void* out, ReduceOp op) {
  const int n_ranks = size(), r = rank();
  const int next = ring_mod(r + 1, n_ranks), prev = ring_mod(r - 1, n_ranks);
  const DType dtype = in.dtype();
  const size_t esize = dtype_size(dtype);
  const MPI_Datatype type = mpi_type(dtype);
  const int64_t n = in.numel();
  const int64_t seg = static_cast<int64_t>(tuning_.segment_bytes / esize);
  const int64_t longest = (n + n_ranks - 1) / n_ranks;
  const auto* src = static_cast<const char*>(in.data());
  auto* dst = static_cast<char*>(out);
  RingScratch& s = scratch();
  char* recv = s.recv.data();
  char* partial = s.partial.data();
  auto begin = [&](int i) { return chunk_begin(n, n_ranks, i); };
  auto len = [&](int i) { return begin(i + 1) - begin(i); };

  // Segment by segment, so the partial sums fit the scratch: each segment makes the whole trip.
  for (int64_t o = 0; o < longest; o += seg) {
    for (int step = 0; step + 1 < n_ranks; ++step) {
      const int send_chunk = ring_mod(r - step - 1, n_ranks);
      const int recv_chunk = ring_mod(r - step - 2, n_ranks);
      const int send_n = segment_len(len(send_chunk), o, seg);
      const int recv_n = segment_len(len(recv_chunk), o, seg);
      // The first step sends this rank's own values; later ones the partial made one step ago.
      const void* outgoing =
          step == 0 ? src + static_cast<size_t>(begin(send_chunk) + o) * esize : partial;
      KEEL_MPI(MPI_Sendrecv(outgoing, send_n, type, next, kRingTag, recv, recv_n, type, prev,
                            kRingTag, comm_, MPI_STATUS_IGNORE));
      // After the last step the chunk is this rank's own (recv_chunk == r) and is complete.
      void* sum_to = step + 2 == n_ranks ? dst + static_cast<size_t>(o) * esize : partial;
      reduce_buffers(sum_to, recv, src + static_cast<size_t>(begin(recv_chunk) + o) * esize, recv_n,
                     dtype, op);
    }
  }
}

void MpiCommunicator::ring_all_gather(const Tensor& x) {
  const int n_ranks = size(), r = rank();
  const int next = ring_mod(r + 1, n_ranks), prev = ring_mod(r - 1, n_ranks);
  const size_t esize = dtype_size(x.dtype());
  const MPI_Datatype type = mpi_type(x.dtype());
  const int64_t n = x.numel();
  const int64_t longest = (n + n_ranks - 1) / n_ranks;
  const int64_t seg = INT_MAX / 2;  // only so that counts fit an int: no scratch here
  auto* base = static_cast<char*>(x.data());
  auto begin = [&](int i) { return chunk_begin(n, n_ranks, i); };
  auto len = [&](int i) { return begin(i + 1) - begin(i); };
  for (int step = 0; step + 1 < n_ranks; ++step) {
    const int send_chunk = ring_mod(r - step, n_ranks);
    const int recv_chunk = ring_mod(r - step - 1, n_ranks);
    for (int64_t o = 0; o < longest; o += seg) {
      KEEL_MPI(MPI_Sendrecv(base + static_cast<size_t>(begin(send_chunk) + o) * esize,
                            segment_len(len(send_chunk), o, seg), type, next, kRingTag,
                            base + static_cast<size_t>(begin(recv_chunk) + o) * esize,
                            segment_len(len(recv_chunk), o, seg), type, prev, kRingTag, comm_,
                            MPI_STATUS_IGNORE));
    }
  }
}

void MpiCommunicator::start_async_ring(uint32_t s, const Tensor& in, void* out, ReduceOp op) {
  AsyncRing& ring = pending_[s].ring;
  const size_t esize = dtype_size(in.dtype());
  const size_t seg_bytes = tuning_.async_segment_bytes / esize * esize;
  if (ring.recv.size() < seg_bytes) {  // the slot's first ring, or a larger segment since
    ring.recv = HostBuffer(seg_bytes);
    ring.partial = HostBuffer(seg_bytes);
  }
  ring.active = true;
  ring.src = static_cast<const char*>(in.data());
  ring.dst = static_cast<char*>(out);
  ring.n = in.numel();
  ring.dtype = in.dtype();
  ring.op = op;
  ring.tag = kAsyncRingTag + static_cast<int>(async_rings_started_++ % kAsyncRingTags);
  ring.seg = static_cast<int64_t>(seg_bytes / esize);
  ring.offset = 0;
  ring.step = 0;
  ring.posted = false;
  advance_async_ring(s, false);  // posts the first step
}

bool MpiCommunicator::advance_async_ring(uint32_t s, bool block) {
  AsyncRing& ring = pending_[s].ring;
  const int n_ranks = size(), r = rank();
  const int next = ring_mod(r + 1, n_ranks), prev = ring_mod(r - 1, n_ranks);
  const size_t esize = dtype_size(ring.dtype);
  const MPI_Datatype type = mpi_type(ring.dtype);
  const int64_t longest = (ring.n + n_ranks - 1) / n_ranks;
  auto begin = [&](int i) { return chunk_begin(ring.n, n_ranks, i); };
  auto len = [&](int i) { return begin(i + 1) - begin(i); };
  while (true) {
    if (ring.posted) {
      if (block) {
        KEEL_MPI(MPI_Waitall(2, ring.requests.data(), MPI_STATUSES_IGNORE));
      } else {
        int done = 0;
        KEEL_MPI(MPI_Testall(2, ring.requests.data(), &done, MPI_STATUSES_IGNORE));
        if (!done) return false;
      }
      ring.posted = false;
      // As the blocking ring: add this rank's own values to what arrived; the last step of a
      // segment completes this rank's chunk.
      const int recv_chunk = ring_mod(r - ring.step - 2, n_ranks);
      const int recv_n = segment_len(len(recv_chunk), ring.offset, ring.seg);
      char* sum_to = ring.step + 2 == n_ranks ? ring.dst + static_cast<size_t>(ring.offset) * esize
                                              : ring.partial.data();
      reduce_buffers(sum_to, ring.recv.data(),
                     ring.src + static_cast<size_t>(begin(recv_chunk) + ring.offset) * esize,
                     recv_n, ring.dtype, ring.op);
      if (++ring.step + 1 == n_ranks) {
        ring.step = 0;
        ring.offset += ring.seg;
      }
    }
    if (ring.offset >= longest) {
      ring.active = false;
      return true;
    }
    const int send_chunk = ring_mod(r - ring.step - 1, n_ranks);
    const int recv_chunk = ring_mod(r - ring.step - 2, n_ranks);
    const void* outgoing =
        ring.step == 0 ? ring.src + static_cast<size_t>(begin(send_chunk) + ring.offset) * esize
                       : ring.partial.data();
    KEEL_MPI(MPI_Irecv(ring.recv.data(), segment_len(len(recv_chunk), ring.offset, ring.seg), type,
                       prev, ring.tag, comm_, &ring.requests[0]));
    KEEL_MPI(MPI_Isend(outgoing, segment_len(len(send_chunk), ring.offset, ring.seg), type, next,
                       ring.tag, comm_, &ring.requests[1]));
    ring.posted = true;
  }
}

}  // namespace keel::parallel
