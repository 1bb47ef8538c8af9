// Built-in engine modules: how libcustody-engine finds and checks the libtorch and OpenCV DNN
// engines, which live in their own shared modules (docs/ENGINES.md, "Where engines live").
//
// Why modules: libtorch and OpenCV together map ~160 MB and run thousands of static initialisers
// at start-up. Linked into every program, they made `custody seal` and `custody inspect`, which
// never run a model, cost 160 MB of RSS and a slow start, and they would sit in the custodian and
// in an agent serving a model of the other kind. LoadEngine dlopens a module the first time its
// kind is asked for and keeps it for the life of the process (RTLD_NODELETE: libtorch and OpenCV
// cannot be unloaded safely, and their allocators stay installed).
//
// The modules are internal: same build, same compiler, C++ types across the boundary. That is
// only safe with the exact build that made libcustody-engine, so each module carries the build
// identity (kBuiltinBuildId) and the loader refuses any other, with an error that says to
// reinstall. Vendor engines use the stable C ABI in custody_engine_plugin.h instead.
//
// Layout: <dir of libcustody-engine.so>/custody/engines/libcustody-builtin-<kind>.so, in the build
// tree (build/lib/...) and when installed (<libdir>/...) alike.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "engine/engine.h"

namespace custody::engine::internal {

// CUSTODY_BUILD_ID comes from CMake: project version, compiler and version.
inline constexpr std::string_view kBuiltinBuildId = CUSTODY_BUILD_ID;

using BuiltinLoadFn = Result<std::unique_ptr<Engine>> (*)(ByteSpan model_bytes,
                                                          const LoadOptions& options);

// What a module's entry point returns. Static storage in the module.
struct BuiltinEngineModule {
  const char* build_id;  // must equal kBuiltinBuildId
  const char* kind;      // "torchscript", "onnx"
  BuiltinLoadFn load;
};

// The entry point every built-in module exports (extern "C", default visibility).
inline constexpr const char kBuiltinEntrySymbol[] = "custody_builtin_engine_module";
using BuiltinEntryFn = const BuiltinEngineModule* (*)();

// Defines a module's entry point; used once in each module (torch_engine.cc, opencv_engine.cc),
// at global scope.
#define CUSTODY_BUILTIN_ENGINE_MODULE(kind_literal, load_fn)              \
  extern "C" __attribute__((visibility("default")))                       \
  const ::custody::engine::internal::BuiltinEngineModule*                 \
  custody_builtin_engine_module() {                                       \
    static const ::custody::engine::internal::BuiltinEngineModule module{ \
        CUSTODY_BUILD_ID, kind_literal, &(load_fn)};                      \
    return &module;                                                       \
  }

// Loads the module for `kind` (once per process) and creates an engine from it.
//   kUnimplemented      the kind was not compiled into this build
//   kFailedPrecondition the module file is missing, unsafe (world-writable, foreign owner), does
//                       not load, or comes from another build; the message names the file and
//                       says to reinstall
Result<std::unique_ptr<Engine>> LoadBuiltinEngine(std::string_view kind, ByteSpan model_bytes,
                                                  const LoadOptions& options);

// The directory the built-in modules are loaded from (for messages and `custody run --help`).
Result<std::string> BuiltinEngineDir();

// Checks a shared library before it is dlopen'ed into a process that holds decrypted models: a
// regular file, not world-writable, owned by root or by this process's effective user.
// kFailedPrecondition names the file and the problem. `what` is "plugin" or "engine module".
Status CheckLibraryFile(const std::string& path, std::string_view what);

}  // namespace custody::engine::internal
