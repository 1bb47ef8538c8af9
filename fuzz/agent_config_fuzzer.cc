// libFuzzer target for the device agent's configuration reader (src/agent/config.h): the TOML
// text of agent.toml, parsed by toml++ and checked key by key by ParseAgentConfig.
//
// As for the custodian's, the fuzz build compiles the reader with toml++ header-only so the TOML
// parser is instrumented too.
// Properties beyond "no crash, no sanitizer report, no exception escaping": an accepted
// configuration has absolute paths, a custodian host and port, a socket mode that gives other
// users nothing, every number within the range config.h documents, and the pairs that only make
// sense together (threshold and amount; a TCP port or required tokens and a tokens file).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "agent/config.h"

namespace {

bool Absolute(const std::string& p) { return !p.empty() && p[0] == '/'; }
bool AbsoluteOrEmpty(const std::string& p) { return p.empty() || p[0] == '/'; }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace custody::agent;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  custody::Result<AgentConfig> c = ParseAgentConfig(text, "fuzz.toml");
  if (!c) return 0;
  const AgentConfig::Serve& s = c->serve;
  const AgentConfig::Metering& m = c->metering;
  bool ok = Absolute(c->state_dir) && Absolute(c->models_dir) && Absolute(c->vendor_public_key) &&
            Absolute(s.socket) && AbsoluteOrEmpty(c->custodian.ca_file) &&
            AbsoluteOrEmpty(s.tokens_file) && !c->custodian.host.empty() &&
            c->custodian.port != 0 && (s.socket_mode & ~0770u) == 0 && s.workers >= 1 &&
            s.workers <= 256 && s.max_queue <= 100000 && m.unit >= 1 && m.unit <= 65536 &&
            (m.extension_threshold == 0) == (m.extension_amount == 0) &&
            (!s.require_token || !s.tokens_file.empty()) &&
            (!s.tcp_port || (*s.tcp_port != 0 && !s.tokens_file.empty())) &&
            c->engine.threads >= 0 && c->engine.threads <= 256;
  for (const std::string& d : c->engine.plugin_dirs) ok = ok && Absolute(d);
  if (!ok) std::abort();
  return 0;
}
