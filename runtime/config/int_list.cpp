#include "runtime/config/int_list.h"

#include <algorithm>
#include <string>

namespace keel::runtime {

std::optional<std::vector<int64_t>> parse_int_list(std::string_view text) {
  std::vector<int64_t> out;
  if (text.empty()) return out;
  while (true) {
    const size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    const bool digits =
        !item.empty() && item.size() <= 9 &&
        std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) return std::nullopt;
    out.push_back(std::stoll(std::string(item)));
    if (comma == std::string_view::npos) return out;
    text = text.substr(comma + 1);
  }
}

}  // namespace keel::runtime
