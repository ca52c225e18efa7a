#include "kernels/memory_plan.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace keel {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
}  // namespace

HostBuffer::HostBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  // Over-map by one huge page so the block can start on a 2 MiB boundary.
  mapped_ = round_up(bytes, kHugePage) + kHugePage;
  void* p = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  KEEL_CHECK(p != MAP_FAILED, "cannot map {} of host memory: {}", format_mib(bytes),
             std::strerror(errno));
  char* base = static_cast<char*>(p);
  char* aligned = reinterpret_cast<char*>(round_up(reinterpret_cast<uintptr_t>(base), kHugePage));
  if (aligned > base) munmap(base, static_cast<size_t>(aligned - base));
  const size_t tail = mapped_ - static_cast<size_t>(aligned - base);
  const size_t keep = round_up(bytes, kHugePage);
  if (tail > keep) munmap(aligned + keep, tail - keep);
  mapped_ = keep;
  data_ = aligned;
  madvise(data_, mapped_, MADV_HUGEPAGE);
  // Touch every page now (the kernel zero-fills), so steps never fault.
  for (size_t off = 0; off < mapped_; off += 4096) data_[off] = 0;
}

HostBuffer::~HostBuffer() {
  if (data_) munmap(data_, mapped_);
}

HostBuffer::HostBuffer(HostBuffer&& o) noexcept
    : data_(o.data_), size_(o.size_), mapped_(o.mapped_) {
  o.data_ = nullptr;
  o.size_ = o.mapped_ = 0;
}

HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  if (this != &o) {
    if (data_) munmap(data_, mapped_);
    data_ = o.data_;
    size_ = o.size_;
    mapped_ = o.mapped_;
    o.data_ = nullptr;
    o.size_ = o.mapped_ = 0;
  }
  return *this;
}

MemoryPlan::Slot MemoryPlan::add(std::string name, DType dtype, Shape shape) {
  KEEL_CHECK(!done_, "memory plan '{}' is already allocated; cannot add '{}'", category_, name);
  const size_t offset = round_up(bytes_, MemoryPlan::kAlign);
  entries_.push_back({std::move(name), dtype, shape, offset});
  bytes_ = offset + static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return entries_.size() - 1;
}

void MemoryPlan::allocate() {
  KEEL_CHECK(!done_, "memory plan '{}' allocated twice", category_);
  buffer_ = HostBuffer(bytes_);
  done_ = true;
}

Tensor MemoryPlan::operator[](Slot s) const {
  KEEL_CHECK(done_, "memory plan '{}' used before allocate()", category_);
  const Entry& e = entries_.at(s);
  return Tensor(buffer_.data() + e.offset, e.dtype, e.shape);
}

std::string format_mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

std::string MemoryPlan::describe() const {
  std::ostringstream os;
  os << category_ << ": " << format_mib(bytes_) << " in " << entries_.size() << " buffers\n";
  for (const Entry& e : entries_) {
    os << "    " << e.name << " " << dtype_name(e.dtype) << e.shape.str() << " "
       << format_mib(static_cast<size_t>(e.shape.numel()) * dtype_size(e.dtype)) << "\n";
  }
  return os.str();
}

size_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

size_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

}  // namespace keel
