// Writing a run configuration (runtime/config/config.h) back as YAML: every key of the schema in
// table order, each value in a form that reads back exactly, by keel and by other YAML readers.
#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "kernels/error.h"
#include "runtime/config/config.h"
#include "runtime/config/config_schema.h"

namespace keel::runtime {

using detail::Field;
using detail::kFields;
using detail::number_text;

namespace {

std::string yaml_value(int64_t v) { return std::to_string(v); }
std::string yaml_value(uint64_t v) { return std::to_string(v); }
std::string yaml_value(bool v) { return v ? "true" : "false"; }

// A double as YAML that reads back bit for bit, always with a '.' so that YAML 1.1 readers
// (PyYAML) see a float too: 1e-05 -> 1.0e-05, 10000 -> 10000.0.
std::string yaml_value(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  std::string text = number_text(v);
  if (text.find('.') != std::string::npos) return text;
  const size_t e = text.find('e');
  if (e == std::string::npos) return text + ".0";
  return text.insert(e, ".0");
}

// Always double-quoted, so that no path or name ("yes", "123", "a: b") changes type on reading.
std::string yaml_value(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string config_to_yaml(const Config& config) {
  Config copy = config;  // the field table hands out mutable references
  std::string out = "# keel run config, fully resolved (docs/CONFIG.md describes every key)\n";
  std::string_view section, group;
  for (const Field& field : kFields) {
    if (field.section != section) {
      section = field.section;
      group = {};
      out += format("{}:\n", section);
    }
    // galore.rank is written as rank: under galore:
    std::string_view key = field.key;
    const size_t dot = key.find('.');
    const std::string_view key_group = dot == std::string_view::npos ? "" : key.substr(0, dot);
    if (key_group != group && !key_group.empty()) out += format("  {}:\n", key_group);
    group = key_group;
    if (!group.empty()) key = key.substr(dot + 1);
    const std::string value =
        std::visit([&](auto ref) { return yaml_value(ref(copy)); }, field.ref);
    out += format("{}{}: {}\n", group.empty() ? "  " : "    ", key, value);
  }
  return out;
}

std::vector<std::string> config_differences(const Config& before, const Config& after,
                                            const std::string& section) {
  Config a = before, b = after;
  std::vector<std::string> out;
  for (const Field& field : kFields) {
    if (!section.empty() && field.section != section) continue;
    const auto [old_value, new_value] = std::visit(
        [&](auto ref) {
          return std::pair{yaml_value(ref(a)), yaml_value(ref(b))};
        },
        field.ref);
    if (old_value != new_value)
      out.push_back(format("{}.{}: {} -> {}", field.section, field.key, old_value, new_value));
  }
  return out;
}

}  // namespace keel::runtime
