// Whether a run's memory plan fits what a rank can have, and if not, which settings would make it
// fit: a small search over changes that train the same model on the same data with the same global
// batch (ZeRO stage, 8-bit AdamW, per-layer update, gradient checkpointing, a smaller micro-batch
// with more accumulation), cheapest first. The trainer admits every run through admit_memory
// before it allocates; `keel plan --fit SIZE` prints the same search.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "parallel/communicator.h"
#include "runtime/config/config.h"
#include "runtime/train/memory_limit.h"
#include "runtime/train/memory_report.h"

namespace keel::runtime {

// One setting of the search: the --set overrides that make it from the run's config.
struct MemoryFit {
  std::vector<std::string> sets;  // "parallel.zero_stage=3", ...; empty: the config as it is
  uint64_t bytes = 0;             // its plan per rank
  int cost = 0;                   // what it costs in speed or fidelity, in the search's units
  std::string overrides() const;  // "--set parallel.zero_stage=3 --set ..."
};

struct FitSearch {
  // The cheapest settings that fit (cheapest first, then smallest), none of them a stronger
  // version of another one listed (zero_stage=3 is not listed beside zero_stage=2).
  std::vector<MemoryFit> fits;
  // The smallest plan of every setting searched, for how far the best one misses.
  MemoryFit smallest;
};

// Searches every combination of the changes that apply to `config` on `dp` data-parallel ranks,
// each plan the largest stage's (plan_peak_bytes: one setting applies to every rank); keeps at most
// `keep` fits. Costs, speed first: one per ZeRO stage up (stage 3 gathers weights twice a step; on
// one rank a stage saves nothing and is not searched), 3 for adamw_8bit (state rounded to 8 bits),
// 4 for gradient checkpointing (about a third more compute), 5 for the per-layer update (no
// clipping by the global gradient norm), 5 per halving of the micro-batch (smaller GEMMs, more
// passes).
FitSearch search_fits(const Config& config, int dp, uint64_t limit, size_t keep = 3);

// "settings that fit: --set parallel.zero_stage=3 (9.1 GiB); ..." or, when none does, how far the
// smallest plan misses.
std::string describe_fits(const FitSearch& search, uint64_t limit);

// The line that refuses `plan` against `limit`, naming `who` ("this rank", "rank 1 of 4 (host
// h)"): the plan by category, the limit and how it was found, free memory when it is smaller,
// the settings that fit and how to see the whole plan or skip the check.
std::string memory_refusal(const Config& config, int dp, const RankMemory& plan,
                           const MemoryLimit& limit, const std::string& who);

// The warning for a plan within the limit but above the memory free now (MemAvailable per rank),
// or "": free memory is what other processes leave now, not what the rank can have, so it warns
// rather than refuses.
std::string memory_warning(const RankMemory& plan, const MemoryLimit& limit);

// The admission check, collective over `world` (dp: its data-parallel size): every rank compares
// the plan of its pipeline stage (plan_rank_memory; 0 without a pipeline) with what it can have
// (training.memory_limit, KEEL_MEMORY_LIMIT, or this host shared by the ranks on it); if any
// rank's plan does not fit, every rank throws the same keel::Error, that of the first such rank. A
// plan that fits the limit but not the memory free now is a warning on `console`.
void admit_memory(const Config& config, parallel::Communicator& world, int dp, int pipeline_stage,
                  std::ostream& console);

}  // namespace keel::runtime
