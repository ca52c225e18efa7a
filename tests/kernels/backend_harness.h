// The backend harness (test_backends.cpp): each case runs one op (or a few that share a case)
// through a backend's op table on buffers in that backend's memory, and holds the result against
// kernels::cpu on the same inputs. On the CPU backend that is the table against the namespace,
// bit for bit; on another backend within the case's stated tolerance.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "kernels/ops.h"
#include "tests/kernels/op_test_util.h"

namespace keel::testing {

// n elements of T in a backend's memory, owned (released through the table).
template <class T>
class BackendBuffer {
 public:
  BackendBuffer(const kernels::Ops& ops, size_t n)
      : ops_(&ops), n_(n), data_(static_cast<T*>(ops.memory.alloc(n * sizeof(T)))) {}
  ~BackendBuffer() { ops_->memory.release(data_); }
  BackendBuffer(BackendBuffer&& o) noexcept
      : ops_(o.ops_), n_(std::exchange(o.n_, 0)), data_(std::exchange(o.data_, nullptr)) {}
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  BackendBuffer& operator=(BackendBuffer&&) = delete;

  T* get() const { return data_; }
  size_t size() const { return n_; }

 private:
  const kernels::Ops* ops_;
  size_t n_;
  T* data_;
};

// A backend under test: its table, a stream of its own (with its cuBLAS handle on CUDA), and the
// comparison each case makes against the CPU.
class BackendRun {
 public:
  BackendRun(const kernels::Ops& ops, double tolerance)
      : ops_(ops), tolerance_(tolerance), stream_(ops.memory.stream_create()) {}
  ~BackendRun() { ops_.memory.stream_destroy(stream_); }
  BackendRun(const BackendRun&) = delete;
  BackendRun& operator=(const BackendRun&) = delete;

  const kernels::Ops& ops() const { return ops_; }
  Stream stream() const { return stream_; }
  // The CPU backend must reproduce kernels::cpu exactly: its entries are those functions.
  bool exact() const { return std::strcmp(ops_.name, "cpu") == 0; }

  // A copy of host in the backend's memory.
  template <class T>
  BackendBuffer<T> put(const std::vector<T>& host) {
    BackendBuffer<T> b(ops_, host.size());
    ops_.memory.copy_in(b.get(), host.data(), host.size() * sizeof(T), stream_);
    return b;
  }
  // The buffer's contents, after the stream's work so far.
  template <class T>
  std::vector<T> get(const BackendBuffer<T>& b) {
    std::vector<T> host(b.size());
    ops_.memory.copy_out(host.data(), b.get(), b.size() * sizeof(T), stream_);
    return host;
  }

  // got against want: the same bits on the CPU backend, else ‖got − want‖ / ‖want‖ within the
  // case's tolerance (NaN anywhere fails).
  void expect_close(const char* what, const std::vector<float>& got,
                    const std::vector<float>& want) const {
    ASSERT_EQ(got.size(), want.size()) << what;
    if (exact()) {
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
          << what << ": the CPU table's result differs from kernels::cpu's";
      return;
    }
    EXPECT_LE(rel_error(got, to_double(want)), tolerance_) << what << " on " << ops_.name;
  }
  void expect_close(const char* what, const std::vector<double>& got,
                    const std::vector<double>& want) const {
    ASSERT_EQ(got.size(), want.size()) << what;
    if (exact()) {
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(double)), 0)
          << what << ": the CPU table's result differs from kernels::cpu's";
      return;
    }
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
      num += (got[i] - want[i]) * (got[i] - want[i]);
      den += want[i] * want[i];
    }
    EXPECT_LE(den > 0 ? std::sqrt(num / den) : std::sqrt(num), tolerance_)
        << what << " on " << ops_.name;
  }
  void expect_close(const char* what, double got, double want) const {
    expect_close(what, std::vector<double>{got}, std::vector<double>{want});
  }
  // Integers and codes: the same values on every backend.
  template <class T>
  void expect_same(const char* what, const std::vector<T>& got, const std::vector<T>& want) const {
    EXPECT_EQ(got, want) << what << " on " << ops_.name;
  }

 private:
  const kernels::Ops& ops_;
  double tolerance_;
  Stream stream_;
};

// One harness case: the table entries it runs (every one must be provided by a backend for the
// case to run there), the tolerance against the CPU on other backends, and the run itself.
struct OpCase {
  std::string name;
  std::vector<std::string> entries;
  double tolerance;
  void (*run)(BackendRun& b);
};

// Cases for the model's layers and the elementwise ops (backend_cases_layers.cpp), for tensor
// parallelism's vocabulary-parallel ops (backend_cases_vocab.cpp) and for the optimizers' ops
// (backend_cases_optim.cpp).
std::vector<OpCase> layer_cases();
std::vector<OpCase> vocab_parallel_cases();
std::vector<OpCase> optimizer_cases();
std::vector<OpCase> moe_cases();  // backend_cases_moe.cpp: Mixture-of-Experts routing

}  // namespace keel::testing
