// TFRecord framing, the container of TensorBoard event files: each record is its length (uint64,
// little-endian), the masked CRC-32C of those 8 bytes, the data, the masked CRC-32C of the data.
// The data is opaque here, so this needs no Protobuf.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/hash.h"  // crc32c

namespace keel::runtime {

// TFRecord stores CRCs masked, because a CRC computed over data that holds CRCs is weak.
constexpr uint32_t mask_crc32c(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

// Appends one framed record holding data to out.
void append_tfrecord(std::string& out, std::string_view data);

// The data of every record of the file at path, both CRCs of each checked. Errors name the file,
// the record (counted from 0) and the problem: truncated, bad length CRC, bad data CRC.
std::vector<std::string> read_tfrecords(const std::string& path);

}  // namespace keel::runtime
