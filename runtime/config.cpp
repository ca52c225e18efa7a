// Reads, checks and writes the run configuration declared in runtime/config.h. One table lists
// every key with its section, type and allowed range; parsing, `--set` overrides, range checks and
// config_to_yaml all walk that table, so no key is read without also being checked and written.
#include "runtime/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "kernels/error.h"

namespace keel::runtime {
namespace {

// A key is reached through a function that returns a reference to its field; std::visit then
// picks the reader, the checks and the writer by the field's value type.
template <class T>
using FieldRef = T& (*)(Config&);
using Ref = std::variant<FieldRef<int64_t>, FieldRef<uint64_t>, FieldRef<double>, FieldRef<bool>,
                         FieldRef<std::string>>;

constexpr double kInf = std::numeric_limits<double>::infinity();

// Allowed values of a numeric key: lo <= v (lo < v when lo_open), v <= hi (v < hi when hi_open).
struct Range {
  double lo = -kInf;
  bool lo_open = false;
  double hi = kInf;
  bool hi_open = false;
};
constexpr Range at_least(double lo) { return {lo, false, kInf, false}; }
constexpr Range above(double lo) { return {lo, true, kInf, false}; }
constexpr Range closed(double lo, double hi) { return {lo, false, hi, false}; }
constexpr Range half_open(double lo, double hi) { return {lo, false, hi, true}; }
constexpr Range any_value() { return {}; }

struct Field {
  std::string_view section;
  std::string_view key;
  Ref ref;
  Range range;
};

// clang-format off
#define KEEL_CONFIG_FIELD(section, key, range) \
  Field { #section, #key, Ref{+[](Config& c) -> auto& { return c.section.key; }}, range }

// Order here is the order of config_to_yaml and of docs/CONFIG.md.
const auto kFields = std::to_array<Field>({
    KEEL_CONFIG_FIELD(model, vocab_size, at_least(1)),
    KEEL_CONFIG_FIELD(model, hidden_size, at_least(1)),
    KEEL_CONFIG_FIELD(model, intermediate_size, at_least(1)),
    KEEL_CONFIG_FIELD(model, num_hidden_layers, at_least(1)),
    KEEL_CONFIG_FIELD(model, num_attention_heads, at_least(1)),
    KEEL_CONFIG_FIELD(model, num_key_value_heads, at_least(0)),
    KEEL_CONFIG_FIELD(model, max_position_embeddings, at_least(1)),
    KEEL_CONFIG_FIELD(model, rope_theta, above(0)),
    KEEL_CONFIG_FIELD(model, rms_norm_eps, above(0)),
    KEEL_CONFIG_FIELD(model, tie_word_embeddings, any_value()),
    KEEL_CONFIG_FIELD(model, initializer_range, at_least(0)),
    KEEL_CONFIG_FIELD(data, train, any_value()),
    KEEL_CONFIG_FIELD(data, tokenizer, any_value()),
    KEEL_CONFIG_FIELD(data, seq_length, at_least(1)),
    KEEL_CONFIG_FIELD(training, max_steps, at_least(1)),
    KEEL_CONFIG_FIELD(training, learning_rate, at_least(0)),
    KEEL_CONFIG_FIELD(training, warmup_steps, at_least(0)),
    KEEL_CONFIG_FIELD(training, lr_scheduler_type, any_value()),
    KEEL_CONFIG_FIELD(training, per_device_train_batch_size, at_least(1)),
    KEEL_CONFIG_FIELD(training, gradient_accumulation_steps, at_least(1)),
    KEEL_CONFIG_FIELD(training, max_grad_norm, at_least(0)),
    KEEL_CONFIG_FIELD(training, weight_decay, at_least(0)),
    KEEL_CONFIG_FIELD(training, adam_beta1, half_open(0, 1)),
    KEEL_CONFIG_FIELD(training, adam_beta2, half_open(0, 1)),
    KEEL_CONFIG_FIELD(training, adam_epsilon, above(0)),
    KEEL_CONFIG_FIELD(training, seed, any_value()),
    KEEL_CONFIG_FIELD(training, logging_steps, at_least(1)),
    KEEL_CONFIG_FIELD(training, output_dir, any_value()),
    KEEL_CONFIG_FIELD(training, gradient_checkpointing, any_value()),
    KEEL_CONFIG_FIELD(optimizer, type, any_value()),
    KEEL_CONFIG_FIELD(parallel, zero_stage, closed(0, 3)),
    KEEL_CONFIG_FIELD(parallel, tensor_model_parallel_size, at_least(1)),
    KEEL_CONFIG_FIELD(parallel, pipeline_model_parallel_size, at_least(1)),
    KEEL_CONFIG_FIELD(parallel, expert_model_parallel_size, at_least(1)),
});

#undef KEEL_CONFIG_FIELD
// clang-format on

constexpr std::array<std::string_view, 5> kSections = {"model", "data", "training", "optimizer",
                                                       "parallel"};
constexpr std::array<std::string_view, 4> kSchedulers = {"linear", "cosine", "constant",
                                                         "constant_with_warmup"};
constexpr std::array<std::string_view, 1> kOptimizers = {"adamw"};
constexpr std::array<std::string_view, 1> kTokenizers = {"bytes"};
// The byte tokenizer maps each of the 256 byte values to its own token id.
constexpr int64_t kByteVocab = 256;

// ---- names and suggestions -------------------------------------------------------------------

// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
// neighbours ("learnign") each cost 1.
size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// "; did you mean 'prefix+best'?", and the whole list of valid names when even the best is far off.
std::string did_you_mean(std::string_view name, const std::vector<std::string>& valid,
                         const std::string& prefix) {
  size_t best = 0;
  for (size_t i = 1; i < valid.size(); ++i) {
    if (edit_distance(name, valid[i]) < edit_distance(name, valid[best])) best = i;
  }
  std::string out = format("; did you mean '{}{}'?", prefix, valid[best]);
  if (edit_distance(name, valid[best]) > std::max<size_t>(2, name.size() / 2)) {
    out += format(" (valid: {})", join(valid));
  }
  return out;
}

template <size_t N>
std::vector<std::string> to_strings(const std::array<std::string_view, N>& names) {
  return std::vector<std::string>(names.begin(), names.end());
}

std::vector<std::string> keys_of(std::string_view section) {
  std::vector<std::string> keys;
  for (const Field& f : kFields) {
    if (f.section == section) keys.emplace_back(f.key);
  }
  return keys;
}

const Field* find_field(std::string_view section, std::string_view key) {
  for (const Field& f : kFields) {
    if (f.section == section && f.key == key) return &f;
  }
  return nullptr;
}

// A key that exists under another section (or at the top level) is the likeliest mistake: point
// at the section it belongs to rather than at the nearest spelling.
const Field* field_named(std::string_view key) {
  for (const Field& f : kFields) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

bool is_section(std::string_view name) {
  return std::find(kSections.begin(), kSections.end(), name) != kSections.end();
}

[[noreturn]] void fail_unknown_section(const std::string& name, const std::string& where) {
  if (const Field* f = field_named(name)) {
    KEEL_FAIL("unknown section '{}' in {}; did you mean '{}.{}'?", name, where, f->section, f->key);
  }
  KEEL_FAIL("unknown section '{}' in {}{}", name, where,
            did_you_mean(name, to_strings(kSections), ""));
}

[[noreturn]] void fail_unknown_key(std::string_view section, const std::string& key,
                                   const std::string& where) {
  if (const Field* f = field_named(key)) {
    KEEL_FAIL("unknown key '{}.{}' in {}; did you mean '{}.{}'?", section, key, where, f->section,
              f->key);
  }
  KEEL_FAIL("unknown key '{}.{}' in {}{}", section, key, where,
            did_you_mean(key, keys_of(section), std::string(section) + "."));
}

// ---- reading values --------------------------------------------------------------------------

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
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < T{0}) {
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
  return "a non-negative integer";
}

// Stores `node` into the field, or throws naming the key, the expected type and what was found.
void assign(const Field& field, const YAML::Node& node, const std::string& where, Config& config) {
  std::visit(
      [&](auto ref) {
        auto value = ref(config);
        using T = decltype(value);
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
    for (const auto& entry : section.second) {
      const std::string key_where = where_in(origin, entry.first.Mark());
      KEEL_CHECK(entry.first.IsScalar(), "keys of section '{}' in {} must be plain words", name,
                 key_where);
      const std::string& key = entry.first.Scalar();
      const Field* field = find_field(name, key);
      if (field == nullptr) fail_unknown_key(name, key, key_where);
      KEEL_CHECK(keys.insert(key).second, "key '{}.{}' appears twice in {}; keep one", name, key,
                 key_where);
      assign(*field, entry.second, key_where, config);
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

// ---- checks ----------------------------------------------------------------------------------

// Shortest text that reads back as the same double.
std::string number_text(double v) {
  std::array<char, 64> buf{};
  const auto result = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return std::string(buf.data(), result.ptr);
}

std::string range_text(const Range& r) {
  const bool has_lo = r.lo != -kInf;
  const bool has_hi = r.hi != kInf;
  if (has_lo && has_hi) {
    return format("{}{}, {}{}", r.lo_open ? "(" : "[", number_text(r.lo), number_text(r.hi),
                  r.hi_open ? ")" : "]");
  }
  if (has_lo) return format("{} {}", r.lo_open ? ">" : ">=", number_text(r.lo));
  return format("{} {}", r.hi_open ? "<" : "<=", number_text(r.hi));
}

bool in_range(double v, const Range& r) {
  const bool lo_ok = r.lo_open ? v > r.lo : v >= r.lo;
  const bool hi_ok = r.hi_open ? v < r.hi : v <= r.hi;
  return lo_ok && hi_ok;
}

void check_range(const Field& field, Config& config) {
  std::visit(
      [&](auto ref) {
        using T = std::remove_reference_t<decltype(ref(config))>;
        if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
          const T v = ref(config);
          const std::string text = std::is_same_v<T, double> ? number_text(v) : std::to_string(v);
          KEEL_CHECK(std::isfinite(static_cast<double>(v)),
                     "{}.{} is {}; it must be a finite number", field.section, field.key, text);
          KEEL_CHECK(in_range(static_cast<double>(v), field.range),
                     "{}.{} is {}; allowed range: {}", field.section, field.key, text,
                     range_text(field.range));
        }
      },
      field.ref);
}

template <size_t N>
void check_one_of(const std::string& value, const std::array<std::string_view, N>& supported,
                  std::string_view key, std::string_view what) {
  if (std::find(supported.begin(), supported.end(), value) != supported.end()) return;
  const std::string hint = N > 1 ? did_you_mean(value, to_strings(supported), "") : "";
  KEEL_FAIL("{} is '{}'; {} supported in this build: {}{}", key, value, what,
            join(to_strings(supported)), hint);
}

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d <= n / d; ++d) {
    if (n % d != 0) continue;
    out.push_back(d);
    if (d != n / d) out.push_back(n / d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string list(const std::vector<int64_t>& values) {
  std::vector<std::string> items;
  for (int64_t v : values) items.push_back(std::to_string(v));
  return join(items);
}

// The fix for a hidden size / head count that does not give an even head dim: head counts that do
// (up to six, nearest the current one), or hidden sizes that do.
std::string head_shape_fix(int64_t hidden, int64_t heads) {
  std::vector<int64_t> good;
  for (int64_t d : divisors(hidden)) {
    if ((hidden / d) % 2 == 0) good.push_back(d);
  }
  std::stable_sort(good.begin(), good.end(),
                   [&](int64_t a, int64_t b) { return std::abs(a - heads) < std::abs(b - heads); });
  if (good.size() > 6) good.resize(6);
  std::sort(good.begin(), good.end());
  const int64_t step = 2 * heads;
  const int64_t below = hidden / step * step;
  const std::string sizes =
      below > 0 ? format("{} or {}", below, below + step) : std::to_string(below + step);
  const std::string hidden_fix =
      format("set model.hidden_size to a multiple of {} (e.g. {})", step, sizes);
  if (good.empty()) return hidden_fix;
  return format("set model.num_attention_heads to one of {}, or {}", list(good), hidden_fix);
}

void check_shapes(const Config& config) {
  const ModelConfig& m = config.model;
  KEEL_CHECK(m.hidden_size % m.num_attention_heads == 0,
             "model.hidden_size ({}) must be divisible by model.num_attention_heads ({}); {}",
             m.hidden_size, m.num_attention_heads,
             head_shape_fix(m.hidden_size, m.num_attention_heads));
  KEEL_CHECK(m.head_dim() % 2 == 0,
             "the head dim model.hidden_size / model.num_attention_heads = {} / {} = {} must be "
             "even for RoPE; {}",
             m.hidden_size, m.num_attention_heads, m.head_dim(),
             head_shape_fix(m.hidden_size, m.num_attention_heads));
  const int64_t kv_heads =
      m.num_key_value_heads == 0 ? m.num_attention_heads : m.num_key_value_heads;
  KEEL_CHECK(m.num_attention_heads % kv_heads == 0,
             "model.num_key_value_heads ({}) must divide model.num_attention_heads ({}); pick one "
             "of {}",
             kv_heads, m.num_attention_heads, list(divisors(m.num_attention_heads)));
  KEEL_CHECK(config.data.seq_length <= m.max_position_embeddings,
             "data.seq_length ({}) exceeds model.max_position_embeddings ({}); lower "
             "data.seq_length or raise model.max_position_embeddings to at least {}",
             config.data.seq_length, m.max_position_embeddings, config.data.seq_length);
}

void check_parallel_size(int64_t size, std::string_view key, std::string_view what) {
  KEEL_CHECK(
      size == 1,
      "parallel.{} is {}, but {} parallelism is not supported yet in this build; set it to 1", key,
      size, what);
}

// ---- writing ---------------------------------------------------------------------------------

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

void validate_config(const Config& config) {
  Config copy = config;  // the field table hands out mutable references
  for (const Field& field : kFields) check_range(field, copy);

  KEEL_CHECK(!config.data.train.empty(),
             "data.train is empty; set it to the training text file (e.g. --set "
             "data.train=data/tiny.txt)");
  KEEL_CHECK(!config.training.output_dir.empty(),
             "training.output_dir is empty; set it to the run directory (e.g. runs/tiny)");
  check_one_of(config.data.tokenizer, kTokenizers, "data.tokenizer", "tokenizers");
  // Only the byte tokenizer exists, so its vocabulary is the one to check against.
  KEEL_CHECK(config.model.vocab_size >= kByteVocab,
             "model.vocab_size is {}, but data.tokenizer 'bytes' needs at least {} token ids (one "
             "per byte value); set model.vocab_size to {} or more",
             config.model.vocab_size, kByteVocab, kByteVocab);
  check_one_of(config.training.lr_scheduler_type, kSchedulers, "training.lr_scheduler_type",
               "schedulers");
  check_one_of(config.optimizer.type, kOptimizers, "optimizer.type", "optimizers");
  check_parallel_size(config.parallel.tensor_model_parallel_size, "tensor_model_parallel_size",
                      "tensor");
  check_parallel_size(config.parallel.pipeline_model_parallel_size, "pipeline_model_parallel_size",
                      "pipeline");
  check_parallel_size(config.parallel.expert_model_parallel_size, "expert_model_parallel_size",
                      "expert");
  check_shapes(config);
}

std::string config_to_yaml(const Config& config) {
  Config copy = config;  // the field table hands out mutable references
  std::string out = "# keel run config, fully resolved (docs/CONFIG.md describes every key)\n";
  std::string_view section;
  for (const Field& field : kFields) {
    if (field.section != section) {
      section = field.section;
      out += format("{}:\n", section);
    }
    const std::string value =
        std::visit([&](auto ref) { return yaml_value(ref(copy)); }, field.ref);
    out += format("  {}: {}\n", field.key, value);
  }
  return out;
}

}  // namespace keel::runtime
