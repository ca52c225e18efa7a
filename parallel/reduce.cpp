#include "parallel/reduce.h"

#include "kernels/error.h"

namespace keel::parallel {

namespace {

template <class T>
void sum(T* dst, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = a[i] + b[i];
}

// NaN-propagating for floats: a NaN on either side wins.
template <class T>
void max(T* dst, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = (a[i] > b[i] || a[i] != a[i]) ? a[i] : b[i];
}

void bf16_sum(uint16_t* dst, const uint16_t* a, const uint16_t* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
}

void bf16_max(uint16_t* dst, const uint16_t* a, const uint16_t* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = bf16_to_f32(a[i]), y = bf16_to_f32(b[i]);
    dst[i] = (x > y || x != x) ? a[i] : b[i];
  }
}

template <class T>
void apply(void* dst, const void* a, const void* b, int64_t n, ReduceOp op) {
  auto* d = static_cast<T*>(dst);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  if (op == ReduceOp::kSum)
    sum(d, x, y, n);
  else
    max(d, x, y, n);
}

}  // namespace

void reduce_buffers(void* dst, const void* a, const void* b, int64_t n, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::F32: return apply<float>(dst, a, b, n, op);
    case DType::F64: return apply<double>(dst, a, b, n, op);
    case DType::I32: return apply<int32_t>(dst, a, b, n, op);
    case DType::I64: return apply<int64_t>(dst, a, b, n, op);
    case DType::BF16: {
      auto* d = static_cast<uint16_t*>(dst);
      const auto* x = static_cast<const uint16_t*>(a);
      const auto* y = static_cast<const uint16_t*>(b);
      return op == ReduceOp::kSum ? bf16_sum(d, x, y, n) : bf16_max(d, x, y, n);
    }
    default: break;
  }
  KEEL_FAIL("cannot reduce {} buffers", dtype_name(dtype));
}

}  // namespace keel::parallel
