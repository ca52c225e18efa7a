#include "launcher/control/serve.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "kernels/memory_plan.h"
#include "launcher/control/control_files.h"

namespace keel::launcher {

namespace {

// Resident set size now (VmRSS), in bytes.
uint64_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

}  // namespace

std::string config_summary(const runtime::Config& c, int world_size) {
  const int64_t tp = c.parallel.tensor_model_parallel_size;
  const int64_t kv =
      c.model.num_key_value_heads > 0 ? c.model.num_key_value_heads : c.model.num_attention_heads;
  std::ostringstream s;
  s << c.model.num_hidden_layers << " layers x " << c.model.hidden_size << " hidden, "
    << c.model.num_attention_heads << " heads (" << kv << " kv), vocab " << c.model.vocab_size
    << ", seq " << c.data.seq_length << " | dp " << world_size / tp << " x tp " << tp
    << (c.parallel.sequence_parallel ? " (sp)" : "") << ", ZeRO " << c.parallel.zero_stage
    << " | batch " << c.training.per_device_train_batch_size << " x "
    << c.training.gradient_accumulation_steps << " accumulation per rank | " << c.optimizer.type
    << ", lr " << c.training.learning_rate;
  return s.str();
}

RankReport own_rank_report(int rank, int64_t step) {
  RankReport r;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  r.rank = rank;
  r.host = host;
  r.step = step;
  r.activity = "training";
  r.rss_bytes = rss_bytes();
  r.peak_rss_bytes = peak_rss_bytes();
  return r;
}

std::unique_ptr<ControlServer> serve_control(const runtime::Config& config, int world_size,
                                             std::ostream& console) {
  if (config.control.address == "none") return nullptr;
  ControlServerOptions o;
  o.address = config.control.address;
  o.output_dir = config.training.output_dir;
  o.tls_cert = config.control.tls_cert;
  o.tls_key = config.control.tls_key;
  o.run_id = make_run_id();
  o.config_summary = config_summary(config, world_size);
  o.world_size = world_size;
  o.max_steps = config.training.max_steps;
  std::unique_ptr<ControlServer> server = start_control_server(o, console);
  if (server)
    server->set_rank_source([state = &server->state()] {
      return std::vector<RankReport>{own_rank_report(0, state->snapshot().progress.step)};
    });
  return server;
}

}  // namespace keel::launcher
