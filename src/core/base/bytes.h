// Byte containers and the small encoding helpers every wire format in Custody uses.
//
// Public (non-secret) bytes are std::vector<uint8_t>; secret bytes live in SecretBuffer
// (secret_buffer.h). All multi-byte integers on disk and on the wire are big-endian.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"

namespace custody {

using Bytes = std::vector<uint8_t>;
using ByteSpan = std::span<const uint8_t>;
using MutableByteSpan = std::span<uint8_t>;

inline ByteSpan AsBytes(std::string_view s) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
inline std::string_view AsChars(ByteSpan b) {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

// ASCII case-insensitive equality (header names, host names); other bytes compare exactly.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// Lower-case hex, no separators.
std::string HexEncode(ByteSpan bytes);
// Accepts upper or lower case; fails on odd length or a non-hex character.
Result<Bytes> HexDecode(std::string_view hex);

// Standard base64 (RFC 4648 §4) with padding. Decoding is strict: no whitespace, correct
// padding, no non-zero bits left over; anything else is kInvalidArgument.
std::string Base64Encode(ByteSpan bytes);
Result<Bytes> Base64Decode(std::string_view text);

void StoreBigEndian16(uint8_t* out, uint16_t v);
void StoreBigEndian32(uint8_t* out, uint32_t v);
void StoreBigEndian64(uint8_t* out, uint64_t v);
uint16_t LoadBigEndian16(const uint8_t* in);
uint32_t LoadBigEndian32(const uint8_t* in);
uint64_t LoadBigEndian64(const uint8_t* in);

// Appends to a growing byte vector (used by writers of the binary formats).
void AppendBytes(Bytes& out, ByteSpan bytes);
void AppendBigEndian16(Bytes& out, uint16_t v);
void AppendBigEndian32(Bytes& out, uint32_t v);
void AppendBigEndian64(Bytes& out, uint64_t v);

// Reads fixed-size fields from untrusted bytes without ever reading past the end. Every read
// returns false (and leaves the reader failed) instead of overrunning.
class ByteReader {
 public:
  explicit ByteReader(ByteSpan data) : data_(data) {}
  bool ReadU8(uint8_t& v);
  bool ReadU16(uint16_t& v);
  bool ReadU32(uint32_t& v);
  bool ReadU64(uint64_t& v);
  bool ReadSpan(size_t n, ByteSpan& out);
  size_t remaining() const { return data_.size() - pos_; }
  size_t position() const { return pos_; }

 private:
  ByteSpan data_;
  size_t pos_ = 0;
};

}  // namespace custody
