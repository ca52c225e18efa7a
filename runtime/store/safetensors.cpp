#include "runtime/store/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <utility>

#include "runtime/store/durable_file.h"

namespace keel::runtime {
namespace {

constexpr size_t kLengthBytes = 8;  // the little-endian u64 header length that opens the file
constexpr const char* kMetadataKey = "__metadata__";

std::string errno_text(int err) { return std::strerror(err); }

uint64_t read_le_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void write_le_u64(char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xffu);
}

std::string known_dtypes() {
  std::string s;
  for (DType t : {DType::F64, DType::F32, DType::BF16, DType::F16, DType::I64, DType::I32,
                  DType::I8, DType::U8}) {
    s += (s.empty() ? "" : ", ") + std::string(dtype_name(t));
  }
  return s;
}

// A file descriptor closed on scope exit (the reader's: it only maps the file).
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

// ---- reading ---------------------------------------------------------------------------------

SafeTensorsReader::Mapping::~Mapping() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
}

SafeTensorsReader::Mapping::Mapping(Mapping&& other) noexcept
    : addr_(std::exchange(other.addr_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SafeTensorsReader::Mapping& SafeTensorsReader::Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    if (addr_ != nullptr) ::munmap(addr_, size_);
    addr_ = std::exchange(other.addr_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SafeTensorsReader::SafeTensorsReader(const std::string& path) : path_(path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  KEEL_CHECK(fd.get() >= 0, "cannot open safetensors file {}: {}", path, errno_text(errno));
  struct stat st {};
  KEEL_CHECK(::fstat(fd.get(), &st) == 0, "cannot stat safetensors file {}: {}", path,
             errno_text(errno));
  const auto size = static_cast<size_t>(st.st_size);
  KEEL_CHECK(size >= kLengthBytes,
             "{} is not a safetensors file: it has {} bytes, fewer than the {}-byte header length "
             "that starts the format",
             path, size, kLengthBytes);
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  KEEL_CHECK(addr != MAP_FAILED, "cannot map safetensors file {}: {}", path, errno_text(errno));
  mapping_ = Mapping(addr, size);
  parse_header();
}

void SafeTensorsReader::parse_header() {
  const char* base = mapping_.bytes();
  const size_t file_size = mapping_.size();
  const uint64_t header_len = read_le_u64(base);
  KEEL_CHECK(header_len <= file_size - kLengthBytes,
             "{}: the header length {} runs past the end of the file ({} bytes); the file is "
             "truncated or not safetensors",
             path_, header_len, file_size);
  const char* header_begin = base + kLengthBytes;
  data_ = header_begin + header_len;
  const size_t data_size = file_size - kLengthBytes - static_cast<size_t>(header_len);

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_begin, data_);
  } catch (const nlohmann::json::parse_error& e) {
    KEEL_FAIL("{}: the header is not valid JSON ({})", path_, e.what());
  }
  KEEL_CHECK(header.is_object(), "{}: the header must be a JSON object, got {}", path_,
             header.type_name());

  struct Span {
    size_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      KEEL_CHECK(value.is_object(), "{}: {} must be an object of strings, got {}", path_,
                 kMetadataKey, value.type_name());
      for (const auto& [key, v] : value.items()) {
        KEEL_CHECK(v.is_string(), "{}: metadata '{}' must be a string, got {}", path_, key,
                   v.type_name());
        metadata_[key] = v.get<std::string>();
      }
      continue;
    }
    KEEL_CHECK(value.is_object(), "{}: tensor '{}' must be described by an object, got {}", path_,
               name, value.type_name());
    const auto dtype_it = value.find("dtype");
    const auto shape_it = value.find("shape");
    const auto offsets_it = value.find("data_offsets");
    KEEL_CHECK(dtype_it != value.end() && shape_it != value.end() && offsets_it != value.end(),
               "{}: tensor '{}' needs 'dtype', 'shape' and 'data_offsets'", path_, name);

    Entry entry{};
    KEEL_CHECK(dtype_it->is_string(), "{}: tensor '{}' has a dtype that is not a string", path_,
               name);
    const auto dtype_str = dtype_it->get<std::string>();
    KEEL_CHECK(parse_dtype(dtype_str, &entry.dtype),
               "{}: tensor '{}' has unknown dtype '{}' (keel reads {})", path_, name, dtype_str,
               known_dtypes());

    KEEL_CHECK(shape_it->is_array() && shape_it->size() <= static_cast<size_t>(Shape::kMaxDims),
               "{}: tensor '{}' must have a shape of at most {} dimensions, got {}", path_, name,
               Shape::kMaxDims, shape_it->dump());
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& d : *shape_it) {
      KEEL_CHECK(d.is_number_unsigned() && d.get<uint64_t>() <= INT64_MAX,
                 "{}: tensor '{}' has shape {}; dimensions must be non-negative integers", path_,
                 name, shape_it->dump());
      entry.shape.push_back(d.get<int64_t>());
      overflow = overflow || __builtin_mul_overflow(numel, d.get<uint64_t>(), &numel);
    }
    uint64_t nbytes = 0;
    overflow = overflow || __builtin_mul_overflow(numel, dtype_size(entry.dtype), &nbytes);

    KEEL_CHECK(offsets_it->is_array() && offsets_it->size() == 2 &&
                   (*offsets_it)[0].is_number_unsigned() && (*offsets_it)[1].is_number_unsigned(),
               "{}: tensor '{}' has data_offsets {}; they must be two non-negative integers", path_,
               name, offsets_it->dump());
    const auto begin = (*offsets_it)[0].get<uint64_t>();
    const auto end = (*offsets_it)[1].get<uint64_t>();
    KEEL_CHECK(begin <= end && end <= data_size,
               "{}: tensor '{}' has data_offsets [{}, {}) outside the {}-byte data buffer", path_,
               name, begin, end, data_size);
    KEEL_CHECK(!overflow && nbytes == end - begin,
               "{}: tensor '{}' of dtype {} and shape {} needs {} bytes but its data_offsets "
               "[{}, {}) hold {}",
               path_, name, dtype_str, shape_it->dump(),
               overflow ? "more than 2^64" : std::to_string(nbytes), begin, end, end - begin);
    entry.begin = static_cast<size_t>(begin);
    // The mapping is page-aligned, so this is the alignment of the pointer get() will return.
    const size_t file_offset = kLengthBytes + static_cast<size_t>(header_len) + entry.begin;
    KEEL_CHECK(file_offset % dtype_size(entry.dtype) == 0,
               "{}: tensor '{}' ({}) starts at byte {} of the file, not a multiple of its element "
               "size; keel needs aligned tensors (safetensors' own writer produces them)",
               path_, name, dtype_str, file_offset);
    const auto [it, inserted] = entries_.emplace(name, entry);
    (void)inserted;  // nlohmann::json objects cannot hold a key twice
    spans.push_back({entry.begin, static_cast<size_t>(end), &it->first});
  }

  // The tensors must tile the data buffer exactly, as in the reference implementation: no byte
  // belongs to two tensors and none to no tensor.
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  size_t covered = 0;
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    KEEL_CHECK(s.begin >= covered, "{}: tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", path_,
               *prev->name, prev->begin, prev->end, *s.name, s.begin, s.end);
    KEEL_CHECK(s.begin == covered,
               "{}: bytes [{}, {}) of the data buffer belong to no tensor (a gap before '{}')",
               path_, covered, s.begin, *s.name);
    covered = s.end;
    prev = &s;
  }
  KEEL_CHECK(covered == data_size,
             "{}: the last {} bytes of the data buffer belong to no tensor (the tensors end at "
             "byte {} of {})",
             path_, data_size - covered, covered, data_size);
}

Tensor SafeTensorsReader::get(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) {
    // The alphabetical neighbours of a missing name are usually what the caller meant.
    auto from = entries_.lower_bound(name);
    for (int i = 0; i < 2 && from != entries_.begin(); ++i) --from;
    std::string near;
    for (int i = 0; i < 5 && from != entries_.end(); ++i, ++from) {
      near += (near.empty() ? "'" : ", '") + from->first + "'";
    }
    KEEL_FAIL("{} has no tensor '{}'; it holds {} tensors{}{}", path_, name, entries_.size(),
              near.empty() ? "" : ", nearest by name: ", near);
  }
  const Entry& e = it->second;
  // The pages are PROT_READ: Tensor has no const view, so the constness is the caller's promise.
  return Tensor(const_cast<char*>(data_ + e.begin), e.dtype, e.shape);
}

size_t SafeTensorsReader::file_offset(const std::string& name) const {
  return static_cast<size_t>(static_cast<const char*>(get(name).data()) - mapping_.bytes());
}

std::vector<std::string> SafeTensorsReader::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

// ---- writing ---------------------------------------------------------------------------------

namespace {

std::string header_json(const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::vector<size_t>& order,
                        const std::map<std::string, std::string>& metadata,
                        const std::string& path) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  size_t offset = 0;
  for (size_t i : order) {
    const auto& [name, t] = tensors[i];
    std::vector<int64_t> dims;
    for (int d = 0; d < t.rank(); ++d) dims.push_back(t.size(d));
    header[name] = {{"dtype", std::string(dtype_name(t.dtype()))},
                    {"shape", dims},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  try {
    std::string text = header.dump();
    // Padding keeps the data buffer, and so every tensor, 8-byte aligned in the file.
    text.append((8 - text.size() % 8) % 8, ' ');
    return text;
  } catch (const nlohmann::json::type_error& e) {
    KEEL_FAIL("cannot write {}: a tensor name or metadata string is not valid UTF-8 ({})", path,
              e.what());
  }
}

}  // namespace

std::string write_safetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    KEEL_CHECK(!name.empty() && name != kMetadataKey,
               "cannot write {}: '{}' is not a valid tensor name", path, name);
    KEEL_CHECK(seen.insert(name).second, "cannot write {}: tensor '{}' appears twice", path, name);
    KEEL_CHECK(t.device().is_cpu(), "cannot write {}: tensor '{}' is on {}, not the CPU", path,
               name, t.device().str());
    KEEL_CHECK(t.data() != nullptr || t.numel() == 0, "cannot write {}: tensor '{}' has no data",
               path, name);
  }
  // Largest elements first, as safetensors' own writer does: with an 8-aligned data buffer every
  // tensor then starts at a multiple of its element size.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return dtype_size(tensors[a].second.dtype()) > dtype_size(tensors[b].second.dtype());
  });
  const std::string json = header_json(tensors, order, metadata, path);
  std::string header(kLengthBytes, '\0');
  write_le_u64(header.data(), json.size());
  header += json;

  write_durably(path, [&](int fd, const std::string& tmp) {
    write_all(fd, header.data(), header.size(), tmp);
    for (size_t i : order) {
      const Tensor& t = tensors[i].second;
      write_all(fd, static_cast<const char*>(t.data()), t.nbytes(), tmp);
    }
  });
  return header;
}

}  // namespace keel::runtime
