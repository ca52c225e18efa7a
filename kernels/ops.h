// The op table: how runtime/, optim/ and parallel/ reach the kernels of a tensor's device.
// `kernels::ops(t.device())` gives one constant table per backend, each entry a plain function
// pointer with the CPU signature (kernels/<op>.h, Stream last and not defaulted), so callers
// name no backend. The entries point at the free functions of kernels::cpu / kernels::cuda,
// which stay callable by name (each op's own tests use them); tests/kernels/test_backends.cpp
// runs every entry of every backend present against the CPU.
//
// In the table: every op on tensor data, and the workspace query of an op whose backends size
// their scratch differently (attention_workspace_floats, ...). Not in it, called by name: host
// arithmetic that every backend shares — hyper-parameter structs and their derived scalars
// (AdamWHyper, adafactor_decay, adafactor_step_size), the 8-bit maps (dynamic_map, QuantTable),
// rope_tables (host tables a device copies in), and constants (kMaxQuantBlock, kGramBlock).
//
// Registration is at link time, with no mutable state: the CUDA table is a constant in
// keel_kernels_cuda (kernels/cuda/ops.cpp) returned by keel_cuda_ops(), which keel_kernels
// declares weak. Linking that library (which forces its table's object in with --undefined)
// makes ops(Device::cuda(i)) find it; in a program without it the weak symbol is null and
// asking for CUDA is a keel::Error that names the fix.
#pragma once

#include <array>
#include <cstddef>

#include "kernels/adafactor.h"
#include "kernels/adamw.h"
#include "kernels/adamw_8bit.h"
#include "kernels/attention.h"
#include "kernels/attention_cached.h"
#include "kernels/cross_entropy.h"
#include "kernels/device.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/low_rank.h"
#include "kernels/matmul.h"
#include "kernels/moe.h"
#include "kernels/quantize.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/vocab_parallel.h"

namespace keel::kernels {

// A backend's own memory and streams, for tests and tools that move data in and out of it (the
// engine allocates through its memory plans and owns its streams).
struct BackendMemory {
  int (*device_count)() = nullptr;  // devices visible now (0: none; the CPU says 1)
  void* (*alloc)(size_t bytes) = nullptr;
  void (*release)(void* p) = nullptr;  // never throws (destructors call it); reports on stderr
  // Synchronous: they return when the bytes have landed, after the stream's earlier work.
  void (*copy_in)(void* device, const void* host, size_t bytes, Stream stream) = nullptr;
  void (*copy_out)(void* host, const void* device, size_t bytes, Stream stream) = nullptr;
  // A new stream with its own cuBLAS handle where the backend has one; stream_destroy frees both.
  Stream (*stream_create)() = nullptr;
  void (*stream_destroy)(Stream stream) = nullptr;
};

// One backend's ops. A null entry: the backend does not provide that op (yet). The CPU provides
// every one. Entries are named and typed after the kernels::cpu functions.
struct Ops {
  const char* name = nullptr;  // "cpu", "cuda"
  BackendMemory memory;

  // elementwise.h
  decltype(&cpu::add_inplace) add_inplace = nullptr;
  decltype(&cpu::add) add = nullptr;
  decltype(&cpu::scale_inplace) scale_inplace = nullptr;
  decltype(&cpu::sum_squares) sum_squares = nullptr;
  decltype(&cpu::count_nonfinite) count_nonfinite = nullptr;
  // matmul.h (on CUDA through the cuBLAS handle in Stream::blas)
  decltype(&cpu::gemm) gemm = nullptr;
  decltype(&cpu::matmul_forward) matmul_forward = nullptr;
  decltype(&cpu::matmul_backward) matmul_backward = nullptr;
  // the model's layers
  decltype(&cpu::embedding_forward) embedding_forward = nullptr;
  decltype(&cpu::embedding_backward) embedding_backward = nullptr;
  decltype(&cpu::rmsnorm_forward) rmsnorm_forward = nullptr;
  decltype(&cpu::rmsnorm_backward) rmsnorm_backward = nullptr;
  decltype(&cpu::rope_forward) rope_forward = nullptr;
  decltype(&cpu::rope_backward) rope_backward = nullptr;
  decltype(&cpu::swiglu_forward) swiglu_forward = nullptr;
  decltype(&cpu::swiglu_backward) swiglu_backward = nullptr;
  decltype(&cpu::attention_forward) attention_forward = nullptr;
  decltype(&cpu::attention_backward) attention_backward = nullptr;
  decltype(&cpu::attention_workspace_floats) attention_workspace_floats = nullptr;
  decltype(&cpu::attention_cached) attention_cached = nullptr;
  decltype(&cpu::attention_cached_workspace_floats) attention_cached_workspace_floats = nullptr;
  decltype(&cpu::cross_entropy_forward) cross_entropy_forward = nullptr;
  decltype(&cpu::cross_entropy_forward_backward) cross_entropy_forward_backward = nullptr;
  // Mixture-of-Experts routing and row moves (moe.h)
  decltype(&cpu::moe_router_forward) moe_router_forward = nullptr;
  decltype(&cpu::moe_router_stats) moe_router_stats = nullptr;
  decltype(&cpu::moe_router_backward) moe_router_backward = nullptr;
  decltype(&cpu::moe_gather_rows) moe_gather_rows = nullptr;
  decltype(&cpu::moe_combine) moe_combine = nullptr;
  decltype(&cpu::moe_combine_backward) moe_combine_backward = nullptr;
  decltype(&cpu::moe_add_gathered) moe_add_gathered = nullptr;
  // tensor parallelism's vocabulary-parallel embedding and cross-entropy (vocab_parallel.h)
  decltype(&cpu::embedding_forward_slice) embedding_forward_slice = nullptr;
  decltype(&cpu::embedding_backward_slice) embedding_backward_slice = nullptr;
  decltype(&cpu::cross_entropy_slice_max) cross_entropy_slice_max = nullptr;
  decltype(&cpu::cross_entropy_slice_sums) cross_entropy_slice_sums = nullptr;
  decltype(&cpu::cross_entropy_slice_finish) cross_entropy_slice_finish = nullptr;
  // optimizers
  decltype(&cpu::adamw_step) adamw_step = nullptr;
  decltype(&cpu::quantize_blockwise) quantize_blockwise = nullptr;
  decltype(&cpu::dequantize_blockwise) dequantize_blockwise = nullptr;
  decltype(&cpu::adamw_8bit_step) adamw_8bit_step = nullptr;
  decltype(&cpu::adafactor_step) adafactor_step = nullptr;
  decltype(&cpu::adafactor_sums) adafactor_sums = nullptr;
  decltype(&cpu::adafactor_update_means) adafactor_update_means = nullptr;
  decltype(&cpu::adafactor_factors) adafactor_factors = nullptr;
  decltype(&cpu::adafactor_second_moment) adafactor_second_moment = nullptr;
  decltype(&cpu::adafactor_update_sum_sq) adafactor_update_sum_sq = nullptr;
  decltype(&cpu::adafactor_apply) adafactor_apply = nullptr;
  // GaLore's projector (low_rank.h), in double
  decltype(&cpu::gram_accumulate) gram_accumulate = nullptr;
  decltype(&cpu::symmetric_top_eigen) symmetric_top_eigen = nullptr;
  decltype(&cpu::eigen_scratch) eigen_scratch = nullptr;
  decltype(&cpu::canonicalize_signs) canonicalize_signs = nullptr;
  decltype(&cpu::orthonormalize_rows) orthonormalize_rows = nullptr;
  decltype(&cpu::orthonormalize_scratch) orthonormalize_scratch = nullptr;
  decltype(&cpu::combine_rows) combine_rows = nullptr;
  decltype(&cpu::gaussian_fill) gaussian_fill = nullptr;
};

// The table of a device's backend (any index: choosing the GPU is the caller's). Throws
// keel::Error for a backend this program was built without.
const Ops& ops(Device device);
// Whether this program has the backend of that type (the CPU always).
bool has_backend(DeviceType type);

// An entry of a table by name, and whether the backend provides it: what the test harness walks.
struct OpEntry {
  const char* name;
  bool provided;
};

#define KEEL_OP_ENTRY(op) \
  OpEntry { #op, o.op != nullptr }
constexpr std::array<OpEntry, 54> op_entries(const Ops& o) {
  return {KEEL_OP_ENTRY(add_inplace),
          KEEL_OP_ENTRY(add),
          KEEL_OP_ENTRY(scale_inplace),
          KEEL_OP_ENTRY(sum_squares),
          KEEL_OP_ENTRY(count_nonfinite),
          KEEL_OP_ENTRY(gemm),
          KEEL_OP_ENTRY(matmul_forward),
          KEEL_OP_ENTRY(matmul_backward),
          KEEL_OP_ENTRY(embedding_forward),
          KEEL_OP_ENTRY(embedding_backward),
          KEEL_OP_ENTRY(rmsnorm_forward),
          KEEL_OP_ENTRY(rmsnorm_backward),
          KEEL_OP_ENTRY(rope_forward),
          KEEL_OP_ENTRY(rope_backward),
          KEEL_OP_ENTRY(swiglu_forward),
          KEEL_OP_ENTRY(swiglu_backward),
          KEEL_OP_ENTRY(attention_forward),
          KEEL_OP_ENTRY(attention_backward),
          KEEL_OP_ENTRY(attention_workspace_floats),
          KEEL_OP_ENTRY(attention_cached),
          KEEL_OP_ENTRY(attention_cached_workspace_floats),
          KEEL_OP_ENTRY(cross_entropy_forward),
          KEEL_OP_ENTRY(cross_entropy_forward_backward),
          KEEL_OP_ENTRY(moe_router_forward),
          KEEL_OP_ENTRY(moe_router_stats),
          KEEL_OP_ENTRY(moe_router_backward),
          KEEL_OP_ENTRY(moe_gather_rows),
          KEEL_OP_ENTRY(moe_combine),
          KEEL_OP_ENTRY(moe_combine_backward),
          KEEL_OP_ENTRY(moe_add_gathered),
          KEEL_OP_ENTRY(embedding_forward_slice),
          KEEL_OP_ENTRY(embedding_backward_slice),
          KEEL_OP_ENTRY(cross_entropy_slice_max),
          KEEL_OP_ENTRY(cross_entropy_slice_sums),
          KEEL_OP_ENTRY(cross_entropy_slice_finish),
          KEEL_OP_ENTRY(adamw_step),
          KEEL_OP_ENTRY(quantize_blockwise),
          KEEL_OP_ENTRY(dequantize_blockwise),
          KEEL_OP_ENTRY(adamw_8bit_step),
          KEEL_OP_ENTRY(adafactor_step),
          KEEL_OP_ENTRY(adafactor_sums),
          KEEL_OP_ENTRY(adafactor_update_means),
          KEEL_OP_ENTRY(adafactor_factors),
          KEEL_OP_ENTRY(adafactor_second_moment),
          KEEL_OP_ENTRY(adafactor_update_sum_sq),
          KEEL_OP_ENTRY(adafactor_apply),
          KEEL_OP_ENTRY(gram_accumulate),
          KEEL_OP_ENTRY(symmetric_top_eigen),
          KEEL_OP_ENTRY(eigen_scratch),
          KEEL_OP_ENTRY(canonicalize_signs),
          KEEL_OP_ENTRY(orthonormalize_rows),
          KEEL_OP_ENTRY(orthonormalize_scratch),
          KEEL_OP_ENTRY(combine_rows),
          KEEL_OP_ENTRY(gaussian_fill)};
}
#undef KEEL_OP_ENTRY

// An op added to Ops but not to op_entries would escape the harness: every entry after
// `memory` is one function pointer, and op_entries must count them all.
static_assert(sizeof(Ops) == offsetof(Ops, memory) + sizeof(BackendMemory) +
                                 op_entries(Ops{}).size() * sizeof(void (*)()));

}  // namespace keel::kernels
