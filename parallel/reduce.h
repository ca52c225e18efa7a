// The elementwise reduction keel's own collective algorithms (and the bf16 MPI user ops) apply:
// dst = a op b over n elements. BF16 is added (or compared) in fp32 and rounded to bf16 once per
// call, which is what "each pairwise step rounds" in docs/PARALLEL.md means.
#pragma once

#include <cstdint>

#include "kernels/dtype.h"
#include "parallel/communicator.h"

namespace keel::parallel {

// dst[i] = a[i] op b[i], for F32, F64, I32, I64 and BF16; dst may be a or b. Max propagates NaN.
void reduce_buffers(void* dst, const void* a, const void* b, int64_t n, DType dtype, ReduceOp op);

}  // namespace keel::parallel
