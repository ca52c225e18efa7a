#include "launcher/command_line.h"

#include <algorithm>

#include "kernels/error.h"

namespace keel::launcher {

CommandLine::CommandLine(const std::vector<std::string>& args, const std::string& command,
                         const std::vector<std::string>& valued,
                         const std::vector<std::string>& flags)
    : command_(command) {
  auto named = [](const std::vector<std::string>& names, const std::string& a) {
    return std::find(names.begin(), names.end(), a) != names.end();
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      help_ = true;
    } else if (named(valued, a)) {
      KEEL_CHECK(i + 1 < args.size(), "{} needs a value (keel {} --help)", a, command);
      values_[a] = args[++i];
    } else if (named(flags, a)) {
      values_[a] = "";
    } else {
      KEEL_CHECK(a.size() < 2 || a[0] != '-', "unknown option '{}' for 'keel {}' (keel {} --help)",
                 a, command, command);
      positional_.push_back(a);
    }
  }
}

std::string CommandLine::text(const std::string& option, const std::string& fallback) const {
  const auto it = values_.find(option);
  return it == values_.end() ? fallback : it->second;
}

int64_t CommandLine::whole(const std::string& option, int64_t fallback, int64_t min) const {
  if (!has(option)) return fallback;
  const std::string& v = values_.at(option);
  size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KEEL_CHECK(used == v.size() && n >= min, "{} takes a whole number of at least {}, got '{}'",
             option, min, v);
  return n;
}

double CommandLine::number(const std::string& option, double fallback) const {
  if (!has(option)) return fallback;
  const std::string& v = values_.at(option);
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KEEL_CHECK(used == v.size(), "{} takes a number, got '{}'", option, v);
  return x;
}

}  // namespace keel::launcher
