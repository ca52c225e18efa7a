// Units of a toy model for the tests of ZeRO's and UnitGrads' hand-over, and a gradient whose
// every float says which unit and element it is.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "parallel/zero.h"

namespace keel::parallel::test {

// embedding (0), two blocks (1, 2), head (3); offsets leave gaps, as the model's plan does.
inline const std::vector<ZeroUnit>& toy_units() {
  static const std::vector<ZeroUnit> units = {
      {"embed_tokens", {{"e", 6, 4}}, {0}, 24},
      {"layers.0", {{"a0", 5, 3}, {"b0", 7, 1}}, {0, 16}, 23},
      {"layers.1", {{"a1", 5, 3}, {"b1", 7, 1}}, {0, 16}, 23},
      {"head", {{"n", 4, 1}, {"h", 6, 4}}, {0, 16}, 40}};
  return units;
}

// The gradient the toy backward writes at float i of unit u's buffer (gaps stay 0).
inline float toy_grad(int u, int64_t i) { return 0.25f * static_cast<float>(u + 1) + 0.01f * i; }

// Writes unit u's gradient into its buffer g (the gaps between parameters left 0).
inline void fill_toy_grad(const ZeroUnit& unit, int u, float* g) {
  for (size_t p = 0; p < unit.params.size(); ++p)
    for (int64_t i = 0; i < unit.params[p].rows * unit.params[p].cols; ++i)
      g[unit.offsets[p] + i] = toy_grad(u, unit.offsets[p] + i);
}

// Σ g² of unit u's toy gradient.
inline double toy_sum_squares(const ZeroUnit& unit, int u) {
  double sq = 0.0;
  for (size_t p = 0; p < unit.params.size(); ++p)
    for (int64_t i = 0; i < unit.params[p].rows * unit.params[p].cols; ++i)
      sq += double{toy_grad(u, unit.offsets[p] + i)} * toy_grad(u, unit.offsets[p] + i);
  return sq;
}

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace keel::parallel::test
