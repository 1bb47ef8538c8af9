#include "engine/npy.h"

#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

namespace custody::engine {
namespace {

constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr size_t kPreludeV1Bytes = 10;  // magic, version, uint16 length
constexpr size_t kPreludeV2Bytes = 12;  // magic, version, uint32 length
constexpr size_t kMaxRank = 64;

Status Malformed(const std::string& what) { return InvalidArgument(".npy: " + what); }

struct DTypeCode {
  const char* descr;
  DType dtype;
};
// The descr strings SerializeNpy writes; ParseNpy also accepts the variants in ParseDescr.
constexpr DTypeCode kDTypes[] = {
    {"<f4", DType::kFloat32}, {"<f8", DType::kFloat64}, {"<f2", DType::kFloat16},
    {"<i8", DType::kInt64},   {"<i4", DType::kInt32},   {"|i1", DType::kInt8},
    {"|u1", DType::kUInt8},   {"|b1", DType::kBool},
};

Result<DType> ParseDescr(std::string_view descr) {
  if (descr.size() == 3) {
    char order = descr[0];
    std::string_view code = descr.substr(1);
    for (const DTypeCode& d : kDTypes) {
      if (code != std::string_view(d.descr).substr(1)) continue;
      bool one_byte = DTypeSize(d.dtype) == 1;
      if (order == '<' || (one_byte && (order == '|' || order == '>' || order == '='))) {
        return d.dtype;
      }
      if (order == '>') {
        return Unimplemented(".npy: big-endian data ('" + std::string(descr) +
                             "') is not supported; save it little-endian");
      }
    }
  }
  std::string shown(descr.substr(0, 40));
  return Unimplemented(".npy: dtype '" + shown +
                       "' is not supported (expected one of <f4 <f8 <f2 <i8 <i4 |i1 |u1 |b1)");
}

// A recursive-descent parser for the one dict literal numpy writes. Grammar (whitespace allowed
// between tokens):
//   dict   := '{' [ item (',' item)* [','] ] '}'
//   item   := string ':' value
//   value  := string | 'True' | 'False' | tuple
//   tuple  := '(' [ int (',' int)* [','] ] ')'     (a 1-tuple may be written "(3,)" or "(3)")
//   string := '...' | "..."  (no escapes; numpy never writes any)
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view text) : s_(text) {}

  Status Parse() {
    SkipSpace();
    if (!Consume('{')) return Error("expected '{'");
    SkipSpace();
    while (!Peek('}')) {
      std::string key;
      CUSTODY_RETURN_IF_ERROR(ParseString(key));
      SkipSpace();
      if (!Consume(':')) return Error("expected ':' after '" + key + "'");
      SkipSpace();
      if (key == "descr") {
        if (descr_) return Error("duplicate key 'descr'");
        std::string v;
        CUSTODY_RETURN_IF_ERROR(ParseString(v));
        descr_ = v;
      } else if (key == "fortran_order") {
        if (fortran_) return Error("duplicate key 'fortran_order'");
        CUSTODY_RETURN_IF_ERROR(ParseBool());
      } else if (key == "shape") {
        if (shape_) return Error("duplicate key 'shape'");
        CUSTODY_RETURN_IF_ERROR(ParseShape());
      } else {
        return Error("unexpected key '" + key.substr(0, 40) + "'");
      }
      SkipSpace();
      if (Consume(',')) {
        SkipSpace();
        continue;
      }
      if (!Peek('}')) return Error("expected ',' or '}'");
    }
    Consume('}');
    SkipSpace();
    if (pos_ != s_.size()) return Error("unexpected text after the header dict");
    if (!descr_ || !fortran_ || !shape_) {
      return Malformed("header must have the keys 'descr', 'fortran_order' and 'shape'");
    }
    return OkStatus();
  }

  const std::string& descr() const { return *descr_; }
  bool fortran_order() const { return *fortran_; }
  const std::vector<int64_t>& shape() const { return *shape_; }

 private:
  Status Error(const std::string& what) const {
    return Malformed("bad header at offset " + std::to_string(pos_) + ": " + what);
  }
  void SkipSpace() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\t' || s_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Peek(char c) const { return pos_ < s_.size() && s_[pos_] == c; }
  bool Consume(char c) {
    if (!Peek(c)) return false;
    ++pos_;
    return true;
  }
  bool ConsumeWord(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }
  Status ParseString(std::string& out) {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) {
      return Error("expected a quoted string");
    }
    char quote = s_[pos_++];
    size_t end = s_.find(quote, pos_);
    if (end == std::string_view::npos) return Error("unterminated string");
    std::string_view body = s_.substr(pos_, end - pos_);
    if (body.find('\\') != std::string_view::npos) return Error("escapes are not supported");
    out.assign(body);
    pos_ = end + 1;
    return OkStatus();
  }
  Status ParseBool() {
    if (ConsumeWord("True")) {
      fortran_ = true;
    } else if (ConsumeWord("False")) {
      fortran_ = false;
    } else {
      return Error("expected True or False for 'fortran_order'");
    }
    return OkStatus();
  }
  Status ParseShape() {
    if (!Consume('(')) return Error("expected '(' for 'shape'");
    std::vector<int64_t> dims;
    SkipSpace();
    while (!Peek(')')) {
      if (dims.size() >= kMaxRank)
        return Error("more than " + std::to_string(kMaxRank) + " dimensions");
      size_t start = pos_;
      uint64_t v = 0;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') {
        unsigned digit = static_cast<unsigned>(s_[pos_] - '0');
        if (v > (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - digit) / 10) {
          return Error("dimension too large");
        }
        v = v * 10 + digit;
        ++pos_;
      }
      if (pos_ == start) return Error("expected a non-negative integer dimension");
      // numpy writes Python 2 longs as "3L" in very old files.
      if (Peek('L')) ++pos_;
      dims.push_back(static_cast<int64_t>(v));
      SkipSpace();
      if (Consume(',')) {
        SkipSpace();
        continue;
      }
      if (!Peek(')')) return Error("expected ',' or ')' in 'shape'");
    }
    Consume(')');
    shape_ = std::move(dims);
    return OkStatus();
  }

  std::string_view s_;
  size_t pos_ = 0;
  std::optional<std::string> descr_;
  std::optional<bool> fortran_;
  std::optional<std::vector<int64_t>> shape_;
};

std::string ShapeTuple(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

}  // namespace

Result<Tensor> ParseNpy(ByteSpan file) {
  if (file.size() < kPreludeV1Bytes || std::memcmp(file.data(), kMagic, sizeof(kMagic)) != 0) {
    return Malformed("not a NumPy file (expected the magic \"\\x93NUMPY\")");
  }
  uint8_t major = file[6];
  uint8_t minor = file[7];
  size_t header_len = 0;
  size_t prelude = 0;
  if (major == 1) {
    prelude = kPreludeV1Bytes;
    header_len = static_cast<size_t>(file[8]) | (static_cast<size_t>(file[9]) << 8);
  } else if (major == 2 || major == 3) {
    if (file.size() < kPreludeV2Bytes) return Malformed("truncated in the header length");
    prelude = kPreludeV2Bytes;
    header_len = static_cast<size_t>(file[8]) | (static_cast<size_t>(file[9]) << 8) |
                 (static_cast<size_t>(file[10]) << 16) | (static_cast<size_t>(file[11]) << 24);
  } else {
    return Unimplemented(".npy: format version " + std::to_string(major) + "." +
                         std::to_string(minor) + " is not supported (expected 1.0, 2.0 or 3.0)");
  }
  if (minor != 0) {
    return Unimplemented(".npy: format version " + std::to_string(major) + "." +
                         std::to_string(minor) + " is not supported");
  }
  if (header_len > kMaxNpyHeaderBytes) {
    return Malformed("header of " + std::to_string(header_len) + " bytes exceeds the limit of " +
                     std::to_string(kMaxNpyHeaderBytes));
  }
  if (header_len > file.size() - prelude) {
    return Malformed("truncated: the header needs " + std::to_string(header_len) +
                     " bytes but the file has " + std::to_string(file.size() - prelude) +
                     " after the prelude");
  }
  std::string_view header = AsChars(file.subspan(prelude, header_len));
  // v1 and v2 headers are latin-1/ASCII; v3 is UTF-8. The keys and values we accept are all
  // ASCII, so any other byte can only appear inside a string we then reject.
  if (header.find('\0') != std::string_view::npos) return Malformed("NUL byte in the header");

  HeaderParser parser(header);
  CUSTODY_RETURN_IF_ERROR(parser.Parse());
  if (parser.fortran_order()) {
    return Unimplemented(
        ".npy: Fortran-order arrays are not supported; save with C order "
        "(numpy.ascontiguousarray)");
  }
  CUSTODY_ASSIGN_OR_RETURN(DType dtype, ParseDescr(parser.descr()));

  Tensor t;
  t.dtype = dtype;
  t.shape = parser.shape();
  Result<size_t> expected = t.ExpectedByteSize();
  if (!expected.has_value()) return Malformed(expected.error().message());
  size_t data_bytes = file.size() - prelude - header_len;
  if (data_bytes != *expected) {
    return Malformed(std::string(DTypeName(dtype)) + ShapeTuple(t.shape) + " needs " +
                     std::to_string(*expected) + " bytes of data, the file has " +
                     std::to_string(data_bytes) +
                     (data_bytes < *expected ? " (truncated)" : " (trailing bytes)"));
  }
  ByteSpan data = file.subspan(prelude + header_len);
  t.data.assign(data.begin(), data.end());
  return t;
}

Bytes SerializeNpy(const Tensor& tensor) {
  Status valid = tensor.Validate();
  if (!valid.ok()) Panic("SerializeNpy of an invalid tensor: " + valid.ToString());
  const char* descr = nullptr;
  for (const DTypeCode& d : kDTypes) {
    if (d.dtype == tensor.dtype) descr = d.descr;
  }
  if (descr == nullptr) Panic("SerializeNpy: no .npy code for this dtype");

  std::string header = std::string("{'descr': '") + descr +
                       "', 'fortran_order': False, 'shape': " + ShapeTuple(tensor.shape) + ", }";
  // Pad with spaces so that prelude + header + '\n' is a multiple of 64 (numpy's alignment).
  auto padded_len = [&](size_t prelude_bytes) {
    return (prelude_bytes + header.size() + 1 + 63) / 64 * 64 - prelude_bytes;
  };
  size_t prelude = kPreludeV1Bytes;
  size_t len = padded_len(prelude);
  if (len > 65535) {  // only for absurd ranks; version 2.0 has a 32-bit length
    prelude = kPreludeV2Bytes;
    len = padded_len(prelude);
  }
  header.append(len - header.size() - 1, ' ');
  header.push_back('\n');

  Bytes out(prelude + len + tensor.data.size());
  uint8_t* p = out.data();
  std::memcpy(p, kMagic, sizeof(kMagic));
  p += sizeof(kMagic);
  *p++ = prelude == kPreludeV1Bytes ? 1 : 2;
  *p++ = 0;
  for (size_t i = 0; i < prelude - 8; ++i) *p++ = static_cast<uint8_t>((len >> (8 * i)) & 0xff);
  std::memcpy(p, header.data(), header.size());
  p += header.size();
  if (!tensor.data.empty()) std::memcpy(p, tensor.data.data(), tensor.data.size());
  return out;
}

}  // namespace custody::engine
