// custody infer / custody status: the device-side commands, which talk to the local
// custody-agent over its socket (agent/local_client.h). The inference API is KServe v2 with the
// binary tensor extension (docs/PROTOCOL.md §16); /v1/status is the agent's own (PROTOCOL.md §17).
//
// The agent's answers map to exit codes by HTTP status (README.md, the exit code table):
// 401/403 → 7 (refused: revoked, licence ended, offline grace expired, budget exhausted, platform
// not approved, or the application token), 429/503 → 8 (not now: no lease yet, model loading,
// busy; 408/504 too), 400/413 → 2, 404 → 3, anything else → 1. The message carries the agent's
// Custody-Refusal name. No agent at the socket → 8; a socket this user may not use → 3.
//
// Security: the application token comes from --token-file only (never the command line, where
// other users can read it) and the file must not be readable by others. Text from the agent
// (names, messages) has control characters replaced before it reaches the terminal.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/kserve.h"
#include "agent/local_client.h"
#include "cli/cli_common.h"
#include "core/base/file.h"
#include "core/protocol/json.h"
#include "engine/engine.h"
#include "engine/npy.h"

namespace custody::cli {
namespace {

namespace kserve = agent::kserve;
using nlohmann::json;

constexpr std::string_view kDefaultSocket = "/run/custody-agent/agent.sock";
// The header naming the refusal (agent/inference_api.h kRefusalHeader; the agent library itself
// is not linked into the CLI).
constexpr std::string_view kRefusalHeader = "Custody-Refusal";
constexpr size_t kMaxTokenFileBytes = 4096;
constexpr uint64_t kMaxInputFileBytes = uint64_t{1} << 30;
constexpr size_t kMaxStatusBytes = 16 << 20;
constexpr size_t kTopK = 5;

struct AgentArgs {
  std::string socket = std::string(kDefaultSocket);
  std::string token_file;
  bool json = false;
};

// Text from the agent, safe for a terminal: control characters become '?'.
std::string Printable(std::string_view s) {
  std::string out(s);
  std::replace_if(
      out.begin(), out.end(),
      [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == '\x7f'; }, '?');
  return out;
}

// The application token. The file is opened once and checked through its descriptor, so the
// permission check and the read are about the same file.
Result<std::string> ReadAppToken(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus(errno, "token file " + path);
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const bool private_file = stat_ok && (st.st_mode & 077) == 0;
  std::string token(kMaxTokenFileBytes + 1, '\0');
  const ssize_t n = private_file ? ::read(fd, token.data(), token.size()) : -1;
  const int err = errno;
  ::close(fd);
  if (stat_ok && !private_file) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return FailedPrecondition("token file " + path + " is accessible by other users (mode " + mode +
                              "); run: chmod 600 " + path);
  }
  if (n < 0) return ErrnoStatus(err, "token file " + path);
  if (static_cast<size_t>(n) > kMaxTokenFileBytes) {
    return InvalidArgument("token file " + path + " is larger than " +
                           std::to_string(kMaxTokenFileBytes) + " bytes");
  }
  token.resize(static_cast<size_t>(n));
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) token.pop_back();
  if (token.empty()) return InvalidArgument("token file " + path + " is empty");
  return token;
}

Result<std::unique_ptr<agent::LocalClient>> ConnectAgent(const AgentArgs& a) {
  agent::LocalClientOptions o;
  o.socket_path = a.socket;
  if (!a.token_file.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(std::string token, ReadAppToken(a.token_file));
    o.bearer_token = std::move(token);
  }
  return agent::LocalClient::Connect(std::move(o));
}

StatusCode CodeForAgentStatus(int http_status) {
  switch (http_status) {
    case 400:
    case 413:
      return StatusCode::kInvalidArgument;  // 2
    case 401:
    case 403:
      return StatusCode::kFailedPrecondition;  // 7: refused
    case 404:
      return StatusCode::kNotFound;  // 3
    case 408:
    case 429:
    case 503:
    case 504:
      return StatusCode::kUnavailable;  // 8: not now
    default:
      return StatusCode::kInternal;  // 1
  }
}

// An answer other than 200 as a Status: "<what>: <refusal>: <message> (HTTP 403)".
Status AgentError(const agent::LocalAnswer& answer, std::string_view what) {
  std::string message = Printable(kserve::ErrorMessageFromBody(answer.body));
  if (std::optional<std::string_view> refusal = answer.Header(kRefusalHeader)) {
    const std::string name = Printable(*refusal);
    if (message.rfind(name + ":", 0) != 0) message = name + ": " + message;
  }
  return Status(CodeForAgentStatus(answer.status), std::string(what) + ": " + message + " (HTTP " +
                                                       std::to_string(answer.status) + ")");
}

// Sends a request and returns the answer if it is a 200, else the agent's refusal.
Result<agent::LocalAnswer> Call(
    agent::LocalClient& client, std::string_view method, const std::string& target,
    std::string_view what, std::string_view body = {},
    const std::vector<std::pair<std::string, std::string>>& headers = {}) {
  CUSTODY_ASSIGN_OR_RETURN(agent::LocalAnswer answer, client.Send(method, target, body, headers));
  if (answer.status != 200) return AgentError(answer, what);
  return answer;
}

void AddAgentOptions(CLI::App* cmd, AgentArgs& a) {
  cmd->add_option("--socket", a.socket, "The agent's socket (also CUSTODY_AGENT_SOCKET)")
      ->envname("CUSTODY_AGENT_SOCKET")
      ->capture_default_str();
  cmd->add_option("--token-file", a.token_file,
                  "File holding this application's token (mode 0600), when the agent asks for one");
}

// ----- custody infer ---------------------------------------------------------------------------

struct InferArgs {
  AgentArgs agent;
  std::string model;
  std::string version;
  std::vector<std::string> inputs;
  std::vector<std::string> input_names;
  std::vector<std::string> outputs;
  bool force = false;
  bool json_data = false;
};

std::string ShapeText(const std::vector<int64_t>& shape) { return json(shape).dump(); }

// The input names: --input-name, else the model's (from its metadata), else input__0, input__1...
Result<std::vector<std::string>> InputNames(const InferArgs& a, agent::LocalClient& client,
                                            const std::string& model_path) {
  if (!a.input_names.empty()) {
    if (a.input_names.size() != a.inputs.size()) {
      return InvalidArgument("give one --input-name per --input (" +
                             std::to_string(a.input_names.size()) + " names for " +
                             std::to_string(a.inputs.size()) + " inputs)");
    }
    return a.input_names;
  }
  const std::string what = "model " + a.model;
  CUSTODY_ASSIGN_OR_RETURN(agent::LocalAnswer answer, Call(client, "GET", model_path, what));
  std::vector<std::string> names;
  Result<json> metadata = protocol::ParseJsonObject(answer.body, 1 << 20, "model metadata");
  if (metadata && metadata->contains("inputs") && (*metadata)["inputs"].is_array()) {
    for (const json& input : (*metadata)["inputs"]) {
      if (!input.is_object() || !input.contains("name") || !input["name"].is_string()) break;
      names.push_back(input["name"].get<std::string>());
    }
  }
  if (!names.empty() && names.size() != a.inputs.size()) {
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "" : ", ") + Printable(n);
    return InvalidArgument(what + " takes " + std::to_string(names.size()) + " inputs (" + list +
                           "), " + std::to_string(a.inputs.size()) + " --input files given");
  }
  if (names.empty()) {
    for (size_t i = 0; i < a.inputs.size(); ++i) names.push_back("input__" + std::to_string(i));
  }
  return names;
}

// The elements of a 1-D output, or of a 2-D output with one row, as doubles, when it holds
// floating-point values (a classifier's scores); nullopt otherwise.
std::optional<std::vector<double>> ScoreRow(const engine::Tensor& t) {
  const bool row = t.shape.size() == 1 || (t.shape.size() == 2 && t.shape[0] == 1);
  if (!row || t.data.empty()) return std::nullopt;
  const size_t size = engine::DTypeSize(t.dtype);
  std::vector<double> values(t.data.size() / size);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint8_t* e = t.data.data() + i * size;
    if (t.dtype == engine::DType::kFloat16) {
      uint16_t h;
      std::memcpy(&h, e, sizeof(h));
      values[i] = kserve::HalfToDouble(h);
    } else if (t.dtype == engine::DType::kFloat32) {
      float f;
      std::memcpy(&f, e, sizeof(f));
      values[i] = f;
    } else if (t.dtype == engine::DType::kFloat64) {
      std::memcpy(&values[i], e, sizeof(double));
    } else {
      return std::nullopt;
    }
  }
  return values;
}

void PrintOutput(size_t i, const engine::Tensor& t, const std::string& written_to) {
  std::printf("output %zu: %s %s %s", i, Printable(t.name).c_str(),
              std::string(kserve::DatatypeName(t.dtype)).c_str(), ShapeText(t.shape).c_str());
  if (!written_to.empty()) {
    std::printf(" -> %s\n", written_to.c_str());
    return;
  }
  std::printf("\n");
  std::optional<std::vector<double>> scores = ScoreRow(t);
  if (!scores) return;
  std::vector<size_t> order(scores->size());
  std::iota(order.begin(), order.end(), size_t{0});
  // NaN ranks last, so that the order is a strict weak one.
  auto key = [&](size_t k) { return std::isnan((*scores)[k]) ? -INFINITY : (*scores)[k]; };
  const size_t top = std::min(kTopK, order.size());
  std::partial_sort(
      order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(),
      [&](size_t x, size_t y) { return key(x) > key(y) || (key(x) == key(y) && x < y); });
  std::string line;
  for (size_t k = 0; k < top; ++k) {
    char cell[64];
    std::snprintf(cell, sizeof(cell), "%s%zu (%.6g)", k == 0 ? "" : ", ", order[k],
                  (*scores)[order[k]]);
    line += cell;
  }
  std::printf("  top %zu: %s\n", top, line.c_str());
}

Status Infer(const InferArgs& a) {
  const std::string model_path =
      "/v2/models/" + a.model + (a.version.empty() ? "" : "/versions/" + a.version);
  if (!kserve::ParseModelRoute(model_path + "/infer")) {
    return InvalidArgument("--model and --version must be 1.." +
                           std::to_string(kserve::kMaxModelNameBytes) +
                           " characters of [A-Za-z0-9_.-]; got '" + a.model + "'" +
                           (a.version.empty() ? "" : " and '" + a.version + "'"));
  }
  // Every output is checked before the inference: the agent meters it, so it must not be wasted.
  std::set<std::string> seen;
  for (const std::string& out : a.outputs) {
    if (!seen.insert(out).second) return InvalidArgument("--output " + out + " is given twice");
    if (!a.force && PathExists(out)) {
      return AlreadyExists(out + " already exists; pass --force to overwrite it");
    }
  }
  kserve::InferRequest request;
  request.binary_data_output = true;
  for (const std::string& path : a.inputs) {
    CUSTODY_ASSIGN_OR_RETURN(Bytes npy, ReadFile(path, kMaxInputFileBytes));
    Result<engine::Tensor> tensor = engine::ParseNpy(npy);
    if (!tensor) return tensor.error().WithContext("input " + path);
    request.inputs.push_back(std::move(tensor).value());
  }

  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<agent::LocalClient> client, ConnectAgent(a.agent));
  CUSTODY_ASSIGN_OR_RETURN(std::vector<std::string> names, InputNames(a, *client, model_path));
  for (size_t i = 0; i < names.size(); ++i) request.inputs[i].name = names[i];
  CUSTODY_ASSIGN_OR_RETURN(kserve::EncodedBody body,
                           kserve::EncodeInferRequest(request, /*binary_inputs=*/!a.json_data));
  request.inputs.clear();  // the body holds them now
  std::vector<std::pair<std::string, std::string>> headers;
  if (body.json_bytes) {
    headers.emplace_back("Content-Type", std::string(kserve::kBinaryContentType));
    headers.emplace_back(std::string(kserve::kInferenceHeaderContentLength),
                         std::to_string(*body.json_bytes));
  } else {
    headers.emplace_back("Content-Type", "application/json");
  }
  CUSTODY_ASSIGN_OR_RETURN(agent::LocalAnswer answer, Call(*client, "POST", model_path + "/infer",
                                                           "model " + a.model, body.body, headers));

  kserve::KserveLimits limits;
  limits.max_body_bytes = agent::LocalClientOptions().max_response_bytes;
  limits.max_tensor_elements = size_t{1} << 28;
  Result<kserve::InferResponse> response = kserve::ParseInferResponse(
      answer.body, answer.Header(kserve::kInferenceHeaderContentLength), limits);
  if (!response) {
    return Internal("the agent's answer is not a valid infer response: " +
                    response.error().message());
  }
  const std::vector<engine::Tensor>& outputs = response->outputs;
  if (a.outputs.size() > outputs.size()) {
    return InvalidArgument("the model produced " + std::to_string(outputs.size()) +
                           " outputs but " + std::to_string(a.outputs.size()) +
                           " --output files were given; nothing was written");
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    CUSTODY_RETURN_IF_ERROR(
        WriteFileAtomic(a.outputs[i], engine::SerializeNpy(outputs[i]),
                        WriteOptions{0644, a.force ? Overwrite::kAllow : Overwrite::kRefuse}));
  }
  if (a.agent.json) {
    // The response as JSON data, re-encoded from the decoded tensors.
    kserve::InferRequest as_json;
    as_json.id = response->id;
    Result<kserve::EncodedBody> text = kserve::EncodeInferResponse(
        as_json, response->model_name, response->model_version, outputs);
    if (!text) {
      return text.error().WithContext("cannot print the answer as JSON (write it with --output)");
    }
    std::printf("%s\n", text->body.c_str());
    return OkStatus();
  }
  std::printf("model %s %s\n", Printable(response->model_name).c_str(),
              Printable(response->model_version).c_str());
  for (size_t i = 0; i < outputs.size(); ++i) {
    PrintOutput(i, outputs[i], i < a.outputs.size() ? a.outputs[i] : std::string());
  }
  return OkStatus();
}

// ----- custody status --------------------------------------------------------------------------

const json& Child(const json& j, const char* key) {
  static const json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it == j.end() ? kNull : *it;
}

// A field as text: "-" when absent or null.
std::string Text(const json& j, const char* key) {
  const json& v = Child(j, key);
  if (v.is_null()) return "-";
  if (v.is_string()) return v.get<std::string>().empty() ? "-" : Printable(v.get<std::string>());
  if (v.is_boolean()) return v.get<bool>() ? "yes" : "no";
  return Printable(v.dump(-1, ' ', false, json::error_handler_t::replace));
}

std::optional<uint64_t> Count(const json& j, const char* key) {
  const json& v = Child(j, key);
  if (!v.is_number_unsigned()) return std::nullopt;
  return v.get<uint64_t>();
}

// 1234567 -> "1,234,567".
std::string Grouped(std::optional<uint64_t> n) {
  if (!n) return "-";
  std::string digits = std::to_string(*n);
  for (size_t at = digits.size(); at > 3; at -= 3) digits.insert(at - 3, ",");
  return digits;
}

// 259140000 -> "71h 59m"; seconds below a minute, days from 100 hours on.
std::string HumanDuration(std::optional<uint64_t> ms) {
  if (!ms) return "-";
  const uint64_t s = *ms / 1000;
  const uint64_t m = s / 60;
  const uint64_t h = m / 60;
  auto two = [](uint64_t a, const char* ua, uint64_t b, const char* ub) {
    return std::to_string(a) + ua + " " + std::to_string(b) + ub;
  };
  if (s < 60) return std::to_string(s) + "s";
  if (m < 60) return two(m, "m", s % 60, "s");
  if (h < 100) return two(h, "h", m % 60, "m");
  return two(h / 24, "d", h % 24, "h");
}

void PrintModel(const json& m) {
  const bool serving = Child(m, "serving").is_boolean() && Child(m, "serving").get<bool>();
  std::printf("  %s %s: %s\n", Text(m, "name").c_str(), Text(m, "version").c_str(),
              serving
                  ? "SERVING"
                  : ("REFUSING (" + Text(m, "refusal") + ": " + Text(m, "message") + ")").c_str());
  const json& budget = Child(m, "budget");
  std::printf("    budget:         %s of %s left (meter at %s)\n",
              Grouped(Count(budget, "remaining")).c_str(), Grouped(Count(budget, "limit")).c_str(),
              Grouped(Count(budget, "position")).c_str());
  const json& lease = Child(m, "lease");
  std::printf("    licence ends:   %s\n", Text(lease, "not_after").c_str());
  const json& grace = Child(m, "offline_grace");
  std::printf("    offline grace:  %s left of %s\n", HumanDuration(Count(grace, "left_ms")).c_str(),
              HumanDuration(Count(grace, "grace_ms")).c_str());
  std::printf("    lease:          sequence %s, issued %s\n", Text(lease, "sequence").c_str(),
              Text(lease, "issued_at").c_str());
  const json& memory = Child(m, "memory_protection");
  if (memory.is_object()) {
    std::printf("    memory:         locked %s, dontdump %s, weights covered %s (%s)\n",
                Text(memory, "locked").c_str(), Text(memory, "dontdump").c_str(),
                Text(memory, "weights_covered").c_str(), Text(memory, "report").c_str());
  } else {
    std::printf("    memory:         - (the model is not loaded)\n");
  }
}

void PrintStatus(const json& s) {
  const json& agent = Child(s, "agent");
  std::printf("device:       %s (custody-agent %s)\n", Text(agent, "device_id").c_str(),
              Text(agent, "version").c_str());
  if (Child(s, "device_revoked").is_boolean() && Child(s, "device_revoked").get<bool>()) {
    std::printf("              REVOKED: the vendor revoked this device\n");
  }
  const json& custodian = Child(s, "custodian");
  std::printf("custodian:    %s, connected %s\n", Text(custodian, "url").c_str(),
              Text(custodian, "connected").c_str());
  std::printf("              last contact %s; last error %s\n",
              Text(custodian, "last_contact").c_str(), Text(custodian, "last_error").c_str());
  const json& models = Child(s, "models");
  if (models.is_array() && !models.empty()) {
    std::printf("models:\n");
    for (const json& m : models) PrintModel(m);
  } else if (s.value("device_revoked", false)) {
    std::printf("models:       none (the device is revoked; its models were wiped)\n");
  } else {
    std::printf(
        "models:       none (no lease yet: the agent has not attested, or no licence "
        "covers this device)\n");
  }
  const json& protection = Child(s, "process_protection");
  std::printf("protection:   %s\n", Text(protection, "summary").c_str());
  std::printf("              seccomp: %s\n", Text(protection, "seccomp").c_str());
  const json& metering = Child(s, "metering");
  std::printf("metering:     TPM counter %s, unit %s, position %s\n",
              Grouped(Count(metering, "tpm_counter")).c_str(),
              Grouped(Count(metering, "unit")).c_str(),
              Grouped(Count(metering, "position")).c_str());
  if (Text(metering, "anomaly") != "-") {
    std::printf("              ANOMALY: %s\n", Text(metering, "anomaly").c_str());
  }
  const json& revocations = Child(s, "revocations");
  if (revocations.is_array() && !revocations.empty()) {
    std::printf("revocations:\n");
    for (const json& r : revocations) {
      std::printf("  %s %s: %s (issued %s)\n", Text(r, "scope").c_str(), Text(r, "subject").c_str(),
                  Text(r, "reason").c_str(), Text(r, "issued_at").c_str());
    }
  }
}

Status ShowStatus(const AgentArgs& a) {
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<agent::LocalClient> client, ConnectAgent(a));
  CUSTODY_ASSIGN_OR_RETURN(agent::LocalAnswer answer,
                           Call(*client, "GET", "/v1/status", "agent status"));
  Result<json> status = protocol::ParseJsonObject(answer.body, kMaxStatusBytes, "agent status");
  if (!status) return Internal(status.error().message());
  if (a.json) {
    std::printf("%s\n", status->dump(2, ' ', false, json::error_handler_t::replace).c_str());
  } else {
    PrintStatus(*status);
  }
  return OkStatus();
}

}  // namespace

void RegisterAgentCommands(CLI::App& app, int& exit_code) {
  auto* infer = app.add_subcommand(
      "infer",
      "Run a model served by the local custody-agent on .npy inputs (KServe v2 over the agent's "
      "socket); writes .npy outputs or prints them (top 5 of a classifier's scores)");
  auto ia = std::make_shared<InferArgs>();
  AddAgentOptions(infer, ia->agent);
  infer->add_option("--model", ia->model, "Model name")->required();
  infer->add_option("--version", ia->version, "Model version (default: the one the agent serves)");
  infer->add_option("--input", ia->inputs, "Input tensor as .npy (repeat, in input order)")
      ->required();
  infer->add_option("--input-name", ia->input_names,
                    "Input names, one per --input (default: the model's, else input__0, ...)");
  infer->add_option("--output", ia->outputs,
                    "Write output N to the Nth file as .npy (repeatable); without: print them");
  infer->add_flag("--force", ia->force, "Overwrite existing --output files");
  infer->add_flag("--json-data", ia->json_data,
                  "Send inputs as JSON data instead of the binary tensor extension");
  infer->add_flag("--json", ia->agent.json, "Print the response as KServe JSON (with data)");
  infer->callback([&exit_code, ia] {
    Status s = Infer(*ia);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });

  auto* status = app.add_subcommand(
      "status",
      "Show the local custody-agent's state: models served or refused and why, budgets, licence "
      "ends, offline grace, memory and process protection, metering");
  auto sa = std::make_shared<AgentArgs>();
  AddAgentOptions(status, *sa);
  status->add_flag("--json", sa->json, "Print the agent's status JSON");
  status->callback([&exit_code, sa] {
    Status s = ShowStatus(*sa);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });
}

}  // namespace custody::cli
