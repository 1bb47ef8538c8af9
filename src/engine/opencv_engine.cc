// The "onnx" engine: OpenCV DNN, loading an ONNX model from memory.
//
// This is the only file that includes OpenCV headers.
//
// Memory protection. OpenCV lets one process-wide cv::MatAllocator serve every cv::Mat whose
// caller did not choose an allocator (cv::Mat::setDefaultAllocator). The DNN importer converts
// each ONNX initializer into a cv::Mat and layers keep those Mats as their weights ("blobs"), and
// the network's activations are Mats too, so installing ProtectedHeap there covers them. What it
// cannot cover, because OpenCV does not route it through a MatAllocator:
//  - protobuf's parse of the ModelProto: every initializer's raw_data is first copied into a
//    std::string on the C++ heap, and that copy is freed (not wiped) when the import finishes;
//  - buffers some layers keep in std::vector or cv::AutoBuffer, e.g. the convolution layer's
//    repacked weights for its fast path, allocated on first forward().
// So for this engine the weights are only partly in protected memory, and Protection() always
// says so (weights_covered = false). docs/ENGINES.md lists this for THREATS.md.
//
// Concurrency: cv::dnn::Net::forward is not thread-safe, so Run holds a per-engine mutex.
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <opencv2/core.hpp>
#include <opencv2/core/utility.hpp>
#include <opencv2/dnn.hpp>

#include "engine/builtin_module.h"
#include "engine/engine_internal.h"
#include "engine/onnx_info.h"
#include "engine/protected_heap.h"

namespace custody::engine::internal {
namespace {

// glibc's M_PERTURB, while set, makes free() overwrite each released chunk and malloc() fill each
// new one. OpenCV's import copies every initializer through protobuf std::strings (and layers
// through std::vector buffers) that we cannot route into the protected heap; with M_PERTURB set
// while those are freed - the import, the first forward (when layers repack weights) and the
// network's destruction - the freed copies are overwritten instead of lingering in the heap.
// Limits, measured by the model tests and written up in docs/ENGINES.md: glibc's per-thread
// cache (tcache, chunks up to 1032 bytes) bypasses M_PERTURB, so tensors of 1 KiB or less can
// still linger unless the process runs with GLIBC_TUNABLES=glibc.malloc.tcache_count=0; and live
// repacked weights stay in ordinary (unlocked) heap while the engine exists.
//
// M_PERTURB is process-wide: during these windows other threads' frees are wiped too (slower,
// harmless). Nested windows are counted; an operator's own MALLOC_PERTURB_ is left alone.
class ScopedFreeWipe {
 public:
  ScopedFreeWipe() { Adjust(+1); }
  ~ScopedFreeWipe() { Adjust(-1); }
  ScopedFreeWipe(const ScopedFreeWipe&) = delete;
  ScopedFreeWipe& operator=(const ScopedFreeWipe&) = delete;

 private:
  static void Adjust(int delta) {
#if defined(__GLIBC__) && defined(M_PERTURB)
    static std::mutex mu;
    static int depth = 0;
    static const bool operator_set = std::getenv("MALLOC_PERTURB_") != nullptr;
    if (operator_set) return;
    std::lock_guard<std::mutex> lock(mu);
    int before = depth;
    depth += delta;
    // 0xff: freed chunks become 0xff, new chunks 0x00 (glibc fills them with the byte ^ 0xff).
    if (before == 0 && depth == 1) mallopt(M_PERTURB, 0xff);
    if (before == 1 && depth == 0) mallopt(M_PERTURB, 0);
#else
    (void)delta;
#endif
  }
};

// cv::MatAllocator over the process-wide ProtectedHeap; the same bookkeeping as OpenCV's
// StdMatAllocator, with the data block from the protected heap.
// OpenCV's StdMatAllocator compares against CV_AUTOSTEP from the legacy C API header.
constexpr size_t kAutoStep = 0x7fffffff;

class ProtectedMatAllocator final : public cv::MatAllocator {
 public:
  cv::UMatData* allocate(int dims, const int* sizes, int type, void* data0, size_t* step,
                         cv::AccessFlag flags, cv::UMatUsageFlags usage) const override {
    size_t total = CV_ELEM_SIZE(type);
    for (int i = dims - 1; i >= 0; i--) {
      if (step != nullptr) {
        if (data0 != nullptr && step[i] != kAutoStep) {
          CV_Assert(total <= step[i]);
          total = step[i];
        } else {
          step[i] = total;
        }
      }
      auto dim = static_cast<size_t>(sizes[i]);
      if (dim != 0 && total > SIZE_MAX / dim) CV_Error(cv::Error::StsNoMem, "Mat size overflows");
      total *= dim;
    }
    void* data = data0;
    if (data == nullptr) {
      data = ProtectedHeap::Global().Allocate(total);
      if (data == nullptr) {
        // Degrade visibly (reported by the heap) rather than fail the inference.
        ProtectedHeap::Global().RecordFallback(total);
        return cv::Mat::getStdAllocator()->allocate(dims, sizes, type, data0, step, flags, usage);
      }
    }
    auto* u = new cv::UMatData(this);
    u->data = u->origdata = static_cast<uchar*>(data);
    u->size = total;
    if (data0 != nullptr) u->flags |= cv::UMatData::USER_ALLOCATED;
    return u;
  }

  bool allocate(cv::UMatData* u, cv::AccessFlag, cv::UMatUsageFlags) const override {
    return u != nullptr;
  }

  void deallocate(cv::UMatData* u) const override {
    if (u == nullptr) return;
    CV_Assert(u->urefcount == 0);
    CV_Assert(u->refcount == 0);
    if ((u->flags & cv::UMatData::USER_ALLOCATED) == 0) {
      ProtectedHeap::Global().Free(u->origdata);
      u->origdata = nullptr;
    }
    delete u;
  }
};

std::once_flag g_allocator_once;
std::atomic<bool> g_allocator_installed{false};

void InstallProtectedAllocator() {
  std::call_once(g_allocator_once, [] {
    // Leaked on purpose: Mats it allocated may be released during static destruction.
    static ProtectedMatAllocator* alloc = new ProtectedMatAllocator();
    cv::Mat::setDefaultAllocator(alloc);
    g_allocator_installed = cv::Mat::getDefaultAllocator() == alloc;
  });
}

Result<DType> FromCvDepth(int depth) {
  switch (depth) {
    case CV_32F:
      return DType::kFloat32;
    case CV_64F:
      return DType::kFloat64;
    case CV_16F:
      return DType::kFloat16;
    case CV_32S:
      return DType::kInt32;
    case CV_8S:
      return DType::kInt8;
    case CV_8U:
      return DType::kUInt8;
    default:
      return Unimplemented("onnx: OpenCV produced an output of depth " + std::to_string(depth) +
                           ", which has no Custody dtype");
  }
}

Result<int> ToCvDepth(DType d) {
  switch (d) {
    case DType::kFloat32:
      return CV_32F;
    case DType::kFloat64:
      return CV_64F;
    case DType::kFloat16:
      return CV_16F;
    case DType::kInt32:
      return CV_32S;
    case DType::kInt8:
      return CV_8S;
    case DType::kUInt8:
    case DType::kBool:
      return CV_8U;
    case DType::kInt64:
      break;
  }
  return Unimplemented("onnx: OpenCV DNN cannot take " + std::string(DTypeName(d)) + " inputs");
}

class OpenCvEngine final : public Engine {
 public:
  OpenCvEngine(cv::dnn::Net net, bool protected_load, uint64_t retained_bytes)
      : net_(std::move(net)), protected_load_(protected_load), retained_bytes_(retained_bytes) {}

  ~OpenCvEngine() override {
    ScopedFreeWipe wipe;
    net_ = cv::dnn::Net();  // releases the layers and their heap buffers inside the window
  }

  Status Init(const OnnxModelInfo& info, const LoadOptions& options) {
    CUSTODY_ASSIGN_OR_RETURN(inputs_, ReconcileSchema("input", info.inputs, options.input_schema));
    CUSTODY_ASSIGN_OR_RETURN(outputs_,
                             ReconcileSchema("output", info.outputs, options.output_schema));
    // Ask for the graph's outputs by name, in the graph's order, when OpenCV has a layer of that
    // name (its importer names a layer after the node's first output); otherwise take whatever
    // OpenCV considers unconnected.
    bool all_named = !info.outputs.empty();
    for (const TensorSpec& o : info.outputs) all_named &= net_.getLayerId(o.name) >= 0;
    if (all_named) {
      for (const TensorSpec& o : info.outputs) forward_names_.push_back(o.name);
    } else {
      for (const cv::String& s : net_.getUnconnectedOutLayersNames()) forward_names_.push_back(s);
    }
    if (forward_names_.empty()) return InvalidArgument("onnx: the network has no outputs");
    return OkStatus();
  }

  std::string_view kind() const override { return "onnx"; }
  std::vector<TensorSpec> inputs() const override { return inputs_; }
  std::vector<TensorSpec> outputs() const override { return outputs_; }

  Result<std::vector<Tensor>> Run(std::span<const Tensor> inputs) override {
    CUSTODY_RETURN_IF_ERROR(ValidateInputs(inputs_, inputs));
    std::lock_guard<std::mutex> lock(mu_);
    // Layers finalise (and repack weights) on the first forward and again when input shapes
    // change; wipe what they free then. Later runs only allocate activations (protected Mats).
    std::vector<std::vector<int64_t>> shapes;
    for (const Tensor& in : inputs) shapes.push_back(in.shape);
    std::optional<ScopedFreeWipe> wipe;
    if (shapes != last_shapes_) wipe.emplace();
    try {
      for (size_t i = 0; i < inputs.size(); ++i) {
        const Tensor& in = inputs[i];
        if (in.shape.empty()) {
          return InvalidArgument("onnx: input " + std::to_string(i) +
                                 " is a scalar; OpenCV DNN needs at least one dimension");
        }
        std::vector<int> sizes;
        for (int64_t d : in.shape) {
          if (d > INT_MAX) {
            return InvalidArgument("onnx: input " + std::to_string(i) + " has a dimension of " +
                                   std::to_string(d) + ", more than OpenCV supports");
          }
          sizes.push_back(static_cast<int>(d));
        }
        CUSTODY_ASSIGN_OR_RETURN(int depth, ToCvDepth(in.dtype));
        cv::Mat blob(static_cast<int>(sizes.size()), sizes.data(), CV_MAKETYPE(depth, 1));
        if (!in.data.empty()) std::memcpy(blob.data, in.data.data(), in.data.size());
        std::string name = i < inputs_.size() ? inputs_[i].name : std::string();
        net_.setInput(blob, name);
      }
      std::vector<cv::Mat> outs;
      net_.forward(outs, forward_names_);
      last_shapes_ = std::move(shapes);
      std::vector<Tensor> result;
      result.reserve(outs.size());
      for (size_t i = 0; i < outs.size(); ++i) {
        cv::Mat m = outs[i].isContinuous() ? outs[i] : outs[i].clone();
        if (m.channels() != 1) return Internal("onnx: OpenCV produced a multi-channel output");
        Tensor o;
        o.name = i < forward_names_.size() ? forward_names_[i] : "output" + std::to_string(i);
        CUSTODY_ASSIGN_OR_RETURN(o.dtype, FromCvDepth(m.depth()));
        for (int d = 0; d < m.dims; ++d) o.shape.push_back(m.size[d]);
        // OpenCV has no 0-d or 1-d Mats; use the graph's declared shape when it is static and
        // has the same number of elements.
        if (i < outputs_.size() && outputs_[i].shape) {
          const std::vector<int64_t>& declared = *outputs_[i].shape;
          bool is_static = true;
          for (int64_t d : declared) is_static &= d >= 0;
          Result<size_t> n_declared = ElementCount(declared);
          if (is_static && n_declared.has_value() && *n_declared == m.total()) o.shape = declared;
        }
        size_t bytes = m.total() * m.elemSize();
        o.data.resize(bytes);
        if (bytes > 0) std::memcpy(o.data.data(), m.data, bytes);
        CUSTODY_RETURN_IF_ERROR(o.Validate());
        result.push_back(std::move(o));
      }
      return result;
    } catch (const cv::Exception& e) {
      return InvalidArgument("onnx: inference failed: " + FirstLines(e.what(), 3));
    } catch (const std::exception& e) {
      return Internal(std::string("onnx: inference failed: ") + FirstLines(e.what(), 3));
    }
  }

  EngineProtection Protection() const override {
    EngineProtection p;
    p.memory = ProtectedHeap::Global().protection();
    p.weights_covered = false;  // see the top of this file
    if (!protected_load_) {
      p.memory.locked = false;
      p.memory.dontdump = false;
      p.report =
          "OpenCV DNN: the weights were loaded into the ordinary heap (protect_weights was off "
          "and no earlier load installed the protected allocator); NOT locked, NOT excluded from "
          "core dumps, NOT wiped on free.";
      return p;
    }
    p.report = "OpenCV DNN: " + FormatMiB(retained_bytes_) +
               " of weight Mats are in the protected heap, and every cv::Mat in this process "
               "(activations included) is allocated there (process-wide cv::MatAllocator). "
               "PARTIAL: the import copies every initializer through protobuf's ordinary heap, and "
               "some layers keep repacked weights in ordinary, unlocked heap buffers while the "
               "engine exists; freed copies are overwritten (glibc M_PERTURB during import, "
               "first run and unload) except chunks of 1 KiB or less, which glibc's tcache keeps "
               "unless GLIBC_TUNABLES=glibc.malloc.tcache_count=0. Heap: " +
               p.memory.ToString() + ".";
    return p;
  }

 private:
  cv::dnn::Net net_;
  bool protected_load_;
  uint64_t retained_bytes_;
  std::vector<TensorSpec> inputs_;
  std::vector<TensorSpec> outputs_;
  std::vector<std::string> forward_names_;
  std::mutex mu_;
  std::vector<std::vector<int64_t>> last_shapes_;  // of the previous Run; guarded by mu_
};

}  // namespace

Result<std::unique_ptr<Engine>> LoadOnnxEngine(ByteSpan model_bytes, const LoadOptions& options) {
  // Our own bounds-checked walk first: it rejects non-ONNX and truncated bytes with a clear
  // message before OpenCV sees them, and gives us names, dtypes and shapes.
  CUSTODY_ASSIGN_OR_RETURN(OnnxModelInfo info, InspectOnnxModel(model_bytes));
  if (options.protect_weights) InstallProtectedAllocator();
  bool protected_load = g_allocator_installed;
  ProtectedHeap::Stats before = ProtectedHeap::Global().stats();
  ScopedFreeWipe wipe;  // protobuf's copies of the initializers are freed during the import
  try {
    if (options.threads > 0) cv::setNumThreads(options.threads);
    cv::dnn::Net net = cv::dnn::readNetFromONNX(reinterpret_cast<const char*>(model_bytes.data()),
                                                model_bytes.size());
    if (net.empty()) return InvalidArgument("onnx: OpenCV DNN imported an empty network");
    net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
    net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
    ProtectedHeap::Stats after = ProtectedHeap::Global().stats();
    uint64_t retained =
        after.live_bytes > before.live_bytes ? after.live_bytes - before.live_bytes : 0;
    auto engine = std::make_unique<OpenCvEngine>(std::move(net), protected_load, retained);
    CUSTODY_RETURN_IF_ERROR(engine->Init(info, options));
    return std::unique_ptr<Engine>(std::move(engine));
  } catch (const cv::Exception& e) {
    return InvalidArgument("onnx: OpenCV DNN cannot import the model: " + FirstLines(e.what(), 3));
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("onnx: OpenCV DNN cannot import the model: ") +
                           FirstLines(e.what(), 3));
  }
}

}  // namespace custody::engine::internal

CUSTODY_BUILTIN_ENGINE_MODULE("onnx", ::custody::engine::internal::LoadOnnxEngine)
