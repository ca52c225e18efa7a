#include "launcher/control/serve.h"

#include <fstream>
#include <sstream>

#include "kernels/memory_plan.h"
#include "launcher/control/control_files.h"
#include "parallel/liveness.h"

namespace keel::launcher {

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

parallel::RankLiveness own_liveness(int64_t step, const std::string& activity) {
  parallel::RankLiveness r;
  r.host = parallel::host_name();
  r.step = step;
  r.activity = activity;
  r.rss_bytes = rss_bytes();
  r.peak_rss_bytes = peak_rss_bytes();
  return r;
}

std::unique_ptr<ControlServer> serve_control(const runtime::Config& config, int world_size) {
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
  std::unique_ptr<ControlServer> server = start_control_server(o);
  if (server)
    server->set_rank_source([state = &server->state()] {
      const RunSnapshot r = state->snapshot();
      return std::vector<parallel::RankLiveness>{
          own_liveness(r.progress.step, runtime::run_state_name(r.state))};
    });
  return server;
}

std::string control_banner(const ControlServer* server, const runtime::Config& config) {
  if (server) return server->banner() + "\n";
  if (config.control.address == "none") return "";
  return "keel: " + control_plane_missing() + "; control.address: none says nothing\n";
}

}  // namespace keel::launcher
