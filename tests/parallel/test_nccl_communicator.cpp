// NcclCommunicator on one process: a one-rank communicator on GPU 0, bootstrapped over the
// SelfCommunicator. Every collective leaves a one-rank group's data as its definition says, async
// calls complete through their Work, device checks reject host buffers, and the counters count.
// Multi-rank NCCL is tested under mpirun (test_mpi_nccl.cpp). Every test skips without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/cuda/check.cuh"
#include "parallel/nccl_communicator.h"
#include "parallel/self_communicator.h"

namespace keel::parallel {
namespace {

int gpu_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// A device buffer of floats, freed on scope exit.
class DeviceFloats {
 public:
  explicit DeviceFloats(const std::vector<float>& host) : n_(static_cast<int64_t>(host.size())) {
    KEEL_CUDA(cudaMalloc(&data_, host.size() * sizeof(float)));
    KEEL_CUDA(cudaMemcpy(data_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  ~DeviceFloats() { cudaFree(data_); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
  Tensor tensor(int64_t begin, int64_t end) const {
    return Tensor(data_ + begin, DType::F32, Shape{end - begin}, Device::cuda(0));
  }
  Tensor tensor() const { return tensor(0, n_); }
  std::vector<float> host() const {
    std::vector<float> out(static_cast<size_t>(n_));
    KEEL_CUDA(cudaMemcpy(out.data(), data_, out.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return out;
  }

 private:
  float* data_ = nullptr;
  int64_t n_;
};

class NcclOneRank : public ::testing::Test {
 protected:
  void SetUp() override {
    if (gpu_count() == 0) GTEST_SKIP() << "no CUDA device";
    comm_ = NcclCommunicator::create(bootstrap_, 0);
  }
  std::vector<float> ramp(int n, float base) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = base + 0.25f * static_cast<float>(i);
    return v;
  }
  SelfCommunicator bootstrap_;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(NcclOneRank, CollectivesOnOneRankKeepOrCopyTheData) {
  EXPECT_EQ(comm_->backend(), "nccl");
  EXPECT_EQ(comm_->size(), 1);
  EXPECT_EQ(comm_->device(), Device::cuda(0));
  const std::vector<float> v = ramp(1001, -3.0f);
  DeviceFloats x(v);
  comm_->all_reduce(x.tensor());
  comm_->all_reduce(x.tensor(), ReduceOp::kMax);
  comm_->broadcast(x.tensor(), 0);
  EXPECT_EQ(x.host(), v);

  DeviceFloats out(std::vector<float>(1001, 7.0f));
  comm_->reduce_scatter(out.tensor(), x.tensor());
  EXPECT_EQ(out.host(), v);
  DeviceFloats gathered(std::vector<float>(1001, 7.0f));
  comm_->all_gather(gathered.tensor(), x.tensor());
  EXPECT_EQ(gathered.host(), v);
  DeviceFloats swapped(std::vector<float>(1001, 7.0f));
  comm_->all_to_all(swapped.tensor(), x.tensor());
  EXPECT_EQ(swapped.host(), v);

  DeviceFloats part(std::vector<float>(1001, 7.0f));
  const std::vector<int64_t> counts = {600};
  comm_->all_to_all_v(part.tensor(), counts, x.tensor(), counts);
  std::vector<float> want(1001, 7.0f);
  std::copy(v.begin(), v.begin() + 600, want.begin());
  EXPECT_EQ(part.host(), want);
  comm_->barrier();
  EXPECT_EQ(comm_->stats()[CommOp::kAllReduce].calls, 2u);
  EXPECT_EQ(comm_->stats()[CommOp::kAllReduce].bytes, 0u);  // one rank moves nothing
}

TEST_F(NcclOneRank, AsyncCallsCompleteThroughTheirWork) {
  const std::vector<float> v = ramp(1 << 20, 1.0f);
  DeviceFloats x(v), out(std::vector<float>(v.size(), 0.0f));
  std::vector<Work> works;
  for (int i = 0; i < 2 * NcclCommunicator::kMaxInFlight; ++i)  // more than the event slots
    works.push_back(comm_->all_reduce_async(x.tensor()));
  Work gather = comm_->all_gather_async(out.tensor(), x.tensor());
  while (!gather.test()) {
  }
  EXPECT_FALSE(gather.pending());
  for (Work& w : works) w.wait();
  EXPECT_EQ(out.host(), v);
}

TEST_F(NcclOneRank, HostBuffersAndMissingDevicesAreClearErrors) {
  std::vector<float> host(16, 1.0f);
  try {
    comm_->all_reduce(host_view(host));
    ADD_FAILURE() << "a host buffer must be refused";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("is on cpu, but a nccl communicator works on cuda:0"),
              std::string::npos)
        << e.what();
  }
  try {
    NcclCommunicator::create(bootstrap_, gpu_count());
    ADD_FAILURE() << "a device past the last must be refused";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("asked for CUDA device"), std::string::npos) << e.what();
  }
}

TEST_F(NcclOneRank, SplitMakesAnNcclChild) {
  std::unique_ptr<Communicator> child = comm_->split(0, 0);
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->backend(), "nccl");
  EXPECT_EQ(child->size(), 1);
  DeviceFloats x(ramp(33, 2.0f));
  child->all_reduce(x.tensor());
  EXPECT_EQ(x.host(), ramp(33, 2.0f));
  EXPECT_EQ(comm_->split(Communicator::kNoColor, 0), nullptr);
}

}  // namespace
}  // namespace keel::parallel
