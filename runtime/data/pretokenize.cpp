#include "runtime/data/pretokenize.h"

#include <algorithm>
#include <array>

namespace keel::runtime {

namespace {

struct CodeRange {
  uint32_t lo, hi;
};

#include "runtime/data/unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodeRange (&table)[N], uint32_t cp) {
  const auto it = std::upper_bound(std::begin(table), std::end(table), cp,
                                   [](uint32_t v, const CodeRange& r) { return v < r.lo; });
  return it != std::begin(table) && cp <= (it - 1)->hi;
}

constexpr std::array<CharClass, 128> ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      t[c] = CharClass::kLetter;
    else if (c >= '0' && c <= '9')
      t[c] = CharClass::kNumber;
    else if (c == ' ' || (c >= 0x09 && c <= 0x0d))
      t[c] = CharClass::kSpace;
    else
      t[c] = CharClass::kOther;
  }
  return t;
}
constexpr std::array<CharClass, 128> kAscii = ascii_classes();

struct Char {
  uint32_t length;  // bytes
  CharClass cls;
  uint8_t first;  // the first byte (for the ASCII comparisons of the patterns)
};

// The character at text[i]: a UTF-8 sequence, or one byte that does not start a valid one.
Char char_at(std::string_view text, size_t i) {
  const auto b0 = static_cast<uint8_t>(text[i]);
  if (b0 < 0x80) return {1, kAscii[b0], b0};
  int len;
  uint32_t cp, min;
  if ((b0 & 0xe0) == 0xc0)
    len = 2, cp = b0 & 0x1fu, min = 0x80;
  else if ((b0 & 0xf0) == 0xe0)
    len = 3, cp = b0 & 0x0fu, min = 0x800;
  else if ((b0 & 0xf8) == 0xf0)
    len = 4, cp = b0 & 0x07u, min = 0x10000;
  else
    return {1, CharClass::kOther, b0};
  if (i + static_cast<size_t>(len) > text.size()) return {1, CharClass::kOther, b0};
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<uint8_t>(text[i + static_cast<size_t>(k)]);
    if ((b & 0xc0) != 0x80) return {1, CharClass::kOther, b0};
    cp = (cp << 6) | (b & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    return {1, CharClass::kOther, b0};  // overlong, out of range or a surrogate
  return {static_cast<uint32_t>(len), char_class(cp), b0};
}

// A scanner over the text with one character of lookahead.
struct Scan {
  std::string_view text;
  bool done(size_t i) const { return i >= text.size(); }
  Char at(size_t i) const { return char_at(text, i); }
  bool is(size_t i, CharClass c) const { return !done(i) && at(i).cls == c; }
  // The end of the run of characters of class c starting at i (at most max characters).
  size_t run(size_t i, CharClass c, int max = 1 << 30) const {
    for (int n = 0; n < max && !done(i); ++n) {
      const Char ch = at(i);
      if (ch.cls != c) break;
      i += ch.length;
    }
    return i;
  }
  uint8_t byte(size_t i) const { return done(i) ? 0 : static_cast<uint8_t>(text[i]); }
};

uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// 's 't 're 've 'm 'll 'd at i (text[i] == '\''): the end of the contraction, or 0.
size_t contraction(const Scan& s, size_t i, bool ignore_case) {
  auto b = [&](size_t k) { return ignore_case ? lower(s.byte(k)) : s.byte(k); };
  const uint8_t c1 = b(i + 1), c2 = b(i + 2);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
    return i + 3;
  return 0;
}

// \s+(?!\S)|\s+ at i, a whitespace character: the run, less its last character when a
// non-space follows and the run is longer than one character.
size_t space_run(const Scan& s, size_t i) {
  size_t end = i, last = i;
  while (!s.done(end)) {
    const Char ch = s.at(end);
    if (ch.cls != CharClass::kSpace) break;
    last = end;
    end += ch.length;
  }
  if (s.done(end) || last == i) return end;
  return last;
}

size_t gpt2_piece(const Scan& s, size_t i) {
  const Char c = s.at(i);
  if (c.first == '\'') {
    if (const size_t e = contraction(s, i, false)) return e;
  }
  // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+'
  size_t j = i;
  CharClass cls = c.cls;
  if (c.first == ' ') {
    if (s.done(i + 1)) return i + 1;
    cls = s.at(i + 1).cls;
    j = i + 1;
  }
  if (cls != CharClass::kSpace) return s.run(j, cls);
  return space_run(s, i);
}

bool is_newline(uint8_t b) { return b == '\r' || b == '\n'; }

size_t llama3_piece(const Scan& s, size_t i) {
  const Char c = s.at(i);
  if (c.first == '\'') {
    if (const size_t e = contraction(s, i, true)) return e;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c.cls == CharClass::kLetter) return s.run(i, CharClass::kLetter);
  if (c.cls != CharClass::kNumber && !is_newline(c.first) && s.is(i + c.length, CharClass::kLetter))
    return s.run(i + c.length, CharClass::kLetter);
  // \p{N}{1,3}
  if (c.cls == CharClass::kNumber) return s.run(i, CharClass::kNumber, 3);
  // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
  const size_t j = (c.first == ' ') ? i + 1 : i;
  if (s.is(j, CharClass::kOther)) {
    size_t e = s.run(j, CharClass::kOther);
    while (is_newline(s.byte(e))) ++e;
    return e;
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last newline
  size_t end = i, after_newline = 0;
  while (!s.done(end)) {
    const Char ch = s.at(end);
    if (ch.cls != CharClass::kSpace) break;
    end += ch.length;
    if (is_newline(ch.first)) after_newline = end;
  }
  if (after_newline != 0) return after_newline;
  return space_run(s, i);
}

}  // namespace

std::string_view pattern_name(SplitPattern p) {
  return p == SplitPattern::kGpt2 ? "gpt2" : "llama3";
}

std::string_view pattern_regex(SplitPattern p) {
  return p == SplitPattern::kGpt2 ? kGpt2Pattern : kLlama3Pattern;
}

CharClass char_class(uint32_t cp) {
  if (cp < 128) return kAscii[cp];
  if (in_ranges(kLetterRanges, cp)) return CharClass::kLetter;
  if (in_ranges(kNumberRanges, cp)) return CharClass::kNumber;
  if (in_ranges(kSpaceRanges, cp)) return CharClass::kSpace;
  return CharClass::kOther;
}

size_t piece_end(std::string_view text, size_t begin, SplitPattern pattern) {
  const Scan s{text};
  return pattern == SplitPattern::kGpt2 ? gpt2_piece(s, begin) : llama3_piece(s, begin);
}

size_t safe_split_point(std::string_view text, size_t from) {
  for (size_t i = std::max<size_t>(from, 2); i < text.size(); ++i) {
    const auto c = static_cast<uint8_t>(text[i]);
    const auto before = static_cast<uint8_t>(text[i - 2]);
    if (text[i - 1] == '\n' && before > ' ' && before < 0x7f &&
        ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
      return i;
  }
  return text.size();
}

std::vector<std::string_view> split_into_chunks(std::string_view text, size_t chunk_bytes) {
  std::vector<std::string_view> chunks;
  for (size_t at = 0; at < text.size();) {
    const size_t end =
        at + chunk_bytes >= text.size() ? text.size() : safe_split_point(text, at + chunk_bytes);
    chunks.push_back(text.substr(at, end - at));
    at = end;
  }
  return chunks;
}

}  // namespace keel::runtime
