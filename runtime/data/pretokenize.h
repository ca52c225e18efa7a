// Pre-tokenization: the split of text into pieces that byte-level BPE then merges within, as the
// regular expressions of GPT-2 and LLaMA 3 (tiktoken's cl100k) define it, written out by hand so
// that no regex engine runs per byte. Text need not be valid UTF-8: a byte that does not start a
// valid sequence is a character of its own, neither letter, digit nor space.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace keel::runtime {

enum class SplitPattern { kGpt2, kLlama3 };

// The regular expressions, exactly as Hugging Face tokenizer.json files and tiktoken spell them.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string_view pattern_name(SplitPattern p);  // "gpt2" / "llama3"
std::string_view pattern_regex(SplitPattern p);

enum class CharClass : uint8_t { kOther, kLetter, kNumber, kSpace };

// The Unicode class of a code point: \p{L}, \p{N}, \s (the White_Space property) or none.
CharClass char_class(uint32_t code_point);

// The end of the piece that starts at text[begin] (begin < text.size()).
size_t piece_end(std::string_view text, size_t begin, SplitPattern pattern);

// A position p in text where splitting the text in two yields the same pieces as splitting it
// whole: at an ASCII letter after a lone '\n' (a longer whitespace run would end a text in one
// piece but give up its last character to the next piece inside one). Searches [from, text.size())
// and returns text.size() if there is none.
size_t safe_split_point(std::string_view text, size_t from);

// text cut at safe split points into chunks of about chunk_bytes, for threads to take.
std::vector<std::string_view> split_into_chunks(std::string_view text, size_t chunk_bytes);

}  // namespace keel::runtime
