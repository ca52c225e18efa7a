// A command's arguments: positional ones and "--name value" options, each option named in
// advance with whether it takes a value, and typed reads that name the option in their errors.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace keel::launcher {

// Thrown for command-line mistakes: keel's main prints it with the usage hint, exit code 2.
struct UsageError {
  std::string message;
};

class CommandLine {
 public:
  // command: "generate" (for messages). valued: options followed by a value; flags: options
  // without one. -h and --help set help(). An unknown option or a missing value throws.
  CommandLine(const std::vector<std::string>& args, const std::string& command,
              const std::vector<std::string>& valued, const std::vector<std::string>& flags = {});

  bool help() const { return help_; }
  const std::vector<std::string>& positional() const { return positional_; }
  bool has(const std::string& option) const { return values_.count(option) > 0; }
  std::string text(const std::string& option, const std::string& fallback = "") const;
  // A whole number ≥ min, or fallback when the option is absent.
  int64_t whole(const std::string& option, int64_t fallback, int64_t min = 0) const;
  double number(const std::string& option, double fallback) const;

 private:
  std::string command_;
  bool help_ = false;
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;  // flags map to ""
};

}  // namespace keel::launcher
