// A list key's value as integers: the keys that take a YAML list of counts or indices keep it
// comma-separated ("3, 4, 4, 3"); each caller names its own key in the error.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace keel::runtime {

// The non-negative integers of a comma-separated list (spaces allowed around each), empty for
// "", or nothing when an entry is not a plain number of at most 9 digits.
std::optional<std::vector<int64_t>> parse_int_list(std::string_view text);

}  // namespace keel::runtime
