// Hugging Face tokenizer.json for byte-level BPE: read (GPT-2 style ByteLevel pre-tokenizer, or
// LLaMA 3 style Split + ByteLevel) and write (loadable by `tokenizers` and `transformers`).
#pragma once

#include <string>

#include "runtime/data/tokenizer.h"

namespace keel::runtime {

// Reads path; anything that is not a byte-level BPE keel can reproduce exactly (another model
// type, a normalizer, an unknown split pattern) is an error naming the file and the field.
Tokenizer read_tokenizer_json(const std::string& path);

// "bytes" (one token per byte, Tokenizer::bytes()) or the path of a tokenizer.json.
Tokenizer load_tokenizer(const std::string& spec);

// The JSON text of tokenizer (tokenizer.json's contents); with a BOS token, encoding through
// Hugging Face adds it in front as LLaMA tokenizers do.
std::string tokenizer_json(const Tokenizer& tokenizer);
void write_tokenizer_json(const Tokenizer& tokenizer, const std::string& path);

// GPT-2's reversible map of bytes to printable characters (bytes_to_unicode): the printable
// Latin-1 bytes stand for themselves, the other 68 for U+0100 onward in byte order.
uint32_t byte_code_point(uint8_t byte);
// The same character as UTF-8 (byte_char(' ') == "Ġ").
std::string byte_char(uint8_t byte);

}  // namespace keel::runtime
