// Memory plans: every long-lived buffer of a category (parameters, gradients, optimizer state,
// activations, workspace) is declared first with its shape, then the whole category is allocated
// once as one huge-page-backed, pre-faulted block. Nothing on the training step's path allocates.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace keel {

// One anonymous mapping, 2 MiB aligned, transparent huge pages requested, touched once at creation
// so that no page fault lands inside a training step. Move-only.
class HostBuffer {
 public:
  HostBuffer() = default;
  explicit HostBuffer(size_t bytes);
  ~HostBuffer();
  HostBuffer(HostBuffer&& o) noexcept;
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;

  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  char* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
};

class MemoryPlan {
 public:
  using Slot = size_t;
  // Every buffer starts on a multiple of this many bytes.
  static constexpr size_t kAlign = 64;

  explicit MemoryPlan(std::string category) : category_(std::move(category)) {}

  // Declares a buffer. Its memory exists only after allocate(); each buffer starts on a kAlign
  // boundary.
  Slot add(std::string name, DType dtype, Shape shape);
  // Allocates every declared buffer in one block, zero-filled. Call once.
  void allocate();

  Tensor operator[](Slot s) const;
  bool allocated() const { return buffer_.data() != nullptr || bytes_ == 0; }
  size_t bytes() const { return bytes_; }
  const std::string& category() const { return category_; }
  size_t count() const { return entries_.size(); }
  const std::string& name(Slot s) const { return entries_[s].name; }
  // Byte offset of a buffer inside the block: known as soon as it is declared.
  size_t offset(Slot s) const { return entries_.at(s).offset; }
  const Shape& shape(Slot s) const { return entries_.at(s).shape; }

  // One line per buffer with its shape and MiB, and the total.
  std::string describe() const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
    size_t offset;
  };
  std::string category_;
  std::vector<Entry> entries_;
  size_t bytes_ = 0;
  HostBuffer buffer_;
  bool done_ = false;
};

// Bytes as "12.3 MiB".
std::string format_mib(size_t bytes);

// Peak resident set size of this process so far, in bytes (VmHWM).
size_t peak_rss_bytes();
// Resident set size now, in bytes (the second field of /proc/self/statm, in pages).
size_t rss_bytes();

}  // namespace keel
