#include "engine/onnx_info.h"

#include <limits>
#include <optional>
#include <set>
#include <string>
#include <utility>

namespace custody::engine {
namespace {

// Protobuf wire types.
constexpr uint32_t kVarint = 0;
constexpr uint32_t kFixed64 = 1;
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t kFixed32 = 5;

constexpr size_t kMaxSpecs = 100000;
constexpr size_t kMaxRank = 64;
constexpr size_t kMaxNameBytes = 4096;

Status Malformed(const std::string& what) {
  return InvalidArgument("onnx: not a valid ONNX model: " + what);
}

// One protobuf message: iterate its fields; every read is bounds-checked.
class WireReader {
 public:
  explicit WireReader(ByteSpan data) : data_(data) {}

  bool done() const { return pos_ == data_.size(); }

  // Reads the next tag. Length-delimited payloads are returned in `payload`, varints in
  // `varint`; fixed-width fields are skipped.
  Status Next(uint32_t& field, uint32_t& wire_type, uint64_t& varint, ByteSpan& payload) {
    uint64_t tag = 0;
    CUSTODY_RETURN_IF_ERROR(ReadVarint(tag));
    field = static_cast<uint32_t>(tag >> 3);
    wire_type = static_cast<uint32_t>(tag & 7);
    if (field == 0 || tag >> 3 > (uint64_t{1} << 29)) return Malformed("bad field number");
    switch (wire_type) {
      case kVarint:
        return ReadVarint(varint);
      case kFixed64:
        return Skip(8);
      case kFixed32:
        return Skip(4);
      case kLengthDelimited: {
        uint64_t len = 0;
        CUSTODY_RETURN_IF_ERROR(ReadVarint(len));
        if (len > data_.size() - pos_) {
          return Malformed("a field of " + std::to_string(len) + " bytes at offset " +
                           std::to_string(pos_) + " runs past the end (" +
                           std::to_string(data_.size() - pos_) + " bytes left; truncated?)");
        }
        payload = data_.subspan(pos_, static_cast<size_t>(len));
        pos_ += static_cast<size_t>(len);
        return OkStatus();
      }
      default:
        // 3 and 4 are deprecated groups, which ONNX never uses; 6 and 7 do not exist.
        return Malformed("unsupported wire type " + std::to_string(wire_type));
    }
  }

 private:
  Status ReadVarint(uint64_t& out) {
    out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return Malformed("truncated varint");
      uint8_t b = data_[pos_++];
      out |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return OkStatus();
    }
    return Malformed("varint longer than 10 bytes");
  }
  Status Skip(size_t n) {
    if (n > data_.size() - pos_) return Malformed("truncated fixed-width field");
    pos_ += n;
    return OkStatus();
  }

  ByteSpan data_;
  size_t pos_ = 0;
};

Status ExpectWireType(uint32_t got, uint32_t want, const char* what) {
  if (got != want) {
    return Malformed(std::string(what) + " has wire type " + std::to_string(got) + ", expected " +
                     std::to_string(want));
  }
  return OkStatus();
}

Result<std::string> ReadName(ByteSpan payload) {
  if (payload.size() > kMaxNameBytes) return Malformed("a name longer than 4096 bytes");
  return std::string(AsChars(payload));
}

std::optional<DType> FromOnnxElemType(uint64_t t) {
  switch (t) {  // onnx.TensorProto.DataType
    case 1:
      return DType::kFloat32;
    case 2:
      return DType::kUInt8;
    case 3:
      return DType::kInt8;
    case 6:
      return DType::kInt32;
    case 7:
      return DType::kInt64;
    case 9:
      return DType::kBool;
    case 10:
      return DType::kFloat16;
    case 11:
      return DType::kFloat64;
    default:
      return std::nullopt;
  }
}

// TensorShapeProto.Dimension -> dimension (-1 when symbolic or absent).
Result<int64_t> ParseDim(ByteSpan msg) {
  WireReader r(msg);
  int64_t dim = -1;
  while (!r.done()) {
    uint32_t field = 0, wt = 0;
    uint64_t v = 0;
    ByteSpan payload;
    CUSTODY_RETURN_IF_ERROR(r.Next(field, wt, v, payload));
    if (field == 1) {  // dim_value (int64)
      CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kVarint, "dim_value"));
      auto value = static_cast<int64_t>(v);
      if (value < 0) return Malformed("negative dim_value");
      dim = value;
    } else if (field == 2) {  // dim_param
      dim = -1;
    }
  }
  return dim;
}

// TypeProto -> dtype and shape (a TypeProto that is not a tensor leaves both unknown).
Status ParseType(ByteSpan msg, TensorSpec& spec) {
  WireReader r(msg);
  while (!r.done()) {
    uint32_t field = 0, wt = 0;
    uint64_t v = 0;
    ByteSpan tensor_type;
    CUSTODY_RETURN_IF_ERROR(r.Next(field, wt, v, tensor_type));
    if (field != 1) continue;  // tensor_type; sequences, maps, optionals are not supported
    CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kLengthDelimited, "tensor_type"));
    WireReader t(tensor_type);
    while (!t.done()) {
      uint32_t tf = 0, twt = 0;
      uint64_t tv = 0;
      ByteSpan shape;
      CUSTODY_RETURN_IF_ERROR(t.Next(tf, twt, tv, shape));
      if (tf == 1) {
        CUSTODY_RETURN_IF_ERROR(ExpectWireType(twt, kVarint, "elem_type"));
        spec.dtype = FromOnnxElemType(tv);
      } else if (tf == 2) {
        CUSTODY_RETURN_IF_ERROR(ExpectWireType(twt, kLengthDelimited, "shape"));
        std::vector<int64_t> dims;
        WireReader s(shape);
        while (!s.done()) {
          uint32_t sf = 0, swt = 0;
          uint64_t sv = 0;
          ByteSpan dim;
          CUSTODY_RETURN_IF_ERROR(s.Next(sf, swt, sv, dim));
          if (sf != 1) continue;
          CUSTODY_RETURN_IF_ERROR(ExpectWireType(swt, kLengthDelimited, "dim"));
          if (dims.size() >= kMaxRank) return Malformed("a shape with more than 64 dimensions");
          CUSTODY_ASSIGN_OR_RETURN(int64_t d, ParseDim(dim));
          dims.push_back(d);
        }
        spec.shape = std::move(dims);
      }
    }
  }
  return OkStatus();
}

Result<TensorSpec> ParseValueInfo(ByteSpan msg) {
  TensorSpec spec;
  WireReader r(msg);
  while (!r.done()) {
    uint32_t field = 0, wt = 0;
    uint64_t v = 0;
    ByteSpan payload;
    CUSTODY_RETURN_IF_ERROR(r.Next(field, wt, v, payload));
    if (field == 1) {
      CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kLengthDelimited, "ValueInfoProto.name"));
      CUSTODY_ASSIGN_OR_RETURN(spec.name, ReadName(payload));
    } else if (field == 2) {
      CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kLengthDelimited, "ValueInfoProto.type"));
      CUSTODY_RETURN_IF_ERROR(ParseType(payload, spec));
    }
  }
  return spec;
}

// TensorProto -> name only.
Result<std::string> ParseInitializerName(ByteSpan msg) {
  WireReader r(msg);
  std::string name;
  while (!r.done()) {
    uint32_t field = 0, wt = 0;
    uint64_t v = 0;
    ByteSpan payload;
    CUSTODY_RETURN_IF_ERROR(r.Next(field, wt, v, payload));
    if (field == 8 && wt == kLengthDelimited) {
      CUSTODY_ASSIGN_OR_RETURN(name, ReadName(payload));
    }
  }
  return name;
}

}  // namespace

Result<OnnxModelInfo> InspectOnnxModel(ByteSpan model) {
  WireReader top(model);
  std::optional<ByteSpan> graph;
  bool have_ir_version = false;
  while (!top.done()) {
    uint32_t field = 0, wt = 0;
    uint64_t v = 0;
    ByteSpan payload;
    CUSTODY_RETURN_IF_ERROR(top.Next(field, wt, v, payload));
    if (field == 1) {
      CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kVarint, "ir_version"));
      have_ir_version = true;
    } else if (field == 7) {
      CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kLengthDelimited, "graph"));
      graph = payload;  // protobuf: the last occurrence wins (merging is not supported)
    }
  }
  if (!have_ir_version) return Malformed("no ir_version field");
  if (!graph) return Malformed("no graph");

  std::vector<TensorSpec> inputs;
  OnnxModelInfo info;
  std::set<std::string> initializers;
  WireReader g(*graph);
  while (!g.done()) {
    uint32_t field = 0, wt = 0;
    uint64_t v = 0;
    ByteSpan payload;
    CUSTODY_RETURN_IF_ERROR(g.Next(field, wt, v, payload));
    if (field != 5 && field != 11 && field != 12) continue;
    CUSTODY_RETURN_IF_ERROR(ExpectWireType(wt, kLengthDelimited, "graph field"));
    if (inputs.size() + info.outputs.size() + initializers.size() >= kMaxSpecs) {
      return Malformed("more than 100000 inputs, outputs and initializers");
    }
    if (field == 5) {
      CUSTODY_ASSIGN_OR_RETURN(std::string name, ParseInitializerName(payload));
      initializers.insert(std::move(name));
    } else {
      CUSTODY_ASSIGN_OR_RETURN(TensorSpec spec, ParseValueInfo(payload));
      (field == 11 ? inputs : info.outputs).push_back(std::move(spec));
    }
  }
  for (TensorSpec& in : inputs) {
    if (initializers.count(in.name) == 0) info.inputs.push_back(std::move(in));
  }
  if (info.outputs.empty()) return Malformed("the graph has no outputs");
  return info;
}

}  // namespace custody::engine
