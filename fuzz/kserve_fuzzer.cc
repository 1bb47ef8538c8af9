// libFuzzer target for the agent's inference API codec (src/agent/kserve.h): the request bodies
// any local application can send to the agent.
//
// Each input is the Inference-Header-Content-Length value, a newline, then the body; a first line
// of "-" means the header is absent. Parsed under small limits so that the limit paths are
// reached too.
// Properties beyond "no crash, no sanitizer report": what is accepted is within the limits and
// holds exactly the bytes its dtype and shape say (BOOL bytes 0 or 1, names unique); encoding it
// again as a binary request and parsing that gives the same request; encoding it as a JSON
// request does the same unless a floating-point value is NaN or infinite (JSON cannot carry
// those, and the encoder must say so rather than write them); the response encoder, given the
// inputs as outputs, writes JSON that parses, with the binary part where it says.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "agent/kserve.h"

namespace {

using namespace custody;
using namespace custody::agent::kserve;
using engine::DType;
using engine::Tensor;

KserveLimits SmallLimits() {
  KserveLimits limits;
  limits.max_body_bytes = 1 << 20;
  limits.max_tensor_elements = 4096;
  limits.max_tensors = 8;
  limits.max_dims = 8;
  limits.max_data_depth = 6;
  return limits;
}

bool HasNonFinite(const Tensor& t) {
  const size_t n = t.data.size() / engine::DTypeSize(t.dtype);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* e = t.data.data() + i * engine::DTypeSize(t.dtype);
    double v = 0;
    if (t.dtype == DType::kFloat16) {
      uint16_t h;
      std::memcpy(&h, e, 2);
      v = HalfToDouble(h);
    } else if (t.dtype == DType::kFloat32) {
      float f;
      std::memcpy(&f, e, 4);
      v = f;
    } else if (t.dtype == DType::kFloat64) {
      std::memcpy(&v, e, 8);
    }
    if (!std::isfinite(v)) return true;
  }
  return false;
}

bool Same(const InferRequest& a, const InferRequest& b) {
  if (a.id != b.id || a.binary_data_output != b.binary_data_output ||
      a.inputs.size() != b.inputs.size() || a.outputs.size() != b.outputs.size()) {
    return false;
  }
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const Tensor& x = a.inputs[i];
    const Tensor& y = b.inputs[i];
    if (x.name != y.name || x.dtype != y.dtype || x.shape != y.shape || x.data != y.data) {
      return false;
    }
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    if (a.outputs[i].name != b.outputs[i].name ||
        a.outputs[i].binary_data != b.outputs[i].binary_data) {
      return false;
    }
  }
  return true;
}

void CheckReencoded(const InferRequest& request, bool binary) {
  Result<EncodedBody> encoded = EncodeInferRequest(request, binary);
  if (!encoded) {
    if (binary) std::abort();
    bool non_finite = false;
    for (const Tensor& t : request.inputs) non_finite = non_finite || HasNonFinite(t);
    if (!non_finite) std::abort();
    return;
  }
  if (encoded->json_bytes.has_value() != binary) std::abort();
  const std::string header = binary ? std::to_string(*encoded->json_bytes) : "";
  Result<InferRequest> again = ParseInferRequest(
      encoded->body, binary ? std::optional<std::string_view>(header) : std::nullopt);
  if (!again || !Same(request, *again)) std::abort();
}

void Check(const InferRequest& request, const KserveLimits& limits) {
  if (request.inputs.empty() || request.inputs.size() > limits.max_tensors ||
      request.outputs.size() > limits.max_tensors) {
    std::abort();
  }
  std::set<std::string> names;
  for (const Tensor& t : request.inputs) {
    if (!names.insert(t.name).second || !t.Validate().ok()) std::abort();
    Result<size_t> n = t.ElementCount();
    if (!n || *n > limits.max_tensor_elements || t.shape.size() > limits.max_dims) std::abort();
    if (t.dtype == DType::kBool) {
      for (uint8_t b : t.data) {
        if (b > 1) std::abort();
      }
    }
  }
  CheckReencoded(request, /*binary=*/true);
  CheckReencoded(request, /*binary=*/false);

  Result<EncodedBody> response = EncodeInferResponse(request, "m", "1", request.inputs);
  if (!response) return;  // a requested output that is not among the inputs, or NaN for JSON
  const size_t json_bytes = response->json_bytes.value_or(response->body.size());
  if (json_bytes > response->body.size()) std::abort();
  const nlohmann::json doc =
      nlohmann::json::parse(std::string_view(response->body).substr(0, json_bytes), nullptr,
                            /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("outputs")) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t newline = input.find('\n');
  if (newline == std::string_view::npos) return 0;
  const std::string_view first = input.substr(0, newline);
  const std::string_view body = input.substr(newline + 1);
  const std::optional<std::string_view> header =
      first == "-" ? std::nullopt : std::optional<std::string_view>(first);

  if (Result<ModelRoute> route = ParseModelRoute(first); route && route->model.empty()) {
    std::abort();
  }
  const KserveLimits limits = SmallLimits();
  Result<InferRequest> request = ParseInferRequest(body, header, limits);
  if (request) {
    Check(*request, limits);
  } else {
    const StatusCode code = request.error().code();
    if (code != StatusCode::kInvalidArgument && code != StatusCode::kResourceExhausted) {
      std::abort();
    }
    if (EncodeErrorBody(request.error()).empty()) std::abort();
  }
  return 0;
}
