// Reading the run configuration declared in runtime/config/config.h: YAML text or a file, then the
// `--set` overrides, each value read by its key's type from the schema in
// runtime/config/config_schema.h.
#include "runtime/config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "kernels/error.h"
#include "runtime/config/config_schema.h"

namespace keel::runtime {

using detail::fail_unknown_key;
using detail::fail_unknown_section;
using detail::Field;
using detail::find_field;
using detail::is_key_group;
using detail::is_section;
using detail::join;
using detail::kSections;
using detail::to_strings;

namespace {

std::string where_in(const std::string& origin, const YAML::Mark& mark) {
  return mark.is_null() ? origin : format("{}:{}", origin, mark.line + 1);
}

// A quoted scalar ("100") or one tagged !!str is a string in YAML, never a number or a bool.
bool is_string_scalar(const YAML::Node& node) {
  const std::string& tag = node.Tag();
  return tag == "!" || tag == "tag:yaml.org,2002:str";
}

std::string describe(const YAML::Node& node) {
  if (node.IsScalar()) {
    return format(is_string_scalar(node) ? "the string '{}'" : "'{}'", node.Scalar());
  }
  return node.IsMap() ? "a map" : node.IsSequence() ? "a list" : "an empty value";
}

// Readers of one YAML value, by field type; false when the node is not of that type. Numbers and
// bools must be plain (unquoted) scalars.
template <class T>
bool read_integer(const YAML::Node& node, T& out) {
  if (!node.IsScalar() || is_string_scalar(node)) return false;
  std::string_view text = node.Scalar();
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  T value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return false;
  }
  out = value;
  return true;
}
bool read(const YAML::Node& node, int64_t& out) { return read_integer(node, out); }
bool read(const YAML::Node& node, uint64_t& out) { return read_integer(node, out); }

bool read(const YAML::Node& node, double& out) {
  if (!node.IsScalar() || is_string_scalar(node)) return false;
  std::string_view text = node.Scalar();
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return false;
  if (!std::isfinite(value)) return false;
  out = value;
  return true;
}

bool read(const YAML::Node& node, bool& out) {
  if (!node.IsScalar() || is_string_scalar(node)) return false;
  const std::string& text = node.Scalar();
  const bool is_true = text == "true" || text == "True" || text == "TRUE";
  const bool is_false = text == "false" || text == "False" || text == "FALSE";
  out = is_true;
  return is_true || is_false;
}

bool read(const YAML::Node& node, std::string& out) {
  if (!node.IsScalar()) return false;
  out = node.Scalar();
  return true;
}

template <class T>
constexpr std::string_view type_name() {
  if constexpr (std::is_same_v<T, bool>) return "true or false";
  if constexpr (std::is_same_v<T, std::string>) return "a string";
  if constexpr (std::is_same_v<T, double>) return "a finite number";
  if constexpr (std::is_same_v<T, uint64_t>) return "a non-negative integer";
  return "an integer";
}

// Stores `node` into the field, or throws naming the key, the expected type and what was found.
void assign(const Field& field, const YAML::Node& node, const std::string& where, Config& config) {
  std::visit(
      [&](auto ref) {
        auto value = ref(config);
        using T = decltype(value);
        if constexpr (std::is_same_v<T, std::string>) {
          if (field.list && node.IsSequence()) {  // [a, b] is kept as "a,b"
            std::string joined;
            for (const auto& item : node) {
              KEEL_CHECK(item.IsScalar(), "{}.{} in {} must be a list of names, found {}",
                         field.section, field.key, where, describe(item));
              joined += (joined.empty() ? "" : ",") + item.Scalar();
            }
            ref(config) = joined;
            return;
          }
        }
        // A path like "a: b" or "[x]" reads as a map or a list unless quoted.
        const bool quote = std::is_same_v<T, std::string> && (node.IsMap() || node.IsSequence());
        KEEL_CHECK(read(node, value), "{}.{} in {} must be {}, found {}{}", field.section,
                   field.key, where, type_name<T>(), describe(node),
                   quote ? "; quote the value" : "");
        ref(config) = value;
      },
      field.ref);
}

YAML::Node load_document(const std::string& text, const std::string& origin) {
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    KEEL_FAIL("YAML syntax error in {}:{}:{}: {}", origin, e.mark.line + 1, e.mark.column + 1,
              e.msg);
  }
  KEEL_CHECK(documents.size() <= 1, "{} holds {} YAML documents; a config is a single document",
             origin, documents.size());
  return documents.empty() ? YAML::Node() : documents.front();
}

void apply_document(const YAML::Node& root, const std::string& origin, Config& config) {
  if (root.IsNull()) return;
  KEEL_CHECK(root.IsMap(), "{} must be a map of sections ({}), found {}", origin,
             join(to_strings(kSections)), describe(root));
  std::set<std::string> seen;
  for (const auto& section : root) {
    const std::string where = where_in(origin, section.first.Mark());
    KEEL_CHECK(section.first.IsScalar(), "section names in {} must be plain words", where);
    const std::string& name = section.first.Scalar();
    if (!is_section(name)) fail_unknown_section(name, where);
    KEEL_CHECK(seen.insert(name).second, "section '{}' appears twice in {}; merge the two", name,
               where);
    if (section.second.IsNull()) continue;  // "training:" with nothing under it keeps defaults
    KEEL_CHECK(section.second.IsMap(), "section '{}' in {} must be a map of key: value, found {}",
               name, where, describe(section.second));
    std::set<std::string> keys;
    // One key: value, or a group of them (galore: {rank: 64}) read as galore.rank.
    const auto read_entry = [&](const std::string& key, const YAML::Node& value,
                                const std::string& key_where, auto& self) -> void {
      const Field* field = find_field(name, key);
      if (field == nullptr && value.IsMap() && is_key_group(name, key)) {
        for (const auto& inner : value) {
          const std::string inner_where = where_in(origin, inner.first.Mark());
          KEEL_CHECK(inner.first.IsScalar(), "keys of '{}.{}' in {} must be plain words", name, key,
                     inner_where);
          self(key + "." + inner.first.Scalar(), inner.second, inner_where, self);
        }
        return;
      }
      if (field == nullptr) fail_unknown_key(name, key, key_where);
      KEEL_CHECK(keys.insert(key).second, "key '{}.{}' appears twice in {}; keep one", name, key,
                 key_where);
      assign(*field, value, key_where, config);
    };
    for (const auto& entry : section.second) {
      const std::string key_where = where_in(origin, entry.first.Mark());
      KEEL_CHECK(entry.first.IsScalar(), "keys of section '{}' in {} must be plain words", name,
                 key_where);
      read_entry(entry.first.Scalar(), entry.second, key_where, read_entry);
    }
  }
}

std::string trim(std::string_view s) {
  const size_t first = s.find_first_not_of(" \t");
  if (first == std::string_view::npos) return "";
  const size_t last = s.find_last_not_of(" \t");
  return std::string(s.substr(first, last - first + 1));
}

// Applies one `--set section.key=value`; the value is read as a YAML scalar, like in the file.
void apply_override(const std::string& text, Config& config) {
  const size_t eq = text.find('=');
  const std::string path = trim(std::string_view(text).substr(0, std::min(eq, text.size())));
  const size_t dot = path.find('.');
  KEEL_CHECK(
      eq != std::string::npos && dot != std::string::npos && dot > 0 && dot + 1 < path.size(),
      "malformed override '{}': expected section.key=value, e.g. "
      "--set training.learning_rate=3e-4",
      text);
  const std::string where = "--set " + text;
  const std::string section = path.substr(0, dot);
  const std::string key = path.substr(dot + 1);
  if (!is_section(section)) fail_unknown_section(section, where);
  const Field* field = find_field(section, key);
  if (field == nullptr) fail_unknown_key(section, key, where);
  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    KEEL_FAIL("the value in '{}' is not a valid YAML scalar ({}); quote it", where, e.msg);
  }
  assign(*field, value, where, config);
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides,
                    const std::string& origin) {
  Config config;
  apply_document(load_document(yaml_text, origin), origin, config);
  for (const std::string& override_text : overrides) apply_override(override_text, config);
  // Resolved here, after the overrides, so that downstream code sees the real head count.
  if (config.model.num_key_value_heads == 0) {
    config.model.num_key_value_heads = config.model.num_attention_heads;
  }
  validate_config(config);
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  KEEL_CHECK(!std::filesystem::is_directory(path, ec),
             "cannot read config file '{}': it is a directory", path);
  std::ifstream in(path, std::ios::binary);
  KEEL_CHECK(in.is_open(), "cannot open config file '{}': {}", path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  KEEL_CHECK(!in.bad(), "cannot read config file '{}': {}", path, std::strerror(errno));
  return parse_config(text.str(), overrides, path);
}

}  // namespace keel::runtime
