// Tensor: metadata over memory someone else owns (a MemoryPlan, a mapped file, a test's vector).
// Contiguous row-major; a view is another Tensor over the same bytes. Copying a Tensor never
// copies data.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/device.h"
#include "kernels/dtype.h"
#include "kernels/error.h"

namespace keel {

// Up to kMaxDims sizes, outermost first.
class Shape {
 public:
  static constexpr int kMaxDims = 6;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t& operator[](int i) { return dims_[static_cast<size_t>(i)]; }
  int64_t numel() const;
  void push_back(int64_t d);
  bool operator==(const Shape& o) const;
  std::string str() const;  // "(2, 3)"

 private:
  std::array<int64_t, kMaxDims> dims_{};
  int rank_ = 0;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(void* data, DType dtype, Shape shape, Device device = Device::cpu())
      : data_(data), dtype_(dtype), shape_(shape), device_(device) {}

  void* data() const { return data_; }
  template <class T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  float* f32() const {
    KEEL_CHECK(dtype_ == DType::F32, "tensor is {}, not F32", dtype_name(dtype_));
    return static_cast<float*>(data_);
  }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t size(int i) const { return shape_[i]; }
  int rank() const { return shape_.rank(); }
  Device device() const { return device_; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }

  // The same bytes under another shape with the same element count.
  Tensor view(Shape shape) const;
  // Rows [begin, end) of the outermost dimension.
  Tensor slice0(int64_t begin, int64_t end) const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  Shape shape_;
  Device device_;
};

}  // namespace keel
