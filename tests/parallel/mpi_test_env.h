// What the multi-rank tests share: the world communicator of the MPI session that
// mpi_test_main.cpp opens, and the rank-dependent test data every collective test checks against.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"

namespace keel::parallel::testing {

// The session's world (a duplicate of MPI_COMM_WORLD); its counters are reset by each test that
// checks them.
MpiCommunicator& world();

// Small integers, distinct per (rank, index), so that sums over a few ranks are exact in fp32 and
// bf16 and a misplaced chunk or rank shows as a wrong value.
inline float value(int rank, int64_t i) {
  return static_cast<float>((i * 7 + rank * 13 + (i / 5) * 3) % 61 - 30);
}

// "" when got equals want element by element; otherwise the first differing index, both values and
// how many differ (vectors of a million elements are not worth printing whole).
template <class T>
std::string first_mismatch(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size())
    return "size " + std::to_string(got.size()) + " != " + std::to_string(want.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (!(got[i] == want[i]) && bad++ == 0) first = i;
  if (bad == 0) return "";
  std::ostringstream os;
  os << bad << " of " << got.size() << " differ; first at " << first << ": got " << +got[first]
     << ", want " << +want[first];
  return os.str();
}

// Test sizes: one element, an odd few, and a large prime (not a multiple of anything).
inline constexpr int64_t kSizes[] = {1, 7, 1000003};

}  // namespace keel::parallel::testing
