// Inference engines behind one interface (DESIGN.md §8, memory hygiene §9).
//
// An engine is created from the model's bytes in memory, never from a path: the sealed-model
// opener decrypts into a SecretBuffer and hands its span to LoadEngine. The bytes need only stay
// valid during LoadEngine; every engine copies what it keeps into its own memory, and the
// built-in engines route that memory into protected (locked, no-dump, wiped-on-free) pages where
// the library allows it. Engine::Protection() says what was achieved, in words an operator can
// act on (docs/ENGINES.md has the full picture per engine).
//
// Engine kinds:
//   "torchscript"  libtorch, a TorchScript zip archive (torch.jit.save / torch.jit.trace)
//   "onnx"         OpenCV DNN, an ONNX ModelProto
//   anything else matching [a-z0-9_-]{1,32} is a plugin: libcustody-engine-<kind>.so, looked up
//                  in LoadOptions::plugin_dirs and loaded through the C ABI in
//                  custody_engine_plugin.h.
// A kind that this build does not include returns kUnimplemented.
//
// Errors (never exceptions; third-party exceptions are caught at this boundary):
//   kInvalidArgument   a bad kind name, a model the engine cannot parse, inputs that do not match
//                      the model (count, name, dtype, shape, data size)
//   kNotFound          no plugin file for the kind in any plugin dir (the message lists them)
//   kFailedPrecondition a plugin that cannot be used (missing symbol, wrong ABI version)
//   kUnimplemented     an engine kind or dtype this build does not support
//   kInternal          an engine failed in a way the input does not explain
//
// Threading: LoadEngine may be called from several threads. Engine::Run is safe to call
// concurrently on one engine; engines whose library cannot run concurrently serialise
// internally. Some settings are process-wide because the libraries make them so (the libtorch
// and OpenCV allocators, their intra-op thread counts); see LoadOptions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"

namespace custody::engine {

// Element types. The numeric values are not stable; the plugin ABI and .npy have their own codes.
enum class DType {
  kFloat32,
  kFloat64,
  kFloat16,  // IEEE half, carried as raw 2-byte elements
  kInt64,
  kInt32,
  kInt8,
  kUInt8,
  kBool,  // one byte per element
};

// Bytes per element (1, 2, 4 or 8).
size_t DTypeSize(DType dtype);
// "float32", "int64", "uint8", ... (the names NumPy and KServe use, lower case).
std::string_view DTypeName(DType dtype);
// Inverse of DTypeName.
Result<DType> ParseDType(std::string_view name);

// Number of elements of a shape: the product of its dimensions, 1 for a scalar (empty shape).
// kInvalidArgument for a negative dimension, kOutOfRange if the product (or the byte size for
// `dtype`) does not fit in size_t.
Result<size_t> ElementCount(std::span<const int64_t> shape);
Result<size_t> ByteSize(DType dtype, std::span<const int64_t> shape);

// A dense, C-order (row-major) tensor in host memory. Inputs and outputs are the caller's data,
// not the vendor's secret, so they live in ordinary memory.
struct Tensor {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;

  // Element count and expected data size from dtype and shape (overflow-checked).
  Result<size_t> ElementCount() const { return engine::ElementCount(shape); }
  Result<size_t> ExpectedByteSize() const { return ByteSize(dtype, shape); }
  // OK when data.size() equals ExpectedByteSize(); kInvalidArgument otherwise.
  Status Validate() const;

  // Convenience for tests and tools: a float32 tensor from values (checked against shape).
  static Result<Tensor> FromFloats(std::string name, std::vector<int64_t> shape,
                                   std::span<const float> values);
  // The data as floats (kInvalidArgument unless dtype is float32 and the size matches).
  Result<std::vector<float>> ToFloats() const;
};

// What an engine knows about one input or output. Unknown parts are empty optionals (a
// TorchScript module knows its argument names but not dtypes or shapes); a dimension of -1 is
// dynamic (any size >= 0).
struct TensorSpec {
  std::string name;
  std::optional<DType> dtype;
  std::optional<std::vector<int64_t>> shape;

  // "input: float32[-1,3,224,224]", "x: ?[?]".
  std::string ToString() const;
};

// Checks inputs against specs before an engine sees them: the count, the name (when both sides
// have one and there is more than one spec), dtype and shape where the spec knows them, and that
// each tensor's data size matches its dtype and shape. An empty `specs` checks only the data
// sizes. Messages name the input and say what was expected and what was found.
Status ValidateInputs(std::span<const TensorSpec> specs, std::span<const Tensor> inputs);

// What an engine achieved for its memory. Reported, never enforced here: the agent's policy
// decides whether a model may be served with less than full protection (DESIGN.md §9).
struct EngineProtection {
  // Aggregate over the allocations the engine routes into protected memory: locked/dontdump only
  // if every one of them got it (sticky: one failure since start-up clears the flag).
  MemoryProtection memory;
  // False when the engine is known to keep weight bytes outside protected memory as well (in its
  // own heap, beyond what the library lets us redirect) or protection was switched off.
  bool weights_covered = false;
  // A few sentences for logs, the status endpoint and the audit trail.
  std::string report;
};

class Engine {
 public:
  virtual ~Engine() = default;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // The kind it was loaded as: "torchscript", "onnx" or the plugin kind.
  virtual std::string_view kind() const = 0;
  // Inputs and outputs as far as the engine (or the caller's schema) knows them. For a
  // TorchScript module: names from forward()'s signature, dtypes and shapes unknown, unless the
  // caller passed LoadOptions::input_schema / output_schema. Outputs may be empty (unknown).
  virtual std::vector<TensorSpec> inputs() const = 0;
  virtual std::vector<TensorSpec> outputs() const = 0;

  // Runs one inference. Inputs are validated against inputs() first (ValidateInputs).
  virtual Result<std::vector<Tensor>> Run(std::span<const Tensor> inputs) = 0;

  // What memory protection this engine's weights and working memory got.
  virtual EngineProtection Protection() const = 0;

 protected:
  Engine() = default;
};

struct LoadOptions {
  // Directories searched, in order, for libcustody-engine-<kind>.so. Only absolute paths are
  // used: a relative entry is an error, so the working directory can never supply a plugin.
  std::vector<std::string> plugin_dirs;
  // Intra-op threads; 0 leaves the library default. For libtorch and OpenCV this is a
  // process-wide setting (the last load that sets it wins); plugins receive it per instance.
  int threads = 0;
  // Route the engine's allocations into protected memory (mlock + MADV_DONTDUMP, wiped on free).
  // For libtorch and OpenCV this installs a process-wide allocator the first time it is asked
  // for, and it stays installed for the life of the process (tensors allocated from it must be
  // freed by it). false only means "do not install it for this load".
  bool protect_weights = true;
  // Optional schema from the model's metadata. When given, it is what inputs()/outputs() report
  // and what Run validates against; it must agree with what the engine itself knows (count,
  // names, and dtype/shape where both know them) or LoadEngine fails with kInvalidArgument.
  std::optional<std::vector<TensorSpec>> input_schema;
  std::optional<std::vector<TensorSpec>> output_schema;
};

// Creates an engine of `kind` from the model bytes. See the top of this file for kinds and
// error codes.
Result<std::unique_ptr<Engine>> LoadEngine(std::string_view kind, ByteSpan model_bytes,
                                           const LoadOptions& options);

// True for names a plugin kind may have: [a-z0-9_-]{1,32}.
bool IsValidEngineKind(std::string_view kind);

// The kinds compiled into this build ("torchscript", "onnx" as configured).
std::vector<std::string> BuiltinEngineKinds();

}  // namespace custody::engine
