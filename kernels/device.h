// Where a tensor lives and the stream work on it is ordered by. CPU work ignores the stream; CUDA
// work runs on it. Kernels take a Stream as their last argument so both backends share signatures.
#pragma once

#include <cstdint>
#include <string>

namespace keel {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {}; }
  static Device cuda(int i) { return {DeviceType::CUDA, i}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool operator==(const Device&) const = default;
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
};

// An opaque stream handle: cudaStream_t on CUDA, unused on CPU. blas is the cuBLAS handle the
// caller owns for this stream (a kernels::cuda::CublasHandle*, not owned here): the op table's
// CUDA GEMMs (kernels/ops.h) take it from the stream, since keel keeps no hidden global handle.
struct Stream {
  void* handle = nullptr;
  void* blas = nullptr;
};

}  // namespace keel
