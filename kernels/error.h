// Errors for all of keel: one exception type carrying a message and where it was raised, and the
// KEEL_CHECK macro that raises it. User-facing messages say what is wrong and how to fix it; the
// launcher prints them as one line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace keel {

class Error : public std::runtime_error {
 public:
  Error(const std::string& message, std::string where)
      : std::runtime_error(message), where_(std::move(where)) {}
  // "file:line" of the check that failed.
  const std::string& where() const { return where_; }

 private:
  std::string where_;
};

namespace detail {

inline void format_into(std::ostringstream& os, std::string_view fmt) { os << fmt; }

template <class T, class... Rest>
void format_into(std::ostringstream& os, std::string_view fmt, const T& first,
                 const Rest&... rest) {
  const size_t at = fmt.find("{}");
  if (at == std::string_view::npos) {
    os << fmt;
    return;
  }
  os << fmt.substr(0, at) << first;
  format_into(os, fmt.substr(at + 2), rest...);
}

}  // namespace detail

// Replaces each "{}" in fmt by the next argument, streamed with operator<<.
template <class... Args>
std::string format(std::string_view fmt, const Args&... args) {
  std::ostringstream os;
  detail::format_into(os, fmt, args...);
  return os.str();
}

[[noreturn]] inline void raise_error(const char* file, int line, const std::string& message) {
  throw Error(message, std::string(file) + ":" + std::to_string(line));
}

}  // namespace keel

// KEEL_CHECK(cond, "message with {}", value): throws keel::Error when cond is false.
#define KEEL_CHECK(cond, ...)                                                          \
  do {                                                                                 \
    if (!(cond)) ::keel::raise_error(__FILE__, __LINE__, ::keel::format(__VA_ARGS__)); \
  } while (0)

// KEEL_FAIL("message with {}", value): throws unconditionally.
#define KEEL_FAIL(...) ::keel::raise_error(__FILE__, __LINE__, ::keel::format(__VA_ARGS__))
