// The op table (kernels/ops.h) and the harness that runs every op of every backend present
// against the CPU, ggml's test-backend-ops in spirit: Backends/MatchesCpu.<backend>_<op> runs a
// case (backend_cases_*.cpp) on that backend. The CPU backend runs every case too, holding the
// table's entries bit for bit to the kernels::cpu functions; the CUDA cases skip, saying why,
// without the CUDA kernels or without a GPU.
#include <gtest/gtest.h>

#include <ostream>
#include <set>
#include <string>

#include "kernels/error.h"
#include "kernels/ops.h"
#include "tests/kernels/backend_harness.h"

namespace keel::testing {
namespace {

// Whether this test links keel_kernels_cuda (which defines KEEL_HAS_CUDA for what links it).
#ifdef KEEL_HAS_CUDA
constexpr bool kCudaLinked = true;
#else
constexpr bool kCudaLinked = false;
#endif

std::vector<OpCase> all_cases() {
  std::vector<OpCase> cases = layer_cases();
  for (OpCase& c : vocab_parallel_cases()) cases.push_back(std::move(c));
  for (OpCase& c : optimizer_cases()) cases.push_back(std::move(c));
  for (OpCase& c : moe_cases()) cases.push_back(std::move(c));
  return cases;
}

bool provides(const kernels::Ops& ops, const std::string& entry) {
  for (const kernels::OpEntry& e : kernels::op_entries(ops))
    if (entry == e.name) return e.provided;
  return false;
}

struct BackendCase {
  DeviceType backend;
  OpCase op;
};

std::vector<BackendCase> backend_cases() {
  std::vector<BackendCase> all;
  for (const DeviceType t : {DeviceType::CPU, DeviceType::CUDA})
    for (const OpCase& c : all_cases()) all.push_back({t, c});
  return all;
}

// "cpu/gemm" in failure messages, not the parameter's bytes.
void PrintTo(const BackendCase& c, std::ostream* os) {
  *os << (c.backend == DeviceType::CPU ? "cpu" : "cuda") << "/" << c.op.name;
}

class Backends : public ::testing::TestWithParam<BackendCase> {};

TEST_P(Backends, MatchesCpu) {
  const BackendCase& c = GetParam();
  if (!kernels::has_backend(c.backend))
    GTEST_SKIP() << "built without CUDA (configure with -DKEEL_CUDA=ON on a machine with nvcc)";
  const kernels::Ops& ops = kernels::ops(Device{c.backend, 0});
  if (ops.memory.device_count() == 0) GTEST_SKIP() << "no GPU visible";
  for (const std::string& entry : c.op.entries)
    if (!provides(ops, entry)) GTEST_SKIP() << ops.name << " provides no " << entry << " yet";
  BackendRun run(ops, c.op.tolerance);
  c.op.run(run);
}

std::string case_name(const ::testing::TestParamInfo<BackendCase>& test) {
  return std::string(test.param.backend == DeviceType::CPU ? "cpu" : "cuda") + "_" +
         test.param.op.name;
}

INSTANTIATE_TEST_SUITE_P(Ops, Backends, ::testing::ValuesIn(backend_cases()), case_name);

// An op added to the table without a case here would never be held against the CPU.
TEST(OpTable, EveryOpHasACase) {
  std::set<std::string> entries, covered;
  for (const kernels::OpEntry& e : kernels::op_entries(kernels::ops(Device::cpu())))
    entries.insert(e.name);
  for (const OpCase& c : all_cases()) {
    EXPECT_FALSE(c.entries.empty()) << c.name;
    for (const std::string& e : c.entries) {
      EXPECT_TRUE(entries.count(e))
          << "case " << c.name << " names '" << e << "', which is no entry of kernels::Ops";
      covered.insert(e);
    }
  }
  for (const std::string& e : entries)
    EXPECT_TRUE(covered.count(e)) << "kernels::Ops::" << e
                                  << " has no case in tests/kernels/backend_cases_*.cpp";
}

// The CPU is the reference: it provides every op.
TEST(OpTable, CpuProvidesEveryOp) {
  const kernels::Ops& cpu = kernels::ops(Device::cpu());
  EXPECT_STREQ(cpu.name, "cpu");
  EXPECT_EQ(cpu.memory.device_count(), 1);
  for (const kernels::OpEntry& e : kernels::op_entries(cpu)) EXPECT_TRUE(e.provided) << e.name;
}

// Linking keel_kernels_cuda registers its table (the weak symbol is resolved, not left null);
// without it, asking for CUDA names the fix.
TEST(OpTable, CudaIsThereExactlyWhenLinked) {
  EXPECT_EQ(kernels::has_backend(DeviceType::CUDA), kCudaLinked);
  if (kCudaLinked) {
    EXPECT_STREQ(kernels::ops(Device::cuda(0)).name, "cuda");
    EXPECT_STREQ(kernels::ops(Device::cuda(3)).name, "cuda");  // one table for every GPU
    return;
  }
  try {
    kernels::ops(Device::cuda(1));
    FAIL() << "ops(cuda:1) returned a table in a build without CUDA";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cuda:1"), std::string::npos) << what;
    EXPECT_NE(what.find("-DKEEL_CUDA=ON"), std::string::npos) << what;
  }
}

// The CUDA GEMMs take their cuBLAS handle from the stream; without one they refuse before any
// CUDA call, so this needs no GPU.
TEST(OpTable, CudaGemmWantsTheStreamsBlasHandle) {
  if (!kCudaLinked) GTEST_SKIP() << "built without CUDA";
  const kernels::Ops& cuda = kernels::ops(Device::cuda(0));
  try {
    cuda.gemm(false, false, 1, 1, 1, 1.0f, nullptr, 1, nullptr, 1, 0.0f, nullptr, 1, Stream{});
    FAIL() << "a CUDA gemm without a cuBLAS handle ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Stream::blas"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cuda.matmul_forward(nullptr, nullptr, nullptr, 1, 1, 1, Stream{}), Error);
  EXPECT_THROW(
      cuda.matmul_backward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 1, 1, false, Stream{}),
      Error);
}

}  // namespace
}  // namespace keel::testing
