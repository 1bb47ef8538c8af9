// libFuzzer target for the custodian's request-target parsing (src/http/url.h): the
// path and query of every HTTP request, before routing or authentication.
//
// Each input is a request target: split (SplitTarget), its path percent-decoded as a path
// parameter is, and its query parsed (ParseQuery) as the server does. The raw input is also
// decoded directly in both modes, so escapes reach PercentDecode whether or not the target splits.
// Properties beyond "no crash, no sanitizer report": a split target rebuilds to the input; every
// decoded text is clean (protocol::IsCleanText) and never longer than what it was decoded from;
// parsed query keys are unique by construction and their values decode cleanly.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/protocol/json.h"
#include "http/url.h"

namespace {

using namespace custody;
using namespace custody::http;

void CheckDecoded(const Result<std::string>& decoded, std::string_view from) {
  if (!decoded) return;
  if (decoded->size() > from.size() || !protocol::IsCleanText(*decoded)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  CheckDecoded(PercentDecode(in, true, "input"), in);
  CheckDecoded(PercentDecode(in, false, "input"), in);

  Result<Target> target = SplitTarget(in);
  if (!target) return 0;
  if (target->path.empty() || target->path[0] != '/') std::abort();
  const std::string rebuilt =
      target->path + (in.find('?') != std::string_view::npos ? "?" + target->query : "");
  if (rebuilt != in) std::abort();
  CheckDecoded(PercentDecode(target->path, false, "path"), target->path);

  Result<std::map<std::string, std::string>> query = ParseQuery(target->query);
  if (!query) return 0;
  for (const auto& [key, value] : *query) {
    if (key.size() > target->query.size() || value.size() > target->query.size() ||
        !protocol::IsCleanText(key) || !protocol::IsCleanText(value)) {
      std::abort();
    }
  }
  return 0;
}
