// Finds, checks and loads the built-in engine modules (builtin_module.h).
#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "engine/builtin_module.h"
#include "engine/engine_internal.h"

namespace custody::engine::internal {
namespace {

bool IsCompiledIn(std::string_view kind) {
  for (const std::string& k : BuiltinEngineKinds()) {
    if (k == kind) return true;
  }
  return false;
}

// dlopen + entry point + build identity. Modules are never closed (RTLD_NODELETE), so the
// returned table stays valid for the life of the process.
Result<const BuiltinEngineModule*> OpenModule(std::string_view kind) {
  CUSTODY_ASSIGN_OR_RETURN(std::string dir, BuiltinEngineDir());
  const std::string path = dir + "/libcustody-builtin-" + std::string(kind) + ".so";
  const std::string reinstall =
      "; reinstall Custody (or rebuild it) so that the engine modules "
      "match this program";
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return FailedPrecondition("engine '" + std::string(kind) + "' is part of this build but its " +
                              "module " + path + " cannot be found (" + std::strerror(errno) + ")" +
                              reinstall);
  }
  CUSTODY_RETURN_IF_ERROR(CheckLibraryFile(path, "engine module"));
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (handle == nullptr) {
    const char* why = dlerror();
    return FailedPrecondition("cannot load engine module " + path + ": " +
                              (why != nullptr ? why : "unknown dlopen error") + reinstall);
  }
  // From here on the handle is deliberately never closed: RTLD_NODELETE keeps the module anyway,
  // and a module whose checks fail is simply not used.
  void* sym = dlsym(handle, kBuiltinEntrySymbol);
  if (sym == nullptr) {
    return FailedPrecondition("engine module " + path + " does not export " + kBuiltinEntrySymbol +
                              reinstall);
  }
  const BuiltinEngineModule* module = reinterpret_cast<BuiltinEntryFn>(sym)();
  if (module == nullptr || module->build_id == nullptr || module->kind == nullptr ||
      module->load == nullptr) {
    return FailedPrecondition("engine module " + path + " returned an incomplete table" +
                              reinstall);
  }
  if (kBuiltinBuildId != module->build_id) {
    return FailedPrecondition("engine module " + path + " comes from build '" + module->build_id +
                              "', this program is '" + std::string(kBuiltinBuildId) + "'" +
                              reinstall);
  }
  if (kind != module->kind) {
    return FailedPrecondition("engine module " + path + " declares kind '" + module->kind +
                              "', not '" + std::string(kind) + "'" + reinstall);
  }
  return module;
}

}  // namespace

Status CheckLibraryFile(const std::string& path, std::string_view what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  const std::string label = std::string(what) + " " + path;
  if (!S_ISREG(st.st_mode)) return FailedPrecondition(label + " is not a regular file");
  if ((st.st_mode & S_IWOTH) != 0) {
    return FailedPrecondition(label + " is world-writable; refusing to load it (chmod o-w)");
  }
  if (st.st_uid != 0 && st.st_uid != geteuid()) {
    return FailedPrecondition(label + " is owned by uid " + std::to_string(st.st_uid) +
                              ", neither root nor this process's user (uid " +
                              std::to_string(geteuid()) + "); refusing to load it");
  }
  return OkStatus();
}

Result<std::string> BuiltinEngineDir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&LoadBuiltinEngine), &info) == 0 ||
      info.dli_fname == nullptr) {
    return Internal("cannot locate libcustody-engine in this process (dladdr failed)");
  }
  char resolved[PATH_MAX];
  if (realpath(info.dli_fname, resolved) == nullptr) {
    return ErrnoStatus(errno, std::string("resolve the path of ") + info.dli_fname);
  }
  std::string lib(resolved);
  size_t slash = lib.rfind('/');
  if (slash == std::string::npos) return Internal("library path '" + lib + "' has no directory");
  return lib.substr(0, slash) + "/custody/engines";
}

Result<std::unique_ptr<Engine>> LoadBuiltinEngine(std::string_view kind, ByteSpan model_bytes,
                                                  const LoadOptions& options) {
  if (!IsCompiledIn(kind)) {
    return Unimplemented("engine '" + std::string(kind) +
                         "' is not compiled into this build (configure with -DCUSTODY_WITH_" +
                         (kind == "onnx" ? "OPENCV" : "TORCH") + "=ON)");
  }
  static std::mutex mu;
  static std::map<std::string, const BuiltinEngineModule*, std::less<>> loaded;
  const BuiltinEngineModule* module = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = loaded.find(kind);
    if (it == loaded.end()) {
      CUSTODY_ASSIGN_OR_RETURN(module, OpenModule(kind));
      loaded.emplace(std::string(kind), module);
    } else {
      module = it->second;
    }
  }
  return module->load(model_bytes, options);
}

}  // namespace custody::engine::internal
