#include "agent/custodian_link.h"

#include <algorithm>
#include <random>

#include "core/crypto/crypto.h"
#include "core/format/sealed.h"
#include "core/protocol/json.h"

namespace custody::agent {
namespace {

using http::Client;
using http::ClientRequest;
using http::ClientResponse;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

std::string WallNow() {
  return format::FormatTimestamp(
      std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
}

// The custodian's answer as a Status: its error body {"error": {"code", "message"}} when it
// refused (PROTOCOL.md §10).
Status AnswerStatus(const ClientResponse& r, std::string_view what) {
  if (r.status / 100 == 2) return OkStatus();
  std::string message = "HTTP " + std::to_string(r.status);
  StatusCode code = StatusCode::kInternal;
  Result<nlohmann::json> j = r.Json(1 << 20);
  if (j && j->contains("error") && (*j)["error"].is_object()) {
    const nlohmann::json& e = (*j)["error"];
    if (e.contains("message") && e["message"].is_string()) {
      message += ": " + e["message"].get<std::string>();
    }
    if (e.contains("code") && e["code"].is_string()) {
      const std::string name = e["code"].get<std::string>();
      for (int c = 1; c <= static_cast<int>(StatusCode::kInternal); ++c) {
        if (StatusCodeName(static_cast<StatusCode>(c)) == name) code = static_cast<StatusCode>(c);
      }
    }
  }
  if (r.status == 429 || r.status == 503) code = StatusCode::kUnavailable;
  return Status(code, "custodian refused " + std::string(what) + ": " + message);
}

Result<ClientResponse> Post(Client& client, const std::string& target, const nlohmann::json& body,
                            bool idempotent = false) {
  ClientRequest req;
  req.method = "POST";
  req.target = target;
  req.body = body.dump();
  req.idempotent = idempotent;
  return client.Send(req);
}

std::string RandomReportId() {
  Result<Bytes> random = crypto::RandomBytes(12);
  if (!random) Panic("no randomness: " + random.error().ToString());
  return "rep_" + HexEncode(*random);
}

// An anomaly an earlier run found and stopped before reporting, rebuilt from what is on disk: a
// written-off record the reports have not covered yet, or a journal other than the one reported.
// Restoring state.json with the journal can make this repeat a report: an over-report, never a
// missed one.
std::string UnreportedAnomaly(const JournalSnapshot& snapshot, const AgentState& state,
                              const std::string& journal) {
  std::string out;
  if (snapshot.written_off > 0) {
    out = "the journal holds " + std::to_string(snapshot.written_off) +
          " requests written off and not reported yet: an earlier start found it behind the TPM "
          "counter (an older copy of the state directory was restored, or records were removed) "
          "and stopped before it could report it";
  }
  if (!state.report_journal.empty() && state.report_journal != journal) {
    out += std::string(out.empty() ? "" : "; ") + "the metering journal is " + journal +
           ", not the journal " + state.report_journal +
           " the last usage report came from: that one was lost or replaced, and its counts since "
           "that report are lost (the budget is the TPM counter's)";
  }
  return out;
}

}  // namespace

CustodianLink::CustodianLink(LinkOptions options, const DeviceIdentity& identity, SharedTpm& tpm,
                             Meter& meter, LeaseManager& leases, PersistentState& state,
                             Logger& log)
    : options_(std::move(options)),
      identity_(identity),
      tpm_(tpm),
      meter_(meter),
      leases_(leases),
      state_(state),
      log_(log) {}

CustodianLink::~CustodianLink() { Stop(); }

Status CustodianLink::Start() {
  CUSTODY_ASSIGN_OR_RETURN(client_, Client::Create(options_.client));
  http::ClientOptions poll = options_.client;
  poll.request_timeout = milliseconds(options_.poll_wait_ms + 15'000);
  CUSTODY_ASSIGN_OR_RETURN(events_client_, Client::Create(poll));
  // Both clients hold the TLS key in their contexts; no copy of its PEM stays.
  http::WipeClientKey(poll);
  http::WipeClientKey(options_.client);
  ReadClock();
  events_thread_ = std::thread([this] { EventsLoop(); });
  maintenance_thread_ = std::thread([this] { MaintenanceLoop(); });
  return OkStatus();
}

void CustodianLink::Stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  wake_.notify_all();
  if (events_client_) events_client_->Interrupt();
  if (client_) client_->Interrupt();
  if (events_thread_.joinable()) events_thread_.join();
  if (maintenance_thread_.joinable()) maintenance_thread_.join();
}

bool CustodianLink::WaitUntil(steady_clock::time_point deadline, Backoff& b) {
  std::unique_lock lock(mu_);
  wake_.wait_until(lock, deadline, [&] { return stopping_ || b.poked; });
  if (b.poked) {
    b.poked = false;
    b.delay = milliseconds(0);
    b.next = {};
  }
  return !stopping_;
}

void CustodianLink::Failed(Backoff& b, const Status& s, std::string_view what) {
  b.delay = std::clamp(b.delay * 2, options_.min_backoff, options_.max_backoff);
  thread_local std::mt19937_64 rng(std::random_device{}());
  const double jitter = std::uniform_real_distribution<double>(0.8, 1.2)(rng);
  b.next = steady_clock::now() +
           milliseconds(static_cast<int64_t>(static_cast<double>(b.delay.count()) * jitter));
  {
    std::lock_guard lock(mu_);
    if (stopping_) return;  // the interrupted request is not a failure worth a line
  }
  log_.Warn("custodian: " + std::string(what) + " failed",
            {{"error", s.ToString()}, {"retry_in_ms", static_cast<int64_t>(b.delay.count())}});
  std::lock_guard lock(status_mu_);
  last_error_ = WallNow() + ": " + std::string(what) + ": " + s.ToString();
  connected_ = false;
}

void CustodianLink::Succeeded(Backoff& b, Backoff& other) {
  if (b.delay.count() > 0) {
    std::lock_guard lock(mu_);
    other.poked = true;
    wake_.notify_all();
  }
  b.delay = milliseconds(0);
  b.next = {};
  std::lock_guard lock(status_mu_);
  last_contact_ = WallNow();
  connected_ = true;
}

void CustodianLink::ReadClock() {
  Result<tpm::TimeInfo> time =
      tpm_.Run(TpmOp::kClockRead, [](tpm::Tpm& t) { return t.ReadClock(); });
  if (time) {
    leases_.UpdateTpmClock(*time);
  } else {
    log_.Warn("TPM clock read failed", {{"error", time.error().ToString()}});
  }
}

// ----- events -----------------------------------------------------------------------------

void CustodianLink::EventsLoop() {
  Backoff& backoff = events_backoff_;
  while (WaitUntil(backoff.next, backoff)) {
    const uint64_t after = state_.Get().events_after;
    ClientRequest req;
    req.target = "/v1/events?after=" + std::to_string(after) +
                 "&wait_ms=" + std::to_string(options_.poll_wait_ms);
    req.timeout = milliseconds(options_.poll_wait_ms + 10'000);
    Result<ClientResponse> r = events_client_->Send(req);
    Status s = r ? AnswerStatus(*r, "the event poll") : r.error();
    Result<protocol::EventsResponse> events =
        s.ok() ? protocol::ParseEventsResponse(r->body) : Result<protocol::EventsResponse>(s);
    if (!events) {
      Failed(backoff, events.error(), "event poll");
      continue;
    }
    Succeeded(backoff, maintenance_backoff_);
    for (const protocol::Event& e : events->events) {
      if (e.type == "revocation") {
        Result<std::string> applied = leases_.ApplyRevocation(e.document);
        if (!applied) {
          log_.Error("revocation refused",
                     {{"event", e.seq}, {"error", applied.error().ToString()}});
        } else if (!applied->empty()) {
          log_.Warn("stop switch: " + *applied, {{"event", e.seq}});
        }
      } else if (e.type == "lease") {
        for (const std::string& problem : leases_.ApplyLeases({e.document})) {
          log_.Info("lease event not applied", {{"event", e.seq}, {"why", problem}});
        }
        log_.Info("lease received", {{"event", e.seq}});
      } else {
        log_.Warn("unknown event type ignored", {{"event", e.seq}, {"type", e.type}});
      }
    }
    if (events->last_seq != after) {
      const Status saved =
          state_.Update([&](AgentState& st) { st.events_after = events->last_seq; });
      if (!saved.ok()) log_.Error("event cursor not saved", {{"error", saved.ToString()}});
    }
  }
}

// ----- maintenance --------------------------------------------------------------------------

bool CustodianLink::NeedsAttestation() const {
  if (force_attest_) return true;
  const std::optional<uint64_t> since = leases_.MsSinceContact();
  if (!since) return true;  // no lease held
  uint64_t due = options_.renew_interval_ms;
  const uint64_t grace = leases_.MinOfflineGraceMs();
  if (grace > 0) due = std::min(due, grace / 2);
  return *since >= due;
}

void CustodianLink::MaintenanceLoop() {
  Backoff& backoff = maintenance_backoff_;
  steady_clock::time_point next_tick = steady_clock::now();
  last_report_ = steady_clock::now();
  while (WaitUntil(next_tick, backoff)) {
    next_tick = steady_clock::now() + options_.tick;
    ReadClock();
    if (steady_clock::now() - last_retry_ > std::chrono::seconds(30)) {
      last_retry_ = steady_clock::now();
      leases_.RetryFailedLoads();
    }
    if (leases_.device_revoked() || steady_clock::now() < backoff.next) continue;
    Status s;
    std::string what;
    if (NeedsAttestation()) {
      what = "attestation";
      s = Attest(*client_);
      if (s.ok()) force_attest_ = false;
    }
    if (s.ok() && steady_clock::now() - last_report_ >= milliseconds(options_.report_interval_ms)) {
      what = "usage report";
      s = Report(*client_);
    }
    if (s.ok() && options_.extension_threshold > 0) {
      what = "budget extension request";
      s = RequestExtensions(*client_);
    }
    if (s.ok()) {
      if (!what.empty()) Succeeded(backoff, events_backoff_);
    } else {
      Failed(backoff, s, what);
    }
  }
}

Result<Bytes> CustodianLink::Nonce(Client& client) {
  CUSTODY_ASSIGN_OR_RETURN(ClientResponse r, Post(client, "/v1/nonce", nlohmann::json::object()));
  CUSTODY_RETURN_IF_ERROR(AnswerStatus(r, "a nonce"));
  CUSTODY_ASSIGN_OR_RETURN(protocol::NonceResponse n, protocol::ParseNonceResponse(r.body));
  return n.nonce;
}

Status CustodianLink::Attest(Client& client) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, Nonce(client));
  CUSTODY_ASSIGN_OR_RETURN(protocol::AttestRequest req, tpm_.Run(TpmOp::kAttest, [&](tpm::Tpm& t) {
    return MakeAttestation(t, identity_, nonce);
  }));
  CUSTODY_ASSIGN_OR_RETURN(ClientResponse r, Post(client, "/v1/attest", protocol::ToJson(req)));
  CUSTODY_RETURN_IF_ERROR(AnswerStatus(r, "the attestation"));
  CUSTODY_ASSIGN_OR_RETURN(protocol::AttestResponse answer, protocol::ParseAttestResponse(r.body));
  ReadClock();  // the clock the new leases are measured from is now
  const std::vector<std::string> problems = leases_.ApplyLeases(answer.leases);
  for (const std::string& p : problems) log_.Warn("lease not applied", {{"why", p}});
  log_.Info("attested", {{"leases", answer.leases.size()}});
  std::lock_guard lock(status_mu_);
  last_attestation_ = WallNow();
  return OkStatus();
}

Status CustodianLink::Report(Client& client) {
  // A report an earlier round or run made is sent first, as it was made. It may come from a journal
  // that is gone since: the round then goes on to report the journal there is now.
  if (std::optional<PendingReport> pending = state_.Get().pending_report) {
    CUSTODY_RETURN_IF_ERROR(SendReport(client, *pending));
  }
  const AgentState state = state_.Get();
  const std::string journal = meter_.journal_id();
  // Cursors belong to one journal: a new journal (the old one was lost) is reported from its
  // start; an older copy of this one has nothing that was not reported already.
  uint64_t cursor = state.report_journal == journal ? state.report_cursor : 0;
  Result<JournalSnapshot> snapshot = meter_.Snapshot(cursor);
  if (!snapshot && snapshot.error().code() == StatusCode::kInvalidArgument) {
    CUSTODY_ASSIGN_OR_RETURN(JournalSnapshot all, meter_.Snapshot(0));
    cursor = all.through_seq;
    snapshot = meter_.Snapshot(cursor);
  }
  if (!snapshot) return snapshot.error();
  std::string anomaly = meter_.anomaly();
  if (anomaly.empty()) anomaly = UnreportedAnomaly(*snapshot, state, journal);
  if (snapshot->total == 0 && anomaly.empty() && state.report_journal == journal) {
    last_report_ = steady_clock::now();
    return OkStatus();
  }
  PendingReport p;
  p.report_id = RandomReportId();
  p.after_seq = cursor;
  p.through_seq = snapshot->through_seq;
  p.position = snapshot->position;
  for (const auto& [key, count] : snapshot->counts) {
    p.counts.push_back({key.model_id, key.client, count});
  }
  p.anomaly = anomaly.substr(0, protocol::kMaxAnomalyBytes);
  // Stored before it is sent: report_journal names the journal the pending report's cursor
  // belongs to until the next report is made.
  CUSTODY_RETURN_IF_ERROR(state_.Update([&](AgentState& s) {
    s.pending_report = p;
    s.report_journal = journal;
  }));
  return SendReport(client, p);
}

Status CustodianLink::SendReport(Client& client, const PendingReport& p) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, Nonce(client));
  CUSTODY_ASSIGN_OR_RETURN(Meter::Certified certified, meter_.Certify(nonce, p.position));
  protocol::UsageRequest req;
  req.report_id = p.report_id;
  req.nonce = nonce;
  req.counter_certify = certified.counter_certify;
  req.counts = p.counts;
  req.prepaid = certified.prepaid;
  if (!p.anomaly.empty()) req.anomaly = p.anomaly;
  CUSTODY_ASSIGN_OR_RETURN(ClientResponse r,
                           Post(client, "/v1/usage", protocol::ToJson(req), /*idempotent=*/true));
  const Status answer = AnswerStatus(r, "the usage report");
  // A counter below what the custodian saw before is stored and flagged there (409): the report
  // is recorded either way, so it is not sent again.
  if (!answer.ok() && answer.code() != StatusCode::kFailedPrecondition) return answer;
  if (!answer.ok())
    log_.Error("usage report flagged by the custodian", {{"error", answer.ToString()}});
  // report_journal stays the journal this report was made from, which need not be the one there
  // is now: a journal lost since is then found by the next report, never covered by this cursor.
  CUSTODY_RETURN_IF_ERROR(state_.Update([&](AgentState& s) {
    s.report_cursor = p.through_seq;
    s.pending_report.reset();
  }));
  // This run's anomaly is done with once a report carried it; one a resent report from an earlier
  // run did not carry goes with the next.
  if (req.anomaly && meter_.anomaly().substr(0, protocol::kMaxAnomalyBytes) == *req.anomaly) {
    meter_.MarkAnomalyReported();
  }
  last_report_ = steady_clock::now();
  uint64_t total = 0;
  for (const auto& c : p.counts) total += c.count;
  log_.Info("usage reported", {{"report_id", p.report_id},
                               {"requests", total},
                               {"counter", certified.counter},
                               {"prepaid", certified.prepaid}});
  std::lock_guard lock(status_mu_);
  last_report_at_ = WallNow();
  return OkStatus();
}

Status CustodianLink::RequestExtensions(Client& client) {
  const std::vector<LowBudget> low =
      leases_.BudgetsBelow(options_.extension_threshold, meter_.position());
  for (const LowBudget& b : low) {
    auto asked = extension_asked_.find(b.licence_id);
    // Once per limit: a renewed lease with the same limit is no answer yet; a raised one is.
    if (asked != extension_asked_.end() && asked->second == b.counter_limit) continue;
    // The custodian computes the raised limit from what it was told: tell it first.
    CUSTODY_RETURN_IF_ERROR(Report(client));
    protocol::ExtensionRequestMessage m;
    m.licence_id = b.licence_id;
    m.requested = options_.extension_amount;
    m.reason = "remaining budget " + std::to_string(b.remaining) + " is below the threshold " +
               std::to_string(options_.extension_threshold);
    CUSTODY_ASSIGN_OR_RETURN(ClientResponse r, Post(client, "/v1/extensions", protocol::ToJson(m)));
    CUSTODY_RETURN_IF_ERROR(AnswerStatus(r, "the extension request"));
    extension_asked_[b.licence_id] = b.counter_limit;
    Result<nlohmann::json> answer = r.Json(1 << 20);
    const std::string status =
        answer && answer->contains("status") && (*answer)["status"].is_string()
            ? (*answer)["status"].get<std::string>()
            : "unknown";
    log_.Info("budget extension requested", {{"licence_id", b.licence_id},
                                             {"requested", m.requested},
                                             {"remaining", b.remaining},
                                             {"status", status}});
    std::lock_guard lock(status_mu_);
    extensions_[b.licence_id] = answer ? *answer : nlohmann::json(nullptr);
  }
  return OkStatus();
}

nlohmann::json CustodianLink::Describe() const {
  std::lock_guard lock(status_mu_);
  auto text = [](const std::string& s) {
    return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s);
  };
  return {{"url", "https://" + options_.client.host + ":" + std::to_string(options_.client.port)},
          {"connected", connected_},
          {"last_contact", text(last_contact_)},
          {"last_attestation", text(last_attestation_)},
          {"last_usage_report", text(last_report_at_)},
          {"last_error", text(last_error_)},
          {"extension_requests", extensions_}};
}

}  // namespace custody::agent
