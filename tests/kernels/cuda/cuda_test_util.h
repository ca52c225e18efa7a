// Shared helpers for the CUDA op tests: a fixture that skips (saying why) when no CUDA device can
// be used and otherwise gives each test its own non-blocking stream, and device buffers that are
// poisoned (all bits set: NaN as float, −1 as int) unless filled from the host.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/check.cuh"
#include "kernels/device.h"
#include "kernels/error.h"

namespace keel::testing {

// Empty when a CUDA device is usable; otherwise why not, e.g. "cudaGetDeviceCount failed:
// cudaErrorNoDevice (no CUDA-capable device is detected)".
inline std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear it, so it does not surface in a later check
    return format("cudaGetDeviceCount failed: {} ({})", cudaGetErrorName(err),
                  cudaGetErrorString(err));
  }
  if (count == 0) return "cudaGetDeviceCount found 0 devices";
  return {};
}

// A parameterised test's name suffix from its parts, e.g. name_of("N", 7, "_C", 3) = "N7_C3"
// (streamed: GCC 12's -Wrestrict misfires on chains of std::string +).
template <class... Parts>
std::string name_of(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

// Every GPU test derives from this: SetUp skips without a device, then creates the stream the
// test runs its ops on (non-blocking, as the engine's streams will be, not the default stream).
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = cuda_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
    KEEL_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_ != nullptr) {
      EXPECT_EQ(cudaStreamDestroy(stream_), cudaSuccess);
    }
  }
  Stream stream() const { return Stream{stream_}; }

  cudaStream_t stream_ = nullptr;
};

template <class Param>
class CudaParamTest : public CudaTest, public ::testing::WithParamInterface<Param> {};

// n elements of T in device memory, owned.
template <class T>
class DeviceBuffer {
 public:
  // Poisoned: every byte 0xFF.
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n_ == 0) return;
    KEEL_CUDA(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()));
    KEEL_CUDA(cudaMemset(data_, 0xFF, bytes()));
    // The memset runs on the legacy default stream, which the tests' non-blocking stream does not
    // wait for: finish it before any op can touch the buffer.
    KEEL_CUDA(cudaDeviceSynchronize());
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (data_ != nullptr) {
      EXPECT_EQ(cudaFree(data_), cudaSuccess);
    }
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return data_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

  void upload(const std::vector<T>& host) {
    KEEL_CHECK(host.size() == n_, "upload of {} elements into a buffer of {}", host.size(), n_);
    if (n_ == 0) return;
    KEEL_CUDA(cudaDeviceSynchronize());  // no kernel of any stream may still use the old bytes
    KEEL_CUDA(cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice));
    // From pageable memory cudaMemcpy may return before the DMA lands; the non-blocking stream
    // would not wait for it.
    KEEL_CUDA(cudaDeviceSynchronize());
  }
  // Waits for all work on the device (every stream), then copies back.
  std::vector<T> download() const {
    std::vector<T> host(n_);
    KEEL_CUDA(cudaDeviceSynchronize());
    if (n_ > 0) KEEL_CUDA(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  size_t n_ = 0;
  T* data_ = nullptr;
};

}  // namespace keel::testing
