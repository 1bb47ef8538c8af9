// Reads the graph inputs and outputs of an ONNX model without a protobuf library.
//
// OpenCV DNN does not tell us the names, element types and shapes of a network's inputs, and
// its importer is not built to reject malformed bytes gracefully, so the "onnx" engine first walks
// the ModelProto itself: a bounds-checked protobuf wire-format reader that follows only
//   ModelProto.graph(7) -> GraphProto.{input(11), output(12), initializer(5).name(8)}
//   ValueInfoProto.{name(1), type(2)} -> TypeProto.tensor_type(1)
//     -> {elem_type(1), shape(2) -> dim(1) -> {dim_value(1), dim_param(2)}}
// and skips every other field without copying it (initializer data is never read). Inputs that
// are also initializers (older exporters list weights as inputs) are not real inputs and are
// dropped. Pure parsing, no OpenCV: unit-tested with truncations and bit flips.
#pragma once

#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "engine/engine.h"

namespace custody::engine {

struct OnnxModelInfo {
  std::vector<TensorSpec> inputs;   // graph inputs that are not initializers
  std::vector<TensorSpec> outputs;  // graph outputs
};

// kInvalidArgument if the bytes are not a well-formed protobuf ModelProto with a graph. An
// element type with no DType (e.g. string, bfloat16) leaves TensorSpec::dtype empty; a dimension
// given by name (dim_param) or missing is -1.
Result<OnnxModelInfo> InspectOnnxModel(ByteSpan model);

}  // namespace custody::engine
