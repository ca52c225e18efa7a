// Causal GQA attention on the GPU against the CPU version: out, lse and dqkv (over NaN) on GQA,
// MQA and single-head layouts, odd and maximal head dims and lengths that are no multiple of
// anything; a bitwise-repeatable backward; and the shapes the CUDA kernels refuse.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/error.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "tests/kernels/op_test_util.h"

namespace keel::kernels::cuda {
namespace {

using keel::testing::CudaParamTest;
using keel::testing::CudaTest;
using keel::testing::DeviceBuffer;
using keel::testing::random_floats;
using keel::testing::rel_error;
using keel::testing::to_double;

constexpr double kTol = 1e-5;

struct AttnShape {
  int64_t B, T, H, Hkv, D;
  float input_scale = 1.0f;  // larger: peakier softmax
  int64_t stride() const { return (H + 2 * Hkv) * D; }
  int64_t qkv_size() const { return B * T * stride(); }
  int64_t out_size() const { return B * T * H * D; }
  int64_t lse_size() const { return B * H * T; }
};

struct Result {
  std::vector<float> out, lse, dqkv;
};

Result run_cpu(const AttnShape& s, const std::vector<float>& qkv, const std::vector<float>& dout) {
  Result r{std::vector<float>(s.out_size(), NAN), std::vector<float>(s.lse_size(), NAN),
           std::vector<float>(s.qkv_size(), NAN)};
  std::vector<float> workspace(
      cpu::attention_workspace_floats(s.B, s.T, s.H, s.Hkv, s.D, omp_get_max_threads()));
  cpu::attention_forward(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.H, s.Hkv, s.D,
                         workspace.data());
  cpu::attention_backward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B,
                          s.T, s.H, s.Hkv, s.D, workspace.data());
  return r;
}

Result run_cuda(const AttnShape& s, const std::vector<float>& qkv, const std::vector<float>& dout,
                Stream stream) {
  DeviceBuffer<float> d_qkv(qkv), d_dout(dout), d_out(s.out_size()), d_lse(s.lse_size()),
      d_dqkv(s.qkv_size());  // outputs poisoned
  DeviceBuffer<float> workspace(attention_workspace_floats(s.B, s.T, s.H, s.Hkv, s.D, 1));
  attention_forward(d_out.get(), d_lse.get(), d_qkv.get(), s.B, s.T, s.H, s.Hkv, s.D,
                    workspace.get(), stream);
  attention_backward(d_dqkv.get(), d_dout.get(), d_qkv.get(), d_out.get(), d_lse.get(), s.B, s.T,
                     s.H, s.Hkv, s.D, workspace.get(), stream);
  return {d_out.download(), d_lse.download(), d_dqkv.download()};
}

class CudaAttention : public CudaParamTest<AttnShape> {};

TEST_P(CudaAttention, ForwardAndBackwardMatchCpu) {
  const AttnShape s = GetParam();
  const auto qkv = random_floats(s.qkv_size(), 1, s.input_scale);
  const auto dout = random_floats(s.out_size(), 2);
  const Result want = run_cpu(s, qkv, dout);
  const Result got = run_cuda(s, qkv, dout, stream());
  EXPECT_LE(rel_error(got.out, to_double(want.out)), kTol);
  EXPECT_LE(rel_error(got.lse, to_double(want.lse)), kTol);
  EXPECT_LE(rel_error(got.dqkv, to_double(want.dqkv)), kTol);
}

TEST_P(CudaAttention, BackwardIsBitwiseRepeatable) {
  const AttnShape s = GetParam();
  const auto qkv = random_floats(s.qkv_size(), 3, s.input_scale);
  const auto dout = random_floats(s.out_size(), 4);
  const Result first = run_cuda(s, qkv, dout, stream());
  const Result second = run_cuda(s, qkv, dout, stream());
  EXPECT_EQ(first.out, second.out);
  EXPECT_EQ(first.lse, second.lse);
  EXPECT_EQ(first.dqkv, second.dqkv);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         ::testing::Values(AttnShape{1, 1, 1, 1, 4}, AttnShape{2, 37, 6, 2, 24},
                                           AttnShape{1, 65, 4, 1, 64},   // MQA
                                           AttnShape{2, 19, 3, 3, 7},    // odd head dim
                                           AttnShape{1, 33, 2, 1, 256},  // widest head
                                           AttnShape{1, 130, 8, 2, 48, 3.0f}),
                         [](const auto& test) {
                           const AttnShape& s = test.param;
                           return keel::testing::name_of("B", s.B, "_T", s.T, "_H", s.H, "_Hkv",
                                                         s.Hkv, "_D", s.D,
                                                         s.input_scale == 1.0f ? "" : "_peaked");
                         });

using CudaAttentionChecks = CudaTest;

TEST_F(CudaAttentionChecks, RejectsUngroupedHeadsAndTooWideHeads) {
  DeviceBuffer<float> d(1024);
  EXPECT_THROW(attention_forward(d.get(), d.get(), d.get(), 1, 2, 3, 2, 4, d.get(), stream()),
               Error);
  EXPECT_THROW(attention_forward(d.get(), d.get(), d.get(), 1, 1, 1, 1, 257, d.get(), stream()),
               Error);
  EXPECT_THROW(attention_workspace_floats(1, 2, 4, 0, 8, 1), Error);
}

TEST_F(CudaAttentionChecks, BackwardNeedsAWorkspace) {
  DeviceBuffer<float> d(1024);
  EXPECT_THROW(attention_backward(d.get(), d.get(), d.get(), d.get(), d.get(), 1, 2, 2, 1, 8,
                                  nullptr, stream()),
               Error);
}

}  // namespace
}  // namespace keel::kernels::cuda
