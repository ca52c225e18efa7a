// Checking a checkpoint without training (keel verify): meta.json against its own checksum, each
// state file's size and header against meta.json, every tensor's bytes against its checksum, and
// that every tensor meta.json lists is held whole by the files, inside its global shape.
#pragma once

#include <string>
#include <vector>

namespace keel::runtime {

struct CheckpointCheck {
  std::string dir;
  std::vector<std::string> lines;     // one a file: its name, then "ok: ..." or what is wrong
  std::vector<std::string> problems;  // every problem found, each naming its file; none: good
  bool good() const { return problems.empty(); }
};

// Reads all of the checkpoint in dir (a step directory). Problems are collected, not thrown, so
// that one run names every damaged file and tensor.
CheckpointCheck verify_checkpoint(const std::string& dir);

}  // namespace keel::runtime
