// The MoE router and row moves on the CPU. The router works per row in double (E is small), so
// every rank that routes the same row gets the same choice; the row moves are parallel over
// output rows, each written by one thread in a fixed order.
#include "kernels/moe.h"

#include <algorithm>
#include <cmath>

namespace keel::kernels::cpu {

void moe_router_forward(float* probs, float* lse, int32_t* sel, float* gate, const float* logits,
                        int64_t N, int64_t E, int64_t k, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* z = logits + n * E;
    float* p = probs + n * E;
    double max = z[0];
    for (int64_t i = 1; i < E; ++i) max = std::max(max, static_cast<double>(z[i]));
    double sum = 0;
    for (int64_t i = 0; i < E; ++i) sum += std::exp(static_cast<double>(z[i]) - max);
    for (int64_t i = 0; i < E; ++i)
      p[i] = static_cast<float>(std::exp(static_cast<double>(z[i]) - max) / sum);
    lse[n] = static_cast<float>(max + std::log(sum));
    // Top-k by selection: k passes, each taking the largest not yet taken (the lower index on a
    // tie, as a stable sort would).
    int32_t* s = sel + n * k;
    double chosen = 0;
    for (int64_t j = 0; j < k; ++j) {
      int32_t best = -1;
      for (int64_t i = 0; i < E; ++i) {
        if (std::find(s, s + j, static_cast<int32_t>(i)) != s + j) continue;
        if (best < 0 || p[i] > p[best]) best = static_cast<int32_t>(i);
      }
      s[j] = best;
      chosen += p[best];
    }
    for (int64_t j = 0; j < k; ++j) gate[n * k + j] = static_cast<float>(p[s[j]] / chosen);
  }
}

void moe_router_stats(float* counts, float* psum, double* zsum, const float* probs,
                      const float* lse, const int32_t* sel, int64_t B, int64_t T, int64_t E,
                      int64_t k, Stream) {
  double z = 0;
#pragma omp parallel for schedule(static) reduction(+ : z)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t n = b * T + t;
      for (int64_t j = 0; j < k; ++j) counts[b * E + sel[n * k + j]] += 1.0f;
      for (int64_t i = 0; i < E; ++i) psum[b * E + i] += probs[n * E + i];
      z += static_cast<double>(lse[n]) * lse[n];
    }
  }
  *zsum += z;
}

void moe_router_backward(float* dlogits, const float* dgate, const float* probs, const float* lse,
                         const int32_t* sel, const float* gate, const float* aux_grad,
                         float z_scale, int64_t N, int64_t T, int64_t E, int64_t k, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* p = probs + n * E;
    float* dz = dlogits + n * E;
    // ∂/∂probs: the sequence's auxiliary term on every expert, then the renormalisation
    // gate_j = p_j / Σ p_chosen on the chosen ones: ∂/∂p_j = (dgate_j − Σ dgate·gate) / Σ p_chosen.
    for (int64_t i = 0; i < E; ++i) dz[i] = aux_grad ? aux_grad[(n / T) * E + i] : 0.0f;
    const int32_t* s = sel + n * k;
    double chosen = 0, dot = 0;
    for (int64_t j = 0; j < k; ++j) {
      chosen += p[s[j]];
      dot += static_cast<double>(dgate[n * k + j]) * gate[n * k + j];
    }
    for (int64_t j = 0; j < k; ++j)
      dz[s[j]] += static_cast<float>((dgate[n * k + j] - dot) / chosen);
    // Softmax: ∂/∂z_i = p_i (∂/∂p_i − Σ p·∂/∂p); the z-loss adds 2·z_scale·lse·p_i.
    double inner = 0;
    for (int64_t i = 0; i < E; ++i) inner += static_cast<double>(p[i]) * dz[i];
    const double z_term = 2.0 * z_scale * lse[n];
    for (int64_t i = 0; i < E; ++i) dz[i] = static_cast<float>(p[i] * (dz[i] - inner + z_term));
  }
}

void moe_gather_rows(float* out, const float* in, const int32_t* rows, int64_t n, int64_t C,
                     Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (rows[i] < 0)
      std::fill_n(out + i * C, C, 0.0f);
    else
      std::copy_n(in + rows[i] * C, C, out + i * C);
  }
}

void moe_combine(float* out, const float* in, const int32_t* rows, const float* weight, int64_t N,
                 int64_t k, int64_t C, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    float* y = out + t * C;
    std::fill_n(y, C, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = rows[t * k + j];
      if (r < 0) continue;
      const float w = weight[t * k + j];
      const float* x = in + static_cast<int64_t>(r) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) y[c] += w * x[c];
    }
  }
}

void moe_combine_backward(float* din, float* dweight, const float* dout, const float* in,
                          const int32_t* rows, const float* weight, int64_t N, int64_t k, int64_t C,
                          Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    const float* g = dout + t * C;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = rows[t * k + j];
      if (r < 0) {
        dweight[t * k + j] = 0.0f;
        continue;
      }
      const float* x = in + static_cast<int64_t>(r) * C;
      float* dx = din + static_cast<int64_t>(r) * C;
      const float w = weight[t * k + j];
      double dot = 0;
      for (int64_t c = 0; c < C; ++c) {
        dot += static_cast<double>(g[c]) * x[c];
        dx[c] = w * g[c];
      }
      dweight[t * k + j] = static_cast<float>(dot);
    }
  }
}

void moe_add_gathered(float* out, const float* in, const int32_t* rows, int64_t N, int64_t k,
                      int64_t C, Stream) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < N; ++t) {
    float* y = out + t * C;
    for (int64_t j = 0; j < k; ++j) {
      const int32_t r = rows[t * k + j];
      if (r < 0) continue;
      const float* x = in + static_cast<int64_t>(r) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) y[c] += x[c];
    }
  }
}

}  // namespace keel::kernels::cpu
