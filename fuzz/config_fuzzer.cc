// libFuzzer target for the custodian's configuration reader (src/custodian/config.h): the TOML
// text of custodian.toml, parsed by toml++ and checked key by key by ParseConfig.
//
// The fuzz build compiles config.cc into this target with toml++ header-only, so the TOML parser
// itself is instrumented too (the packaged shared library is not).
// Properties beyond "no crash, no sanitizer report, no exception escaping": an accepted
// configuration has an absolute data directory and store path, and every limit within the range
// ParseConfig documents; and the configuration `custodian init` writes for the same data
// directory is accepted and names the same directory.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "custodian/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace custody;
  using namespace custody::custodian;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<Config> c = ParseConfig(text, "fuzz.toml");
  if (!c) return 0;
  const custody::http::ServerOptions& s = c->server;
  if (c->data_dir.empty() || c->data_dir[0] != '/' || c->store_path.empty() ||
      c->store_path[0] != '/' || (!c->ek_ca_dir.empty() && c->ek_ca_dir[0] != '/') ||
      s.io_threads < 1 || s.io_threads > 256 || s.worker_threads < 1 || s.worker_threads > 1024 ||
      s.max_body_bytes < 1024 || s.max_header_bytes < 1024 || s.max_connections < 1 ||
      s.header_timeout.count() < 100 || s.body_timeout.count() < 100 ||
      s.idle_timeout.count() < 100 || !(s.rate_per_second >= 0) || !(s.rate_burst >= 1)) {
    std::abort();
  }
  // What `custodian init` would write for this data directory reads back to the same directory
  // (DefaultConfigText escapes it: quotes, control characters, non-ASCII).
  Result<Config> init = ParseConfig(DefaultConfigText(c->data_dir, "127.0.0.1:8443"), "init");
  if (!init || init->data_dir != c->data_dir) std::abort();
  return 0;
}
