#include "agent/kserve.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "core/protocol/json.h"

namespace custody::agent::kserve {
namespace {

using engine::DType;
using engine::Tensor;
using nlohmann::json;

// Raw tensor data is little-endian on the wire and copied as it is.
static_assert(std::endian::native == std::endian::little,
              "the binary extension assumes a "
              "little-endian host");

constexpr std::string_view kSupportedDatatypes =
    "BOOL, UINT8, INT8, INT32, INT64, FP16, FP32, FP64";

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// A JSON value as found, shortened for a message.
std::string Found(const json& v) {
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  if (v.is_null()) return "null";
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  return text;
}

// "[2,3]", as in the JSON.
std::string ShapeText(std::span<const int64_t> shape) {
  return json(std::vector<int64_t>(shape.begin(), shape.end())).dump();
}

std::string JsonString(std::string_view s) {
  return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
}

// ----- element conversion --------------------------------------------------------------------

template <typename T>
void Store(uint8_t* dst, T value) {
  std::memcpy(dst, &value, sizeof(T));
}
template <typename T>
T Load(const uint8_t* src) {
  T value;
  std::memcpy(&value, src, sizeof(T));
  return value;
}

// x >= 0 with at most 53 significant bits: rounds to an integer, ties to even, without depending
// on the floating-point rounding mode.
double RoundHalfEven(double x) {
  double r = std::floor(x);
  const double diff = x - r;
  if (diff > 0.5 || (diff == 0.5 && std::fmod(r, 2.0) == 1.0)) r += 1.0;
  return r;
}

template <typename T>
Status StoreInteger(const json& v, uint8_t* dst, std::string_view datatype, const auto& where) {
  constexpr int64_t kMin = static_cast<int64_t>(std::numeric_limits<T>::min());
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<T>::max());
  auto refuse = [&] {
    return InvalidArgument(where() + ": expected an integer in [" + std::to_string(kMin) + ", " +
                           std::to_string(kMax) + "] for " + std::string(datatype) + ", got " +
                           Found(v));
  };
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > kMax) return refuse();
    Store<T>(dst, static_cast<T>(u));
    return OkStatus();
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < kMin || (i > 0 && static_cast<uint64_t>(i) > kMax)) return refuse();
    Store<T>(dst, static_cast<T>(i));
    return OkStatus();
  }
  return refuse();
}

// Converts one JSON element to `dtype` at `dst`. `where` builds the message prefix lazily.
Status StoreElement(const json& v, DType dtype, uint8_t* dst, const auto& where) {
  const std::string_view datatype = DatatypeName(dtype);
  switch (dtype) {
    case DType::kBool:
      if (!v.is_boolean()) {
        return InvalidArgument(where() + ": expected true or false for BOOL, got " + Found(v));
      }
      *dst = v.get<bool>() ? 1 : 0;
      return OkStatus();
    case DType::kUInt8:
      return StoreInteger<uint8_t>(v, dst, datatype, where);
    case DType::kInt8:
      return StoreInteger<int8_t>(v, dst, datatype, where);
    case DType::kInt32:
      return StoreInteger<int32_t>(v, dst, datatype, where);
    case DType::kInt64:
      return StoreInteger<int64_t>(v, dst, datatype, where);
    case DType::kFloat16:
    case DType::kFloat32:
    case DType::kFloat64:
      break;
  }
  if (!v.is_number()) {
    return InvalidArgument(where() + ": expected a number for " + std::string(datatype) + ", got " +
                           Found(v));
  }
  const double d = v.get<double>();
  auto out_of_range = [&] {
    return InvalidArgument(where() + ": " + Found(v) + " is outside the range of " +
                           std::string(datatype));
  };
  if (!std::isfinite(d)) return out_of_range();
  if (dtype == DType::kFloat64) {
    Store<double>(dst, d);
  } else if (dtype == DType::kFloat32) {
    // Beyond FLT_MAX plus half an ulp the value would round to infinity: refused. Between the
    // two it rounds to FLT_MAX, done by hand (the cast is undefined outside the float range).
    constexpr double kRoundsToInfinity = 0x1.ffffffp127;
    if (std::fabs(d) >= kRoundsToInfinity) return out_of_range();
    const float f = std::fabs(d) > FLT_MAX ? (d > 0 ? FLT_MAX : -FLT_MAX) : static_cast<float>(d);
    Store<float>(dst, f);
  } else {
    const std::optional<uint16_t> h = HalfFromDouble(d);
    if (!h) return out_of_range();
    Store<uint16_t>(dst, *h);
  }
  return OkStatus();
}

// ----- request parsing ---------------------------------------------------------------------

Result<size_t> ParseHeaderLength(std::string_view text, size_t body_bytes) {
  auto refuse = [&](std::string_view why) {
    return InvalidArgument(std::string(kInferenceHeaderContentLength) + ": " + std::string(why));
  };
  if (text.empty() || text.size() > 20) {
    return refuse("expected a decimal byte count, got '" + std::string(text.substr(0, 24)) + "'");
  }
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return refuse("expected a decimal byte count, got '" + std::string(text) + "'");
  }
  if (n > body_bytes) {
    return refuse("is " + std::to_string(n) + ", more than the " + std::to_string(body_bytes) +
                  "-byte body");
  }
  return static_cast<size_t>(n);
}

// The raw JSON value of a field that JsonObject has already shown to be present.
const json& Raw(const json& object, std::string_view key) { return *object.find(key); }

// The "inputs" or "outputs" array (present) of a request or response (`body`): more than
// max_tensors entries is a limit, not a malformed body.
Result<std::vector<protocol::JsonObject>> TensorList(const protocol::JsonObject& root,
                                                     const json& doc, std::string_view key,
                                                     std::string_view body,
                                                     const KserveLimits& limits) {
  const json& raw = Raw(doc, key);
  if (raw.is_array() && raw.size() > limits.max_tensors) {
    return ResourceExhausted("the " + std::string(body) + " has " + std::to_string(raw.size()) +
                             " " + std::string(key) + ", more than the " +
                             std::to_string(limits.max_tensors) + " allowed");
  }
  return root.Objects(key, limits.max_tensors);
}

// Request-level parameters: only binary_data_output is implemented.
Result<bool> ParseRequestParameters(const protocol::JsonObject& root) {
  CUSTODY_ASSIGN_OR_RETURN(std::optional<protocol::JsonObject> params,
                           root.OptionalObject("parameters"));
  if (!params) return false;
  CUSTODY_RETURN_IF_ERROR(params->RejectUnknown({"binary_data_output"}));
  if (!params->Has("binary_data_output")) return false;
  return params->Bool("binary_data_output");
}

// Where the tensors of a body are, and what messages call them.
struct TensorListKind {
  std::string_view key;   // "inputs"
  std::string_view kind;  // "input"
  std::string_view body;  // "request"
};
constexpr TensorListKind kRequestInputs{"inputs", "input", "request"};
constexpr TensorListKind kResponseOutputs{"outputs", "output", "response"};

// One tensor object of "inputs" (request) or "outputs" (response), before its data is read.
struct TensorHeader {
  std::string name;
  std::string what;  // "input 'x'", for messages
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  size_t elements = 0;
  size_t bytes = 0;
  std::optional<uint64_t> binary_size;
};

Result<std::vector<int64_t>> ParseShape(const json& object, const protocol::JsonObject& input,
                                        const std::string& what, const KserveLimits& limits) {
  if (!input.Has("shape")) return input.FieldError("shape", "missing");
  const json& shape = Raw(object, "shape");
  if (!shape.is_array()) {
    return InvalidArgument(what + ": 'shape' must be an array of dimensions, got " + Found(shape));
  }
  if (shape.size() > limits.max_dims) {
    return ResourceExhausted(what + ": shape has " + std::to_string(shape.size()) +
                             " dimensions, more than the " + std::to_string(limits.max_dims) +
                             " allowed");
  }
  std::vector<int64_t> dims;
  dims.reserve(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    const json& d = shape[i];
    if (d.is_number_unsigned() && d.get<uint64_t>() <= uint64_t{INT64_MAX}) {
      dims.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    } else if (d.is_number_integer() && !d.is_number_unsigned() && d.get<int64_t>() >= 0) {
      dims.push_back(d.get<int64_t>());
    } else {
      return InvalidArgument(what + ": shape[" + std::to_string(i) +
                             "] must be a non-negative integer, got " + Found(d));
    }
  }
  return dims;
}

Result<TensorHeader> ParseTensorHeader(const protocol::JsonObject& input, const json& object,
                                       std::string_view kind, const KserveLimits& limits) {
  CUSTODY_RETURN_IF_ERROR(input.RejectUnknown({"name", "shape", "datatype", "parameters", "data"}));
  TensorHeader h;
  CUSTODY_ASSIGN_OR_RETURN(h.name, input.String("name", kMaxTensorNameBytes));
  if (h.name.empty()) return input.FieldError("name", "must not be empty");
  h.what = std::string(kind) + " " + Quoted(h.name);
  const std::string& what = h.what;
  CUSTODY_ASSIGN_OR_RETURN(const std::string datatype, input.String("datatype", 32));
  auto dtype = ParseDatatype(datatype);
  if (!dtype) return dtype.error().WithContext(what);
  h.dtype = *dtype;
  CUSTODY_ASSIGN_OR_RETURN(h.shape, ParseShape(object, input, what, limits));
  auto elements = engine::ElementCount(h.shape);
  if (!elements) {
    return InvalidArgument(what + ": shape " + ShapeText(h.shape) +
                           " has more elements than a size_t can count");
  }
  h.elements = *elements;
  if (h.elements > limits.max_tensor_elements) {
    return ResourceExhausted(what + ": shape " + ShapeText(h.shape) + " has " +
                             std::to_string(h.elements) + " elements, more than the " +
                             std::to_string(limits.max_tensor_elements) + " allowed per tensor");
  }
  auto bytes = engine::ByteSize(h.dtype, h.shape);
  if (!bytes) return InvalidArgument(what + ": shape " + ShapeText(h.shape) + " is too large");
  h.bytes = *bytes;

  CUSTODY_ASSIGN_OR_RETURN(std::optional<protocol::JsonObject> params,
                           input.OptionalObject("parameters"));
  if (params) {
    CUSTODY_RETURN_IF_ERROR(params->RejectUnknown({"binary_data_size"}));
    CUSTODY_ASSIGN_OR_RETURN(h.binary_size, params->OptionalUint("binary_data_size"));
  }
  const bool has_data = input.Has("data");
  if (h.binary_size && has_data) {
    return InvalidArgument(what +
                           ": has both 'data' and parameters.binary_data_size; expected one");
  }
  if (!h.binary_size && !has_data) {
    return InvalidArgument(what + ": missing 'data' (or parameters.binary_data_size)");
  }
  if (h.binary_size && *h.binary_size != h.bytes) {
    return InvalidArgument(what + ": binary_data_size is " + std::to_string(*h.binary_size) +
                           ", expected " + std::to_string(h.bytes) + " (" +
                           std::string(DatatypeName(h.dtype)) + " " + ShapeText(h.shape) + ")");
  }
  return h;
}

// Checks that nested `data` follows the shape exactly from dimension `dim` on.
Status CheckNested(const json& node, const TensorHeader& h, size_t dim, const std::string& where,
                   const KserveLimits& limits) {
  if (dim == h.shape.size()) {
    if (node.is_array()) {
      return InvalidArgument(h.what + ": " + where + " is an array, but shape " +
                             ShapeText(h.shape) + " ends here; expected a value");
    }
    return OkStatus();
  }
  if (dim + 1 > limits.max_data_depth) {
    return ResourceExhausted(h.what + ": data nests deeper than the " +
                             std::to_string(limits.max_data_depth) + " levels allowed");
  }
  if (!node.is_array() || node.size() != static_cast<size_t>(h.shape[dim])) {
    return InvalidArgument(
        h.what + ": " + where + " must be an array of " + std::to_string(h.shape[dim]) +
        " (dimension " + std::to_string(dim) + " of shape " + ShapeText(h.shape) + "), got " +
        (node.is_array() ? "one of " + std::to_string(node.size()) : Found(node)));
  }
  for (size_t i = 0; i < node.size(); ++i) {
    CUSTODY_RETURN_IF_ERROR(
        CheckNested(node[i], h, dim + 1, where + "[" + std::to_string(i) + "]", limits));
  }
  return OkStatus();
}

// Stores the leaves of `node` in row-major order (structure already checked).
Status StoreLeaves(const json& node, const TensorHeader& h, Tensor& t, size_t& next) {
  if (node.is_array()) {
    for (const json& child : node) CUSTODY_RETURN_IF_ERROR(StoreLeaves(child, h, t, next));
    return OkStatus();
  }
  const size_t index = next++;
  auto where = [&] { return h.what + ": data element " + std::to_string(index); };
  return StoreElement(node, h.dtype, t.data.data() + index * DTypeSize(h.dtype), where);
}

Status ReadJsonData(const json& data, const TensorHeader& h, const KserveLimits& limits,
                    Tensor& t) {
  const std::string& what = h.what;
  if (!data.is_array()) {
    return InvalidArgument(what + ": 'data' must be an array, got " + Found(data));
  }
  bool flat = true;
  for (const json& item : data) flat = flat && !item.is_array();
  if (flat) {
    if (data.size() != h.elements) {
      return InvalidArgument(what + ": 'data' has " + std::to_string(data.size()) +
                             " elements, shape " + ShapeText(h.shape) + " needs " +
                             std::to_string(h.elements));
    }
  } else {
    CUSTODY_RETURN_IF_ERROR(CheckNested(data, h, 0, "data", limits));
  }
  // Only now, with as many elements present as the shape says, is the buffer allocated.
  t.data.resize(h.bytes);
  size_t next = 0;
  return StoreLeaves(data, h, t, next);
}

Status CheckBoolBytes(const Tensor& t, std::string_view what) {
  for (size_t i = 0; i < t.data.size(); ++i) {
    if (t.data[i] > 1) {
      return InvalidArgument(std::string(what) + ": BOOL element " + std::to_string(i) +
                             " is byte " + std::to_string(t.data[i]) + ", expected 0 or 1");
    }
  }
  return OkStatus();
}

Result<std::vector<RequestedOutput>> ParseOutputs(const protocol::JsonObject& root, const json& doc,
                                                  const KserveLimits& limits) {
  std::vector<RequestedOutput> out;
  if (!root.Has("outputs")) return out;
  CUSTODY_ASSIGN_OR_RETURN(std::vector<protocol::JsonObject> items,
                           TensorList(root, doc, "outputs", "request", limits));
  std::set<std::string> seen;
  for (const protocol::JsonObject& item : items) {
    CUSTODY_RETURN_IF_ERROR(item.RejectUnknown({"name", "parameters"}));
    RequestedOutput o;
    CUSTODY_ASSIGN_OR_RETURN(o.name, item.String("name", kMaxTensorNameBytes));
    if (o.name.empty()) return item.FieldError("name", "must not be empty");
    if (!seen.insert(o.name).second) {
      return InvalidArgument("output " + Quoted(o.name) + " is requested twice");
    }
    CUSTODY_ASSIGN_OR_RETURN(std::optional<protocol::JsonObject> params,
                             item.OptionalObject("parameters"));
    if (params) {
      CUSTODY_RETURN_IF_ERROR(params->RejectUnknown({"binary_data"}));
      if (params->Has("binary_data")) {
        CUSTODY_ASSIGN_OR_RETURN(o.binary_data, params->Bool("binary_data"));
      }
    }
    out.push_back(std::move(o));
  }
  return out;
}

// A body split by its Inference-Header-Content-Length: the JSON document and the binary part
// (a view into the body).
struct SplitBody {
  json doc;
  std::string_view binary;
};

// Checks the body's size, splits it and parses the JSON part. `body_kind`: "request".
Result<SplitBody> ParseBody(std::string_view body,
                            std::optional<std::string_view> header_content_length,
                            std::string_view body_kind, const KserveLimits& limits) {
  if (body.size() > limits.max_body_bytes) {
    return ResourceExhausted("infer " + std::string(body_kind) + " body is " +
                             std::to_string(body.size()) + " bytes, more than the " +
                             std::to_string(limits.max_body_bytes) + " allowed");
  }
  size_t json_bytes = body.size();
  if (header_content_length) {
    CUSTODY_ASSIGN_OR_RETURN(json_bytes, ParseHeaderLength(*header_content_length, body.size()));
  }
  SplitBody split;
  split.binary = body.substr(json_bytes);
  CUSTODY_ASSIGN_OR_RETURN(split.doc,
                           protocol::ParseJsonObject(body.substr(0, json_bytes), body.size(),
                                                     "infer " + std::string(body_kind)));
  return split;
}

// The optional "id" of a request or response; "" when absent.
Result<std::string> ParseId(const protocol::JsonObject& root) {
  CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> id,
                           root.OptionalString("id", kMaxRequestIdBytes));
  return id.value_or("");
}

// Reads the tensors of a request's "inputs" or a response's "outputs" (the field must be
// present), each from its JSON data or from the binary part, in order. The binary part must be
// used up exactly. `has_header`: the body came with Inference-Header-Content-Length.
Result<std::vector<Tensor>> ParseTensors(const protocol::JsonObject& root, const SplitBody& split,
                                         const TensorListKind& list, bool has_header,
                                         const KserveLimits& limits) {
  if (!root.Has(list.key)) return root.FieldError(list.key, "missing");
  const json& raw_items = Raw(split.doc, list.key);
  CUSTODY_ASSIGN_OR_RETURN(std::vector<protocol::JsonObject> items,
                           TensorList(root, split.doc, list.key, list.body, limits));
  std::vector<Tensor> tensors;
  tensors.reserve(items.size());
  std::set<std::string> names;
  size_t offset = 0;  // into split.binary
  for (size_t i = 0; i < items.size(); ++i) {
    const json& object = raw_items[i];
    CUSTODY_ASSIGN_OR_RETURN(TensorHeader h,
                             ParseTensorHeader(items[i], object, list.kind, limits));
    const std::string& what = h.what;
    if (!names.insert(h.name).second) {
      return InvalidArgument(what + " appears twice; " + std::string(list.kind) +
                             " names must be unique");
    }
    Tensor t;
    t.name = h.name;
    t.dtype = h.dtype;
    t.shape = h.shape;
    if (h.binary_size) {
      if (!has_header) {
        return InvalidArgument(what + ": binary_data_size given, but the " +
                               std::string(list.body) + " has no " +
                               std::string(kInferenceHeaderContentLength) + " header");
      }
      if (h.bytes > split.binary.size() - offset) {
        return InvalidArgument("binary data truncated: " + what + " needs " +
                               std::to_string(h.bytes) + " bytes at offset " +
                               std::to_string(offset) + ", the binary part has " +
                               std::to_string(split.binary.size() - offset) + " left");
      }
      const auto* start = reinterpret_cast<const uint8_t*>(split.binary.data()) + offset;
      t.data.assign(start, start + h.bytes);
      offset += h.bytes;
      if (t.dtype == DType::kBool) CUSTODY_RETURN_IF_ERROR(CheckBoolBytes(t, what));
    } else {
      CUSTODY_RETURN_IF_ERROR(ReadJsonData(Raw(object, "data"), h, limits, t));
    }
    tensors.push_back(std::move(t));
  }
  if (offset != split.binary.size()) {
    return InvalidArgument("the binary part is " + std::to_string(split.binary.size()) +
                           " bytes, but the " + std::string(list.key) +
                           "' binary_data_size add up to " + std::to_string(offset));
  }
  return tensors;
}

// ----- encoding ----------------------------------------------------------------------------

void AppendNumber(std::string& out, auto value) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  (void)ec;  // 64 bytes hold any shortest double
  out.append(buf, end);
}

// A float as JSON: shortest round-trip text, always with a fraction or exponent so that -0.0
// and 3.0 read back as floating-point values.
template <typename F>
void AppendFloat(std::string& out, F value) {
  const size_t start = out.size();
  AppendNumber(out, value);
  if (out.find_first_of(".e", start) == std::string::npos) out += ".0";
}

Status AppendJsonData(std::string& out, const Tensor& t, std::string_view what) {
  const size_t n = t.data.size() / DTypeSize(t.dtype);
  const uint8_t* p = t.data.data();
  out += "[";
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out += ",";
    const uint8_t* e = p + i * DTypeSize(t.dtype);
    double fp = 0;
    switch (t.dtype) {
      case DType::kBool:
        out += *e != 0 ? "true" : "false";
        continue;
      case DType::kUInt8:
        AppendNumber(out, unsigned{*e});
        continue;
      case DType::kInt8:
        AppendNumber(out, int{Load<int8_t>(e)});
        continue;
      case DType::kInt32:
        AppendNumber(out, Load<int32_t>(e));
        continue;
      case DType::kInt64:
        AppendNumber(out, Load<int64_t>(e));
        continue;
      case DType::kFloat16:
        fp = HalfToDouble(Load<uint16_t>(e));
        break;
      case DType::kFloat32:
        fp = Load<float>(e);
        break;
      case DType::kFloat64:
        fp = Load<double>(e);
        break;
    }
    if (!std::isfinite(fp)) {
      return InvalidArgument(std::string(what) + ": element " + std::to_string(i) + " is " +
                             (std::isnan(fp) ? "NaN" : "infinite") +
                             ", which JSON cannot carry; request it with binary_data");
    }
    if (t.dtype == DType::kFloat64) {
      AppendFloat(out, fp);
    } else {
      AppendFloat(out, static_cast<float>(fp));  // exact for FP16 and FP32
    }
  }
  out += "]";
  return OkStatus();
}

// Appends one tensor object of a request or response. Binary tensors get binary_data_size and
// their bytes are appended to `binary`.
Status AppendTensor(std::string& out, std::string& binary, const Tensor& t, bool as_binary,
                    std::string_view kind) {
  const std::string what = std::string(kind) + " " + Quoted(t.name);
  if (Status s = t.Validate(); !s.ok()) return InvalidArgument(what + ": " + s.message());
  out += "{\"name\":" + JsonString(t.name) + ",\"datatype\":\"" +
         std::string(DatatypeName(t.dtype)) + "\",\"shape\":" + ShapeText(t.shape);
  if (as_binary) {
    out += ",\"parameters\":{\"binary_data_size\":" + std::to_string(t.data.size()) + "}}";
    binary.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
    return OkStatus();
  }
  out += ",\"data\":";
  CUSTODY_RETURN_IF_ERROR(AppendJsonData(out, t, what));
  out += "}";
  return OkStatus();
}

EncodedBody Finish(std::string json_text, std::string binary, bool any_binary) {
  EncodedBody body;
  if (any_binary) body.json_bytes = json_text.size();
  body.body = std::move(json_text);
  body.body += binary;
  return body;
}

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

bool IsModelName(std::string_view s) {
  return !s.empty() && s.size() <= kMaxModelNameBytes && s != "." && s != ".." &&
         std::all_of(s.begin(), s.end(), IsNameChar);
}

}  // namespace

// ----- public ------------------------------------------------------------------------------

std::optional<uint16_t> HalfFromDouble(double value) {
  if (!std::isfinite(value)) return std::nullopt;
  const uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const double a = std::fabs(value);
  // 65504 is the largest half; from 65520 (half an ulp above it) the value rounds to infinity.
  if (a >= 65520.0) return std::nullopt;
  if (a < 0x1p-14) {
    // Subnormal (or zero): units of 2^-24. A carry to 1024 is exactly the smallest normal.
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(RoundHalfEven(a * 0x1p24)));
  }
  int e = 0;
  const double f = std::frexp(a, &e);                          // a = f * 2^e, f in [0.5, 1)
  const auto m = static_cast<int>(RoundHalfEven(f * 2048.0));  // 1024..2048
  // A mantissa that rounds up to 2048 carries into the exponent by plain addition.
  const int bits = ((e - 1 + 15) << 10) + m - 1024;
  return static_cast<uint16_t>(sign | bits);
}

double HalfToDouble(uint16_t half) {
  const double sign = (half & 0x8000) ? -1.0 : 1.0;
  const int exponent = (half >> 10) & 0x1f;
  const int mantissa = half & 0x3ff;
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  if (exponent == 31) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

std::string_view DatatypeName(DType dtype) {
  switch (dtype) {
    case DType::kBool:
      return "BOOL";
    case DType::kUInt8:
      return "UINT8";
    case DType::kInt8:
      return "INT8";
    case DType::kInt32:
      return "INT32";
    case DType::kInt64:
      return "INT64";
    case DType::kFloat16:
      return "FP16";
    case DType::kFloat32:
      return "FP32";
    case DType::kFloat64:
      return "FP64";
  }
  Panic("DatatypeName: unknown DType");
}

Result<DType> ParseDatatype(std::string_view datatype) {
  for (DType d : {DType::kBool, DType::kUInt8, DType::kInt8, DType::kInt32, DType::kInt64,
                  DType::kFloat16, DType::kFloat32, DType::kFloat64}) {
    if (datatype == DatatypeName(d)) return d;
  }
  return InvalidArgument("datatype '" + std::string(datatype.substr(0, 32)) +
                         "' is not supported; expected one of " + std::string(kSupportedDatatypes));
}

Result<InferRequest> ParseInferRequest(std::string_view body,
                                       std::optional<std::string_view> header_content_length,
                                       const KserveLimits& limits) {
  CUSTODY_ASSIGN_OR_RETURN(const SplitBody split,
                           ParseBody(body, header_content_length, "request", limits));
  const protocol::JsonObject root(split.doc, "");
  CUSTODY_RETURN_IF_ERROR(root.RejectUnknown({"id", "parameters", "inputs", "outputs"}));

  InferRequest request;
  CUSTODY_ASSIGN_OR_RETURN(request.id, ParseId(root));
  CUSTODY_ASSIGN_OR_RETURN(request.binary_data_output, ParseRequestParameters(root));
  CUSTODY_ASSIGN_OR_RETURN(request.inputs, ParseTensors(root, split, kRequestInputs,
                                                        header_content_length.has_value(), limits));
  if (request.inputs.empty()) return root.FieldError("inputs", "expected at least one input");
  CUSTODY_ASSIGN_OR_RETURN(request.outputs, ParseOutputs(root, split.doc, limits));
  return request;
}

Result<InferResponse> ParseInferResponse(std::string_view body,
                                         std::optional<std::string_view> header_content_length,
                                         const KserveLimits& limits) {
  CUSTODY_ASSIGN_OR_RETURN(const SplitBody split,
                           ParseBody(body, header_content_length, "response", limits));
  const protocol::JsonObject root(split.doc, "");
  CUSTODY_RETURN_IF_ERROR(root.RejectUnknown({"model_name", "model_version", "id", "outputs"}));

  InferResponse response;
  CUSTODY_ASSIGN_OR_RETURN(response.model_name, root.String("model_name", kMaxModelNameBytes));
  if (response.model_name.empty()) return root.FieldError("model_name", "must not be empty");
  CUSTODY_ASSIGN_OR_RETURN(std::optional<std::string> version,
                           root.OptionalString("model_version", kMaxModelNameBytes));
  response.model_version = version.value_or("");
  CUSTODY_ASSIGN_OR_RETURN(response.id, ParseId(root));
  CUSTODY_ASSIGN_OR_RETURN(
      response.outputs,
      ParseTensors(root, split, kResponseOutputs, header_content_length.has_value(), limits));
  return response;
}

Result<EncodedBody> EncodeInferResponse(const InferRequest& request, std::string_view model_name,
                                        std::string_view model_version,
                                        std::span<const Tensor> outputs) {
  std::vector<std::pair<const Tensor*, bool>> selected;  // tensor, as binary
  if (request.outputs.empty()) {
    for (const Tensor& t : outputs) selected.emplace_back(&t, request.binary_data_output);
  } else {
    for (const RequestedOutput& r : request.outputs) {
      const Tensor* found = nullptr;
      for (const Tensor& t : outputs) {
        if (t.name == r.name) found = &t;
      }
      if (found == nullptr) {
        std::string have;
        for (const Tensor& t : outputs) have += (have.empty() ? "" : ", ") + Quoted(t.name);
        return InvalidArgument("requested output " + Quoted(r.name) +
                               " is not an output of the model (outputs: " + have + ")");
      }
      selected.emplace_back(found, r.binary_data.value_or(request.binary_data_output));
    }
  }
  std::string out = "{\"model_name\":" + JsonString(model_name);
  if (!model_version.empty()) out += ",\"model_version\":" + JsonString(model_version);
  if (!request.id.empty()) out += ",\"id\":" + JsonString(request.id);
  out += ",\"outputs\":[";
  std::string binary;
  bool any_binary = false;
  for (size_t i = 0; i < selected.size(); ++i) {
    if (i > 0) out += ",";
    CUSTODY_RETURN_IF_ERROR(
        AppendTensor(out, binary, *selected[i].first, selected[i].second, "output"));
    any_binary = any_binary || selected[i].second;
  }
  out += "]}";
  return Finish(std::move(out), std::move(binary), any_binary);
}

Result<EncodedBody> EncodeInferRequest(const InferRequest& request, bool binary_inputs) {
  std::string out = "{";
  if (!request.id.empty()) out += "\"id\":" + JsonString(request.id) + ",";
  if (request.binary_data_output) out += "\"parameters\":{\"binary_data_output\":true},";
  out += "\"inputs\":[";
  std::string binary;
  for (size_t i = 0; i < request.inputs.size(); ++i) {
    if (i > 0) out += ",";
    CUSTODY_RETURN_IF_ERROR(AppendTensor(out, binary, request.inputs[i], binary_inputs, "input"));
  }
  out += "]";
  if (!request.outputs.empty()) {
    out += ",\"outputs\":[";
    for (size_t i = 0; i < request.outputs.size(); ++i) {
      const RequestedOutput& o = request.outputs[i];
      out += (i > 0 ? ",{\"name\":" : "{\"name\":") + JsonString(o.name);
      if (o.binary_data) {
        out += std::string(",\"parameters\":{\"binary_data\":") +
               (*o.binary_data ? "true" : "false") + "}";
      }
      out += "}";
    }
    out += "]";
  }
  out += "}";
  return Finish(std::move(out), std::move(binary), binary_inputs);
}

Result<std::string> EncodeModelMetadata(const ModelMetadata& metadata) {
  if (!IsModelName(metadata.name)) {
    return InvalidArgument("model name " + Quoted(metadata.name) + " is not 1.." +
                           std::to_string(kMaxModelNameBytes) + " characters of [A-Za-z0-9_.-]");
  }
  json doc = {
      {"name", metadata.name}, {"versions", metadata.versions}, {"platform", metadata.platform}};
  for (const auto& [key, specs] :
       {std::pair{"inputs", &metadata.inputs}, std::pair{"outputs", &metadata.outputs}}) {
    json list = json::array();
    for (const engine::TensorSpec& spec : *specs) {
      json entry = {{"name", spec.name}};
      if (spec.dtype) entry["datatype"] = DatatypeName(*spec.dtype);
      if (spec.shape) {
        for (int64_t d : *spec.shape) {
          if (d < -1) {
            return InvalidArgument("tensor " + Quoted(spec.name) + ": dimension " +
                                   std::to_string(d) + " in the spec; expected -1 or >= 0");
          }
        }
        entry["shape"] = *spec.shape;
      }
      list.push_back(std::move(entry));
    }
    doc[key] = std::move(list);
  }
  return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string EncodeErrorBody(const Status& status) {
  return json{{"error", status.message()}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string ErrorMessageFromBody(std::string_view body) {
  constexpr size_t kMaxErrorBodyBytes = 1 << 20;
  if (body.size() <= kMaxErrorBodyBytes) {
    Result<json> doc = protocol::ParseJsonObject(body, kMaxErrorBodyBytes, "error body");
    if (doc) {
      auto error = doc->find("error");
      if (error != doc->end() && error->is_string()) return error->get<std::string>();
    }
  }
  constexpr std::string_view kSpace = " \t\r\n";
  const size_t first = body.find_first_not_of(kSpace);
  if (first == std::string_view::npos) return "";
  body = body.substr(first, body.find_last_not_of(kSpace) - first + 1);
  if (body.size() <= kMaxRawErrorBytes) return std::string(body);
  return std::string(body.substr(0, kMaxRawErrorBytes)) + "...";
}

Result<ModelRoute> ParseModelRoute(std::string_view path) {
  constexpr std::string_view kPrefix = "/v2/models/";
  auto not_found = [&] {
    return NotFound("no route " + Quoted(path.substr(0, 200)) +
                    "; expected /v2/models/{name}[/versions/{v}][/ready|/infer]");
  };
  if (!path.starts_with(kPrefix)) return not_found();
  std::vector<std::string_view> parts;
  std::string_view rest = path.substr(kPrefix.size());
  while (parts.size() <= 4) {
    const size_t slash = rest.find('/');
    parts.push_back(rest.substr(0, slash));
    if (slash == std::string_view::npos) break;
    rest = rest.substr(slash + 1);
  }
  ModelRoute route;
  size_t at = 0;
  if (parts.size() > 4 || !IsModelName(parts[at])) return not_found();
  route.model = parts[at++];
  if (at + 1 < parts.size() && parts[at] == "versions") {
    if (!IsModelName(parts[at + 1])) return not_found();
    route.version = parts[at + 1];
    at += 2;
  }
  if (at + 1 == parts.size()) {
    if (parts[at] == "infer") {
      route.kind = ModelRoute::Kind::kInfer;
    } else if (parts[at] == "ready") {
      route.kind = ModelRoute::Kind::kReady;
    } else {
      return not_found();
    }
    ++at;
  }
  if (at != parts.size()) return not_found();
  return route;
}

}  // namespace custody::agent::kserve
