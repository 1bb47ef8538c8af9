#include "custodian/app.h"

#include <sys/stat.h>

#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "core/base/file.h"
#include "core/base/log.h"
#include "custodian/api.h"
#include "custodian/keys.h"
#include "custodian/service.h"
#include "custodian/store/sqlite_store.h"
#include "http/server.h"

namespace custody::custodian {

// Declared in dependency order: destroyed in reverse (server first, keys last).
struct App::Parts {
  std::unique_ptr<Logger> logger;
  std::unique_ptr<CustodianKeys> keys;
  std::unique_ptr<Store> store;
  std::unique_ptr<http::Metrics> metrics;
  std::unique_ptr<CustodianService> service;
  std::unique_ptr<Api> api;
  std::unique_ptr<http::Server> server;
  std::vector<http::RouteInfo> routes;
  std::thread pruner;
  std::mutex mu;
  std::condition_variable stop_cv;
  bool stopping = false;
};

Result<InitResult> InitDataDir(const std::string& data_dir, const std::string& listen,
                               const std::vector<std::string>& dns_names,
                               const std::vector<std::string>& ip_addresses) {
  if (data_dir.empty() || data_dir[0] != '/') {
    return InvalidArgument("--data must be an absolute path");
  }
  if (mkdir(data_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    if (errno == ENOENT) {
      return NotFound("cannot create the data directory " + data_dir +
                      ": its parent directory does not exist; create the parent first");
    }
    return ErrnoStatus(errno, "create " + data_dir);
  }
  InitOptions keys;
  keys.dns_names = dns_names;
  keys.ip_addresses = ip_addresses;
  CUSTODY_RETURN_IF_ERROR(CreateKeys(data_dir, keys));
  mkdir((data_dir + "/tpm-ca").c_str(), 0755);
  const std::string config_path = data_dir + "/custodian.toml";
  CUSTODY_RETURN_IF_ERROR(WriteFileAtomic(config_path, AsBytes(DefaultConfigText(data_dir, listen)),
                                          WriteOptions{0600, Overwrite::kRefuse}));
  CUSTODY_ASSIGN_OR_RETURN(Config config, LoadConfig(config_path));
  CUSTODY_ASSIGN_OR_RETURN(CustodianKeys loaded, LoadKeys(data_dir));
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<Store> store,
                           OpenSqliteStore(config.store_path, StoreOptions{config.durability}));
  CustodianService service(*store, loaded, ServiceOptions{});
  CUSTODY_ASSIGN_OR_RETURN(
      nlohmann::json token,
      service.CreateToken(Actor{"system", "", ""}, "initial-admin", Role::kAdmin));
  return InitResult{config_path, token["token"].get<std::string>()};
}

App::App(std::unique_ptr<Parts> parts) : parts_(std::move(parts)) {}

App::~App() { Stop(std::chrono::milliseconds(2000)); }

uint16_t App::port() const { return parts_->server ? parts_->server->port() : 0; }

Store& App::store() { return *parts_->store; }

const std::vector<http::RouteInfo>& App::routes() const { return parts_->routes; }

Result<std::unique_ptr<App>> App::Start(const Config& config, Clock clock) {
  auto p = std::make_unique<Parts>();
  p->logger = Logger::Stderr(config.log_level);
  CUSTODY_ASSIGN_OR_RETURN(CustodianKeys keys, LoadKeys(config.data_dir));
  p->keys = std::make_unique<CustodianKeys>(std::move(keys));
  CUSTODY_ASSIGN_OR_RETURN(p->store,
                           OpenSqliteStore(config.store_path, StoreOptions{config.durability}));
  p->metrics = std::make_unique<http::Metrics>();
  ServiceOptions service_options;
  service_options.ek_ca_dir = config.ek_ca_dir;
  p->service =
      std::make_unique<CustodianService>(*p->store, *p->keys, service_options, std::move(clock));
  p->api = std::make_unique<Api>(*p->service, *p->store, p->metrics.get(), ApiOptions{});
  http::ServerOptions server = config.server;
  server.certificate_chain_pem = p->keys->server_cert_pem;
  server.private_key_pem = std::string(AsChars(p->keys->server_key_pem.span()));
  server.client_ca_pem = p->keys->ca.CertificatePem();
  server.long_poll_hubs.push_back(&p->api->hub());
  http::Router router = p->api->BuildRouter();
  p->routes = router.Routes();
  CUSTODY_ASSIGN_OR_RETURN(p->server,
                           http::Server::Start(server, std::move(router), p->api->Authenticator(),
                                               p->metrics.get(), p->logger.get()));
  SecureWipe(server.private_key_pem.data(), server.private_key_pem.size());
  // Expired nonces and abandoned enrollments are pruned in the background.
  Parts* raw = p.get();
  p->pruner = std::thread([raw] {
    std::unique_lock<std::mutex> lock(raw->mu);
    while (!raw->stop_cv.wait_for(lock, std::chrono::minutes(5), [raw] { return raw->stopping; })) {
      lock.unlock();
      if (auto* sqlite = dynamic_cast<SqliteStore*>(raw->store.get()); sqlite != nullptr) {
        Result<PruneCounts> pruned = sqlite->Prune(SystemNow(), std::chrono::hours(1));
        if (!pruned) raw->logger->Warn("prune failed", {{"error", pruned.error().ToString()}});
      }
      lock.lock();
    }
  });
  p->logger->Info("custodian started",
                  {{"port", p->server->port()},
                   {"data_dir", config.data_dir},
                   {"lease_key", p->keys->lease_key.public_key().Fingerprint()}});
  return std::unique_ptr<App>(new App(std::move(p)));
}

void App::Stop(std::chrono::milliseconds grace) {
  if (!parts_) return;
  {
    std::lock_guard<std::mutex> lock(parts_->mu);
    if (parts_->stopping) return;
    parts_->stopping = true;
  }
  parts_->stop_cv.notify_all();
  if (parts_->server) parts_->server->Stop(grace);
  if (parts_->pruner.joinable()) parts_->pruner.join();
  parts_->logger->Info("custodian stopped", {});
  parts_->server.reset();
  parts_->api.reset();
  parts_->service.reset();
  parts_->store.reset();  // every acknowledged change is already committed
}

}  // namespace custody::custodian
