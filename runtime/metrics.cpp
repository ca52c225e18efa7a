#include "runtime/metrics.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "kernels/error.h"
#include "runtime/tensorboard.h"

namespace keel::runtime {

MetricsLog::MetricsLog(const std::string& output_dir, int64_t keep_through,
                       const std::string& tensorboard_dir)
    : path_(output_dir + "/metrics.jsonl") {
  std::string kept;
  if (keep_through > 0) {
    std::ifstream old(path_);
    std::string line;
    const std::string tag = "{\"step\": ";
    while (std::getline(old, line))
      if (line.rfind(tag, 0) == 0 && std::stoll(line.substr(tag.size())) <= keep_through)
        kept += line + "\n";
  }
  out_.open(path_, std::ios::trunc);
  out_ << kept;
  KEEL_CHECK(out_.good(), "cannot write '{}': {}", path_, std::strerror(errno));
  if (!tensorboard_dir.empty()) tensorboard_ = std::make_unique<TensorBoardWriter>(tensorboard_dir);
}

MetricsLog::~MetricsLog() = default;

namespace {
double seconds_since_epoch() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

void MetricsLog::write_line(const char* line) {
  out_ << line;
  out_.flush();
  KEEL_CHECK(out_.good(), "cannot write '{}': {}", path_, std::strerror(errno));
}

void MetricsLog::write(const StepStats& s) {
  char line[512];
  std::snprintf(line, sizeof line,
                "{\"step\": %lld, \"loss\": %.9g, \"learning_rate\": %.9g, \"grad_norm\": %.9g, "
                "\"tokens_per_second\": %.6g, \"mfu\": %.6g, \"step_seconds\": %.6g, "
                "\"peak_rss_mib\": %.1f, \"comm_bytes\": %llu, \"comm_wait_seconds\": %.6g}\n",
                static_cast<long long>(s.step), s.loss, s.learning_rate, s.grad_norm,
                s.tokens_per_second, s.mfu, s.seconds, s.peak_rss_mib,
                static_cast<unsigned long long>(s.comm_bytes), s.comm_wait_seconds);
  write_line(line);
  if (!tensorboard_) return;
  const double now = seconds_since_epoch();
  tensorboard_->add_scalar("train/loss", s.step, s.loss, now);
  tensorboard_->add_scalar("train/learning_rate", s.step, s.learning_rate, now);
  tensorboard_->add_scalar("train/grad_norm", s.step, s.grad_norm, now);
  tensorboard_->add_scalar("train/tokens_per_second", s.step, s.tokens_per_second, now);
  tensorboard_->add_scalar("train/mfu", s.step, s.mfu, now);
  tensorboard_->flush();
}

void MetricsLog::write_eval(int64_t step, double loss, int64_t tokens) {
  char line[256];
  std::snprintf(line, sizeof line,
                "{\"step\": %lld, \"eval_loss\": %.9g, \"eval_perplexity\": %.9g, "
                "\"eval_tokens\": %lld}\n",
                static_cast<long long>(step), loss, std::exp(loss), static_cast<long long>(tokens));
  write_line(line);
  if (!tensorboard_) return;
  const double now = seconds_since_epoch();
  tensorboard_->add_scalar("eval/loss", step, loss, now);
  tensorboard_->add_scalar("eval/perplexity", step, std::exp(loss), now);
  tensorboard_->flush();
}

std::string progress_line(const StepStats& s, int64_t max_steps, double eta_seconds) {
  const auto eta = static_cast<long long>(std::max(0.0, eta_seconds));
  char line[256];
  std::snprintf(line, sizeof line,
                "step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | MFU %.1f%% | mem %.0f MiB | "
                "ETA %lldm%02llds",
                static_cast<long long>(s.step), static_cast<long long>(max_steps), s.loss,
                s.learning_rate, s.tokens_per_second, 100.0 * s.mfu, s.peak_rss_mib, eta / 60,
                eta % 60);
  return line;
}

}  // namespace keel::runtime
