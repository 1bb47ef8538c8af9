// Example engine plugin "linear": y = W·x + b. Built as libcustody-engine-linear.so.
//
// It shows everything a real plugin (ONNX Runtime, OpenVINO, TensorRT...) has to do at the
// C ABI in custody_engine_plugin.h: parse untrusted-length model bytes, keep the weights only in
// the host's protected memory, describe inputs and outputs, run, hand back outputs the host
// frees through us, and never let a C++ exception cross the boundary.
//
// Model format (all integers and floats little-endian):
//   offset  size        field
//   0       8           magic "CUSTLIN1"
//   8       4           uint32 rows m (number of outputs), 1 <= m <= 65536
//   12      4           uint32 cols n (number of inputs),  1 <= n <= 65536, m*n <= 2^26
//   16      4*m*n       float32 W, row-major (W[i][j] at 16 + 4*(i*n + j))
//   ...     4*m         float32 b
// Nothing may follow. Input "x": float32 [batch, n]; output "y": float32 [batch, m].
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "engine/custody_engine_plugin.h"

namespace {

constexpr char kMagic[8] = {'C', 'U', 'S', 'T', 'L', 'I', 'N', '1'};
constexpr size_t kHeaderBytes = 16;
constexpr uint32_t kMaxDim = 65536;
constexpr uint64_t kMaxWeights = uint64_t{1} << 26;

uint32_t LoadLittleEndian32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

float LoadFloat(const uint8_t* p) {
  uint32_t bits = LoadLittleEndian32(p);
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

void SetError(char* err, size_t err_len, const char* message) {
  if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", message);
}

}  // namespace

struct custody_engine_instance {
  const custody_engine_host_v1* host;
  uint32_t rows;
  uint32_t cols;
  float* weights;  // rows*cols, then rows biases; in host protected memory
  int64_t in_shape[2];
  int64_t out_shape[2];
  custody_tensor_spec in_spec;
  custody_tensor_spec out_spec;
};

namespace {

// One run's outputs: the tensor, its shape and data in a single malloc block.
struct OutputBlock {
  custody_tensor tensor;
  int64_t shape[2];
  // float data follows
};

int32_t Create(const custody_engine_host_v1* host, const uint8_t* model, size_t model_len,
               custody_engine_instance** out, char* err, size_t err_len) {
  if (out == nullptr) return CUSTODY_PLUGIN_INTERNAL;
  *out = nullptr;
  if (host == nullptr || host->struct_size < sizeof(custody_engine_host_v1) ||
      host->alloc_protected == nullptr || host->free_protected == nullptr) {
    SetError(err, err_len, "linear: the host does not provide protected memory");
    return CUSTODY_PLUGIN_INTERNAL;
  }
  if (model == nullptr || model_len < kHeaderBytes || std::memcmp(model, kMagic, 8) != 0) {
    SetError(err, err_len, "linear: not a linear model (expected the magic \"CUSTLIN1\")");
    return CUSTODY_PLUGIN_INVALID_ARGUMENT;
  }
  uint32_t rows = LoadLittleEndian32(model + 8);
  uint32_t cols = LoadLittleEndian32(model + 12);
  if (rows == 0 || cols == 0 || rows > kMaxDim || cols > kMaxDim ||
      uint64_t{rows} * cols > kMaxWeights) {
    char msg[160];
    std::snprintf(msg, sizeof(msg),
                  "linear: unsupported size %ux%u (each 1..%u, at most %llu "
                  "weights)",
                  rows, cols, kMaxDim, static_cast<unsigned long long>(kMaxWeights));
    SetError(err, err_len, msg);
    return CUSTODY_PLUGIN_INVALID_ARGUMENT;
  }
  uint64_t floats = uint64_t{rows} * cols + rows;
  uint64_t expected = kHeaderBytes + floats * 4;
  if (model_len != expected) {
    char msg[160];
    std::snprintf(msg, sizeof(msg), "linear: a %ux%u model is %llu bytes, found %zu", rows, cols,
                  static_cast<unsigned long long>(expected), model_len);
    SetError(err, err_len, msg);
    return CUSTODY_PLUGIN_INVALID_ARGUMENT;
  }

  auto* inst =
      static_cast<custody_engine_instance*>(std::calloc(1, sizeof(custody_engine_instance)));
  if (inst == nullptr) return CUSTODY_PLUGIN_RESOURCE_EXHAUSTED;
  inst->weights =
      static_cast<float*>(host->alloc_protected(host->host_ctx, floats * sizeof(float)));
  if (inst->weights == nullptr) {
    std::free(inst);
    SetError(err, err_len, "linear: out of protected memory for the weights");
    return CUSTODY_PLUGIN_RESOURCE_EXHAUSTED;
  }
  for (uint64_t i = 0; i < floats; ++i) inst->weights[i] = LoadFloat(model + kHeaderBytes + 4 * i);
  inst->host = host;
  inst->rows = rows;
  inst->cols = cols;
  inst->in_shape[0] = -1;
  inst->in_shape[1] = cols;
  inst->out_shape[0] = -1;
  inst->out_shape[1] = rows;
  inst->in_spec = {"x", CUSTODY_DTYPE_FLOAT32, 2, inst->in_shape};
  inst->out_spec = {"y", CUSTODY_DTYPE_FLOAT32, 2, inst->out_shape};
  *out = inst;
  return CUSTODY_PLUGIN_OK;
}

int32_t Describe(const custody_engine_instance* inst, const custody_tensor_spec** inputs,
                 size_t* n_inputs, const custody_tensor_spec** outputs, size_t* n_outputs) {
  if (inst == nullptr) return CUSTODY_PLUGIN_INTERNAL;
  *inputs = &inst->in_spec;
  *n_inputs = 1;
  *outputs = &inst->out_spec;
  *n_outputs = 1;
  return CUSTODY_PLUGIN_OK;
}

int32_t Run(custody_engine_instance* inst, const custody_tensor* inputs, size_t n_inputs,
            custody_tensor** outputs, size_t* n_outputs, char* err, size_t err_len) {
  // The host validated count, dtype, shape and size against Describe(); a plugin still checks
  // what it relies on, because it cannot know which host calls it.
  if (inst == nullptr || n_inputs != 1 || inputs[0].dtype != CUSTODY_DTYPE_FLOAT32 ||
      inputs[0].rank != 2 || inputs[0].shape[1] != inst->cols || inputs[0].shape[0] < 0) {
    SetError(err, err_len, "linear: expected one float32 input of shape [batch, cols]");
    return CUSTODY_PLUGIN_INVALID_ARGUMENT;
  }
  const auto batch = static_cast<uint64_t>(inputs[0].shape[0]);
  if (inputs[0].byte_size != batch * inst->cols * sizeof(float) || batch > (uint64_t{1} << 24)) {
    SetError(err, err_len, "linear: input size does not match its shape");
    return CUSTODY_PLUGIN_INVALID_ARGUMENT;
  }
  uint64_t out_floats = batch * inst->rows;
  auto* block =
      static_cast<OutputBlock*>(std::malloc(sizeof(OutputBlock) + out_floats * sizeof(float)));
  if (block == nullptr) {
    SetError(err, err_len, "linear: out of memory for the output");
    return CUSTODY_PLUGIN_RESOURCE_EXHAUSTED;
  }
  auto* y = reinterpret_cast<float*>(block + 1);
  const auto* x = static_cast<const uint8_t*>(inputs[0].data);
  const float* w = inst->weights;
  const float* bias = inst->weights + uint64_t{inst->rows} * inst->cols;
  for (uint64_t r = 0; r < batch; ++r) {
    for (uint32_t i = 0; i < inst->rows; ++i) {
      // Accumulate in double and in a fixed order, so results are exact and reproducible.
      double acc = bias[i];
      for (uint32_t j = 0; j < inst->cols; ++j) {
        float xj;
        std::memcpy(&xj, x + (r * inst->cols + j) * sizeof(float), sizeof(float));
        acc += static_cast<double>(w[uint64_t{i} * inst->cols + j]) * xj;
      }
      y[r * inst->rows + i] = static_cast<float>(acc);
    }
  }
  block->shape[0] = static_cast<int64_t>(batch);
  block->shape[1] = inst->rows;
  block->tensor = {"y", CUSTODY_DTYPE_FLOAT32, 2, block->shape, y, out_floats * sizeof(float)};
  *outputs = &block->tensor;
  *n_outputs = 1;
  return CUSTODY_PLUGIN_OK;
}

void FreeOutputs(custody_engine_instance*, custody_tensor* outputs, size_t) {
  // outputs points at the first member of an OutputBlock.
  std::free(outputs);
}

void Destroy(custody_engine_instance* inst) {
  if (inst == nullptr) return;
  inst->host->free_protected(inst->host->host_ctx, inst->weights);  // the host wipes it
  std::free(inst);
}

const char* DescribeProtection(const custody_engine_instance*, int32_t* weights_protected) {
  if (weights_protected != nullptr) *weights_protected = 1;
  return "W and b are kept only in host protected memory; the model bytes are not retained";
}

const custody_engine_plugin_v1 kPlugin = {
    CUSTODY_ENGINE_PLUGIN_ABI_VERSION,
    sizeof(custody_engine_plugin_v1),
    "linear",
    "1.0.0",
    CUSTODY_PLUGIN_FLAG_THREAD_SAFE_RUN,
    &Create,
    &Describe,
    &Run,
    &FreeOutputs,
    &Destroy,
    &DescribeProtection,
};

}  // namespace

extern "C" CUSTODY_ENGINE_PLUGIN_EXPORT const custody_engine_plugin_v1*
custody_engine_plugin_v1_get(void) {
  return &kPlugin;
}
