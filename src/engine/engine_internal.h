// Internal to src/engine: the per-kind loaders behind LoadEngine and helpers they share.
// Nothing here includes libtorch or OpenCV, so engine.cc compiles quickly.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"

namespace custody::engine::internal {

// The built-in engines' loaders, each in its own module (builtin_module.h).
Result<std::unique_ptr<Engine>> LoadTorchEngine(ByteSpan model_bytes, const LoadOptions& options);
Result<std::unique_ptr<Engine>> LoadOnnxEngine(ByteSpan model_bytes, const LoadOptions& options);
// Plugins through the C ABI (plugin_engine.cc).
Result<std::unique_ptr<Engine>> LoadPluginEngine(std::string_view kind, ByteSpan model_bytes,
                                                 const LoadOptions& options);

// Merges what the engine knows (`known`, possibly empty = unknown) with the caller's declared
// schema. With no declaration the result is `known`. With one, it must agree with `known` where
// both say something (count when known is non-empty, names, dtypes, ranks, static dims) and the
// result is the declaration with its gaps filled from `known`. `what` is "input" or "output".
Result<std::vector<TensorSpec>> ReconcileSchema(
    std::string_view what, const std::vector<TensorSpec>& known,
    const std::optional<std::vector<TensorSpec>>& declared);

// Shortens a third-party exception message to its first `max_lines` lines (libtorch appends long
// backtraces and source excerpts).
std::string FirstLines(std::string_view text, int max_lines);

}  // namespace custody::engine::internal
