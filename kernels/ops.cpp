// The CPU op table (every entry a kernels::cpu function) and the lookup by device, which finds
// the CUDA table through a weak symbol that keel_kernels_cuda defines (see kernels/ops.h).
#include "kernels/ops.h"

#include <cstring>
#include <new>

#include "kernels/error.h"

// Defined in kernels/cuda/ops.cpp and nowhere else. Weak: a program linked without
// keel_kernels_cuda still links, and sees a null address here.
extern "C" const keel::kernels::Ops* keel_cuda_ops() __attribute__((weak));

namespace keel::kernels {

namespace {

// Host memory, aligned as the memory plans align their buffers (64 bytes).
constexpr std::align_val_t kHostAlign{64};

int host_count() { return 1; }
void* host_alloc(size_t bytes) { return ::operator new(bytes, kHostAlign); }
void host_release(void* p) { ::operator delete(p, kHostAlign); }
void host_copy(void* dst, const void* src, size_t bytes, Stream) {
  if (bytes > 0) std::memcpy(dst, src, bytes);
}
Stream host_stream_create() { return {}; }
void host_stream_destroy(Stream) {}

constexpr Ops kCpuOps = {
    .name = "cpu",
    .memory = {.device_count = host_count,
               .alloc = host_alloc,
               .release = host_release,
               .copy_in = host_copy,
               .copy_out = host_copy,
               .stream_create = host_stream_create,
               .stream_destroy = host_stream_destroy},
    .add_inplace = cpu::add_inplace,
    .add = cpu::add,
    .scale_inplace = cpu::scale_inplace,
    .sum_squares = cpu::sum_squares,
    .count_nonfinite = cpu::count_nonfinite,
    .gemm = cpu::gemm,
    .matmul_forward = cpu::matmul_forward,
    .matmul_backward = cpu::matmul_backward,
    .embedding_forward = cpu::embedding_forward,
    .embedding_backward = cpu::embedding_backward,
    .rmsnorm_forward = cpu::rmsnorm_forward,
    .rmsnorm_backward = cpu::rmsnorm_backward,
    .rope_forward = cpu::rope_forward,
    .rope_backward = cpu::rope_backward,
    .swiglu_forward = cpu::swiglu_forward,
    .swiglu_backward = cpu::swiglu_backward,
    .attention_forward = cpu::attention_forward,
    .attention_backward = cpu::attention_backward,
    .attention_workspace_floats = cpu::attention_workspace_floats,
    .attention_cached = cpu::attention_cached,
    .attention_cached_workspace_floats = cpu::attention_cached_workspace_floats,
    .cross_entropy_forward = cpu::cross_entropy_forward,
    .cross_entropy_forward_backward = cpu::cross_entropy_forward_backward,
    .moe_router_forward = cpu::moe_router_forward,
    .moe_router_stats = cpu::moe_router_stats,
    .moe_router_backward = cpu::moe_router_backward,
    .moe_gather_rows = cpu::moe_gather_rows,
    .moe_combine = cpu::moe_combine,
    .moe_combine_backward = cpu::moe_combine_backward,
    .moe_add_gathered = cpu::moe_add_gathered,
    .embedding_forward_slice = cpu::embedding_forward_slice,
    .embedding_backward_slice = cpu::embedding_backward_slice,
    .cross_entropy_slice_max = cpu::cross_entropy_slice_max,
    .cross_entropy_slice_sums = cpu::cross_entropy_slice_sums,
    .cross_entropy_slice_finish = cpu::cross_entropy_slice_finish,
    .adamw_step = cpu::adamw_step,
    .quantize_blockwise = cpu::quantize_blockwise,
    .dequantize_blockwise = cpu::dequantize_blockwise,
    .adamw_8bit_step = cpu::adamw_8bit_step,
    .adafactor_step = cpu::adafactor_step,
    .adafactor_sums = cpu::adafactor_sums,
    .adafactor_update_means = cpu::adafactor_update_means,
    .adafactor_factors = cpu::adafactor_factors,
    .adafactor_second_moment = cpu::adafactor_second_moment,
    .adafactor_update_sum_sq = cpu::adafactor_update_sum_sq,
    .adafactor_apply = cpu::adafactor_apply,
    .gram_accumulate = cpu::gram_accumulate,
    .symmetric_top_eigen = cpu::symmetric_top_eigen,
    .eigen_scratch = cpu::eigen_scratch,
    .canonicalize_signs = cpu::canonicalize_signs,
    .orthonormalize_rows = cpu::orthonormalize_rows,
    .orthonormalize_scratch = cpu::orthonormalize_scratch,
    .combine_rows = cpu::combine_rows,
    .gaussian_fill = cpu::gaussian_fill,
};

}  // namespace

bool has_backend(DeviceType type) {
  return type == DeviceType::CPU || (type == DeviceType::CUDA && keel_cuda_ops != nullptr);
}

const Ops& ops(Device device) {
  if (device.is_cpu()) return kCpuOps;
  KEEL_CHECK(keel_cuda_ops != nullptr,
             "{} needs the CUDA ops, and this program was built without them: configure with "
             "-DKEEL_CUDA=ON on a machine with nvcc (docs/CUDA.md) and link keel_kernels_cuda",
             device.str());
  return *keel_cuda_ops();
}

}  // namespace keel::kernels
