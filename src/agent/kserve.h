// The agent's inference API codec: KServe v2 / Open Inference Protocol, REST binding, with the
// binary tensor data extension (DESIGN.md §8; docs/PROTOCOL.md §16 "Serving: the agent's inference
// API" is the normative description of what is accepted and produced).
//
// Pure logic: no sockets, no threads, no engine calls. The server hands it a request body (and
// the Inference-Header-Content-Length header if present) and gets engine::Tensors; it hands back
// engine::Tensors and gets a response body. Clients (the CLI, tests, benchmarks) use the mirror
// image: EncodeInferRequest, ParseInferResponse and ErrorMessageFromBody.
//
//   POST /v2/models/{name}[/versions/{v}]/infer     ParseInferRequest, EncodeInferResponse
//                                                   (client: EncodeInferRequest,
//                                                   ParseInferResponse)
//   GET  /v2/models/{name}[/versions/{v}]           EncodeModelMetadata
//   any error                                       EncodeErrorBody: {"error": "..."}
//                                                   (client: ErrorMessageFromBody)
//
// Datatypes: BOOL, UINT8, INT8, INT32, INT64, FP16, FP32, FP64 (the engine's DTypes). UINT16,
// UINT32, UINT64, INT16, BF16 and BYTES are refused with a message listing the supported ones.
//
// JSON data: flat row-major, or nested arrays that follow the shape exactly. Integers must be
// integer literals (no fraction, no exponent) inside the datatype's range; BOOL takes true/false
// only; FP32 values beyond the float range are refused (never turned into infinity). FP16 from
// JSON numbers is converted with round-to-nearest-even from the decimal's double value; a value
// whose magnitude rounds beyond 65504 is refused. NaN and infinities cannot be written in JSON:
// they travel only as binary data, and an output holding one cannot be encoded as JSON (the
// error says to ask for binary_data).
//
// Binary data: with Inference-Header-Content-Length: N the first N bytes of the body are the
// JSON, and the rest is the raw little-endian data of the inputs whose parameters carry
// "binary_data_size", concatenated in input order; each size must equal the datatype size times
// the element count and the sizes must add up to exactly the rest of the body. BOOL bytes must be
// 0 or 1.
//
// Strictness (as core/protocol/json.h): fields and parameters the codec does not implement are
// refused, not ignored, so that a client asking for something (classification, shared memory)
// learns it was not done. Duplicate input or output names are refused.
//
// Memory: bounded by the body. The body is at most KserveLimits::max_body_bytes, parsed once
// into a JSON tree (a few tens of bytes per JSON value); tensor buffers are allocated only after
// the element count they hold has been checked against the data actually present, so a small
// request can never make the codec allocate a large tensor.
//
// Errors: kInvalidArgument naming the field, input, element index and what was expected;
// kResourceExhausted when a limit is exceeded (body size, tensor count, elements per tensor,
// dimensions, nesting). Encoders return kInvalidArgument for tensors that do not hold what their
// dtype and shape say, for non-finite values bound for JSON, and for outputs that were requested
// but not produced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"
#include "engine/engine.h"

namespace custody::agent::kserve {

// The HTTP header that splits a body into JSON and binary tensor data.
inline constexpr std::string_view kInferenceHeaderContentLength = "Inference-Header-Content-Length";
// Content type of a body with a binary part (the JSON-only body is application/json).
inline constexpr std::string_view kBinaryContentType = "application/octet-stream";

// Model names and versions in routes and metadata: [A-Za-z0-9_.-], 1..kMaxModelNameBytes.
inline constexpr size_t kMaxModelNameBytes = 128;
// Tensor names and request ids.
inline constexpr size_t kMaxTensorNameBytes = 256;
inline constexpr size_t kMaxRequestIdBytes = 256;

struct KserveLimits {
  size_t max_body_bytes = size_t{64} << 20;      // the whole body, JSON and binary
  size_t max_tensor_elements = size_t{1} << 24;  // per input tensor (16 Mi)
  size_t max_tensors = 64;                       // inputs, and requested outputs
  size_t max_dims = 16;                          // dimensions of one shape
  size_t max_data_depth = 8;                     // nesting of a "data" array (flat is 1)
};

// One entry of the request's "outputs": which output to return and, if set, whether as binary.
struct RequestedOutput {
  std::string name;
  std::optional<bool> binary_data;
};

struct InferRequest {
  std::string id;                        // "" when the request had none
  std::vector<engine::Tensor> inputs;    // in request order, names unique
  std::vector<RequestedOutput> outputs;  // empty: every output, in the engine's order
  bool binary_data_output = false;       // request parameter: outputs default to binary
};

// Parses an infer request body. `header_content_length` is the raw value of the
// Inference-Header-Content-Length header, nullopt when absent (the whole body is then JSON).
Result<InferRequest> ParseInferRequest(std::string_view body,
                                       std::optional<std::string_view> header_content_length,
                                       const KserveLimits& limits = {});

// An encoded body. `json_bytes` is set when the body has a binary part: the value for the
// Inference-Header-Content-Length header (then Content-Type is kBinaryContentType).
struct EncodedBody {
  std::string body;
  std::optional<size_t> json_bytes;
};

// Encodes the response to `request` from the engine's outputs: the requested outputs in the
// requested order (all, in engine order, if none were named), each as binary when its
// binary_data says so or, if unset, when binary_data_output does.
Result<EncodedBody> EncodeInferResponse(const InferRequest& request, std::string_view model_name,
                                        std::string_view model_version,
                                        std::span<const engine::Tensor> outputs);

// Encodes an infer request (for clients, tools and tests): inputs with binary_data_size and
// raw data when `binary_inputs`, otherwise as flat JSON data.
Result<EncodedBody> EncodeInferRequest(const InferRequest& request, bool binary_inputs);

struct InferResponse {
  std::string model_name;
  std::string model_version;            // "" when the response had none
  std::string id;                       // "" when the response had none
  std::vector<engine::Tensor> outputs;  // in response order, names unique
};

// Parses an infer response body (for clients): {"model_name", "model_version"?, "id"?,
// "outputs": [...]}, each output with JSON "data" or, with the header, "parameters":
// {"binary_data_size"} and its bytes in the binary part. The reading of tensors is the request
// parser's, with the same strictness (unknown fields refused, datatypes, ranges, BOOL bytes, the
// binary part used up exactly; nested data that follows the shape is accepted as in requests) and
// the same limits; messages name "output 'y'". `header_content_length` is the raw value of the
// response's Inference-Header-Content-Length header, nullopt when absent.
Result<InferResponse> ParseInferResponse(std::string_view body,
                                         std::optional<std::string_view> header_content_length,
                                         const KserveLimits& limits = {});

struct ModelMetadata {
  std::string name;
  std::vector<std::string> versions;
  std::string platform;  // e.g. "torchscript", "onnx"
  std::vector<engine::TensorSpec> inputs;
  std::vector<engine::TensorSpec> outputs;
};

// {"name","versions","platform","inputs":[{"name","datatype","shape"}],"outputs":[...]}; a -1
// dimension is dynamic. The protocol has no way to say "unknown": a spec's unknown dtype or shape
// leaves out "datatype" or "shape" rather than claim something false.
Result<std::string> EncodeModelMetadata(const ModelMetadata& metadata);

// {"error": "<message>"}, the protocol's error body.
std::string EncodeErrorBody(const Status& status);

// The message of an error answer (for clients): the "error" string of an error body, or else the
// body itself with surrounding white space trimmed, cut to kMaxRawErrorBytes ("..." appended).
// Never fails; the text is as the server sent it (a terminal needs control characters replaced).
inline constexpr size_t kMaxRawErrorBytes = 1000;
std::string ErrorMessageFromBody(std::string_view body);

// The KServe datatype name of a dtype ("FP32", "BOOL", ...) and its inverse; the inverse refuses
// other names with the list of supported ones.
std::string_view DatatypeName(engine::DType dtype);
Result<engine::DType> ParseDatatype(std::string_view datatype);

// What a /v2/models/... path addresses.
struct ModelRoute {
  enum class Kind { kMetadata, kReady, kInfer };
  std::string model;
  std::string version;  // "" when the path names none
  Kind kind = Kind::kMetadata;
};
// Parses "/v2/models/{name}[/versions/{v}][/ready|/infer]" (no query, no percent-escapes: names
// are [A-Za-z0-9_.-]). kNotFound for any other path.
Result<ModelRoute> ParseModelRoute(std::string_view path);

// IEEE half from a finite double, rounding to nearest even; nullopt when the magnitude rounds
// beyond 65504. Exposed for tests.
std::optional<uint16_t> HalfFromDouble(double value);
// The exact value of a half (NaN and infinities included).
double HalfToDouble(uint16_t half);

}  // namespace custody::agent::kserve
