// Reading and writing safetensors files, the format of Hugging Face checkpoints, of keel's own
// checkpoint shards and of the PyTorch reference goldens. Reading maps the file and hands out
// views; writing goes through a temporary file so a crash never leaves half a file behind.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace keel::runtime {

// A safetensors file mapped read-only. The constructor validates the whole header (sizes, dtypes,
// shapes against offsets, offsets inside the data and tiling it without overlap or gap, as the
// reference implementation requires, and each tensor aligned to its element size); any problem
// is a keel::Error that names the file. Tensors from get() are views into the mapping: they stay
// valid while the reader lives and must not be written through (the pages are read-only).
class SafeTensorsReader {
 public:
  explicit SafeTensorsReader(const std::string& path);
  SafeTensorsReader(SafeTensorsReader&&) noexcept = default;
  SafeTensorsReader& operator=(SafeTensorsReader&&) noexcept = default;
  SafeTensorsReader(const SafeTensorsReader&) = delete;
  SafeTensorsReader& operator=(const SafeTensorsReader&) = delete;

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // A missing name is an error that lists the names nearest to it (alphabetically) in the file.
  Tensor get(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  // Byte offset in the file of tensor name's data (get(name).data() is mapped there), for callers
  // that read a part of it with pread instead of faulting the mapping's pages in.
  size_t file_offset(const std::string& name) const;
  // The "__metadata__" object (string to string); empty when the file has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The file's first bytes as stored: the 8-byte header length and the JSON header with its
  // padding (what write_safetensors returns), for callers that checksum them.
  std::string_view header() const {
    return {mapping_.bytes(), static_cast<size_t>(data_ - mapping_.bytes())};
  }

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    size_t begin;  // byte offset in the data buffer
  };

  // Owns the mmap; unmaps on destruction, so a constructor that throws leaks nothing.
  class Mapping {
   public:
    Mapping() = default;
    Mapping(void* addr, size_t size) : addr_(addr), size_(size) {}
    ~Mapping();
    Mapping(Mapping&& other) noexcept;
    Mapping& operator=(Mapping&& other) noexcept;
    const char* bytes() const { return static_cast<const char*>(addr_); }
    size_t size() const { return size_; }

   private:
    void* addr_ = nullptr;
    size_t size_ = 0;
  };

  void parse_header();

  std::string path_;
  Mapping mapping_;
  const char* data_ = nullptr;  // start of the data buffer, inside the mapping
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors (CPU, contiguous) and string metadata to path in the safetensors format. The
// header is padded with spaces to a multiple of 8 and the data is ordered by element size, largest
// first, so that every tensor of a file is aligned to its element size when mapped. The file is
// written to path + ".tmp", fsynced and renamed over path; errors name the path and the system's
// reason. Returns the file's header as written (SafeTensorsReader::header()).
std::string write_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace keel::runtime
