#include "runtime/train/memory_fit.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <sstream>

#include "kernels/error.h"
#include "parallel/agree.h"

namespace keel::runtime {

namespace {

// One way a setting can change, and what the change costs.
struct Option {
  std::vector<std::string> sets;
  std::function<void(Config&)> apply;
  int cost;
};

// The changes of one setting, weakest first (option 0 of every dimension is "as it is").
using Dimension = std::vector<Option>;

std::vector<Dimension> dimensions(const Config& config, int dp) {
  const TrainingConfig& t = config.training;
  std::vector<Dimension> dims;
  const Option keep{{}, [](Config&) {}, 0};
  // More ZeRO sharding: on one rank a shard is the whole tensor, so it saves nothing.
  Dimension zero = {keep};
  for (int64_t s = config.parallel.zero_stage + 1; dp > 1 && s <= 3; ++s)
    zero.push_back({{"parallel.zero_stage=" + std::to_string(s)},
                    [s](Config& c) { c.parallel.zero_stage = s; },
                    static_cast<int>(s - config.parallel.zero_stage)});
  dims.push_back(zero);
  if (config.optimizer.type == "adamw")
    dims.push_back(
        {keep,
         {{"optimizer.type=adamw_8bit"}, [](Config& c) { c.optimizer.type = "adamw_8bit"; }, 3}});
  if (!config.optimizer.per_layer_update) {
    Option on{{"optimizer.per_layer_update=true"},
              [](Config& c) {
                c.optimizer.per_layer_update = true;
                c.training.max_grad_norm = 0;
              },
              5};
    if (t.max_grad_norm != 0) on.sets.push_back("training.max_grad_norm=0");
    dims.push_back({keep, on});
  }
  if (!t.gradient_checkpointing)
    dims.push_back({keep,
                    {{"training.gradient_checkpointing=true"},
                     [](Config& c) { c.training.gradient_checkpointing = true; },
                     4}});
  // The same global batch in smaller micro-batches.
  Dimension micro = {keep};
  const int64_t B = t.per_device_train_batch_size, A = t.gradient_accumulation_steps;
  int cost = 5;
  for (int64_t f = 2; B % f == 0; f *= 2, cost += 5)
    micro.push_back({{"training.per_device_train_batch_size=" + std::to_string(B / f),
                      "training.gradient_accumulation_steps=" + std::to_string(A * f)},
                     [B, A, f](Config& c) {
                       c.training.per_device_train_batch_size = B / f;
                       c.training.gradient_accumulation_steps = A * f;
                     },
                     cost});
  dims.push_back(micro);
  return dims;
}

// Whether setting a is b or a weaker version of it in every dimension.
bool weaker_or_same(const std::vector<size_t>& a, const std::vector<size_t>& b) {
  for (size_t d = 0; d < a.size(); ++d)
    if (a[d] > b[d]) return false;
  return true;
}

}  // namespace

std::string MemoryFit::overrides() const {
  std::string out;
  for (const std::string& s : sets) out += (out.empty() ? "--set " : " --set ") + s;
  return out;
}

FitSearch search_fits(const Config& config, int dp, uint64_t limit, size_t keep) {
  const std::vector<Dimension> dims = dimensions(config, dp);
  struct Candidate {
    MemoryFit fit;
    std::vector<size_t> choice;  // option per dimension
  };
  std::vector<Candidate> fits;
  FitSearch search;
  search.smallest.bytes = UINT64_MAX;
  std::vector<size_t> choice(dims.size(), 0);
  for (;;) {
    Config c = config;
    Candidate cand{{}, choice};
    for (size_t d = 0; d < dims.size(); ++d) {
      const Option& o = dims[d][choice[d]];
      o.apply(c);
      cand.fit.sets.insert(cand.fit.sets.end(), o.sets.begin(), o.sets.end());
      cand.fit.cost += o.cost;
    }
    bool valid = true;
    try {
      validate_config(c);  // some pairs do not go together (per-layer update and accumulation)
    } catch (const Error&) {
      valid = false;
    }
    if (valid) {
      cand.fit.bytes = plan_peak_bytes(c, dp);
      if (cand.fit.bytes < search.smallest.bytes) search.smallest = cand.fit;
      if (cand.fit.bytes <= limit) fits.push_back(cand);
    }
    size_t d = 0;  // the next combination, as an odometer
    while (d < dims.size() && ++choice[d] == dims[d].size()) choice[d++] = 0;
    if (d == dims.size()) break;
  }
  std::sort(fits.begin(), fits.end(), [](const Candidate& a, const Candidate& b) {
    return a.fit.cost != b.fit.cost ? a.fit.cost < b.fit.cost : a.fit.bytes < b.fit.bytes;
  });
  std::vector<const Candidate*> kept;
  for (const Candidate& f : fits) {
    bool stronger = false;  // than a fit already kept, which is cheaper
    for (const Candidate* k : kept) stronger = stronger || weaker_or_same(k->choice, f.choice);
    if (!stronger && kept.size() < keep) kept.push_back(&f);
  }
  for (const Candidate* k : kept) search.fits.push_back(k->fit);
  return search;
}

std::string describe_fits(const FitSearch& search, uint64_t limit) {
  std::ostringstream os;
  if (!search.fits.empty()) {
    os << "settings that fit: ";
    for (size_t i = 0; i < search.fits.size(); ++i)
      os << (i ? "; " : "") << search.fits[i].overrides() << " ("
         << format_memory(search.fits[i].bytes) << ")";
    return os.str();
  }
  const MemoryFit& s = search.smallest;
  os << "no setting searched fits (ZeRO stage, optimizer.type adamw_8bit, per-layer update, "
        "gradient checkpointing, smaller micro-batches): the smallest plan, "
     << (s.sets.empty() ? std::string("the config as it is") : s.overrides()) << ", needs "
     << format_memory(s.bytes) << ", " << format_memory(s.bytes - std::min(s.bytes, limit))
     << " too much; train on more ranks with parallel.zero_stage 3, or a smaller model or "
        "data.seq_length";
  return os.str();
}

std::string memory_refusal(const Config& config, int dp, const RankMemory& plan,
                           const MemoryLimit& limit, const std::string& who) {
  std::ostringstream os;
  os << "the plan needs " << format_memory(plan.total()) << " per rank (parameters "
     << format_memory(plan.parameters) << ", gradients " << format_memory(plan.gradients)
     << ", optimizer state " << format_memory(plan.optimizer) << ", activations "
     << format_memory(plan.activations) << ", buffers " << format_memory(plan.buffers) << ") but "
     << who << " can have " << format_memory(limit.bytes) << " (" << limit.origin;
  if (limit.free && limit.free < limit.bytes)
    os << "; only " << format_memory(limit.free) << " is free now";
  os << "); " << describe_fits(search_fits(config, dp, limit.bytes), limit.bytes)
     << "; `keel plan CONFIG --world-size "
     << dp * config.parallel.tensor_model_parallel_size *
            config.parallel.pipeline_model_parallel_size
     << " --fit " << limit.bytes
     << "` shows the whole plan and the search, training.memory_limit=none skips this check";
  return os.str();
}

std::string memory_warning(const RankMemory& plan, const MemoryLimit& limit) {
  if (limit.bytes == 0 || limit.free == 0 || plan.total() > limit.bytes ||
      plan.total() <= limit.free)
    return "";
  return format(
      "keel: warning: the plan needs {} per rank, within what this rank can have ({}), but only "
      "{} per rank is free now on this host; other processes will have to give memory back, or "
      "the run may be OOM-killed\n",
      format_memory(plan.total()), format_memory(limit.bytes), format_memory(limit.free));
}

void admit_memory(const Config& config, parallel::Communicator& world, int dp, int pipeline_stage,
                  std::ostream& console) {
  // The ranks on this host, which share its memory; a world of one may still be one of several
  // processes that a launcher started (a build without MPI under mpirun).
  const int on_host = world.size() > 1 ? world.ranks_on_host() : launcher_ranks_on_host();
  const MemoryLimit limit =
      resolve_memory_limit(config.training.memory_limit, std::getenv("KEEL_MEMORY_LIMIT"), on_host);
  const RankMemory plan = plan_rank_memory(config, dp, pipeline_stage);
  const bool fits = limit.bytes == 0 || plan.total() <= limit.bytes;
  std::string refusal;
  if (!fits) {
    std::string who = "this rank";
    if (world.size() > 1) {
      char host[256] = "?";
      gethostname(host, sizeof host - 1);
      who = format("rank {} of {} (host {}{})", world.rank(), world.size(), host,
                   config.parallel.pipeline_model_parallel_size > 1
                       ? format(", pipeline stage {}", pipeline_stage)
                       : std::string());
    }
    refusal = memory_refusal(config, dp, plan, limit, who);
  }
  console << memory_warning(plan, limit);
  if (world.size() == 1) {
    if (!fits) KEEL_FAIL("{}", refusal);
    return;
  }
  // Agreed across the world: the first rank that does not fit sends its line to all.
  std::vector<int64_t> short_of(static_cast<size_t>(world.size()));
  int64_t mine = fits ? 0 : 1;
  world.all_gather(parallel::host_view(short_of), parallel::host_view(&mine, 1));
  const auto first = std::find(short_of.begin(), short_of.end(), 1);
  if (first == short_of.end()) return;
  const int root = static_cast<int>(first - short_of.begin());
  const int64_t others = std::count(short_of.begin(), short_of.end(), 1) - 1;
  if (others > 0) refusal += format(" ({} other rank{} short too)", others, others > 1 ? "s" : "");
  int64_t length = static_cast<int64_t>(refusal.size());
  world.broadcast(parallel::host_view(&length, 1), root);
  refusal.resize(static_cast<size_t>(length));
  world.broadcast(parallel::host_view(reinterpret_cast<uint8_t*>(refusal.data()), refusal.size()),
                  root);
  // Every rank knows the refusal now: rank 0 says it, and no rank aborts the others.
  throw parallel::AgreedError(0, refusal);
}

}  // namespace keel::runtime
