#include "engine/engine.h"

#include <cstring>
#include <limits>
#include <utility>

#include "engine/builtin_module.h"
#include "engine/engine_internal.h"

namespace custody::engine {
namespace {

bool IsKnownDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
    case DType::kFloat64:
    case DType::kFloat16:
    case DType::kInt64:
    case DType::kInt32:
    case DType::kInt8:
    case DType::kUInt8:
    case DType::kBool:
      return true;
  }
  return false;
}

std::string ShapeToString(std::span<const int64_t> shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ",";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string InputLabel(size_t index, const std::string& name) {
  std::string label = "input " + std::to_string(index);
  if (!name.empty()) label += " ('" + name + "')";
  return label;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
    case DType::kInt64:
      return 8;
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
      return 2;
    case DType::kInt8:
    case DType::kUInt8:
    case DType::kBool:
      return 1;
  }
  return 0;  // not a DType value; callers treat 0 as invalid
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat64:
      return "float64";
    case DType::kFloat16:
      return "float16";
    case DType::kInt64:
      return "int64";
    case DType::kInt32:
      return "int32";
    case DType::kInt8:
      return "int8";
    case DType::kUInt8:
      return "uint8";
    case DType::kBool:
      return "bool";
  }
  return "invalid";
}

Result<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kInt64, DType::kInt32,
                  DType::kInt8, DType::kUInt8, DType::kBool}) {
    if (DTypeName(d) == name) return d;
  }
  return InvalidArgument(
      "unknown dtype '" + std::string(name) +
      "' (expected float32, float64, float16, int64, int32, int8, uint8 or bool)");
}

Result<size_t> ElementCount(std::span<const int64_t> shape) {
  size_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) {
      return InvalidArgument("dimension " + std::to_string(i) + " of shape " +
                             ShapeToString(shape) + " is negative");
    }
    auto dim = static_cast<uint64_t>(shape[i]);
    if (dim > std::numeric_limits<size_t>::max()) {
      return OutOfRange("shape " + ShapeToString(shape) + " has too many elements");
    }
    if (dim != 0 && count > std::numeric_limits<size_t>::max() / dim) {
      // Keep scanning for a negative dimension (the more useful error), then report overflow.
      for (size_t j = i + 1; j < shape.size(); ++j) {
        if (shape[j] < 0) {
          return InvalidArgument("dimension " + std::to_string(j) + " of shape " +
                                 ShapeToString(shape) + " is negative");
        }
      }
      // A zero dimension later makes the product zero after all.
      for (size_t j = i + 1; j < shape.size(); ++j) {
        if (shape[j] == 0) return size_t{0};
      }
      return OutOfRange("shape " + ShapeToString(shape) + " has too many elements");
    }
    count *= static_cast<size_t>(dim);
  }
  return count;
}

Result<size_t> ByteSize(DType dtype, std::span<const int64_t> shape) {
  size_t element = DTypeSize(dtype);
  if (element == 0) {
    return InvalidArgument("invalid dtype value " + std::to_string(static_cast<int>(dtype)));
  }
  CUSTODY_ASSIGN_OR_RETURN(size_t count, ElementCount(shape));
  if (count > std::numeric_limits<size_t>::max() / element) {
    return OutOfRange("shape " + ShapeToString(shape) + " of " + std::string(DTypeName(dtype)) +
                      " does not fit in memory");
  }
  return count * element;
}

Status Tensor::Validate() const {
  Result<size_t> expected = ExpectedByteSize();
  if (!expected.has_value()) return expected.error();
  if (*expected != data.size()) {
    return InvalidArgument("tensor '" + name + "' is " + std::string(DTypeName(dtype)) +
                           ShapeToString(shape) + ", which needs " + std::to_string(*expected) +
                           " bytes, but has " + std::to_string(data.size()));
  }
  return OkStatus();
}

Result<Tensor> Tensor::FromFloats(std::string name, std::vector<int64_t> shape,
                                  std::span<const float> values) {
  Tensor t;
  t.name = std::move(name);
  t.dtype = DType::kFloat32;
  t.shape = std::move(shape);
  CUSTODY_ASSIGN_OR_RETURN(size_t count, t.ElementCount());
  if (count != values.size()) {
    return InvalidArgument("shape " + ShapeToString(t.shape) + " has " + std::to_string(count) +
                           " elements but " + std::to_string(values.size()) + " values were given");
  }
  t.data.resize(values.size_bytes());
  if (!values.empty()) std::memcpy(t.data.data(), values.data(), values.size_bytes());
  return t;
}

Result<std::vector<float>> Tensor::ToFloats() const {
  if (dtype != DType::kFloat32) {
    return InvalidArgument("tensor '" + name + "' is " + std::string(DTypeName(dtype)) +
                           ", not float32");
  }
  CUSTODY_RETURN_IF_ERROR(Validate());
  std::vector<float> out(data.size() / sizeof(float));
  if (!out.empty()) std::memcpy(out.data(), data.data(), data.size());
  return out;
}

std::string TensorSpec::ToString() const {
  std::string out = (name.empty() ? std::string("?") : name) + ": ";
  out += dtype ? std::string(DTypeName(*dtype)) : std::string("?");
  out += shape ? ShapeToString(*shape) : std::string("[?]");
  return out;
}

Status ValidateInputs(std::span<const TensorSpec> specs, std::span<const Tensor> inputs) {
  if (!specs.empty() && specs.size() != inputs.size()) {
    std::string expected;
    for (const TensorSpec& s : specs) expected += (expected.empty() ? "" : ", ") + s.ToString();
    return InvalidArgument("the model takes " + std::to_string(specs.size()) + " input" +
                           (specs.size() == 1 ? "" : "s") + " (" + expected + "), got " +
                           std::to_string(inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& in = inputs[i];
    if (!IsKnownDType(in.dtype)) {
      return InvalidArgument(InputLabel(i, in.name) + " has an invalid dtype value " +
                             std::to_string(static_cast<int>(in.dtype)));
    }
    Status valid = in.Validate();
    if (!valid.ok()) return Status(valid.code(), InputLabel(i, in.name) + ": " + valid.message());
    if (specs.empty()) continue;
    const TensorSpec& spec = specs[i];
    if (specs.size() > 1 && !spec.name.empty() && !in.name.empty() && spec.name != in.name) {
      return InvalidArgument(InputLabel(i, in.name) + " does not match the model's input " +
                             std::to_string(i) + " ('" + spec.name +
                             "'); inputs are passed in the model's order");
    }
    if (spec.dtype && *spec.dtype != in.dtype) {
      return InvalidArgument(InputLabel(i, in.name) + " is " + std::string(DTypeName(in.dtype)) +
                             " but the model expects " + std::string(DTypeName(*spec.dtype)));
    }
    if (spec.shape) {
      const std::vector<int64_t>& want = *spec.shape;
      bool match = want.size() == in.shape.size();
      for (size_t d = 0; match && d < want.size(); ++d) {
        if (want[d] >= 0 && want[d] != in.shape[d]) match = false;
      }
      if (!match) {
        return InvalidArgument(InputLabel(i, in.name) + " has shape " + ShapeToString(in.shape) +
                               " but the model expects " + ShapeToString(want) +
                               " (-1 = any size)");
      }
    }
  }
  return OkStatus();
}

bool IsValidEngineKind(std::string_view kind) {
  if (kind.empty() || kind.size() > 32) return false;
  for (char c : kind) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::vector<std::string> BuiltinEngineKinds() {
  std::vector<std::string> kinds;
#ifdef CUSTODY_ENGINE_HAVE_TORCH
  kinds.emplace_back("torchscript");
#endif
#ifdef CUSTODY_ENGINE_HAVE_OPENCV
  kinds.emplace_back("onnx");
#endif
  return kinds;
}

Result<std::unique_ptr<Engine>> LoadEngine(std::string_view kind, ByteSpan model_bytes,
                                           const LoadOptions& options) {
  if (!IsValidEngineKind(kind)) {
    return InvalidArgument("engine kind '" + std::string(kind.substr(0, 64)) +
                           "' is not a valid name (expected [a-z0-9_-]{1,32})");
  }
  if (model_bytes.empty()) {
    return InvalidArgument("engine '" + std::string(kind) + "': the model is empty (0 bytes)");
  }
  if (options.threads < 0) {
    return InvalidArgument("LoadOptions::threads is " + std::to_string(options.threads) +
                           ", expected 0 (library default) or a positive count");
  }
  if (kind == "torchscript" || kind == "onnx") {
    return internal::LoadBuiltinEngine(kind, model_bytes, options);
  }
  return internal::LoadPluginEngine(kind, model_bytes, options);
}

namespace internal {

Result<std::vector<TensorSpec>> ReconcileSchema(
    std::string_view what, const std::vector<TensorSpec>& known,
    const std::optional<std::vector<TensorSpec>>& declared) {
  if (!declared) return known;
  const std::vector<TensorSpec>& decl = *declared;
  std::string label(what);
  if (!known.empty() && known.size() != decl.size()) {
    return InvalidArgument("the model metadata declares " + std::to_string(decl.size()) + " " +
                           label + "s but the model has " + std::to_string(known.size()));
  }
  std::vector<TensorSpec> merged = decl;
  for (size_t i = 0; i < known.size(); ++i) {
    const TensorSpec& k = known[i];
    TensorSpec& m = merged[i];
    std::string where = label + " " + std::to_string(i) + ": the model metadata declares " +
                        decl[i].ToString() + " but the model has " + k.ToString();
    if (!k.name.empty() && !m.name.empty() && k.name != m.name) return InvalidArgument(where);
    if (k.dtype && m.dtype && *k.dtype != *m.dtype) return InvalidArgument(where);
    if (k.shape && m.shape) {
      if (k.shape->size() != m.shape->size()) return InvalidArgument(where);
      for (size_t d = 0; d < k.shape->size(); ++d) {
        int64_t a = (*k.shape)[d];
        int64_t b = (*m.shape)[d];
        if (a >= 0 && b >= 0 && a != b) return InvalidArgument(where);
        if (b < 0) (*m.shape)[d] = a;  // the model pins a dimension the metadata left open
      }
    }
    if (m.name.empty()) m.name = k.name;
    if (!m.dtype) m.dtype = k.dtype;
    if (!m.shape) m.shape = k.shape;
  }
  return merged;
}

std::string FirstLines(std::string_view text, int max_lines) {
  std::string out;
  int lines = 0;
  size_t pos = 0;
  while (pos < text.size() && lines < max_lines) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    if (!out.empty()) out += " | ";
    out += line;
    ++lines;
  }
  constexpr size_t kMaxChars = 600;
  if (out.size() > kMaxChars) out = out.substr(0, kMaxChars) + "...";
  return out;
}

}  // namespace internal
}  // namespace custody::engine
