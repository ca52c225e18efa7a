#include "parallel/nccl_communicator.h"

#include <cstdio>
#include <exception>

#include "kernels/cuda/check.cuh"

namespace keel::parallel {

void raise_nccl_error(ncclResult_t result, const char* expr, const char* file, int line) {
  ::keel::raise_error(file, line,
                      ::keel::format("NCCL error {} ({}) in {}", ncclGetErrorString(result),
                                     ncclGetLastError(nullptr), expr));
}

namespace {

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::F64: return ncclFloat64;
    case DType::I8: return ncclInt8;
    case DType::U8: return ncclUint8;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
  }
  KEEL_FAIL("NCCL: no NCCL type for dtype {}", static_cast<int>(d));
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::kMax ? ncclMax : ncclSum; }

size_t count(const Tensor& t) { return static_cast<size_t>(t.numel()); }

char* bytes_at(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.data()) + elements * static_cast<int64_t>(dtype_size(t.dtype()));
}

// Warns instead of throwing, for destructors.
void warn_on_failure(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    std::fprintf(stderr, "keel: warning: %s failed while closing an NCCL communicator: %s\n", what,
                 cudaGetErrorString(err));
}

}  // namespace

std::unique_ptr<NcclCommunicator> NcclCommunicator::create(Communicator& bootstrap, int device) {
  KEEL_CHECK(bootstrap.device().is_cpu(),
             "NCCL is bootstrapped over a host communicator, not a {} one", bootstrap.backend());
  int devices = 0;
  KEEL_CUDA(cudaGetDeviceCount(&devices));
  KEEL_CHECK(device >= 0 && device < devices,
             "NCCL: rank {} asked for CUDA device {}, but this node has {} (one GPU per rank: "
             "start at most that many ranks per node)",
             bootstrap.rank(), device, devices);
  KEEL_CUDA(cudaSetDevice(device));
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) KEEL_NCCL(ncclGetUniqueId(&id));
  bootstrap.broadcast(Tensor(&id, DType::U8, Shape{static_cast<int64_t>(sizeof id)}), 0);
  ncclComm_t comm = nullptr;
  KEEL_NCCL(ncclCommInitRank(&comm, bootstrap.size(), id, bootstrap.rank()));
  return std::unique_ptr<NcclCommunicator>(
      new NcclCommunicator(comm, bootstrap.rank(), bootstrap.size(), device));
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int rank, int size, int device)
    : Communicator(rank, size), comm_(comm), device_(device) {
  try {
    KEEL_CUDA(cudaSetDevice(device_));
    KEEL_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KEEL_CUDA(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
    for (cudaEvent_t& e : events_) KEEL_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    KEEL_CUDA(cudaMalloc(&barrier_word_, sizeof(float)));
    KEEL_CUDA(cudaMemset(barrier_word_, 0, sizeof(float)));
  } catch (...) {
    release();
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() { release(); }

void NcclCommunicator::release() noexcept {
  if (comm_ == nullptr) return;
  cudaSetDevice(device_);
  if (stream_ != nullptr) warn_on_failure(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  if (ncclCommDestroy(comm_) != ncclSuccess)
    std::fprintf(stderr, "keel: warning: ncclCommDestroy failed\n");
  comm_ = nullptr;
  for (cudaEvent_t e : events_)
    if (e != nullptr) warn_on_failure(cudaEventDestroy(e), "cudaEventDestroy");
  if (compute_done_ != nullptr)
    warn_on_failure(cudaEventDestroy(compute_done_), "cudaEventDestroy");
  if (barrier_word_ != nullptr) warn_on_failure(cudaFree(barrier_word_), "cudaFree");
  if (stream_ != nullptr) warn_on_failure(cudaStreamDestroy(stream_), "cudaStreamDestroy");
  stream_ = nullptr;
}

void NcclCommunicator::after_compute() {
  KEEL_CUDA(cudaSetDevice(device_));
  KEEL_CUDA(cudaEventRecord(compute_done_, compute_));
  KEEL_CUDA(cudaStreamWaitEvent(stream_, compute_done_, 0));
}

void NcclCommunicator::check_async_error() {
  ncclResult_t async_error = ncclSuccess;
  KEEL_NCCL(ncclCommGetAsyncError(comm_, &async_error));
  KEEL_NCCL(async_error);
}

void NcclCommunicator::synchronize() {
  KEEL_CUDA(cudaStreamSynchronize(stream_));
  check_async_error();
}

Work NcclCommunicator::finish(bool async) {
  if (!async) {
    synchronize();
    return Work();
  }
  for (uint32_t s = 0; s < kMaxInFlight; ++s) {
    if (busy_[s]) continue;
    KEEL_CUDA(cudaEventRecord(events_[s], stream_));
    busy_[s] = true;
    return make_work(s);
  }
  // Out of slots: the work is queued already, so complete it here rather than fail the caller.
  synchronize();
  return Work();
}

bool NcclCommunicator::work_test(uint32_t slot) {
  const cudaError_t state = cudaEventQuery(events_[slot]);
  if (state == cudaErrorNotReady) return false;
  busy_[slot] = false;
  KEEL_CUDA(state);
  check_async_error();
  return true;
}

void NcclCommunicator::work_wait(uint32_t slot) {
  busy_[slot] = false;
  KEEL_CUDA(cudaEventSynchronize(events_[slot]));
  check_async_error();
}

Work NcclCommunicator::do_all_reduce(Tensor x, ReduceOp op, bool async) {
  after_compute();
  KEEL_NCCL(ncclAllReduce(x.data(), x.data(), count(x), nccl_type(x.dtype()), nccl_op(op), comm_,
                          stream_));
  return finish(async);
}

// In place when out is in's chunk rank(): NCCL's own in-place rule for reduce-scatter.
Work NcclCommunicator::do_reduce_scatter(Tensor out, Tensor in, ReduceOp op, bool async) {
  after_compute();
  KEEL_NCCL(ncclReduceScatter(in.data(), out.data(), count(out), nccl_type(in.dtype()), nccl_op(op),
                              comm_, stream_));
  return finish(async);
}

// In place when in is out's chunk rank(), as NCCL allows.
Work NcclCommunicator::do_all_gather(Tensor out, Tensor in, bool async) {
  after_compute();
  KEEL_NCCL(ncclAllGather(in.data(), out.data(), count(in), nccl_type(in.dtype()), comm_, stream_));
  return finish(async);
}

Work NcclCommunicator::do_broadcast(Tensor x, int root, bool async) {
  after_compute();
  KEEL_NCCL(
      ncclBroadcast(x.data(), x.data(), count(x), nccl_type(x.dtype()), root, comm_, stream_));
  return finish(async);
}

// NCCL has no tags: messages between two ranks match in the order they are issued.
Work NcclCommunicator::do_send(Tensor x, int dst, int, bool async) {
  after_compute();
  KEEL_NCCL(ncclSend(x.data(), count(x), nccl_type(x.dtype()), dst, comm_, stream_));
  return finish(async);
}

Work NcclCommunicator::do_recv(Tensor x, int src, int, bool async) {
  after_compute();
  KEEL_NCCL(ncclRecv(x.data(), count(x), nccl_type(x.dtype()), src, comm_, stream_));
  return finish(async);
}

Work NcclCommunicator::do_all_to_all(Tensor out, Tensor in, bool async) {
  const int64_t chunk = in.numel() / size();
  const size_t bytes = static_cast<size_t>(chunk) * dtype_size(in.dtype());
  const ncclDataType_t type = nccl_type(in.dtype());
  after_compute();
  KEEL_NCCL(ncclGroupStart());
  for (int j = 0; j < size(); ++j) {
    if (j == rank()) continue;
    KEEL_NCCL(
        ncclSend(bytes_at(in, j * chunk), static_cast<size_t>(chunk), type, j, comm_, stream_));
    KEEL_NCCL(
        ncclRecv(bytes_at(out, j * chunk), static_cast<size_t>(chunk), type, j, comm_, stream_));
  }
  KEEL_NCCL(ncclGroupEnd());
  if (bytes != 0 && out.data() != in.data())
    KEEL_CUDA(cudaMemcpyAsync(bytes_at(out, rank() * chunk), bytes_at(in, rank() * chunk), bytes,
                              cudaMemcpyDeviceToDevice, stream_));
  return finish(async);
}

Work NcclCommunicator::do_all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, Tensor in,
                                       std::span<const int64_t> send_counts, bool async) {
  KEEL_CHECK(recv_counts[rank()] == send_counts[rank()],
             "all_to_all_v: rank {} sends itself {} elements but expects {}", rank(),
             send_counts[rank()], recv_counts[rank()]);
  const ncclDataType_t type = nccl_type(in.dtype());
  after_compute();
  KEEL_NCCL(ncclGroupStart());
  int64_t sent = 0, received = 0, self_from = 0, self_to = 0;
  for (int j = 0; j < size(); ++j) {
    if (j == rank()) {
      self_from = sent;
      self_to = received;
    } else {
      if (send_counts[j] > 0)
        KEEL_NCCL(ncclSend(bytes_at(in, sent), static_cast<size_t>(send_counts[j]), type, j, comm_,
                           stream_));
      if (recv_counts[j] > 0)
        KEEL_NCCL(ncclRecv(bytes_at(out, received), static_cast<size_t>(recv_counts[j]), type, j,
                           comm_, stream_));
    }
    sent += send_counts[j];
    received += recv_counts[j];
  }
  KEEL_NCCL(ncclGroupEnd());
  const size_t self_bytes = static_cast<size_t>(send_counts[rank()]) * dtype_size(in.dtype());
  if (self_bytes != 0)
    KEEL_CUDA(cudaMemcpyAsync(bytes_at(out, self_to), bytes_at(in, self_from), self_bytes,
                              cudaMemcpyDeviceToDevice, stream_));
  return finish(async);
}

void NcclCommunicator::do_barrier() {
  after_compute();
  KEEL_NCCL(ncclAllReduce(barrier_word_, barrier_word_, 1, ncclFloat32, ncclSum, comm_, stream_));
  synchronize();
}

std::unique_ptr<Communicator> NcclCommunicator::do_split(int color, int key) {
  KEEL_CUDA(cudaSetDevice(device_));
  synchronize();  // nothing of this communicator may be in flight while NCCL splits it
  ncclComm_t child = nullptr;
  KEEL_NCCL(
      ncclCommSplit(comm_, color == kNoColor ? NCCL_SPLIT_NOCOLOR : color, key, &child, nullptr));
  if (color == kNoColor) return nullptr;
  int rank = 0, size = 0;
  KEEL_NCCL(ncclCommUserRank(child, &rank));
  KEEL_NCCL(ncclCommCount(child, &size));
  return std::unique_ptr<Communicator>(new NcclCommunicator(child, rank, size, device_));
}

}  // namespace keel::parallel
