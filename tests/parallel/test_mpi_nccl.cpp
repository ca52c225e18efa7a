// NcclCommunicator across the ranks of an mpirun job, one GPU per rank, bootstrapped over the MPI
// world: every collective against its definition on the same rank-dependent data the MPI tests
// use, and the byte counters against the same formulas. Skips unless the node has a GPU for every
// rank (CI has none; a lent multi-GPU machine runs it).
#include <gtest/gtest.h>

#include <memory>
#include <numeric>
#include <vector>

#include "kernels/cuda/check.cuh"
#include "mpi_test_env.h"
#include "parallel/nccl_communicator.h"

namespace keel::parallel::testing {
namespace {

// The NCCL communicator over the world, made once; null when there are too few GPUs.
NcclCommunicator* nccl() {
  static std::unique_ptr<NcclCommunicator> comm = [] {
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus < world().size())
      return std::unique_ptr<NcclCommunicator>();
    return NcclCommunicator::create(world(), world().rank());
  }();
  return comm.get();
}

#define SKIP_WITHOUT_GPUS() \
  if (nccl() == nullptr) GTEST_SKIP() << "fewer GPUs than ranks"

template <class T>
class Device {
 public:
  explicit Device(const std::vector<T>& host) : n_(host.size()) {
    KEEL_CUDA(cudaMalloc(&data_, n_ * sizeof(T)));
    KEEL_CUDA(cudaMemcpy(data_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Device() { cudaFree(data_); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  Tensor tensor(DType dtype) const {
    return Tensor(data_, dtype, Shape{static_cast<int64_t>(n_)}, nccl()->device());
  }
  Tensor slice(DType dtype, size_t begin, size_t end) const {
    return Tensor(data_ + begin, dtype, Shape{static_cast<int64_t>(end - begin)}, nccl()->device());
  }
  std::vector<T> host() const {
    std::vector<T> out(n_);
    KEEL_CUDA(cudaMemcpy(out.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  T* data_ = nullptr;
  size_t n_;
};

std::vector<float> rank_data(int rank, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = value(rank, i);
  return x;
}

TEST(MpiNcclTest, ReductionsMatchTheirDefinition) {
  SKIP_WITHOUT_GPUS();
  NcclCommunicator& c = *nccl();
  const int N = c.size(), r = c.rank();
  for (int64_t n : kSizes) {
    SCOPED_TRACE(n);
    std::vector<float> sum(static_cast<size_t>(n), 0.0f), max(static_cast<size_t>(n), -1e30f);
    for (int k = 0; k < N; ++k)
      for (int64_t i = 0; i < n; ++i) {
        sum[static_cast<size_t>(i)] += value(k, i);
        max[static_cast<size_t>(i)] = std::max(max[static_cast<size_t>(i)], value(k, i));
      }
    c.reset_stats();
    Device<float> x(rank_data(r, n));
    c.all_reduce(x.tensor(DType::F32));
    EXPECT_EQ(first_mismatch(x.host(), sum), "");
    EXPECT_EQ(c.stats()[CommOp::kAllReduce].bytes, static_cast<uint64_t>(2 * 4 * n * (N - 1) / N));
    Device<float> y(rank_data(r, n));
    c.all_reduce(y.tensor(DType::F32), ReduceOp::kMax);
    EXPECT_EQ(first_mismatch(y.host(), max), "");

    // Reduce-scatter in place: the shard is this rank's chunk of the full buffer.
    const size_t chunk = static_cast<size_t>(n);
    std::vector<float> full;
    for (int k = 0; k < N; ++k) {
      const std::vector<float> part = rank_data(r + k, n);
      full.insert(full.end(), part.begin(), part.end());
    }
    Device<float> z(full);
    c.reduce_scatter(z.slice(DType::F32, r * chunk, (r + 1) * chunk), z.tensor(DType::F32));
    std::vector<float> shard(chunk, 0.0f);
    for (int k = 0; k < N; ++k)
      for (size_t i = 0; i < chunk; ++i) shard[i] += value(k + r, static_cast<int64_t>(i));
    const std::vector<float> got = z.host();
    EXPECT_EQ(
        first_mismatch(std::vector<float>(got.begin() + static_cast<int64_t>(r * chunk),
                                          got.begin() + static_cast<int64_t>((r + 1) * chunk)),
                       shard),
        "");
  }
  // bf16 sums of small integers are exact.
  std::vector<uint16_t> b(64);
  for (size_t i = 0; i < b.size(); ++i)
    b[i] = f32_to_bf16(static_cast<float>(static_cast<int>(i) - r));
  Device<uint16_t> bd(b);
  c.all_reduce(bd.tensor(DType::BF16));
  const std::vector<uint16_t> bsum = bd.host();
  for (size_t i = 0; i < b.size(); ++i)
    EXPECT_EQ(bf16_to_f32(bsum[i]), static_cast<float>(N * static_cast<int>(i) - N * (N - 1) / 2));
}

TEST(MpiNcclTest, MovementMatchesItsDefinition) {
  SKIP_WITHOUT_GPUS();
  NcclCommunicator& c = *nccl();
  const int N = c.size(), r = c.rank();
  const int64_t n = 1001;
  // All-gather in place and broadcast from the last rank.
  std::vector<float> all(static_cast<size_t>(n * N), -1.0f);
  std::copy_n(rank_data(r, n).begin(), n, all.begin() + r * n);
  Device<float> g(all);
  c.all_gather(g.tensor(DType::F32),
               g.slice(DType::F32, static_cast<size_t>(r * n), static_cast<size_t>((r + 1) * n)));
  std::vector<float> want;
  for (int k = 0; k < N; ++k) {
    const std::vector<float> part = rank_data(k, n);
    want.insert(want.end(), part.begin(), part.end());
  }
  EXPECT_EQ(first_mismatch(g.host(), want), "");
  Device<float> b(rank_data(r, n));
  c.broadcast(b.tensor(DType::F32), N - 1);
  EXPECT_EQ(first_mismatch(b.host(), rank_data(N - 1, n)), "");

  // A ring of send/recv: rank r sends to r+1 and receives from r-1.
  Device<float> out(rank_data(r, n)), in(std::vector<float>(static_cast<size_t>(n), 0.0f));
  Work recv = c.recv_async(in.tensor(DType::F32), (r + N - 1) % N);
  c.send(out.tensor(DType::F32), (r + 1) % N);
  recv.wait();
  EXPECT_EQ(first_mismatch(in.host(), rank_data((r + N - 1) % N, n)), "");

  // all_to_all_v: rank r sends j + r + 1 elements to rank j, values naming (sender, receiver).
  std::vector<int64_t> send_counts(static_cast<size_t>(N)), recv_counts(static_cast<size_t>(N));
  std::vector<float> send;
  for (int j = 0; j < N; ++j) {
    send_counts[static_cast<size_t>(j)] = j + r + 1;
    recv_counts[static_cast<size_t>(j)] = r + j + 1;
    for (int64_t i = 0; i < j + r + 1; ++i) send.push_back(static_cast<float>(100 * r + j));
  }
  std::vector<float> expect;
  for (int j = 0; j < N; ++j)
    for (int64_t i = 0; i < r + j + 1; ++i) expect.push_back(static_cast<float>(100 * j + r));
  Device<float> sd(send), rd(std::vector<float>(expect.size(), -1.0f));
  c.all_to_all_v(rd.tensor(DType::F32), recv_counts, sd.tensor(DType::F32), send_counts);
  EXPECT_EQ(first_mismatch(rd.host(), expect), "");
  c.barrier();
}

}  // namespace
}  // namespace keel::parallel::testing
