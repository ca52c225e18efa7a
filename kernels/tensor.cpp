#include "kernels/tensor.h"

#include <sstream>

namespace keel {

bool parse_dtype(std::string_view name, DType* out) {
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::F64, DType::I8, DType::U8, DType::I32,
                  DType::I64}) {
    if (dtype_name(t) == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

Shape::Shape(std::initializer_list<int64_t> dims) {
  KEEL_CHECK(dims.size() <= kMaxDims, "a shape has at most {} dimensions, got {}", kMaxDims,
             dims.size());
  for (int64_t d : dims) push_back(d);
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

void Shape::push_back(int64_t d) {
  KEEL_CHECK(rank_ < kMaxDims, "a shape has at most {} dimensions", kMaxDims);
  KEEL_CHECK(d >= 0, "a dimension cannot be negative, got {}", d);
  dims_[static_cast<size_t>(rank_++)] = d;
}

bool Shape::operator==(const Shape& o) const {
  if (rank_ != o.rank_) return false;
  for (int i = 0; i < rank_; ++i)
    if (dims_[static_cast<size_t>(i)] != o.dims_[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < rank_; ++i) os << (i ? ", " : "") << dims_[static_cast<size_t>(i)];
  os << ")";
  return os.str();
}

Tensor Tensor::view(Shape shape) const {
  KEEL_CHECK(shape.numel() == numel(), "cannot view {} as {}: element counts differ", shape_.str(),
             shape.str());
  return Tensor(data_, dtype_, shape, device_);
}

Tensor Tensor::slice0(int64_t begin, int64_t end) const {
  KEEL_CHECK(rank() >= 1 && 0 <= begin && begin <= end && end <= shape_[0],
             "slice [{}, {}) out of range for shape {}", begin, end, shape_.str());
  Shape s = shape_;
  s[0] = end - begin;
  const size_t row_bytes = shape_[0] ? nbytes() / static_cast<size_t>(shape_[0]) : 0;
  return Tensor(static_cast<char*>(data_) + static_cast<size_t>(begin) * row_bytes, dtype_, s,
                device_);
}

}  // namespace keel
