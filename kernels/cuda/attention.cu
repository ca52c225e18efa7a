// Causal grouped-query attention on the GPU, written to be simple and correct rather than fast:
// one warp per query row (forward, dq) or per key row (dk, dv), walking the other side in order
// with an online softmax; each lane holds every 32nd element of a head in registers. The math is
// the CPU version's (FlashAttention-2: the forward keeps out and lse, the backward recomputes the
// probabilities), so the results agree to rounding. A tiled flash kernel can replace it later.
#include <algorithm>
#include <cmath>

#include "kernels/attention.h"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/reduce.cuh"

namespace keel::kernels::cuda {

namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;  // head elements each lane holds
constexpr int kWarpsPerBlock = 4;

struct Dims {
  int64_t B, T, H, Hkv, D;
  int64_t G;       // query heads per kv head
  int64_t stride;  // (H + 2·Hkv)·D: floats per token of qkv
  float scale;     // 1 / sqrt(D)
};

Dims make_dims(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D) {
  KEEL_CHECK(B >= 0 && T >= 0, "attention: negative B = {} or T = {}", B, T);
  KEEL_CHECK(D > 0 && D <= kMaxHeadDim,
             "attention: head dim D = {} must lie in [1, {}] on CUDA (one warp holds a head)", D,
             kMaxHeadDim);
  KEEL_CHECK(Hkv > 0 && H > 0 && H % Hkv == 0,
             "attention: H = {} query heads must be a positive multiple of Hkv = {} kv heads", H,
             Hkv);
  return Dims{B, T, H, Hkv, D, H / Hkv, (H + 2 * Hkv) * D, 1.0f / std::sqrt(static_cast<float>(D))};
}

// Lane `lane` holds elements lane, lane + 32, … of a head; the rest of the registers hold 0.
__device__ __forceinline__ void load_head(float (&r)[kPerLane], const float* p, int64_t D,
                                          int lane) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t d = lane + 32 * j;
    r[j] = d < D ? p[d] : 0.0f;
  }
}

// Σ_d r[d]·p[d] over the warp, returned to every lane.
__device__ __forceinline__ float dot_head(const float (&r)[kPerLane], const float* p, int64_t D,
                                          int lane) {
  float part = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t d = lane + 32 * j;
    if (d < D) part += r[j] * p[d];
  }
  return warp_sum(part);
}

__device__ __forceinline__ void store_head(float* p, const float (&r)[kPerLane], float f, int64_t D,
                                           int lane) {
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t d = lane + 32 * j;
    if (d < D) p[d] = r[j] * f;
  }
}

// Warp-stride loop over items [0, n): every lane of a warp sees the same item.
#define KEEL_FOR_EACH_WARP_ITEM(item, n)                                                  \
  const int lane = threadIdx.x & 31;                                                      \
  for (int64_t item = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32; \
       item < (n); item += static_cast<int64_t>(gridDim.x) * blockDim.x / 32)

// One warp per (b, h, t): out and lse of query t with an online softmax over keys 0..t.
__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, Dims p) {
  KEEL_FOR_EACH_WARP_ITEM(item, p.B * p.H * p.T) {
    const int64_t t = item % p.T, h = (item / p.T) % p.H, b = item / (p.T * p.H);
    const int64_t g = h / p.G;
    const float* base = qkv + b * p.T * p.stride;
    float q[kPerLane], acc[kPerLane] = {};
    load_head(q, base + t * p.stride + h * p.D, p.D, lane);
    float m = -INFINITY, l = 0.0f;
    for (int64_t s = 0; s <= t; ++s) {
      const float* k = base + s * p.stride + (p.H + g) * p.D;
      const float* v = base + s * p.stride + (p.H + p.Hkv + g) * p.D;
      const float score = dot_head(q, k, p.D, lane) * p.scale;
      const float m_new = fmaxf(m, score);
      const float correction = expf(m - m_new);  // 0 at s = 0, where m = −inf
      const float prob = expf(score - m_new);
      l = l * correction + prob;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < p.D) acc[j] = acc[j] * correction + prob * v[d];
      }
      m = m_new;
    }
    store_head(out + (b * p.T + t) * p.H * p.D + h * p.D, acc, 1.0f / l, p.D, lane);
    if (lane == 0) lse[(b * p.H + h) * p.T + t] = m + logf(l);
  }
}

// delta (B, H, T) = Σ_d dout·out, one warp per row.
__global__ void attention_delta_kernel(float* delta, const float* dout, const float* out, Dims p) {
  KEEL_FOR_EACH_WARP_ITEM(item, p.B * p.H * p.T) {
    const int64_t t = item % p.T, h = (item / p.T) % p.H, b = item / (p.T * p.H);
    const int64_t at = (b * p.T + t) * p.H * p.D + h * p.D;
    float o[kPerLane];
    load_head(o, out + at, p.D, lane);
    const float d = dot_head(o, dout + at, p.D, lane);
    if (lane == 0) delta[(b * p.H + h) * p.T + t] = d;
  }
}

// One warp per (b, h, t): dq_t = scale · Σ_{s ≤ t} P_ts (dP_ts − delta_t) k_s.
__global__ void attention_dq_kernel(float* dqkv, const float* dout, const float* qkv,
                                    const float* lse, const float* delta, Dims p) {
  KEEL_FOR_EACH_WARP_ITEM(item, p.B * p.H * p.T) {
    const int64_t t = item % p.T, h = (item / p.T) % p.H, b = item / (p.T * p.H);
    const int64_t g = h / p.G;
    const float* base = qkv + b * p.T * p.stride;
    float q[kPerLane], dy[kPerLane], dq[kPerLane] = {};
    load_head(q, base + t * p.stride + h * p.D, p.D, lane);
    load_head(dy, dout + (b * p.T + t) * p.H * p.D + h * p.D, p.D, lane);
    const float l = lse[(b * p.H + h) * p.T + t];
    const float dl = delta[(b * p.H + h) * p.T + t];
    for (int64_t s = 0; s <= t; ++s) {
      const float* k = base + s * p.stride + (p.H + g) * p.D;
      const float* v = base + s * p.stride + (p.H + p.Hkv + g) * p.D;
      const float prob = expf(dot_head(q, k, p.D, lane) * p.scale - l);
      const float ds = prob * (dot_head(dy, v, p.D, lane) - dl);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t d = lane + 32 * j;
        if (d < p.D) dq[j] += ds * k[d];
      }
    }
    store_head(dqkv + (b * p.T + t) * p.stride + h * p.D, dq, p.scale, p.D, lane);
  }
}

// One warp per (b, kv head g, key s): over the group's query heads h and queries t ≥ s in order,
// dv_s = Σ P_ts dout_t and dk_s = scale · Σ P_ts (dP_ts − delta_t) q_t. Each key row has one
// owner, so no atomics and the same bits every run.
__global__ void attention_dkv_kernel(float* dqkv, const float* dout, const float* qkv,
                                     const float* lse, const float* delta, Dims p) {
  KEEL_FOR_EACH_WARP_ITEM(item, p.B * p.Hkv * p.T) {
    const int64_t s = item % p.T, g = (item / p.T) % p.Hkv, b = item / (p.T * p.Hkv);
    const float* base = qkv + b * p.T * p.stride;
    float k[kPerLane], v[kPerLane], dk[kPerLane] = {}, dv[kPerLane] = {};
    load_head(k, base + s * p.stride + (p.H + g) * p.D, p.D, lane);
    load_head(v, base + s * p.stride + (p.H + p.Hkv + g) * p.D, p.D, lane);
    for (int64_t h = g * p.G; h < (g + 1) * p.G; ++h) {
      for (int64_t t = s; t < p.T; ++t) {
        const float* q = base + t * p.stride + h * p.D;
        const float* dy = dout + (b * p.T + t) * p.H * p.D + h * p.D;
        const int64_t row = (b * p.H + h) * p.T + t;
        const float prob = expf(dot_head(k, q, p.D, lane) * p.scale - lse[row]);
        const float ds = prob * (dot_head(v, dy, p.D, lane) - delta[row]);
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int64_t d = lane + 32 * j;
          if (d < p.D) {
            dv[j] += prob * dy[d];
            dk[j] += ds * q[d];
          }
        }
      }
    }
    store_head(dqkv + (b * p.T + s) * p.stride + (p.H + g) * p.D, dk, p.scale, p.D, lane);
    store_head(dqkv + (b * p.T + s) * p.stride + (p.H + p.Hkv + g) * p.D, dv, 1.0f, p.D, lane);
  }
}

#undef KEEL_FOR_EACH_WARP_ITEM

unsigned grid_for_warps(int64_t warps) {
  return static_cast<unsigned>(
      std::clamp<int64_t>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock, 1, kMaxRowGrid));
}

constexpr int kWarpBlock = 32 * kWarpsPerBlock;

}  // namespace

// The backward's workspace holds delta (B, H, T); the forward needs none. max_threads is the CPU
// version's OpenMP thread count and plays no part here.
size_t attention_workspace_floats(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                  int /*max_threads*/) {
  make_dims(B, T, H, Hkv, D);
  return static_cast<size_t>(B * H * T);
}

void attention_forward(float* out, float* lse, const float* qkv, int64_t B, int64_t T, int64_t H,
                       int64_t Hkv, int64_t D, float* /*workspace*/, Stream stream) {
  const Dims p = make_dims(B, T, H, Hkv, D);
  const int64_t rows = B * H * T;
  if (rows == 0) return;
  attention_forward_kernel<<<grid_for_warps(rows), kWarpBlock, 0, to_cuda(stream)>>>(out, lse, qkv,
                                                                                     p);
  KEEL_CUDA_CHECK_LAUNCH();
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                        const float* lse, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                        float* workspace, Stream stream) {
  const Dims p = make_dims(B, T, H, Hkv, D);
  const int64_t rows = B * H * T;
  if (rows == 0) return;
  KEEL_CHECK(workspace != nullptr, "attention_backward: workspace is null");
  const cudaStream_t s = to_cuda(stream);
  float* delta = workspace;  // (B, H, T)
  attention_delta_kernel<<<grid_for_warps(rows), kWarpBlock, 0, s>>>(delta, dout, out, p);
  KEEL_CUDA_CHECK_LAUNCH();
  attention_dq_kernel<<<grid_for_warps(rows), kWarpBlock, 0, s>>>(dqkv, dout, qkv, lse, delta, p);
  KEEL_CUDA_CHECK_LAUNCH();
  const int64_t key_rows = B * Hkv * T;
  attention_dkv_kernel<<<grid_for_warps(key_rows), kWarpBlock, 0, s>>>(dqkv, dout, qkv, lse, delta,
                                                                       p);
  KEEL_CUDA_CHECK_LAUNCH();
}

}  // namespace keel::kernels::cuda
