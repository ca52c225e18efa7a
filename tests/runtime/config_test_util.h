// What the config tests share: a minimal valid file, the message a mistake throws, and a check
// that a message names every piece it should.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "runtime/config/config.h"

namespace keel::runtime::test {

inline const char* const kMinimalYaml = "data: {train: data/tiny.txt}\n";

// The message of the keel::Error that f throws; fails the test when f throws nothing.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a keel::Error";
  return "";
}

inline std::string parse_error(const std::string& yaml,
                               const std::vector<std::string>& overrides = {}) {
  return error_of([&] { parse_config(yaml, overrides, "configs/x.yaml"); });
}

// Expects every piece in the message.
inline void expect_mentions(const std::string& message, const std::vector<std::string>& pieces) {
  for (const std::string& piece : pieces) {
    EXPECT_NE(message.find(piece), std::string::npos)
        << "message lacks \"" << piece << "\":\n  " << message;
  }
}

}  // namespace keel::runtime::test
