#include "runtime/store/durable_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "kernels/error.h"

namespace keel::runtime {

namespace {

std::string errno_text() { return std::strerror(errno); }

}  // namespace

void write_all(int fd, const char* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    KEEL_CHECK(w > 0, "cannot write {}: {}", path, w < 0 ? errno_text() : "no progress");
    data += w;
    n -= static_cast<size_t>(w);
  }
}

void sync_path(const std::string& path, bool directory) {
  const int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  KEEL_CHECK(fd >= 0, "cannot open '{}' to sync it: {}", path, errno_text());
  const int rc = ::fsync(fd);
  const std::string why = errno_text();
  ::close(fd);
  KEEL_CHECK(rc == 0, "cannot sync '{}' to disk: {}", path, why);
}

void write_durably(const std::string& path,
                   const std::function<void(int fd, const std::string& tmp_path)>& write) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KEEL_CHECK(fd >= 0, "cannot create {}: {}", tmp, errno_text());
  try {
    write(fd, tmp);
    KEEL_CHECK(::fsync(fd) == 0, "cannot fsync {}: {}", tmp, errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  try {
    KEEL_CHECK(::close(fd) == 0, "cannot close {}: {}", tmp, errno_text());
    KEEL_CHECK(::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename {} to {}: {}", tmp, path,
               errno_text());
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dir_fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void write_text_durably(const std::string& path, const std::string& text) {
  write_durably(
      path, [&](int fd, const std::string& tmp) { write_all(fd, text.data(), text.size(), tmp); });
}

}  // namespace keel::runtime
