// The "torchscript" engine: libtorch's TorchScript interpreter, loading from memory.
//
// This is the only file that includes libtorch headers (they are heavy and noisy; the imported
// `torch` CMake target provides them as SYSTEM includes, so their warnings do not trip -Werror).
//
// Memory protection. libtorch lets one process-wide c10::Allocator serve every CPU tensor
// (c10::SetCPUAllocator). Loading a TorchScript archive reads each weight record straight into a
// tensor storage allocated from that allocator (caffe2::serialize::PyTorchStreamReader::getRecord)
// and the storages become the module's parameters, so installing ProtectedHeap there puts the
// weights - and every activation, and the ideep (oneDNN glue) tensors holding reordered weights,
// which libtorch allocates through the same allocator - into locked, no-dump, wiped-on-free
// memory. It is process-wide by construction: it is installed once, the first time a load asks
// for protection, and never removed (a tensor must be freed by the allocator that made it, and a
// DataPtr carries its deleter, so tensors from before remain valid). Not covered: libtorch's own
// C++ heap objects (the TorchScript code and graph, pickled constants that are not tensors, small
// metadata) and scratch memory of oneDNN and BLAS that bypasses c10. docs/ENGINES.md has the
// details; the model tests search process memory after a load and find weight bytes only in the
// protected heap.
//
// Reading from memory: torch::jit::load(std::istream&) over a read-only streambuf spanning the
// caller's bytes. The zip reader pulls each record directly into its destination tensor through
// the stream, so no intermediate copy of the weights is made. Only the zip container format is
// accepted: libtorch's flatbuffer path copies the whole stream into an ordinary heap buffer first.
#include <atomic>
#include <cstring>
#include <istream>
#include <mutex>
#include <streambuf>
#include <string>
#include <utility>

// First, on its own: under clang with C++20, libtorch 1.13's List.h instantiates
// std::vector<IValue> members while IValue is still incomplete unless ivalue.h came first.
#include <ATen/core/ivalue.h>

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

#include "engine/builtin_module.h"
#include "engine/engine_internal.h"
#include "engine/protected_heap.h"

namespace custody::engine::internal {
namespace {

// A read-only, seekable std::streambuf over caller memory. The get area is the buffer itself, so
// reads are memcpy from it; nothing ever writes through the (necessarily non-const) pointers:
// there is no put area and pbackfail refuses to modify.
class MemoryStreamBuf final : public std::streambuf {
 public:
  explicit MemoryStreamBuf(ByteSpan bytes) {
    char* begin = const_cast<char*>(reinterpret_cast<const char*>(bytes.data()));
    setg(begin, begin, begin + bytes.size());
  }

 protected:
  pos_type seekoff(off_type off, std::ios_base::seekdir dir,
                   std::ios_base::openmode which) override {
    if ((which & std::ios_base::in) == 0 || (which & std::ios_base::out) != 0) {
      return pos_type(off_type(-1));
    }
    const off_type size = egptr() - eback();
    off_type base = 0;
    if (dir == std::ios_base::cur) base = gptr() - eback();
    if (dir == std::ios_base::end) base = size;
    if ((off < 0 && -off > base) || (off > 0 && off > size - base)) return pos_type(off_type(-1));
    setg(eback(), eback() + base + off, egptr());
    return pos_type(base + off);
  }
  pos_type seekpos(pos_type pos, std::ios_base::openmode which) override {
    return seekoff(off_type(pos), std::ios_base::beg, which);
  }
  std::streamsize showmanyc() override {
    std::streamsize left = egptr() - gptr();
    return left > 0 ? left : -1;
  }
};

// c10::Allocator over the process-wide ProtectedHeap.
class ProtectedCpuAllocator final : public c10::Allocator {
 public:
  explicit ProtectedCpuAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t n) const override {
    void* p = ProtectedHeap::Global().Allocate(n);
    if (p == nullptr) {
      // No memory could be mapped (or the map count limit was hit). Degrade visibly rather than
      // fail the inference: the heap's protection() now reports the fallback.
      ProtectedHeap::Global().RecordFallback(n);
      return fallback_->allocate(n);
    }
    return {p, p, &Delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Delete; }

  static void Delete(void* p) {
    // raw_allocate/raw_deallocate (used by libtorch's oneDNN glue) pass only the pointer, so a
    // fallback block can arrive here; hand it to the allocator that made it.
    if (!ProtectedHeap::Global().TryFree(p)) c10::GetDefaultCPUAllocator()->raw_deleter()(p);
  }

 private:
  c10::Allocator* fallback_;
};

struct AllocatorState {
  std::once_flag once;
  std::atomic<bool> installed{false};
  std::string problem;
};

AllocatorState& Allocator() {
  static AllocatorState* state = new AllocatorState();  // leaked: see ProtectedHeap::Global
  return *state;
}

void InstallProtectedAllocator() {
  AllocatorState& state = Allocator();
  std::call_once(state.once, [&state] {
    static ProtectedCpuAllocator* alloc = new ProtectedCpuAllocator(c10::GetDefaultCPUAllocator());
    // The highest priority, so a library's static registration cannot silently replace it.
    c10::SetCPUAllocator(alloc, /*priority=*/255);
    state.installed = c10::GetCPUAllocator() == alloc;
    if (!state.installed) {
      state.problem = "c10::SetCPUAllocator did not take effect (another allocator is installed)";
    }
  });
}

bool ProtectedAllocatorInstalled() { return Allocator().installed.load(); }

Result<DType> FromTorch(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float:
      return DType::kFloat32;
    case c10::ScalarType::Double:
      return DType::kFloat64;
    case c10::ScalarType::Half:
      return DType::kFloat16;
    case c10::ScalarType::Long:
      return DType::kInt64;
    case c10::ScalarType::Int:
      return DType::kInt32;
    case c10::ScalarType::Char:
      return DType::kInt8;
    case c10::ScalarType::Byte:
      return DType::kUInt8;
    case c10::ScalarType::Bool:
      return DType::kBool;
    default:
      return Unimplemented(std::string("torchscript: output dtype ") + c10::toString(t) +
                           " has no Custody dtype");
  }
}

c10::ScalarType ToTorch(DType d) {
  switch (d) {
    case DType::kFloat32:
      return c10::ScalarType::Float;
    case DType::kFloat64:
      return c10::ScalarType::Double;
    case DType::kFloat16:
      return c10::ScalarType::Half;
    case DType::kInt64:
      return c10::ScalarType::Long;
    case DType::kInt32:
      return c10::ScalarType::Int;
    case DType::kInt8:
      return c10::ScalarType::Char;
    case DType::kUInt8:
      return c10::ScalarType::Byte;
    case DType::kBool:
      return c10::ScalarType::Bool;
  }
  Panic("ToTorch: invalid DType");
}

// libtorch's messages put the cause last: the interpreter prefixes a TorchScript traceback and
// ends with "RuntimeError: <what went wrong>". Keep that line; otherwise the first lines.
std::string TorchMessage(std::string_view what) {
  constexpr std::string_view kCauseMarker = "Error: ";
  size_t end = what.find_last_not_of("\n ");
  if (end == std::string_view::npos) return "(no message)";
  std::string_view trimmed = what.substr(0, end + 1);
  size_t line_start = trimmed.rfind('\n');
  std::string_view last =
      line_start == std::string_view::npos ? trimmed : trimmed.substr(line_start + 1);
  size_t marker = last.find(kCauseMarker);
  if (what.find("TorchScript interpreter") != std::string_view::npos &&
      marker != std::string_view::npos) {
    return FirstLines(last.substr(marker + kCauseMarker.size()), 1);
  }
  return FirstLines(what, 3);
}

// Flattens what forward() returned into tensors: a Tensor, or (nested) tuples/lists of them.
Status CollectTensors(const c10::IValue& v, std::vector<at::Tensor>& out, int depth) {
  if (depth > 8) return Unimplemented("torchscript: forward() returned nesting deeper than 8");
  if (v.isTensor()) {
    out.push_back(v.toTensor());
    return OkStatus();
  }
  if (v.isTuple()) {
    for (const c10::IValue& e : v.toTupleRef().elements()) {
      CUSTODY_RETURN_IF_ERROR(CollectTensors(e, out, depth + 1));
    }
    return OkStatus();
  }
  if (v.isTensorList()) {
    for (const at::Tensor& t : v.toTensorVector()) out.push_back(t);
    return OkStatus();
  }
  if (v.isList()) {
    for (const c10::IValue& e : v.toListRef())
      CUSTODY_RETURN_IF_ERROR(CollectTensors(e, out, depth + 1));
    return OkStatus();
  }
  return Unimplemented("torchscript: forward() returned " + v.tagKind() +
                       "; only tensors and tuples or lists of tensors are supported");
}

class TorchEngine final : public Engine {
 public:
  TorchEngine(torch::jit::Module module, bool protected_load, uint64_t retained_bytes,
              bool load_fully_locked)
      : module_(std::move(module)),
        protected_load_(protected_load),
        retained_bytes_(retained_bytes),
        load_fully_locked_(load_fully_locked) {}

  Status Init(const LoadOptions& options) {
    // Names from forward()'s signature; TorchScript carries no dtypes or shapes.
    const c10::FunctionSchema& schema = module_.get_method("forward").function().getSchema();
    std::vector<TensorSpec> known_in;
    const auto& args = schema.arguments();
    for (size_t i = 1; i < args.size(); ++i) {  // 0 is self
      const c10::Argument& a = args[i];
      if (a.type()->kind() != c10::TypeKind::TensorType) {
        if (a.default_value()) continue;  // optional non-tensor arguments keep their defaults
        return Unimplemented("torchscript: forward() argument '" + a.name() + "' is " +
                             a.type()->str() + "; only tensor arguments are supported");
      }
      known_in.push_back(TensorSpec{a.name(), std::nullopt, std::nullopt});
    }
    std::vector<TensorSpec> known_out;
    if (schema.returns().size() == 1) {
      const c10::TypePtr& ret = schema.returns()[0].type();
      if (ret->kind() == c10::TypeKind::TensorType) {
        known_out.push_back(TensorSpec{"output", std::nullopt, std::nullopt});
      } else if (ret->kind() == c10::TypeKind::TupleType) {
        const auto& elems = ret->containedTypes();
        bool all_tensors = true;
        for (const auto& e : elems) all_tensors &= e->kind() == c10::TypeKind::TensorType;
        if (all_tensors) {
          for (size_t i = 0; i < elems.size(); ++i) {
            known_out.push_back(
                TensorSpec{"output" + std::to_string(i), std::nullopt, std::nullopt});
          }
        }
      }
    }
    CUSTODY_ASSIGN_OR_RETURN(inputs_, ReconcileSchema("input", known_in, options.input_schema));
    CUSTODY_ASSIGN_OR_RETURN(outputs_, ReconcileSchema("output", known_out, options.output_schema));
    return OkStatus();
  }

  std::string_view kind() const override { return "torchscript"; }
  std::vector<TensorSpec> inputs() const override { return inputs_; }
  std::vector<TensorSpec> outputs() const override { return outputs_; }

  Result<std::vector<Tensor>> Run(std::span<const Tensor> inputs) override {
    CUSTODY_RETURN_IF_ERROR(ValidateInputs(inputs_, inputs));
    try {
      c10::InferenceMode guard;
      std::vector<c10::IValue> args;
      args.reserve(inputs.size());
      for (const Tensor& in : inputs) {
        // One copy into a tensor libtorch owns (and allocates from the protected heap), so the
        // caller's buffer is never aliased or written.
        at::Tensor t = at::empty(in.shape, at::TensorOptions().dtype(ToTorch(in.dtype)));
        if (!in.data.empty()) std::memcpy(t.data_ptr(), in.data.data(), in.data.size());
        args.emplace_back(std::move(t));
      }
      // Module is a handle onto shared state; forward() is thread-safe for inference.
      torch::jit::Module module = module_;
      c10::IValue result = module.forward(std::move(args));
      std::vector<at::Tensor> tensors;
      CUSTODY_RETURN_IF_ERROR(CollectTensors(result, tensors, 0));
      std::vector<Tensor> out;
      out.reserve(tensors.size());
      for (size_t i = 0; i < tensors.size(); ++i) {
        at::Tensor t = tensors[i].contiguous();
        if (!t.device().is_cpu()) return Internal("torchscript: output on a non-CPU device");
        Tensor o;
        o.name = i < outputs_.size() && !outputs_[i].name.empty()
                     ? outputs_[i].name
                     : (tensors.size() == 1 ? std::string("output") : "output" + std::to_string(i));
        CUSTODY_ASSIGN_OR_RETURN(o.dtype, FromTorch(t.scalar_type()));
        o.shape.assign(t.sizes().begin(), t.sizes().end());
        size_t bytes = t.numel() * t.element_size();
        o.data.resize(bytes);
        if (bytes > 0) std::memcpy(o.data.data(), t.data_ptr(), bytes);
        CUSTODY_RETURN_IF_ERROR(o.Validate());
        out.push_back(std::move(o));
      }
      return out;
    } catch (const c10::Error& e) {
      // Shape and dtype mismatches inside the model surface here (TorchScript knows no shapes
      // up front), so they are the caller's error more often than not.
      return InvalidArgument("torchscript: the model rejected the inputs: " +
                             TorchMessage(e.what_without_backtrace()));
    } catch (const std::bad_alloc&) {
      return ResourceExhausted("torchscript: out of memory during inference");
    } catch (const std::runtime_error& e) {
      // The interpreter rethrows operator errors as std::runtime_error with a traceback.
      return InvalidArgument("torchscript: the model rejected the inputs: " +
                             TorchMessage(e.what()));
    } catch (const std::exception& e) {
      return Internal(std::string("torchscript: inference failed: ") + TorchMessage(e.what()));
    }
  }

  EngineProtection Protection() const override {
    EngineProtection p;
    p.memory = ProtectedHeap::Global().protection();
    if (!protected_load_) {
      p.memory.locked = false;
      p.memory.dontdump = false;
      p.weights_covered = false;
      p.report =
          "libtorch: the weights were loaded into the ordinary heap (protect_weights was off and "
          "no earlier load installed the protected allocator); NOT locked, NOT excluded from "
          "core dumps, NOT wiped on free.";
      if (ProtectedAllocatorInstalled()) {
        p.report += " Tensors allocated since then (activations) use the protected heap: " +
                    p.memory.detail + ".";
      }
      return p;
    }
    p.weights_covered = load_fully_locked_ && p.memory.full();
    p.report = "libtorch: " + FormatMiB(retained_bytes_) +
               " of weights and buffers were loaded into the protected heap" +
               (load_fully_locked_ ? " (all locked and excluded from core dumps)"
                                   : " (NOT all of it could be locked)") +
               "; every CPU tensor in this process, activations included, is allocated there "
               "(process-wide c10 allocator). Heap: " +
               p.memory.ToString() +
               ". Not covered: the TorchScript code and graph and other non-tensor objects in "
               "libtorch's C++ heap.";
    return p;
  }

 private:
  torch::jit::Module module_;
  bool protected_load_;
  uint64_t retained_bytes_;
  bool load_fully_locked_;
  std::vector<TensorSpec> inputs_;
  std::vector<TensorSpec> outputs_;
};

bool LooksLikeZip(ByteSpan b) {
  return b.size() >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4;
}

}  // namespace

Result<std::unique_ptr<Engine>> LoadTorchEngine(ByteSpan model_bytes, const LoadOptions& options) {
  if (!LooksLikeZip(model_bytes)) {
    return InvalidArgument(
        "torchscript: not a TorchScript archive (expected a zip file starting with \"PK\\3\\4\", "
        "as written by torch.jit.save; flatbuffer-format modules are not accepted)");
  }
  if (options.protect_weights) InstallProtectedAllocator();
  bool protected_load = ProtectedAllocatorInstalled();
  ProtectedHeap::Stats before = ProtectedHeap::Global().stats();
  try {
    if (options.threads > 0) at::set_num_threads(options.threads);
    MemoryStreamBuf buffer(model_bytes);
    std::istream stream(&buffer);
    torch::jit::Module module = torch::jit::load(stream, c10::Device(c10::DeviceType::CPU));
    module.eval();
    ProtectedHeap::Stats after = ProtectedHeap::Global().stats();
    uint64_t retained =
        after.live_bytes > before.live_bytes ? after.live_bytes - before.live_bytes : 0;
    bool fully_locked = after.regions_unlocked == before.regions_unlocked &&
                        after.regions_dumpable == before.regions_dumpable &&
                        after.fallback_allocations == before.fallback_allocations;
    auto engine =
        std::make_unique<TorchEngine>(std::move(module), protected_load, retained, fully_locked);
    CUSTODY_RETURN_IF_ERROR(engine->Init(options));
    return std::unique_ptr<Engine>(std::move(engine));
  } catch (const c10::Error& e) {
    return InvalidArgument("torchscript: cannot load the model: " +
                           TorchMessage(e.what_without_backtrace()));
  } catch (const std::bad_alloc&) {
    return ResourceExhausted("torchscript: out of memory loading the model");
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("torchscript: cannot load the model: ") +
                           TorchMessage(e.what()));
  }
}

}  // namespace custody::engine::internal

CUSTODY_BUILTIN_ENGINE_MODULE("torchscript", ::custody::engine::internal::LoadTorchEngine)
