#include "agent/inference_api.h"

#include <nlohmann/json.hpp>

#include "http/router.h"

namespace custody::agent {
namespace {

LocalResponse Json(int status, const nlohmann::json& body) {
  LocalResponse r;
  r.status = status;
  r.body = body.dump();
  return r;
}

LocalResponse Error(const Status& s) {
  LocalResponse r;
  r.status = HttpStatusFor(s.code());
  r.body = kserve::EncodeErrorBody(s);
  return r;
}

LocalResponse Refused(const LeaseVerdict& v) {
  const bool temporary = v.refusal == Refusal::kNoLease || v.refusal == Refusal::kModelUnavailable;
  LocalResponse r;
  r.status = temporary ? 503 : 403;
  r.body = kserve::EncodeErrorBody(
      Status(v.ToStatus().code(), std::string(RefusalName(v.refusal)) + ": " + v.message));
  r.headers.emplace_back(std::string(kRefusalHeader), std::string(RefusalName(v.refusal)));
  if (temporary) r.headers.emplace_back("Retry-After", "1");
  return r;
}

// The path without its query.
std::string_view Path(std::string_view target) {
  const size_t q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

}  // namespace

int HttpStatusFor(StatusCode code) {
  if (code == StatusCode::kOk) return 200;
  // What the KServe codec refuses as too large is the request's own size (413). A full queue never
  // gets here: the local server answers it 503 with Retry-After.
  if (code == StatusCode::kResourceExhausted) return 413;
  return http::HttpStatusFor(code);
}

InferenceApi::InferenceApi(LeaseManager& leases, Meter& meter, StatusProvider status,
                           kserve::KserveLimits limits)
    : leases_(leases), meter_(meter), status_(std::move(status)), limits_(limits) {}

LocalResponse InferenceApi::Handle(LocalRequest& request) {
  const std::string_view path = Path(request.target);
  const bool get = request.method == "GET" || request.method == "HEAD";
  if (path == "/v2/health/live" || path == "/v2/health/ready" || path == "/v2" ||
      path == "/v1/status") {
    if (!get) return Error(InvalidArgument(std::string(path) + " takes GET"));
    if (path == "/v2/health/live") return Json(200, {{"live", true}});
    if (path == "/v2") {
      return Json(200, {{"name", "custody-agent"},
                        {"version", "0.1.0"},
                        {"extensions", {"binary_tensor_data"}}});
    }
    nlohmann::json status = status_();
    if (path == "/v1/status") return Json(200, status);
    bool ready = false;
    for (const nlohmann::json& m : status["models"]) ready = ready || m.value("serving", false);
    return Json(ready ? 200 : 503, {{"ready", ready}});
  }
  Result<kserve::ModelRoute> route = kserve::ParseModelRoute(path);
  if (!route) {
    return Error(NotFound("no such route: " + std::string(path) +
                          " (the API is KServe v2: /v2/models/{name}[/versions/{v}][/infer|/ready],"
                          " /v2/health/live, /v2/health/ready; and /v1/status)"));
  }
  switch (route->kind) {
    case kserve::ModelRoute::Kind::kInfer:
      if (request.method != "POST") return Error(InvalidArgument("infer takes POST"));
      return Infer(*route, request);
    case kserve::ModelRoute::Kind::kReady:
      if (!get) return Error(InvalidArgument("ready takes GET"));
      return Ready(*route);
    case kserve::ModelRoute::Kind::kMetadata:
      if (!get) return Error(InvalidArgument("model metadata takes GET"));
      return Metadata(*route);
  }
  return Error(Internal("unknown route kind"));
}

LocalResponse InferenceApi::Metadata(const kserve::ModelRoute& route) {
  std::shared_ptr<const LoadedModel> model = leases_.Find(route.model, route.version);
  if (!model) {
    LeaseVerdict refusal;
    if (!leases_.Admit(route.model, route.version, meter_.position(), &refusal).ok() ||
        !refusal.ok()) {
      return Refused(refusal);
    }
    return Error(Unavailable("the model is being loaded; retry in a moment"));
  }
  Result<std::string> body = kserve::EncodeModelMetadata(model->metadata);
  if (!body) return Error(body.error());
  LocalResponse r;
  r.body = std::move(body).value();
  return r;
}

LocalResponse InferenceApi::Ready(const kserve::ModelRoute& route) {
  LeaseVerdict refusal;
  Result<Admission> admitted =
      leases_.Admit(route.model, route.version, meter_.position(), &refusal);
  if (!admitted) return Refused(refusal);
  return Json(200, {{"name", route.model}, {"ready", true}});
}

LocalResponse InferenceApi::Infer(const kserve::ModelRoute& route, LocalRequest& request) {
  LeaseVerdict refusal;
  Result<Admission> admitted =
      leases_.Admit(route.model, route.version, meter_.position(), &refusal);
  if (!admitted) return Refused(refusal);
  Result<kserve::InferRequest> parsed = kserve::ParseInferRequest(
      request.body, request.Header(kserve::kInferenceHeaderContentLength), limits_);
  if (!parsed) return Error(parsed.error());
  const Status reserved = meter_.Reserve(admitted->counter_limit);
  if (!reserved.ok()) {
    if (reserved.code() == StatusCode::kResourceExhausted) {
      return Refused({Refusal::kBudgetExhausted,
                      reserved.message() + "; the vendor must approve an extension"});
    }
    return Error(Unavailable("the request could not be metered: " + reserved.message()));
  }
  const LoadedModel& model = *admitted->model;
  Result<std::vector<engine::Tensor>> outputs = model.engine->Run(parsed->inputs);
  if (!outputs) {
    meter_.Release();
    return Error(outputs.error());
  }
  Result<kserve::EncodedBody> body =
      kserve::EncodeInferResponse(*parsed, model.info.name, model.info.version, *outputs);
  if (!body) {
    meter_.Release();
    return Error(body.error());
  }
  // Recorded before the answer leaves: a crash loses an answer, never a count.
  const Status committed = meter_.Commit(admitted->model_id, request.client);
  if (!committed.ok()) {
    return Error(
        Internal("the answer is withheld because the request could not be recorded in "
                 "the metering journal: " +
                 committed.message()));
  }
  LocalResponse r;
  r.body = std::move(body->body);
  if (body->json_bytes) {
    r.content_type = std::string(kserve::kBinaryContentType);
    r.headers.emplace_back(std::string(kserve::kInferenceHeaderContentLength),
                           std::to_string(*body->json_bytes));
  }
  return r;
}

}  // namespace custody::agent
