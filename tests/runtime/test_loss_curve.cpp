// The loss-curve SVG: the points of metrics.jsonl land in the picture in step order, with ticks,
// a legend and the validation points; non-finite losses are counted, not drawn; bad input is an
// error naming the file and the line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "file_test_util.h"
#include "runtime/train/loss_curve.h"

namespace keel::runtime {
namespace {

using keel::testing::expect_error;

class LossCurve : public keel::testing::FileTest {
 protected:
  // Draws the metrics text and returns the SVG.
  std::string draw(const std::string& metrics) {
    write_loss_curve_svg(write("metrics.jsonl", metrics), path("loss.svg"));
    std::ifstream in(path("loss.svg"));
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

// The (x, y) pairs of the polyline of class cls.
std::vector<std::pair<double, double>> polyline(const std::string& svg, const std::string& cls) {
  std::smatch m;
  const std::regex re("<polyline class=\"" + cls + "\"[^>]* points=\"([^\"]*)\"");
  if (!std::regex_search(svg, m, re)) return {};
  std::vector<std::pair<double, double>> points;
  std::istringstream in(m[1].str());
  double x = 0, y = 0;
  char comma = 0;
  while (in >> x >> comma >> y) points.emplace_back(x, y);
  return points;
}

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) ++n;
  return n;
}

bool has_tick_label(const std::string& svg, const std::string& label) {
  return svg.find(">" + label + "</text>") != std::string::npos;
}

TEST_F(LossCurve, DrawsTrainingAndValidationLoss) {
  // Written as MetricsLog writes them, plus validation lines; the step-30 line comes late.
  const std::string svg = draw(
      "{\"step\": 10, \"loss\": 4.5, \"learning_rate\": 0.001, \"grad_norm\": 1.2}\n"
      "{\"step\": 20, \"loss\": 3.5, \"learning_rate\": 0.001}\n"
      "{\"step\": 20, \"eval_loss\": 3.5}\n"
      "\n"
      "{\"step\": 40, \"loss\": 2.0, \"eval_loss\": 2.75}\n"
      "{\"step\": 30, \"loss\": 2.5}\n");
  ASSERT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u) << svg.substr(0, 80);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(count(svg, "<text"), count(svg, "</text>"));
  EXPECT_EQ(count(svg, "<g"), count(svg, "</g>"));

  const auto train = polyline(svg, "train");
  ASSERT_EQ(train.size(), 4u);
  for (size_t i = 1; i < train.size(); ++i) {
    EXPECT_GT(train[i].first, train[i - 1].first) << "points in step order";
    EXPECT_GT(train[i].second, train[i - 1].second) << "falling loss: y grows downwards";
  }
  // Equal step spacing gives equal x spacing, equal loss drops (4.5, 3.5, 2.5) equal y drops, and
  // half the drop (2.5 to 2.0) half the height.
  EXPECT_NEAR(train[1].first - train[0].first, train[2].first - train[1].first, 0.02);
  EXPECT_NEAR(train[1].second - train[0].second, train[2].second - train[1].second, 0.02);
  EXPECT_NEAR(train[2].second - train[1].second, 2 * (train[3].second - train[2].second), 0.02);

  const auto eval = polyline(svg, "eval");
  ASSERT_EQ(eval.size(), 2u);
  EXPECT_NEAR(eval[0].first, train[1].first, 0.01);  // step 20
  EXPECT_NEAR(eval[1].first, train[3].first, 0.01);  // step 40
  EXPECT_EQ(count(svg, "<circle class=\"eval\""), 2u);
  EXPECT_EQ(count(svg, "<circle class=\"train\""), 0u);

  // Steps 10..40 on 1-2-5 ticks (step 5), losses 2..4.5 on ticks of 0.5.
  for (const char* label : {"10", "15", "20", "25", "30", "35", "40"})
    EXPECT_TRUE(has_tick_label(svg, label)) << label;
  for (const char* label : {"2.0", "2.5", "3.0", "3.5", "4.0", "4.5"})
    EXPECT_TRUE(has_tick_label(svg, label)) << label;
  EXPECT_NE(svg.find(">training loss</text>"), std::string::npos);
  EXPECT_NE(svg.find(">validation loss</text>"), std::string::npos);
  EXPECT_NE(svg.find(">Loss per step</text>"), std::string::npos);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);
  EXPECT_EQ(svg.find("non-finite"), std::string::npos);
}

TEST_F(LossCurve, OnePointIsAMarkerWithRoomAround) {
  const std::string svg = draw("{\"step\": 7, \"loss\": 3.0}\n");
  ASSERT_EQ(polyline(svg, "train").size(), 1u);
  EXPECT_EQ(count(svg, "<circle class=\"train\""), 1u);
  EXPECT_EQ(svg.find("validation loss"), std::string::npos);
  for (const char* label : {"6", "7", "8"}) EXPECT_TRUE(has_tick_label(svg, label)) << label;
}

TEST_F(LossCurve, NonFiniteLossesAreCountedNotDrawn) {
  // printf writes a diverged loss as nan or inf, which is not JSON.
  const std::string svg = draw(
      "{\"step\": 1, \"loss\": 3.0, \"grad_norm\": nan}\n"
      "{\"step\": 2, \"loss\": nan, \"learning_rate\": 0.1}\n"
      "{\"step\": 3, \"loss\": -inf}\n"
      "{\"step\": 4, \"loss\": 2.0, \"eval_loss\": inf}\n");
  EXPECT_EQ(polyline(svg, "train").size(), 2u);
  EXPECT_TRUE(polyline(svg, "eval").empty());
  EXPECT_NE(svg.find(">3 non-finite losses (NaN or inf) not drawn</text>"), std::string::npos);
}

TEST_F(LossCurve, NoLossIsAPictureSayingSo) {
  for (const char* metrics : {"", "\n\n", "{\"step\": 5, \"loss\": nan}\n"}) {
    const std::string svg = draw(metrics);
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find(">no loss logged</text>"), std::string::npos) << metrics;
    EXPECT_TRUE(polyline(svg, "train").empty());
  }
}

TEST_F(LossCurve, BadInputNamesTheFileAndLine) {
  const std::string metrics = path("metrics.jsonl");
  expect_error([&] { write_loss_curve_svg(path("absent.jsonl"), path("x.svg")); },
               keel::format("cannot open '{}'", path("absent.jsonl")));
  expect_error([&] { draw("{\"step\": 1, \"loss\": 2.0}\n\n{\"step\": 3, \"loss\": \n"); },
               keel::format("'{}', line 3: not a JSON object", metrics));
  expect_error([&] { draw("{\"step\": 1, \"loss\": 2.0}\n[1, 2]\n"); },
               keel::format("'{}', line 2: not a JSON object", metrics));
  expect_error([&] { draw("{\"loss\": 2.0}\n"); },
               keel::format("'{}', line 1: no integer \"step\"", metrics));
  expect_error([&] { draw("{\"step\": 1.5, \"loss\": 2.0}\n"); }, "line 1: no integer \"step\"");
  expect_error([&] { draw("{\"step\": 1, \"learning_rate\": 2.0}\n"); },
               "line 1: neither \"loss\" nor \"eval_loss\"");
  expect_error([&] { draw("{\"step\": 1, \"loss\": \"low\"}\n"); },
               "line 1: \"loss\" is not a number");
  EXPECT_FALSE(std::filesystem::exists(path("loss.svg")));  // nothing written on error
}

}  // namespace
}  // namespace keel::runtime
