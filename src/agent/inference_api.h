// The agent's inference API (DESIGN.md §8; PROTOCOL.md §16-§17): KServe v2 / Open Inference
// Protocol routes, and Custody's status, on top of the local server (local_server.h).
//
//   GET  /v2                                   server metadata
//   GET  /v2/health/live | /v2/health/ready    liveness; readiness (200 when a model serves)
//   GET  /v2/models/{m}[/versions/{v}]         model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready   200 when it may be served now, else 503 / 403
//   POST /v2/models/{m}[/versions/{v}]/infer   inference
//   GET  /v1/status                            lease, budget, expiry, grace, memory protection
//
// An inference: the lease is checked (revocation, licence end, offline grace, TPM clock, budget),
// the body parsed, one request reserved on the meter (the TPM counter advances here once per
// block), the engine run, the answer encoded and the request recorded in the journal before the
// answer leaves. A request that fails before its answer is ready is not counted.
//
// Refusals carry the KServe error body {"error": "<refusal>: <message>"} and the header
// "Custody-Refusal: <refusal>" (lease_book.h RefusalName): 403 for revoked, licence_ended,
// offline_grace_expired, tpm_clock_behind, budget_exhausted and platform_not_approved; 503 for
// no_lease and model_unavailable (retry later).
//
// Threading: Handle runs on the local server's worker threads, concurrently.
#pragma once

#include <functional>
#include <string>

#include "agent/kserve.h"
#include "agent/lease_manager.h"
#include "agent/local_server.h"
#include "agent/meter.h"

namespace custody::agent {

inline constexpr std::string_view kRefusalHeader = "Custody-Refusal";

class InferenceApi {
 public:
  using StatusProvider = std::function<nlohmann::json()>;
  InferenceApi(LeaseManager& leases, Meter& meter, StatusProvider status,
               kserve::KserveLimits limits = {});

  LocalResponse Handle(LocalRequest& request);

 private:
  LocalResponse Infer(const kserve::ModelRoute& route, LocalRequest& request);
  LocalResponse Metadata(const kserve::ModelRoute& route);
  LocalResponse Ready(const kserve::ModelRoute& route);

  LeaseManager& leases_;
  Meter& meter_;
  StatusProvider status_;
  const kserve::KserveLimits limits_;
};

// The HTTP status for a Status code on this API.
int HttpStatusFor(StatusCode code);

}  // namespace custody::agent
