// Causal grouped-query attention on the CPU with FlashAttention-2 math: the forward saves only the
// output and each query's log-sum-exp; the backward recomputes the probabilities from q, k and lse.
// The products run as single-threaded OpenBLAS GEMMs inside one OpenMP region.
#include "kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/vec_math.h"
#include "kernels/error.h"
#include "kernels/matmul.h"

namespace keel::kernels::cpu {

namespace {

// Queries are processed in blocks of positions; a block [q0, q1) only meets keys [0, q1), so the
// causal mask skips about half the products. A block stacks the G query heads of one kv head,
// (G·nq) rows, so one GEMM serves the whole group; the stack is kept near kTargetRows rows.
constexpr int64_t kTargetRows = 128;
constexpr int64_t kMinBlock = 16;
constexpr int64_t kMaxBlock = 64;
// The backward runs one task per (batch, kv head) so dk and dv accumulate without races. With
// fewer tasks than this, each task's query blocks are split into ranges that run in parallel,
// each accumulating its own partial dk, dv, added in a fixed order afterwards. The split depends
// on the shape only, never on the thread count, so results are bitwise the same for any count.
constexpr int64_t kMinBackwardTasks = 16;
constexpr int64_t kMaxBlasInt = std::numeric_limits<int>::max();
// Every workspace region starts on a 64-byte boundary relative to the workspace.
constexpr size_t kAlignFloats = 16;

size_t align_up(size_t n) { return (n + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

// The decomposition of one call: a function of the shape alone.
struct Plan {
  int64_t B, T, H, Hkv, D;
  int64_t G;         // query heads per kv head
  int64_t block;     // query positions per block
  int64_t n_blocks;  // ceil(T / block)
  int64_t rows;      // G · block: stacked query rows of a full block
  int64_t stride;    // (H + 2·Hkv)·D: floats per token of qkv
  int64_t n_tasks;   // B · Hkv
  int64_t n_splits;  // backward query-block ranges per task
  // Per-thread scratch, offsets in floats from the thread's slot (see attention_workspace_floats).
  size_t off_q, off_do, off_dq, off_s, off_dp, off_row_a, off_row_b, per_thread;
  size_t partial;  // floats of one partial (dk, dv) pair: 2·T·D
};

Plan make_plan(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) {
  KEEL_CHECK(B >= 0 && T >= 0, "attention: negative B = {} or T = {}", B, T);
  KEEL_CHECK(D > 0, "attention: head dim D = {} must be positive", D);
  KEEL_CHECK(Hkv > 0 && H > 0 && H % Hkv == 0,
             "attention: H = {} query heads must be a positive multiple of Hkv = {} kv heads", H,
             Hkv);
  // Every GEMM dimension and leading dimension is at most max(T, stride, rows): checking them
  // here keeps gemm()'s own checks from throwing inside the OpenMP region.
  KEEL_CHECK(T <= kMaxBlasInt && (H + 2 * Hkv) * D <= kMaxBlasInt && H * kMaxBlock <= kMaxBlasInt,
             "attention: sizes T = {}, H = {}, Hkv = {}, D = {} overflow 32-bit BLAS", T, H, Hkv,
             D);
  Plan p{};
  p.B = B;
  p.T = T;
  p.H = H;
  p.Hkv = Hkv;
  p.D = D;
  p.G = H / Hkv;
  p.block = std::clamp(kTargetRows / p.G, kMinBlock, kMaxBlock);
  p.block = std::max<int64_t>(1, std::min(p.block, T));
  p.n_blocks = (T + p.block - 1) / p.block;
  p.rows = p.G * p.block;
  p.stride = (H + 2 * Hkv) * D;
  p.n_tasks = B * Hkv;
  p.n_splits = p.n_tasks == 0 ? 1
                              : std::clamp((kMinBackwardTasks + p.n_tasks - 1) / p.n_tasks,
                                           int64_t{1}, std::max<int64_t>(1, p.n_blocks));
  const size_t rows_d = align_up(static_cast<size_t>(p.rows * D));
  const size_t rows_t = align_up(static_cast<size_t>(p.rows * T));
  const size_t rows_1 = align_up(static_cast<size_t>(p.rows));
  p.off_q = 0;
  p.off_do = p.off_q + rows_d;
  p.off_dq = p.off_do + rows_d;
  p.off_s = p.off_dq + rows_d;
  p.off_dp = p.off_s + rows_t;
  p.off_row_a = p.off_dp + rows_t;
  p.off_row_b = p.off_row_a + rows_1;
  p.per_thread = p.off_row_b + rows_1;
  p.partial = align_up(static_cast<size_t>(2 * T * D));
  return p;
}

// First query block of each backward split, n_splits + 1 entries. Block i costs about i + 1 units
// (it meets (i + 1)·block keys), so the ranges hold equal shares of the triangle; none is empty.
std::vector<int64_t> split_bounds(const Plan& p) {
  std::vector<int64_t> bounds(p.n_splits + 1, p.n_blocks);
  bounds[0] = 0;
  const double total = 0.5 * static_cast<double>(p.n_blocks) * (p.n_blocks + 1);
  int64_t k = 0;
  for (int64_t s = 1; s < p.n_splits; ++s) {
    const double target = total * static_cast<double>(s) / static_cast<double>(p.n_splits);
    while (k < p.n_blocks && 0.5 * static_cast<double>(k) * (k + 1) < target) ++k;
    bounds[s] = std::clamp(k, bounds[s - 1] + 1, p.n_blocks - (p.n_splits - s));
  }
  return bounds;
}

// Copies the G query-head slices of block positions [q0, q0 + nq) from a (T, row_stride) tensor
// of batch row base into dst (G·nq, D), stacked head-major: row j·nq + i is head g·G + j at q0 + i.
void gather_heads(float* dst, const float* base, int64_t row_stride, const Plan& p, int64_t g,
                  int64_t q0, int64_t nq) {
  for (int64_t j = 0; j < p.G; ++j) {
    const float* src = base + q0 * row_stride + (g * p.G + j) * p.D;
    for (int64_t i = 0; i < nq; ++i) {
      std::memcpy(dst + (j * nq + i) * p.D, src + i * row_stride, p.D * sizeof(float));
    }
  }
}

void forward_block(float* out, float* lse, const float* qkv, const Plan& p, int64_t b, int64_t g,
                   int64_t q0, int64_t nq, float* scratch) {
  const int64_t D = p.D, rows = p.G * nq, q1 = q0 + nq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  float* q = scratch + p.off_q;            // (rows, D) stacked queries
  float* o = scratch + p.off_do;           // (rows, D) unnormalised output
  float* s = scratch + p.off_s;            // (rows, q1) scores, then probabilities
  float* inv_sum = scratch + p.off_row_a;  // (rows)
  const float* base = qkv + b * p.T * p.stride;
  const float* k = base + (p.H + g) * D;          // (q1, D), row stride p.stride
  const float* v = base + (p.H + p.Hkv + g) * D;  // (q1, D), row stride p.stride

  gather_heads(q, base, p.stride, p, g, q0, nq);
  gemm(false, true, rows, q1, D, scale, q, D, k, p.stride, 0.0f, s, q1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = r / nq, t = q0 + r % nq, n = t + 1;  // keys [0, t] are visible
    float* row = s + r * q1;
    float m = row[0];
#pragma omp simd reduction(max : m)
    for (int64_t x = 0; x < n; ++x) m = std::max(m, row[x]);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t x = 0; x < n; ++x) {
      row[x] = exp_approx(row[x] - m);
      sum += row[x];
    }
    std::fill(row + n, row + q1, 0.0f);
    lse[(b * p.H + g * p.G + j) * p.T + t] = m + std::log(sum);
    inv_sum[r] = 1.0f / sum;
  }
  gemm(false, false, rows, D, q1, 1.0f, s, q1, v, p.stride, 0.0f, o, D);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t j = r / nq, t = q0 + r % nq;
    float* dst = out + (b * p.T + t) * p.H * D + (g * p.G + j) * D;
    const float* src = o + r * D;
    const float f = inv_sum[r];
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dst[d] = src[d] * f;
  }
}

// Accumulates one query block's contributions: dq of its rows (written to dqkv), and dk, dv of
// keys [0, q1) added into acc_k, acc_v (row stride ld_acc).
void backward_block(float* dqkv, float* acc_k, float* acc_v, int64_t ld_acc, const float* dout,
                    const float* qkv, const float* out, const float* lse, const Plan& p, int64_t b,
                    int64_t g, int64_t q0, int64_t nq, float* scratch) {
  const int64_t D = p.D, rows = p.G * nq, q1 = q0 + nq, HD = p.H * D;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  float* q = scratch + p.off_q;          // (rows, D) stacked queries
  float* dout_s = scratch + p.off_do;    // (rows, D) stacked output gradients
  float* dq = scratch + p.off_dq;        // (rows, D)
  float* prob = scratch + p.off_s;       // (rows, q1) P
  float* ds = scratch + p.off_dp;        // (rows, q1) dP, then dS
  float* delta = scratch + p.off_row_a;  // (rows) Σ_d dout·out
  float* lse_s = scratch + p.off_row_b;  // (rows)
  const float* base = qkv + b * p.T * p.stride;
  const float* k = base + (p.H + g) * D;
  const float* v = base + (p.H + p.Hkv + g) * D;

  gather_heads(q, base, p.stride, p, g, q0, nq);
  gather_heads(dout_s, dout + b * p.T * HD, HD, p, g, q0, nq);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = g * p.G + r / nq, t = q0 + r % nq;
    const float* o = out + (b * p.T + t) * HD + h * D;
    const float* dor = dout_s + r * D;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < D; ++d) acc += dor[d] * o[d];
    delta[r] = acc;
    lse_s[r] = lse[(b * p.H + h) * p.T + t];
  }

  gemm(false, true, rows, q1, D, scale, q, D, k, p.stride, 0.0f, prob, q1);
  gemm(false, true, rows, q1, D, 1.0f, dout_s, D, v, p.stride, 0.0f, ds, q1);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = q0 + r % nq + 1;
    float* pr = prob + r * q1;
    float* dr = ds + r * q1;
    const float l = lse_s[r], dl = delta[r];
#pragma omp simd
    for (int64_t x = 0; x < n; ++x) {
      pr[x] = exp_approx(pr[x] - l);
      dr[x] = pr[x] * (dr[x] - dl);
    }
    std::fill(pr + n, pr + q1, 0.0f);
    std::fill(dr + n, dr + q1, 0.0f);
  }
  gemm(true, false, q1, D, rows, 1.0f, prob, q1, dout_s, D, 1.0f, acc_v, ld_acc);
  gemm(true, false, q1, D, rows, scale, ds, q1, q, D, 1.0f, acc_k, ld_acc);
  gemm(false, false, rows, D, q1, scale, ds, q1, k, p.stride, 0.0f, dq, D);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t h = g * p.G + r / nq, t = q0 + r % nq;
    std::memcpy(dqkv + (b * p.T + t) * p.stride + h * D, dq + r * D, D * sizeof(float));
  }
}

// Floats of the backward's partial (dk, dv) pairs at the start of the workspace.
size_t partials_floats(const Plan& p) {
  return static_cast<size_t>(p.n_tasks * (p.n_splits - 1)) * p.partial;
}

float* thread_scratch(float* workspace, const Plan& p) {
  return workspace + partials_floats(p) + static_cast<size_t>(omp_get_thread_num()) * p.per_thread;
}

void zero_rows(float* x, int64_t n_rows, int64_t cols, int64_t ld) {
  for (int64_t i = 0; i < n_rows; ++i) std::fill(x + i * ld, x + i * ld + cols, 0.0f);
}

}  // namespace

// Workspace layout, in floats; every region starts 64-byte aligned relative to the workspace.
// rows = G·block with G = H / Hkv and block the query positions per block (see make_plan).
//   first (B·Hkv) · (n_splits − 1) partial (dk, dv) pairs of (T, D) each, for backward splits
//   beyond the first (the first accumulates straight into dqkv); none when n_splits = 1.
//   then one slot of per_thread floats per OpenMP thread, indexed by omp_get_thread_num():
//       q      (rows, D)   stacked query heads of the block
//       do     (rows, D)   stacked output gradients (forward: unnormalised output)
//       dq     (rows, D)   query gradients of the block (backward only)
//       s      (rows, T)   scores, then probabilities; row stride q1 of the block
//       dp     (rows, T)   dP, then dS (backward only)
//       row_a  (rows)      forward 1/Σexp, backward delta = Σ dout·out
//       row_b  (rows)      backward lse of the block's rows
// The caller must size it with max_threads ≥ omp_get_max_threads() at the time of the call.
size_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                  int max_threads) {
  const Plan p = make_plan(B, T, H, Hkv, D);
  const size_t threads = static_cast<size_t>(std::max(1, max_threads));
  return partials_floats(p) + threads * p.per_thread;
}

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t D, float* workspace, Stream) {
  const Plan p = make_plan(B, T, H, Hkv, D);
  if (p.n_tasks == 0 || T == 0) return;
  KEEL_CHECK(workspace != nullptr, "attention_forward: workspace is null");
  // Items are (block, task) pairs, largest blocks first so dynamic scheduling ends balanced.
  // Each item writes disjoint out and lse entries, so any schedule gives the same bits.
  const int64_t n_items = p.n_blocks * p.n_tasks;
#pragma omp parallel
  {
    float* scratch = thread_scratch(workspace, p);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      const int64_t blk = p.n_blocks - 1 - item / p.n_tasks, task = item % p.n_tasks;
      const int64_t q0 = blk * p.block;
      forward_block(out, lse, qkv, p, task / p.Hkv, task % p.Hkv, q0, std::min(p.block, T - q0),
                    scratch);
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                        float* workspace, Stream) {
  const Plan p = make_plan(B, T, H, Hkv, D);
  if (p.n_tasks == 0 || T == 0) return;
  KEEL_CHECK(workspace != nullptr, "attention_backward: workspace is null");
  const std::vector<int64_t> bounds = split_bounds(p);
  const int64_t n_items = p.n_tasks * p.n_splits;
  float* partials = workspace;
  const int64_t kv_k = p.H * D, kv_v = (p.H + p.Hkv) * D;  // k, v offsets within a token row
#pragma omp parallel
  {
    float* scratch = thread_scratch(workspace, p);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < n_items; ++item) {
      const int64_t task = item / p.n_splits, split = item % p.n_splits;
      const int64_t b = task / p.Hkv, g = task % p.Hkv;
      const int64_t key_end = std::min(T, bounds[split + 1] * p.block);
      float *acc_k, *acc_v;
      int64_t ld;
      if (split == 0) {  // the first split owns dqkv's k, v slices and clears all of them
        acc_k = dqkv + b * T * p.stride + kv_k + g * D;
        acc_v = dqkv + b * T * p.stride + kv_v + g * D;
        ld = p.stride;
        zero_rows(acc_k, T, D, ld);
        zero_rows(acc_v, T, D, ld);
      } else {
        acc_k = partials + static_cast<size_t>(task * (p.n_splits - 1) + split - 1) * p.partial;
        acc_v = acc_k + T * D;
        ld = D;
        zero_rows(acc_k, key_end, D, ld);
        zero_rows(acc_v, key_end, D, ld);
      }
      for (int64_t blk = bounds[split]; blk < bounds[split + 1]; ++blk) {
        const int64_t q0 = blk * p.block;
        backward_block(dqkv, acc_k, acc_v, ld, dout, qkv, out, lse, p, b, g, q0,
                       std::min(p.block, T - q0), scratch);
      }
    }
    if (p.n_splits > 1) {
      // Add the partials in split order, each task's k and v slices by one thread.
#pragma omp for schedule(static)
      for (int64_t task = 0; task < p.n_tasks; ++task) {
        const int64_t b = task / p.Hkv, g = task % p.Hkv;
        float* dk = dqkv + b * T * p.stride + kv_k + g * D;
        float* dv = dqkv + b * T * p.stride + kv_v + g * D;
        for (int64_t split = 1; split < p.n_splits; ++split) {
          const float* pk =
              partials + static_cast<size_t>(task * (p.n_splits - 1) + split - 1) * p.partial;
          const float* pv = pk + T * D;
          const int64_t key_end = std::min(T, bounds[split + 1] * p.block);
          for (int64_t x = 0; x < key_end; ++x) {
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) {
              dk[x * p.stride + d] += pk[x * D + d];
              dv[x * p.stride + d] += pv[x * D + d];
            }
          }
        }
      }
    }
  }
}

}  // namespace keel::kernels::cpu
