// A running custodian: configuration, keys, store, service, API and HTTPS server wired
// together in the order they depend on each other, and torn down in reverse. main.cc is this
// plus signal handling; tests start it in-process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/base/status.h"
#include "custodian/config.h"
#include "custodian/service.h"
#include "custodian/store/store.h"
#include "http/router.h"

namespace custody::custodian {

struct InitResult {
  std::string config_path;
  std::string admin_token;  // shown once; only its hash is stored
};

// `custodian init`: creates data_dir (0700), its keys, the database and custodian.toml, and the
// first admin token. Refuses to touch an existing data_dir/keys.
Result<InitResult> InitDataDir(const std::string& data_dir, const std::string& listen,
                               const std::vector<std::string>& dns_names,
                               const std::vector<std::string>& ip_addresses);

class App {
 public:
  // Opens everything and starts serving; logs go to stderr at the configured level. `clock` is
  // the service's notion of now (tests move it to expire nonces and tokens).
  static Result<std::unique_ptr<App>> Start(const Config& config, Clock clock = SystemNow);
  ~App();  // stops with a short grace period if still running

  uint16_t port() const;
  // For tools and tests: the store, and the routes being served (method, pattern, access).
  Store& store();
  const std::vector<http::RouteInfo>& routes() const;
  // Graceful: stop accepting, finish requests in flight up to `grace`, close the store.
  void Stop(std::chrono::milliseconds grace);

  struct Parts;

 private:
  explicit App(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

}  // namespace custody::custodian
