// Text generation from a trained model: a key/value cache, so each new token costs one pass over
// the weights and the cached positions instead of the whole sequence again, and sampling with
// temperature, top-k and top-p applied in the order Hugging Face's generate applies them.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <vector>

#include "kernels/memory_plan.h"
#include "runtime/model/llama.h"

namespace keel::runtime {

// Decodes with the weights of a model that holds them (read, never changed). All memory, the
// cache included, is planned at construction for up to max_positions positions.
class Generator {
 public:
  Generator(const LlamaModel& model, int64_t max_positions);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  int64_t length() const { return length_; }  // positions in the cache
  int64_t max_positions() const { return max_positions_; }
  int64_t vocab_size() const { return V_; }
  void reset() { length_ = 0; }
  // Runs tokens[0..n) at positions length() .. length()+n-1, appending their keys and values to
  // the cache, and returns the logits (V floats, valid until the next call) that follow the last.
  const float* append(const int32_t* tokens, int64_t n);

 private:
  void run_chunk(const int32_t* tokens, int64_t n);
  int64_t max_positions_, chunk_, length_ = 0;
  int64_t L_, H_, Hkv_, D_, C_, I_, V_;
  // The op table of the model's weights' device, and the stream the ops are ordered on.
  const kernels::Ops* ops_;
  Stream stream_;
  MemoryPlan plan_{"generation"};
  struct Slots;
  std::unique_ptr<Slots> s_;
};

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy (the most likely token, the first on ties)
  int64_t top_k = 0;         // keep the k most likely tokens (0: all)
  double top_p = 1.0;        // keep the most likely tokens while the mass before them is < top_p
};

// Picks tokens from logits, seeded: the same seed and logits give the same tokens.
class Sampler {
 public:
  Sampler(const SamplingOptions& options, uint64_t seed);
  int32_t next(const float* logits, int64_t V);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // candidate tokens, most likely first
  std::vector<double> weight_;  // their unnormalised probabilities
};

// Feeds prompt (not empty) and samples up to max_new tokens, stopping after stop_id (when ≥ 0) or
// when prompt and new tokens fill the generator's max_positions; on_token sees each new token as
// it comes. Returns the new tokens.
std::vector<int32_t> generate(Generator& generator, Sampler& sampler,
                              const std::vector<int32_t>& prompt, int64_t max_new, int32_t stop_id,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace keel::runtime
