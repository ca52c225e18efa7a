#include "runtime/train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "kernels/error.h"
#include "runtime/train/tensorboard.h"

namespace keel::runtime {

namespace {

// The lines of a metrics.jsonl up to and including `step`'s, in their order.
std::string lines_through(const std::string& path, int64_t step) {
  std::ifstream old(path);
  std::string kept, line;
  const std::string tag = "{\"step\": ";
  while (std::getline(old, line))
    if (line.rfind(tag, 0) == 0 && std::stoll(line.substr(tag.size())) <= step) kept += line + "\n";
  return kept;
}

}  // namespace

MetricsLog::MetricsLog(const std::string& output_dir, int64_t keep_through,
                       const std::string& tensorboard_dir)
    : path_(output_dir + "/metrics.jsonl") {
  const std::string kept = keep_through > 0 ? lines_through(path_, keep_through) : "";
  out_.open(path_, std::ios::trunc);
  write_line(kept);
  if (!tensorboard_dir.empty()) tensorboard_ = std::make_unique<TensorBoardWriter>(tensorboard_dir);
}

void MetricsLog::rewind(int64_t step) {
  out_.close();
  const std::string kept = lines_through(path_, step);
  out_.open(path_, std::ios::trunc);
  write_line(kept);
}

MetricsLog::~MetricsLog() = default;

namespace {
double seconds_since_epoch() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

void MetricsLog::write_line(const std::string& line) {
  out_ << line;
  out_.flush();
  KEEL_CHECK(out_.good(), "cannot write '{}': {}", path_, std::strerror(errno));
}

namespace {

// One line of metrics.jsonl, built key by key. JSON has no NaN or infinity: a number that is not
// finite is written as null, and its key listed in "nonfinite" at the end of the line.
class JsonLine {
 public:
  explicit JsonLine(int64_t step) : text_("{\"step\": " + std::to_string(step)) {}
  void number(const char* key, double v, const char* format) {
    char value[64] = "null";
    if (std::isfinite(v))
      std::snprintf(value, sizeof value, format, v);
    else
      nonfinite_ += (nonfinite_.empty() ? "\"" : ", \"") + std::string(key) + "\"";
    add(key, value);
  }
  void count(const char* key, uint64_t v) { add(key, std::to_string(v)); }
  // A JSON array of numbers (a value that is not finite as null, and the key in "nonfinite").
  void numbers(const char* key, const std::vector<double>& v, const char* format) {
    std::string list = "[";
    bool finite = true;
    for (size_t i = 0; i < v.size(); ++i) {
      char value[64] = "null";
      if (std::isfinite(v[i]))
        std::snprintf(value, sizeof value, format, v[i]);
      else
        finite = false;
      list += (i ? ", " : "") + std::string(value);
    }
    if (!finite) nonfinite_ += (nonfinite_.empty() ? "\"" : ", \"") + std::string(key) + "\"";
    add(key, list + "]");
  }
  // A JSON string (quotes, backslashes and control characters escaped).
  void text(const char* key, const std::string& v) {
    std::string out = "\"";
    for (const char c : v) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\u%04x", c);
        out += esc;
      } else {
        out += c;
      }
    }
    add(key, out + "\"");
  }
  std::string finish() {
    if (!nonfinite_.empty()) add("nonfinite", "[" + nonfinite_ + "]");
    return text_ + "}\n";
  }

 private:
  void add(const char* key, const std::string& value) {
    text_ += ", \"" + std::string(key) + "\": " + value;
  }
  std::string text_, nonfinite_;
};

}  // namespace

void MetricsLog::write(const StepStats& s, const std::string& action) {
  JsonLine line(s.step);
  line.number("loss", s.loss, "%.9g");
  line.number("learning_rate", s.learning_rate, "%.9g");
  line.number("grad_norm", s.grad_norm, "%.9g");
  line.number("tokens_per_second", s.tokens_per_second, "%.6g");
  line.number("mfu", s.mfu, "%.6g");
  line.number("step_seconds", s.seconds, "%.6g");
  line.number("peak_rss_mib", s.peak_rss_mib, "%.1f");
  line.count("comm_bytes", s.comm_bytes);
  line.number("comm_wait_seconds", s.comm_wait_seconds, "%.6g");
  if (s.moe.present()) {
    line.number("aux_loss", s.moe.aux_loss, "%.9g");
    line.number("z_loss", s.moe.z_loss, "%.9g");
    line.number("moe_dropped_fraction", s.moe.dropped_fraction, "%.6g");
    line.number("router_entropy", s.moe.router_entropy, "%.6g");
    line.number("load_imbalance", s.moe.max_imbalance(), "%.6g");
    line.numbers("load_imbalance_per_layer", s.moe.load_imbalance, "%.6g");
    line.count("all_to_all_bytes", s.moe.all_to_all_bytes);
    line.count("all_to_all_bytes_routed", s.moe.all_to_all_bytes_routed);
  }
  if (!s.rejected.empty()) {
    line.text("rejected", s.rejected);
    line.text("action", action);
  }
  write_line(line.finish());
  if (!tensorboard_ || !s.rejected.empty()) return;
  const double now = seconds_since_epoch();
  tensorboard_->add_scalar("train/loss", s.step, s.loss, now);
  tensorboard_->add_scalar("train/learning_rate", s.step, s.learning_rate, now);
  tensorboard_->add_scalar("train/grad_norm", s.step, s.grad_norm, now);
  tensorboard_->add_scalar("train/tokens_per_second", s.step, s.tokens_per_second, now);
  tensorboard_->add_scalar("train/mfu", s.step, s.mfu, now);
  if (s.moe.present()) {
    tensorboard_->add_scalar("moe/aux_loss", s.step, s.moe.aux_loss, now);
    tensorboard_->add_scalar("moe/z_loss", s.step, s.moe.z_loss, now);
    tensorboard_->add_scalar("moe/dropped_fraction", s.step, s.moe.dropped_fraction, now);
    tensorboard_->add_scalar("moe/router_entropy", s.step, s.moe.router_entropy, now);
    for (size_t l = 0; l < s.moe.load_imbalance.size(); ++l)
      tensorboard_->add_scalar("moe/load_imbalance/moe_layer_" + std::to_string(l), s.step,
                               s.moe.load_imbalance[l], now);
  }
  tensorboard_->flush();
}

void MetricsLog::write_eval(int64_t step, double loss, int64_t tokens) {
  JsonLine line(step);
  line.number("eval_loss", loss, "%.9g");
  line.number("eval_perplexity", std::exp(loss), "%.9g");
  line.count("eval_tokens", static_cast<uint64_t>(tokens));
  write_line(line.finish());
  if (!tensorboard_) return;
  const double now = seconds_since_epoch();
  tensorboard_->add_scalar("eval/loss", step, loss, now);
  tensorboard_->add_scalar("eval/perplexity", step, std::exp(loss), now);
  tensorboard_->flush();
}

double MoeStepStats::max_imbalance() const {
  return load_imbalance.empty() ? 0.0
                                : *std::max_element(load_imbalance.begin(), load_imbalance.end());
}

std::string progress_line(const StepStats& s, int64_t max_steps, double eta_seconds) {
  const auto eta = static_cast<long long>(std::max(0.0, eta_seconds));
  char moe[128] = "";
  if (s.moe.present())
    std::snprintf(moe, sizeof moe, " | aux %.4f | imbalance %.2f | dropped %.1f%%", s.moe.aux_loss,
                  s.moe.max_imbalance(), 100.0 * s.moe.dropped_fraction);
  char line[384];
  std::snprintf(line, sizeof line,
                "step %lld/%lld | loss %.4f%s | lr %.2e | %.0f tok/s | MFU %.1f%% | mem %.0f MiB | "
                "ETA %lldm%02llds",
                static_cast<long long>(s.step), static_cast<long long>(max_steps), s.loss, moe,
                s.learning_rate, s.tokens_per_second, 100.0 * s.mfu, s.peak_rss_mib, eta / 60,
                eta % 60);
  return line;
}

}  // namespace keel::runtime
