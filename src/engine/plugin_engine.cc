// The plugin host: finds libcustody-engine-<kind>.so, checks its ABI and adapts the C table in
// custody_engine_plugin.h to the Engine interface.
//
// Why the checks are strict: a plugin runs inside the agent with the decrypted model, so loading
// the wrong file is worse than failing. Only absolute plugin directories are searched (the
// working directory never supplies a plugin), world-writable files and files of another user are
// refused, the library is
// resolved eagerly (RTLD_NOW, so a missing dependency fails at load, not mid-inference) and
// locally (RTLD_LOCAL, so its symbols do not interpose on ours), and the kind it declares must
// match its file name.
#include <dlfcn.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "engine/builtin_module.h"
#include "engine/custody_engine_plugin.h"
#include "engine/engine_internal.h"
#include "engine/protected_heap.h"

namespace custody::engine::internal {
namespace {

constexpr size_t kErrorBufferBytes = 1024;

// Owns the dlopen handle; shared by every engine created from the library so that it is
// unloaded only after the last instance is destroyed.
class PluginLibrary {
 public:
  PluginLibrary(void* handle, const custody_engine_plugin_v1* api, std::string path)
      : handle_(handle), api_(api), path_(std::move(path)) {}
  ~PluginLibrary() { dlclose(handle_); }
  PluginLibrary(const PluginLibrary&) = delete;
  PluginLibrary& operator=(const PluginLibrary&) = delete;

  const custody_engine_plugin_v1& api() const { return *api_; }
  const std::string& path() const { return path_; }

 private:
  void* handle_;
  const custody_engine_plugin_v1* api_;
  std::string path_;
};

// The host services handed to an instance; counts what the plugin placed in protected memory.
struct HostContext {
  custody_engine_host_v1 host{};
  std::mutex mu;
  uint64_t live_bytes = 0;
  uint64_t peak_bytes = 0;
  std::unordered_map<void*, size_t> sizes;
};

void* HostAllocProtected(void* ctx, size_t size) {
  auto* host = static_cast<HostContext*>(ctx);
  void* p = ProtectedHeap::Global().Allocate(size);
  if (p == nullptr) return nullptr;
  try {
    std::lock_guard<std::mutex> lock(host->mu);
    host->sizes.emplace(p, size);
    host->live_bytes += size;
    if (host->live_bytes > host->peak_bytes) host->peak_bytes = host->live_bytes;
  } catch (...) {
    ProtectedHeap::Global().Free(p);
    return nullptr;
  }
  return p;
}

void HostFreeProtected(void* ctx, void* ptr) {
  if (ptr == nullptr) return;
  auto* host = static_cast<HostContext*>(ctx);
  {
    std::lock_guard<std::mutex> lock(host->mu);
    auto it = host->sizes.find(ptr);
    if (it == host->sizes.end()) Panic("plugin freed protected memory it did not allocate");
    host->live_bytes -= it->second;
    host->sizes.erase(it);
  }
  ProtectedHeap::Global().Free(ptr);
}

std::string ErrorText(const char* buf) {
  size_t n = strnlen(buf, kErrorBufferBytes);
  std::string s(buf, n);
  return s.empty() ? std::string("(the plugin gave no message)") : s;
}

Status PluginStatus(int32_t code, const std::string& context, const char* err) {
  std::string message = context + ": " + ErrorText(err);
  switch (code) {
    case CUSTODY_PLUGIN_INVALID_ARGUMENT:
      return InvalidArgument(message);
    case CUSTODY_PLUGIN_RESOURCE_EXHAUSTED:
      return ResourceExhausted(message);
    case CUSTODY_PLUGIN_UNIMPLEMENTED:
      return Unimplemented(message);
    case CUSTODY_PLUGIN_INTERNAL:
      return Internal(message);
    default:
      return Internal(message + " (unknown plugin status code " + std::to_string(code) + ")");
  }
}

Result<DType> FromPluginDType(int32_t code) {
  switch (code) {
    case CUSTODY_DTYPE_FLOAT32:
      return DType::kFloat32;
    case CUSTODY_DTYPE_FLOAT64:
      return DType::kFloat64;
    case CUSTODY_DTYPE_FLOAT16:
      return DType::kFloat16;
    case CUSTODY_DTYPE_INT64:
      return DType::kInt64;
    case CUSTODY_DTYPE_INT32:
      return DType::kInt32;
    case CUSTODY_DTYPE_INT8:
      return DType::kInt8;
    case CUSTODY_DTYPE_UINT8:
      return DType::kUInt8;
    case CUSTODY_DTYPE_BOOL:
      return DType::kBool;
    default:
      return Internal("unknown plugin dtype code " + std::to_string(code));
  }
}

int32_t ToPluginDType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return CUSTODY_DTYPE_FLOAT32;
    case DType::kFloat64:
      return CUSTODY_DTYPE_FLOAT64;
    case DType::kFloat16:
      return CUSTODY_DTYPE_FLOAT16;
    case DType::kInt64:
      return CUSTODY_DTYPE_INT64;
    case DType::kInt32:
      return CUSTODY_DTYPE_INT32;
    case DType::kInt8:
      return CUSTODY_DTYPE_INT8;
    case DType::kUInt8:
      return CUSTODY_DTYPE_UINT8;
    case DType::kBool:
      return CUSTODY_DTYPE_BOOL;
  }
  return CUSTODY_DTYPE_UNKNOWN;
}

std::string BoundedString(const char* s) {
  if (s == nullptr) return {};
  return std::string(s, strnlen(s, 256));
}

Result<std::vector<TensorSpec>> ConvertSpecs(const custody_tensor_spec* specs, size_t n,
                                             std::string_view what) {
  if (n > 0 && specs == nullptr) {
    return Internal("describe() reported " + std::to_string(n) + " " + std::string(what) +
                    "s but no array");
  }
  if (n > 4096)
    return Internal("describe() reported " + std::to_string(n) + " " + std::string(what) + "s");
  std::vector<TensorSpec> out;
  for (size_t i = 0; i < n; ++i) {
    const custody_tensor_spec& s = specs[i];
    TensorSpec spec;
    spec.name = BoundedString(s.name);
    if (s.dtype != CUSTODY_DTYPE_UNKNOWN) {
      Result<DType> dtype = FromPluginDType(s.dtype);
      if (!dtype.has_value()) {
        return Internal(std::string(what) + " " + std::to_string(i) + ": " +
                        dtype.error().message());
      }
      spec.dtype = *dtype;
    }
    if (s.rank >= 0) {
      if (s.rank > static_cast<int32_t>(CUSTODY_MAX_RANK) || (s.rank > 0 && s.shape == nullptr)) {
        return Internal(std::string(what) + " " + std::to_string(i) + ": bad rank " +
                        std::to_string(s.rank));
      }
      spec.shape = std::vector<int64_t>(s.shape, s.shape + s.rank);
      for (int64_t& d : *spec.shape) {
        if (d < -1)
          return Internal(std::string(what) + " " + std::to_string(i) + ": dimension " +
                          std::to_string(d));
      }
    }
    out.push_back(std::move(spec));
  }
  return out;
}

class PluginEngine final : public Engine {
 public:
  PluginEngine(std::string kind, std::shared_ptr<PluginLibrary> library,
               std::unique_ptr<HostContext> host, custody_engine_instance* instance)
      : kind_(std::move(kind)),
        library_(std::move(library)),
        host_(std::move(host)),
        instance_(instance) {}

  ~PluginEngine() override {
    library_->api().destroy(instance_);
    // Whatever the plugin forgot to free is wiped now rather than left for the process to end.
    std::lock_guard<std::mutex> lock(host_->mu);
    for (auto& [ptr, size] : host_->sizes) ProtectedHeap::Global().Free(ptr);
    host_->sizes.clear();
    host_->live_bytes = 0;
  }

  Status Init(const LoadOptions& options) {
    const custody_tensor_spec* in = nullptr;
    const custody_tensor_spec* out = nullptr;
    size_t n_in = 0;
    size_t n_out = 0;
    int32_t rc = library_->api().describe(instance_, &in, &n_in, &out, &n_out);
    if (rc != CUSTODY_PLUGIN_OK) {
      return Internal("engine '" + kind_ + "': describe() failed with code " + std::to_string(rc));
    }
    CUSTODY_ASSIGN_OR_RETURN(std::vector<TensorSpec> known_in, ConvertSpecs(in, n_in, "input"));
    CUSTODY_ASSIGN_OR_RETURN(std::vector<TensorSpec> known_out, ConvertSpecs(out, n_out, "output"));
    CUSTODY_ASSIGN_OR_RETURN(inputs_, ReconcileSchema("input", known_in, options.input_schema));
    CUSTODY_ASSIGN_OR_RETURN(outputs_, ReconcileSchema("output", known_out, options.output_schema));
    return OkStatus();
  }

  std::string_view kind() const override { return kind_; }
  std::vector<TensorSpec> inputs() const override { return inputs_; }
  std::vector<TensorSpec> outputs() const override { return outputs_; }

  Result<std::vector<Tensor>> Run(std::span<const Tensor> inputs) override {
    CUSTODY_RETURN_IF_ERROR(ValidateInputs(inputs_, inputs));
    std::vector<custody_tensor> c_inputs(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& t = inputs[i];
      if (t.shape.size() > CUSTODY_MAX_RANK) {
        return InvalidArgument("input " + std::to_string(i) + " has rank " +
                               std::to_string(t.shape.size()) + ", more than plugins accept (" +
                               std::to_string(CUSTODY_MAX_RANK) + ")");
      }
      c_inputs[i].name = t.name.c_str();
      c_inputs[i].dtype = ToPluginDType(t.dtype);
      c_inputs[i].rank = static_cast<uint32_t>(t.shape.size());
      c_inputs[i].shape = t.shape.data();
      c_inputs[i].data = t.data.data();
      c_inputs[i].byte_size = t.data.size();
    }

    std::unique_lock<std::mutex> lock(run_mu_, std::defer_lock);
    if ((library_->api().flags & CUSTODY_PLUGIN_FLAG_THREAD_SAFE_RUN) == 0) lock.lock();
    custody_tensor* c_outputs = nullptr;
    size_t n_outputs = 0;
    char err[kErrorBufferBytes] = {};
    int32_t rc = library_->api().run(instance_, c_inputs.data(), c_inputs.size(), &c_outputs,
                                     &n_outputs, err, sizeof(err));
    if (rc != CUSTODY_PLUGIN_OK) {
      err[sizeof(err) - 1] = '\0';
      return PluginStatus(rc, "engine '" + kind_ + "' failed to run", err);
    }
    Result<std::vector<Tensor>> outputs = CopyOutputs(c_outputs, n_outputs);
    library_->api().free_outputs(instance_, c_outputs, n_outputs);
    return outputs;
  }

  EngineProtection Protection() const override {
    EngineProtection p;
    p.memory = ProtectedHeap::Global().protection();
    uint64_t live = 0;
    {
      std::lock_guard<std::mutex> lock(host_->mu);
      live = host_->live_bytes;
    }
    int32_t covered = 0;
    std::string plugin_says = "the plugin does not describe its memory protection";
    if (library_->api().describe_protection != nullptr) {
      plugin_says = BoundedString(library_->api().describe_protection(instance_, &covered));
    }
    p.weights_covered = covered == 1 && p.memory.full();
    p.report = "plugin " + library_->path() + " (version " +
               BoundedString(library_->api().version) + "): " + FormatMiB(live) +
               " held in Custody's protected memory; plugin reports: " + plugin_says +
               ". Protected heap: " + p.memory.ToString() + ".";
    return p;
  }

 private:
  Result<std::vector<Tensor>> CopyOutputs(const custody_tensor* c_outputs, size_t n) const {
    std::string who = "engine '" + kind_ + "' returned ";
    if (n > 0 && c_outputs == nullptr)
      return Internal(who + std::to_string(n) + " outputs but no array");
    if (!outputs_.empty() && n != outputs_.size()) {
      return Internal(who + std::to_string(n) + " outputs but describes " +
                      std::to_string(outputs_.size()));
    }
    std::vector<Tensor> out;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const custody_tensor& c = c_outputs[i];
      std::string label = who + "output " + std::to_string(i);
      Tensor t;
      CUSTODY_ASSIGN_OR_RETURN(t.dtype, FromPluginDType(c.dtype));
      if (c.rank > CUSTODY_MAX_RANK || (c.rank > 0 && c.shape == nullptr)) {
        return Internal(label + " with an invalid rank " + std::to_string(c.rank));
      }
      t.shape.assign(c.shape, c.shape + c.rank);
      Result<size_t> expected = t.ExpectedByteSize();
      if (!expected.has_value()) return Internal(label + ": " + expected.error().message());
      if (*expected != c.byte_size || (c.byte_size > 0 && c.data == nullptr)) {
        return Internal(label + " with " + std::to_string(c.byte_size) + " bytes of data, but " +
                        std::string(DTypeName(t.dtype)) + " of that shape needs " +
                        std::to_string(*expected));
      }
      const auto* bytes = static_cast<const uint8_t*>(c.data);
      t.data.assign(bytes, bytes + c.byte_size);
      t.name = BoundedString(c.name);
      if (t.name.empty()) {
        t.name = i < outputs_.size() && !outputs_[i].name.empty() ? outputs_[i].name
                                                                  : "output" + std::to_string(i);
      }
      out.push_back(std::move(t));
    }
    return out;
  }

  std::string kind_;
  std::shared_ptr<PluginLibrary> library_;
  std::unique_ptr<HostContext> host_;
  custody_engine_instance* instance_;
  std::vector<TensorSpec> inputs_;
  std::vector<TensorSpec> outputs_;
  std::mutex run_mu_;
};

// dlopen + symbol + ABI checks. `path` exists.
Result<std::shared_ptr<PluginLibrary>> OpenPlugin(const std::string& path, std::string_view kind) {
  CUSTODY_RETURN_IF_ERROR(CheckLibraryFile(path, "plugin"));
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return FailedPrecondition("cannot load plugin " + path + ": " +
                              (why != nullptr ? why : "unknown dlopen error"));
  }
  auto close_on_error = [&](Status s) {
    dlclose(handle);
    return s;
  };
  void* sym = dlsym(handle, CUSTODY_ENGINE_PLUGIN_V1_SYMBOL);
  if (sym == nullptr) {
    std::string hint;
    for (int v = 2; v <= 9; ++v) {
      std::string other = "custody_engine_plugin_v" + std::to_string(v) + "_get";
      if (dlsym(handle, other.c_str()) != nullptr) {
        hint = " (it exports " + other + ": built for plugin ABI v" + std::to_string(v) +
               "; this host supports v1)";
        break;
      }
    }
    return close_on_error(FailedPrecondition("plugin " + path + " does not export " +
                                             CUSTODY_ENGINE_PLUGIN_V1_SYMBOL + hint));
  }
  auto get = reinterpret_cast<custody_engine_plugin_v1_get_fn>(sym);
  const custody_engine_plugin_v1* api = get();
  if (api == nullptr) {
    return close_on_error(FailedPrecondition("plugin " + path + ": " +
                                             CUSTODY_ENGINE_PLUGIN_V1_SYMBOL + "() returned NULL"));
  }
  if (api->abi_version != CUSTODY_ENGINE_PLUGIN_ABI_VERSION) {
    return close_on_error(FailedPrecondition(
        "plugin " + path + " declares plugin ABI version " + std::to_string(api->abi_version) +
        "; this host supports version " + std::to_string(CUSTODY_ENGINE_PLUGIN_ABI_VERSION)));
  }
  if (api->struct_size < sizeof(custody_engine_plugin_v1)) {
    return close_on_error(FailedPrecondition(
        "plugin " + path + " has a function table of " + std::to_string(api->struct_size) +
        " bytes; ABI v1 needs at least " + std::to_string(sizeof(custody_engine_plugin_v1))));
  }
  if (api->create == nullptr || api->describe == nullptr || api->run == nullptr ||
      api->free_outputs == nullptr || api->destroy == nullptr) {
    return close_on_error(
        FailedPrecondition("plugin " + path + " leaves a required function of ABI v1 NULL"));
  }
  std::string declared = BoundedString(api->kind);
  if (declared != kind) {
    return close_on_error(FailedPrecondition("plugin " + path + " declares kind '" + declared +
                                             "', not '" + std::string(kind) + "'"));
  }
  return std::make_shared<PluginLibrary>(handle, api, path);
}

}  // namespace

Result<std::unique_ptr<Engine>> LoadPluginEngine(std::string_view kind, ByteSpan model_bytes,
                                                 const LoadOptions& options) {
  std::string file = "libcustody-engine-" + std::string(kind) + ".so";
  if (options.plugin_dirs.empty()) {
    return NotFound("engine '" + std::string(kind) + "' is not built in (built-in kinds: " +
                    [] {
                      std::string k;
                      for (const auto& s : BuiltinEngineKinds()) k += (k.empty() ? "" : ", ") + s;
                      return k.empty() ? std::string("none") : k;
                    }() +
                    ") and no plugin directories are configured to look for " + file);
  }
  std::string looked;
  std::string path;
  for (const std::string& dir : options.plugin_dirs) {
    if (dir.empty() || dir[0] != '/') {
      return InvalidArgument("plugin directory '" + dir + "' is not an absolute path");
    }
    std::string candidate = dir + (dir.back() == '/' ? "" : "/") + file;
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0) {
      path = candidate;
      break;
    }
    looked += (looked.empty() ? "" : ", ") + candidate + " (" + std::strerror(errno) + ")";
  }
  if (path.empty()) {
    return NotFound("no plugin for engine '" + std::string(kind) + "'; looked for " + looked);
  }

  CUSTODY_ASSIGN_OR_RETURN(std::shared_ptr<PluginLibrary> library, OpenPlugin(path, kind));

  auto host = std::make_unique<HostContext>();
  host->host.struct_size = sizeof(custody_engine_host_v1);
  host->host.threads = options.threads;
  host->host.alloc_protected = &HostAllocProtected;
  host->host.free_protected = &HostFreeProtected;
  host->host.host_ctx = host.get();

  custody_engine_instance* instance = nullptr;
  char err[kErrorBufferBytes] = {};
  int32_t rc = library->api().create(&host->host, model_bytes.data(), model_bytes.size(), &instance,
                                     err, sizeof(err));
  err[sizeof(err) - 1] = '\0';
  if (rc != CUSTODY_PLUGIN_OK) {
    if (instance != nullptr) library->api().destroy(instance);
    return PluginStatus(rc, "engine '" + std::string(kind) + "' cannot load the model", err);
  }
  if (instance == nullptr) {
    return Internal("engine '" + std::string(kind) + "': create() succeeded without an instance");
  }
  auto engine = std::make_unique<PluginEngine>(std::string(kind), std::move(library),
                                               std::move(host), instance);
  CUSTODY_RETURN_IF_ERROR(engine->Init(options));
  return std::unique_ptr<Engine>(std::move(engine));
}

}  // namespace custody::engine::internal
