#include "runtime/train/loss_curve.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <vector>

#include "kernels/error.h"
#include "runtime/store/durable_file.h"

namespace keel::runtime {

namespace {

// The canvas and the plot area inside it, in SVG user units.
constexpr double kWidth = 800, kHeight = 480;
constexpr double kLeft = 80, kRight = 20, kTop = 44, kBottom = 56;
constexpr char kTrainColor[] = "#1f77b4", kEvalColor[] = "#ff7f0e";

struct Point {
  int64_t step;
  double loss;
};

struct Curves {
  std::vector<Point> train, eval;
  int64_t non_finite = 0;  // losses left out
};

// Adds line's value of key to points when it is finite; counts it when not.
void take(const nlohmann::json& line, const char* key, int64_t step, std::vector<Point>& points,
          Curves& c, const std::string& where) {
  if (!line.contains(key)) return;
  const nlohmann::json& v = line[key];
  KEEL_CHECK(v.is_number() || v.is_null(), "{}: \"{}\" is not a number", where, key);
  const double loss = v.is_null() ? NAN : v.get<double>();
  if (std::isfinite(loss))
    points.push_back({step, loss});
  else
    ++c.non_finite;
}

Curves read_metrics(const std::string& path) {
  std::ifstream in(path);
  KEEL_CHECK(in.is_open(), "cannot open '{}': {}", path, std::strerror(errno));
  // keel writes a diverged loss as null; older versions wrote a bare nan or inf, which is not
  // JSON: read those (and Python's NaN, Infinity) as null, which is then counted as non-finite.
  static const std::regex kNonFinite(R"((:\s*)[-+]?(nan|inf|NaN|Infinity)(?=\s*[,}]))");
  Curves c;
  std::string text;
  for (int64_t line_no = 1; std::getline(in, text); ++line_no) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = "'" + path + "', line " + std::to_string(line_no);
    // The regex only where it can match: it costs more than the parse.
    const bool maybe_non_finite = text.find("nan") != std::string::npos ||
                                  text.find("NaN") != std::string::npos ||
                                  text.find("nf") != std::string::npos;
    const auto line = nlohmann::json::parse(
        maybe_non_finite ? std::regex_replace(text, kNonFinite, "$1null") : text, nullptr,
        /*allow_exceptions=*/false);
    KEEL_CHECK(line.is_object(), "{}: not a JSON object: {}", where, text.substr(0, 80));
    KEEL_CHECK(line.contains("step") && line["step"].is_number_integer(), "{}: no integer \"step\"",
               where);
    KEEL_CHECK(line.contains("loss") || line.contains("eval_loss"),
               "{}: neither \"loss\" nor \"eval_loss\"", where);
    const auto step = line["step"].get<int64_t>();
    // A rejected step (the divergence guard held its update back) is not on the curve; the
    // step's line that follows it is.
    if (!line.contains("rejected")) take(line, "loss", step, c.train, c, where);
    take(line, "eval_loss", step, c.eval, c, where);
  }
  KEEL_CHECK(!in.bad(), "cannot read '{}': {}", path, std::strerror(errno));
  const auto by_step = [](const Point& a, const Point& b) { return a.step < b.step; };
  std::stable_sort(c.train.begin(), c.train.end(), by_step);
  std::stable_sort(c.eval.begin(), c.eval.end(), by_step);
  return c;
}

// An axis from lo to hi, widened to multiples of its tick step.
struct Axis {
  double lo, hi, tick;
  int decimals;  // of the tick labels: enough for the tick step, no more
};

Axis nice_axis(double lo, double hi, bool integer) {
  if (hi - lo <= 0) {  // one value: give it room on both sides
    const double pad = integer ? 1.0 : (lo != 0 ? std::abs(lo) * 0.1 : 1.0);
    lo -= pad;
    hi += pad;
  }
  // The 1-2-5 step nearest to a fifth of the range: between about 3 and 7 intervals.
  const double raw = (hi - lo) / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  double tick = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
  if (integer) tick = std::max(tick, 1.0);
  const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(tick) - 1e-9)));
  return {std::floor(lo / tick) * tick, std::ceil(hi / tick) * tick, tick, decimals};
}

std::string fmt(const char* format, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, format, args...);
  return buf;
}

class Chart {
 public:
  Chart(const Axis& x, const Axis& y) : x_(x), y_(y) {}
  double px(double step) const { return kLeft + (step - x_.lo) / (x_.hi - x_.lo) * plot_w(); }
  double py(double loss) const { return kTop + (y_.hi - loss) / (y_.hi - y_.lo) * plot_h(); }
  static double plot_w() { return kWidth - kLeft - kRight; }
  static double plot_h() { return kHeight - kTop - kBottom; }

  // Grid lines, tick labels and the axis titles.
  std::string axes() const {
    std::string s = "<g class=\"grid\" stroke=\"#ddd\" stroke-width=\"1\">\n";
    std::string labels = "<g class=\"ticks\" font-size=\"12\" fill=\"#333\">\n";
    for (int64_t k = 0; x_.lo + static_cast<double>(k) * x_.tick <= x_.hi + x_.tick * 1e-9; ++k) {
      const double v = x_.lo + static_cast<double>(k) * x_.tick, x = px(v);
      s += fmt("<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n", x, kTop, x,
               kTop + plot_h());
      labels += fmt("<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%.*f</text>\n", x,
                    kTop + plot_h() + 18, x_.decimals, v);
    }
    for (int64_t k = 0; y_.lo + static_cast<double>(k) * y_.tick <= y_.hi + y_.tick * 1e-9; ++k) {
      const double v = y_.lo + static_cast<double>(k) * y_.tick, y = py(v);
      s += fmt("<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n", kLeft, y,
               kLeft + plot_w(), y);
      labels += fmt("<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\">%.*f</text>\n", kLeft - 8,
                    y + 4, y_.decimals, v);
    }
    s += "</g>\n" + labels + "</g>\n";
    s +=
        fmt("<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" "
            "stroke=\"#333\"/>\n",
            kLeft, kTop, plot_w(), plot_h());
    s += fmt("<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\" font-size=\"13\">step</text>\n",
             kLeft + plot_w() / 2, kHeight - 14);
    s +=
        fmt("<text transform=\"translate(18 %.2f) rotate(-90)\" text-anchor=\"middle\" "
            "font-size=\"13\">loss</text>\n",
            kTop + plot_h() / 2);
    return s;
  }

  // The points as one polyline; markers too where a line alone would show nothing or too little.
  std::string curve(const std::vector<Point>& points, const char* cls, const char* color,
                    bool markers, bool dashed) const {
    std::string s =
        fmt("<polyline class=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s "
            "points=\"",
            cls, color, dashed ? " stroke-dasharray=\"5 3\"" : "");
    for (size_t i = 0; i < points.size(); ++i)
      s += fmt("%s%.2f,%.2f", i ? " " : "", px(static_cast<double>(points[i].step)),
               py(points[i].loss));
    s += "\"/>\n";
    if (markers || points.size() == 1)
      for (const Point& p : points)
        s += fmt("<circle class=\"%s\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\" fill=\"%s\"/>\n", cls,
                 px(static_cast<double>(p.step)), py(p.loss), color);
    return s;
  }

 private:
  Axis x_, y_;
};

std::string legend(const Curves& c) {
  const int entries = !c.train.empty() + !c.eval.empty();
  // On a white box: a curve may run under the legend.
  std::string s =
      fmt("<g class=\"legend\" font-size=\"12\">\n<rect x=\"%.2f\" y=\"%.2f\" width=\"150\" "
          "height=\"%d\" fill=\"white\" fill-opacity=\"0.85\"/>\n",
          kWidth - kRight - 160, kTop + 6, 18 * entries + 4);
  double y = kTop + 16;
  auto entry = [&](const char* label, const char* color, const char* dash) {
    const double x = kWidth - kRight - 150;
    s +=
        fmt("<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" "
            "stroke-width=\"2\"%s/>\n<text x=\"%.2f\" y=\"%.2f\">%s</text>\n",
            x, y, x + 24, y, color, dash, x + 30, y + 4, label);
    y += 18;
  };
  if (!c.train.empty()) entry("training loss", kTrainColor, "");
  if (!c.eval.empty()) entry("validation loss", kEvalColor, " stroke-dasharray=\"5 3\"");
  return s + "</g>\n";
}

}  // namespace

void write_loss_curve_svg(const std::string& metrics_jsonl, const std::string& svg_path) {
  const Curves c = read_metrics(metrics_jsonl);
  std::string svg = fmt(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.2f\" y=\"26\" text-anchor=\"middle\" font-size=\"16\">Loss per step</text>\n",
      kWidth, kHeight, kWidth, kHeight, kWidth / 2);
  if (c.train.empty() && c.eval.empty()) {
    svg +=
        fmt("<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\" font-size=\"14\">no loss "
            "logged</text>\n",
            kWidth / 2, kHeight / 2);
  } else {
    int64_t s0 = INT64_MAX, s1 = INT64_MIN;
    double l0 = INFINITY, l1 = -INFINITY;
    for (const auto* points : {&c.train, &c.eval})
      for (const Point& p : *points) {
        s0 = std::min(s0, p.step), s1 = std::max(s1, p.step);
        l0 = std::min(l0, p.loss), l1 = std::max(l1, p.loss);
      }
    const Chart chart(nice_axis(static_cast<double>(s0), static_cast<double>(s1), true),
                      nice_axis(l0, l1, false));
    svg += chart.axes();
    if (!c.train.empty()) svg += chart.curve(c.train, "train", kTrainColor, false, false);
    if (!c.eval.empty()) svg += chart.curve(c.eval, "eval", kEvalColor, true, true);
    svg += legend(c);
  }
  if (c.non_finite > 0)
    svg += fmt(
        "<text class=\"note\" x=\"%.2f\" y=\"%.2f\" font-size=\"12\" fill=\"#c00\">%lld "
        "non-finite loss%s (NaN or inf) not drawn</text>\n",
        kLeft, kHeight - 14, static_cast<long long>(c.non_finite), c.non_finite == 1 ? "" : "es");
  write_text_durably(svg_path, svg + "</svg>\n");
}

}  // namespace keel::runtime
