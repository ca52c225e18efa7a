// Writing files so that a crash never leaves a part of one: write a temporary beside the target,
// fsync it, rename it over the target, fsync the directory. Used by the safetensors writer, the
// checkpoint store and its meta.json and `latest`.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace keel::runtime {

// Writes n bytes to fd, retrying short writes and EINTR; errors name `path`.
void write_all(int fd, const char* data, size_t n, const std::string& path);

// fsync of a file or a directory (a directory's fsync makes the renames inside it durable).
void sync_path(const std::string& path, bool directory);

// Creates path + ".tmp", lets write(fd, tmp_path) fill it, fsyncs and renames it over path, then
// fsyncs the directory (best effort: some filesystems refuse it, and the file is complete either
// way). Readers see the old file or the new one; on failure the temporary is removed.
void write_durably(const std::string& path,
                   const std::function<void(int fd, const std::string& tmp_path)>& write);

// write_durably of a whole text (meta.json, latest, tokenizer.json).
void write_text_durably(const std::string& path, const std::string& text);

}  // namespace keel::runtime
