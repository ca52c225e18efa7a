// Names and suggestions for the config schema (runtime/config/config_schema.h): finding a key in
// the table, and the "did you mean" hint for a misspelt or misplaced section or key.
#include "runtime/config/config_schema.h"

#include <algorithm>
#include <charconv>

#include "kernels/error.h"

namespace keel::runtime::detail {
namespace {

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

std::vector<std::string> keys_of(std::string_view section) {
  std::vector<std::string> keys;
  for (const Field& f : kFields) {
    if (f.section == section) keys.emplace_back(f.key);
  }
  return keys;
}

// A key that exists under another section (or at the top level) is the likeliest mistake: point
// at the section it belongs to rather than at the nearest spelling.
const Field* field_named(std::string_view key) {
  for (const Field& f : kFields) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

}  // namespace

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

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

const Field* find_field(std::string_view section, std::string_view key) {
  for (const Field& f : kFields) {
    if (f.section == section && f.key == key) return &f;
  }
  return nullptr;
}

bool is_key_group(std::string_view section, std::string_view key) {
  for (const Field& f : kFields) {
    if (f.section == section && f.key.size() > key.size() && f.key.starts_with(key) &&
        f.key[key.size()] == '.')
      return true;
  }
  return false;
}

bool is_section(std::string_view name) {
  return std::find(kSections.begin(), kSections.end(), name) != kSections.end();
}

void fail_unknown_section(const std::string& name, const std::string& where) {
  if (const Field* f = field_named(name)) {
    KEEL_FAIL("unknown section '{}' in {}; did you mean '{}.{}'?", name, where, f->section, f->key);
  }
  KEEL_FAIL("unknown section '{}' in {}{}", name, where,
            did_you_mean(name, to_strings(kSections), ""));
}

void fail_unknown_key(std::string_view section, const std::string& key, const std::string& where) {
  if (const Field* f = field_named(key)) {
    KEEL_FAIL("unknown key '{}.{}' in {}; did you mean '{}.{}'?", section, key, where, f->section,
              f->key);
  }
  KEEL_FAIL("unknown key '{}.{}' in {}{}", section, key, where,
            did_you_mean(key, keys_of(section), std::string(section) + "."));
}

std::string number_text(double v) {
  std::array<char, 64> buf{};
  const auto result = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return std::string(buf.data(), result.ptr);
}

}  // namespace keel::runtime::detail
