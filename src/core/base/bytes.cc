#include "core/base/bytes.h"

namespace custody {

std::string HexEncode(ByteSpan bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

namespace {
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

Result<Bytes> HexDecode(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return InvalidArgument("hex string has odd length " + std::to_string(hex.size()));
  }
  Bytes out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = HexValue(hex[2 * i]);
    int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return InvalidArgument("hex string has a non-hex character at offset " +
                             std::to_string(hi < 0 ? 2 * i : 2 * i + 1));
    }
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

void StoreBigEndian16(uint8_t* out, uint16_t v) {
  out[0] = static_cast<uint8_t>(v >> 8);
  out[1] = static_cast<uint8_t>(v);
}
void StoreBigEndian32(uint8_t* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void StoreBigEndian64(uint8_t* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (56 - 8 * i));
}
uint16_t LoadBigEndian16(const uint8_t* in) { return static_cast<uint16_t>(in[0] << 8 | in[1]); }
uint32_t LoadBigEndian32(const uint8_t* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | in[i];
  return v;
}
uint64_t LoadBigEndian64(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = v << 8 | in[i];
  return v;
}

void AppendBytes(Bytes& out, ByteSpan bytes) { out.insert(out.end(), bytes.begin(), bytes.end()); }
void AppendBigEndian16(Bytes& out, uint16_t v) {
  uint8_t b[2];
  StoreBigEndian16(b, v);
  AppendBytes(out, b);
}
void AppendBigEndian32(Bytes& out, uint32_t v) {
  uint8_t b[4];
  StoreBigEndian32(b, v);
  AppendBytes(out, b);
}
void AppendBigEndian64(Bytes& out, uint64_t v) {
  uint8_t b[8];
  StoreBigEndian64(b, v);
  AppendBytes(out, b);
}

bool ByteReader::ReadSpan(size_t n, ByteSpan& out) {
  if (n > remaining()) {
    pos_ = data_.size();
    return false;
  }
  out = data_.subspan(pos_, n);
  pos_ += n;
  return true;
}
bool ByteReader::ReadU8(uint8_t& v) {
  ByteSpan s;
  if (!ReadSpan(1, s)) return false;
  v = s[0];
  return true;
}
bool ByteReader::ReadU16(uint16_t& v) {
  ByteSpan s;
  if (!ReadSpan(2, s)) return false;
  v = LoadBigEndian16(s.data());
  return true;
}
bool ByteReader::ReadU32(uint32_t& v) {
  ByteSpan s;
  if (!ReadSpan(4, s)) return false;
  v = LoadBigEndian32(s.data());
  return true;
}
bool ByteReader::ReadU64(uint64_t& v) {
  ByteSpan s;
  if (!ReadSpan(8, s)) return false;
  v = LoadBigEndian64(s.data());
  return true;
}

}  // namespace custody
