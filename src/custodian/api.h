// The custodian's HTTP API (docs/api/openapi.json): routes, request parsing and the mapping of
// CustodianService results to HTTP answers. Parsing is strict (protocol/json.h): unknown fields,
// wrong types and out-of-range values are 400 with the field named.
//
// Access: device routes need a client certificate from the custodian's CA (the device id is its
// CN); /v1/enroll/* is public (the device has no certificate yet; the one-time enrollment token
// and the TPM prove it); /v1/admin/* needs a bearer token whose role is viewer (reads), operator
// (licences, enrollment tokens, decisions on extensions, the stop switch) or admin (models,
// groups and golden sets, tokens).
#pragma once

#include <memory>

#include "custodian/service.h"
#include "http/long_poll.h"
#include "http/metrics.h"
#include "http/router.h"
#include "http/server.h"

namespace custody::custodian {

struct ApiOptions {
  std::chrono::milliseconds default_poll_wait{25'000};
  std::chrono::milliseconds max_poll_wait{55'000};
  unsigned event_threads = 2;  // database reads of long-polls run here, off the I/O threads
};

// Owns what the routes share (the long-poll hub, the event thread pool). Build it, take its
// router and authenticator to start the server, and keep it alive while the server runs.
class Api {
 public:
  Api(CustodianService& service, Store& store, const http::Metrics* metrics, ApiOptions options);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  http::Router BuildRouter();
  http::TokenAuthenticator Authenticator();
  http::LongPollHub& hub() { return hub_; }

 private:
  struct EventCache;
  CustodianService& service_;
  Store& store_;
  const http::Metrics* metrics_;
  ApiOptions options_;
  http::LongPollHub hub_;
  std::unique_ptr<EventCache> cache_;
  std::unique_ptr<http::asio::thread_pool> pool_;
};

}  // namespace custody::custodian
