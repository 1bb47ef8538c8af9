// custody_fuzz_seeds OUT_DIR: writes the fuzzers' seed corpora, deterministically.
//
//   OUT_DIR/sealed/*.sealed  small sealed models under the fixed keys of fuzz_fixtures.h (salt,
//                            nonce prefix, model_id and created fixed too), covering: the spec's
//                            worked example, an empty model, a model of exactly whole chunks, an
//                            expired one and a larger chunk size with more metadata;
//   OUT_DIR/tpm/*.bin        TPM verifier inputs: attestations signed by the fixed AK of
//                            tpm_fixtures.h, public areas, a signature (first byte: the mode);
//   OUT_DIR/npy/*.npy        small .npy files from SerializeNpy (when built with the engine);
//   OUT_DIR/protocol/*.bin   one valid message of each kind, after its mode byte
//                            (protocol_fixtures.h), leases and revocations signed by the fixed
//                            custodian key;
//   OUT_DIR/envelope/*.json  a signed lease and a signed revocation;
//   OUT_DIR/audit/*.jsonl    valid audit exports: a chain from seq 1, one entry, a tail;
//   OUT_DIR/json/*.bin       documents of every JSON type, after the getters' limit byte;
//   OUT_DIR/journal/*.bin    device metering journals: the header alone, blocks and served records
//                            (names of every length limit), a torn tail, a zero-filled tail;
//   OUT_DIR/kserve/*.txt     infer requests: the Inference-Header-Content-Length value ("-":
//                            none), a newline, the body; JSON data flat and nested for every
//                            datatype, binary data, requested outputs, and limit cases;
//   OUT_DIR/admin/*.bin      a valid body of each admin request, and a query, after the mode byte;
//   OUT_DIR/url/*.txt        request targets of the API;
//   OUT_DIR/config/*.toml    the configuration `custodian init` writes, and one with every key.
//
// fuzz/corpus/ holds its output (regenerate with `custody_fuzz_seeds fuzz/corpus`);
// scripts/fuzz.sh also runs it into each run's scratch corpus so seeds follow format changes.
#include <sys/stat.h>

#include <cstdio>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "agent/journal.h"
#include "agent/kserve.h"
#include "core/base/file.h"
#include "core/format/sealed.h"
#include "core/protocol/audit.h"
#include "core/protocol/envelope.h"
#include "core/protocol/messages.h"
#include "custodian/config.h"
#include "fuzz_fixtures.h"
#include "protocol_fixtures.h"
#include "tpm_fixtures.h"
#ifdef CUSTODY_FUZZ_WITH_NPY
#include "engine/npy.h"
#endif

namespace {

using namespace custody;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "custody_fuzz_seeds: %s\n", what.c_str());
  std::exit(1);
}

void Write(const std::string& path, ByteSpan bytes) {
  Status s = WriteFileAtomic(path, bytes, WriteOptions{0644, Overwrite::kAllow});
  if (!s.ok()) Die(s.ToString());
}

format::ModelInfo Info(std::string name, std::string engine) {
  format::ModelInfo info;
  info.model_id = "000102030405060708090a0b0c0d0e0f";
  info.name = std::move(name);
  info.version = "1";
  info.engine = std::move(engine);
  info.created = "2026-01-01T00:00:00Z";
  return info;
}

void Seal(const std::string& path, std::string_view plaintext, format::ModelInfo info,
          uint8_t chunk_size_log2) {
  format::SealOptions o;
  o.info = std::move(info);
  o.chunk_size_log2 = chunk_size_log2;
  std::array<uint8_t, format::kSaltBytes> salt{};
  for (size_t i = 0; i < salt.size(); ++i) salt[i] = static_cast<uint8_t>(0xa0 + i);
  o.determinism.salt = salt;
  o.determinism.nonce_prefix = {0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6};
  const auto dek = fuzz::FixedDek();
  auto sealed = format::SealBytes(AsBytes(plaintext), dek, fuzz::FixedVendor(), o);
  if (!sealed) Die("seal " + path + ": " + sealed.error().ToString());
  Write(path, *sealed);
}

void SealedSeeds(const std::string& dir) {
  // docs/FORMAT.md §6, byte for byte.
  format::ModelInfo example = Info("example", "onnx");
  example.meta["task"] = "demo";
  Seal(dir + "/spec_example.sealed", "Custody sealed model v1 worked example.\n", example, 4);

  Seal(dir + "/empty.sealed", "", Info("empty", "onnx"), 4);

  format::ModelInfo whole = Info("whole-chunks", "torchscript");
  whole.not_after = "2099-12-31T23:59:59Z";
  Seal(dir + "/whole_chunks.sealed", std::string(64, 'w'), whole, 4);

  format::ModelInfo expired = Info("expired", "onnx");
  expired.not_after = "2026-01-31T23:59:59Z";  // before fuzz::FixedNow()
  Seal(dir + "/expired.sealed", "expired model bytes.", expired, 4);

  format::ModelInfo meta = Info("meta-rich", "example-plugin_1");
  meta.version = "2.0.1-rc1";
  meta.meta["labels"] = "cat,dog,bird";
  meta.meta["input"] = "float32[1,3,224,224]";
  meta.meta["note"] = "unicode \xc3\xa9\xe2\x82\xac ok";
  std::string body;
  for (int i = 0; i < 100; ++i) body.push_back(static_cast<char>(i * 7));
  Seal(dir + "/chunk32_meta.sealed", body, meta, 5);
}

// The first byte selects the fuzzer's mode (tpm_verifier_fuzzer.cc).
void TpmSeeds(const std::string& dir) {
  auto put = [&](const std::string& name, uint8_t mode, ByteSpan body) {
    Bytes b = {mode};
    b.insert(b.end(), body.begin(), body.end());
    Write(dir + "/" + name, b);
  };
  put("quote.bin", 0, fuzz::BuildAttest(TPM2_ST_ATTEST_QUOTE));
  put("certify.bin", 0, fuzz::BuildAttest(TPM2_ST_ATTEST_CERTIFY));
  put("nv_certify.bin", 0, fuzz::BuildAttest(TPM2_ST_ATTEST_NV));
  put("ak_public.bin", 1, fuzz::FixedAkPublic());
  TPMT_PUBLIC binding = tpm::BindingKeyTemplate(crypto::Sha256Digest{});
  binding.unique = tpm::UnmarshalPublic2B(fuzz::FixedAkPublic()).value().unique;
  put("binding_public.bin", 1, tpm::MarshalPublic2B(binding).value());
  put("signature.bin", 2, fuzz::SignWithFixedAk(AsBytes("fixed message")).signature);
  put("forged.bin", 3, fuzz::BuildAttest(TPM2_ST_ATTEST_CERTIFY));
}

void WriteText(const std::string& path, std::string_view text) { Write(path, AsBytes(text)); }

// `mode` then `text`: the input of a fuzzer whose first byte picks what the rest is.
void WriteMode(const std::string& path, uint8_t mode, std::string_view text) {
  Bytes b = {mode};
  b.insert(b.end(), text.begin(), text.end());
  Write(path, b);
}

void ProtocolSeeds(const std::string& dir) {
  using fuzz::MessageKind;
  using fuzz::Pattern;
  auto put = [&](const std::string& name, MessageKind kind, const nlohmann::json& j) {
    WriteMode(dir + "/" + name + ".bin", static_cast<uint8_t>(kind), j.dump());
  };
  protocol::EnrollBeginRequest begin;
  begin.token = "enr_0123456789abcdef0123456789abcdef";
  begin.ek_public = Pattern(90, 0x01);
  begin.ak_public = Pattern(90, 0x31);
  put("enroll_begin_request", MessageKind::kEnrollBeginRequest, protocol::ToJson(begin));
  begin.ek_certificate = Pattern(300, 0x30);
  put("enroll_begin_request_cert", MessageKind::kEnrollBeginRequest, protocol::ToJson(begin));

  protocol::EnrollBeginResponse challenge;
  challenge.enrollment_id = "enr_aabbccddeeff0011";
  challenge.credential = {Pattern(68, 0x02), Pattern(66, 0x42)};
  challenge.certify_nonce = Pattern(32, 0x80);
  challenge.policy_public = Pattern(65, 0x04);
  put("enroll_begin_response", MessageKind::kEnrollBeginResponse, protocol::ToJson(challenge));

  protocol::EnrollCompleteRequest complete;
  complete.enrollment_id = challenge.enrollment_id;
  complete.activated_secret = Pattern(32, 0x11);
  complete.binding_public = Pattern(90, 0x21);
  complete.binding_certify = fuzz::SampleAttestation(0x50);
  complete.counter_index = 0x01000C57;
  complete.counter_certify = fuzz::SampleAttestation(0x60);
  complete.tls_public_key = Pattern(91, 0x30);
  complete.counter_unit = 16;
  put("enroll_complete_request", MessageKind::kEnrollCompleteRequest, protocol::ToJson(complete));

  protocol::EnrollCompleteResponse enrolled;
  enrolled.device_id = "dev_8899aabbccddeeff";
  enrolled.certificate_pem =
      "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END "
      "CERTIFICATE-----\n";
  enrolled.ca_certificate_pem = enrolled.certificate_pem;
  const auto& lease_key = fuzz::FixedCustodian().public_key().raw();
  enrolled.lease_public.assign(lease_key.begin(), lease_key.end());
  enrolled.policy_public = Pattern(65, 0x04);
  enrolled.pcr_selection = {0, 2, 4, 7};
  put("enroll_complete_response", MessageKind::kEnrollCompleteResponse, protocol::ToJson(enrolled));

  put("nonce", MessageKind::kNonceResponse,
      protocol::ToJson(protocol::NonceResponse{Pattern(32, 0x90), 120000}));

  protocol::AttestRequest attest;
  attest.nonce = Pattern(32, 0x90);
  attest.quote = tpm::Quote{fuzz::SampleAttestation(0x70), fuzz::SamplePcrs()};
  put("attest_request", MessageKind::kAttestRequest, protocol::ToJson(attest));

  const nlohmann::json lease =
      fuzz::SampleEnvelope(protocol::kLeaseDocument, protocol::ToJson(fuzz::SampleLease()));
  const nlohmann::json revocation = fuzz::SampleEnvelope(
      protocol::kRevocationDocument, protocol::ToJson(fuzz::SampleRevocation()));
  put("attest_response", MessageKind::kAttestResponse,
      protocol::ToJson(protocol::AttestResponse{std::vector<nlohmann::json>(1, lease)}));
  protocol::EventsResponse events;
  events.events.push_back({7, "lease", lease});
  events.events.push_back({8, "revocation", revocation});
  events.last_seq = 8;
  put("events", MessageKind::kEventsResponse, protocol::ToJson(events));
  put("events_empty", MessageKind::kEventsResponse,
      protocol::ToJson(protocol::EventsResponse{{}, 8}));

  put("lease_payload", MessageKind::kLeasePayload, protocol::ToJson(fuzz::SampleLease()));
  put("revocation_payload", MessageKind::kRevocationPayload,
      protocol::ToJson(fuzz::SampleRevocation()));

  protocol::UsageRequest usage;
  usage.report_id = "rep_0001";
  usage.nonce = Pattern(32, 0x90);
  usage.counter_certify = fuzz::SampleAttestation(0x60);
  usage.counts = {{"000102030405060708090a0b0c0d0e0f", "kiosk-app", 12},
                  {"000102030405060708090a0b0c0d0e0f", "", 0}};
  usage.prepaid = 5;
  put("usage", MessageKind::kUsageRequest, protocol::ToJson(usage));
  usage.anomaly = "journal behind the counter at start: 3 blocks unaccounted";
  put("usage_anomaly", MessageKind::kUsageRequest, protocol::ToJson(usage));
  put("extension_request", MessageKind::kExtensionRequest,
      protocol::ToJson(protocol::ExtensionRequestMessage{"lic_0123456789abcdef", 500, "busy"}));
}

void EnvelopeSeeds(const std::string& dir) {
  WriteText(
      dir + "/lease.json",
      fuzz::SampleEnvelope(protocol::kLeaseDocument, protocol::ToJson(fuzz::SampleLease())).dump());
  WriteText(dir + "/revocation.json",
            fuzz::SampleEnvelope(protocol::kRevocationDocument,
                                 protocol::ToJson(fuzz::SampleRevocation()))
                .dump());
}

void AuditSeeds(const std::string& dir) {
  auto lines = [](std::span<const protocol::AuditEntry> entries) {
    std::string out;
    for (const auto& e : entries) out += protocol::AuditEntryToJsonLine(e) + "\n";
    return out;
  };
  const std::vector<protocol::AuditEntry> chain = fuzz::SampleAuditChain(4);
  WriteText(dir + "/chain.jsonl", lines(chain));
  WriteText(dir + "/single.jsonl", lines(std::span(chain).first(1)));
  WriteText(dir + "/tail.jsonl", lines(std::span(chain).subspan(2)));
}

void JsonSeeds(const std::string& dir) {
  WriteMode(dir + "/types.bin", 32,
            R"({"s":"text \u00e9","u":5,"n":-1,"f":1.5,"b":true,"z":null,"h":"00ff","b64":"AAEC",)"
            R"("o":{"x":[1,2],"y":{"s":"deep"}},"a":[{"k":"v"},{"k":"w"}],"ss":["a","b"],)"
            R"("pem":"-----BEGIN X-----\nAAEC\n-----END X-----\n"})");
  WriteMode(dir + "/lease.bin", 64, protocol::ToJson(fuzz::SampleLease()).dump());
  WriteMode(dir + "/limits.bin", 2, R"({"s":"abc","b64":"AAECAw==","u":18446744073709551615})");
}

void JournalSeeds(const std::string& dir) {
  agent::JournalId id{};
  for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(0x10 + i);
  Bytes file = agent::EncodeJournalHeader(1000, id);
  Write(dir + "/empty.bin", file);
  crypto::Sha256Digest chain =
      agent::JournalHeaderHash(ByteSpan(file).first(agent::kJournalHeaderHashedBytes));
  uint64_t seq = 0;
  auto block = [&](uint64_t counter) {
    agent::JournalRecord r;
    r.seq = ++seq;
    r.counter = counter;
    agent::EncodeJournalRecord(r, chain, file);
  };
  auto served = [&](std::string model, std::string client, uint64_t count) {
    agent::JournalRecord r;
    r.seq = ++seq;
    r.type = agent::JournalRecordType::kServed;
    r.model_id = std::move(model);
    r.client = std::move(client);
    r.count = count;
    agent::EncodeJournalRecord(r, chain, file);
  };
  block(1016);
  served("000102030405060708090a0b0c0d0e0f", "kiosk", 3);
  served("m", "c", 1);
  served(std::string(agent::kJournalMaxModelIdBytes, 'm'),
         std::string(agent::kJournalMaxClientBytes, 'c'), 12);
  block(1032);
  served("m", "caf\xc3\xa9", 16);
  {  // a block lost with a restored older copy of the journal, never credited again
    agent::JournalRecord r;
    r.seq = ++seq;
    r.type = agent::JournalRecordType::kWrittenOff;
    r.count = 16;
    agent::EncodeJournalRecord(r, chain, file);
  }
  block(1048);
  Write(dir + "/records.bin", file);
  Write(dir + "/torn.bin", ByteSpan(file).first(file.size() - 5));
  Bytes zeros = file;
  zeros.resize(file.size() + 512, 0);
  Write(dir + "/zero_tail.bin", zeros);
}

void KserveSeeds(const std::string& dir) {
  auto put = [&](const std::string& name, std::string_view header, std::string_view body) {
    WriteText(dir + "/" + name + ".txt", std::string(header) + "\n" + std::string(body));
  };
  put("every_datatype", "-",
      R"({"id":"r1","parameters":{"binary_data_output":true},"inputs":[)"
      R"({"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]},)"
      R"({"name":"u8","shape":[3],"datatype":"UINT8","data":[0,128,255]},)"
      R"({"name":"i8","shape":[2],"datatype":"INT8","data":[-128,127]},)"
      R"({"name":"i32","shape":[1],"datatype":"INT32","data":[-2147483648]},)"
      R"({"name":"i64","shape":[],"datatype":"INT64","data":[9223372036854775807]},)"
      R"({"name":"f16","shape":[2],"datatype":"FP16","data":[0.1,65504]},)"
      R"({"name":"f32","shape":[2],"datatype":"FP32","data":[-0.0,3.4028235e38]},)"
      R"({"name":"f64","shape":[1],"datatype":"FP64","data":[5e-324]}],)"
      R"("outputs":[{"name":"b","parameters":{"binary_data":false}},{"name":"f32"}]})");
  put("nested", "-",
      R"({"inputs":[{"name":"x","shape":[2,2,2],"datatype":"FP32",)"
      R"("data":[[[1,2],[3,4]],[[5,6],[7,8]]]},)"
      R"({"name":"e","shape":[2,0],"datatype":"INT64","data":[[],[]]}]})");
  put("limits", "-",
      R"({"inputs":[{"name":"x","shape":[4097],"datatype":"UINT8","data":[1]},)"
      R"({"name":"y","shape":[1,1,1,1,1,1,1,1,1],"datatype":"UINT8","data":[1]}]})");
  agent::kserve::InferRequest request;
  request.id = "bin";
  engine::Tensor t;
  t.name = "img";
  t.dtype = engine::DType::kFloat32;
  t.shape = {1, 2, 2};
  t.data = fuzz::Pattern(16, 0x3f);
  request.inputs.push_back(t);
  t.name = "mask";
  t.dtype = engine::DType::kBool;
  t.shape = {3};
  t.data = {1, 0, 1};
  request.inputs.push_back(t);
  request.outputs = {{"img", true}};
  auto binary = agent::kserve::EncodeInferRequest(request, /*binary_inputs=*/true);
  if (!binary) Die("kserve seed: " + binary.error().ToString());
  put("binary", std::to_string(*binary->json_bytes), binary->body);
  put("binary_truncated", std::to_string(*binary->json_bytes),
      std::string_view(binary->body).substr(0, binary->body.size() - 3));
}

void AdminSeeds(const std::string& dir) {
  const char* const bodies[] = {
      R"({"model_id":"000102030405060708090a0b0c0d0e0f","name":"example","version":"1.0",)"
      R"("dek":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",)"
      R"("sealed_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"})",
      R"({"reason":"superseded"})",
      R"({"name":"kiosks","pcrs":[0,2,4,7],"allow_tofu":false,"require_ek_certificate":true})",
      R"({"name":"v1","pcrs":{"0":"0000000000000000000000000000000000000000000000000000000000000000",)"
      R"("7":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}})",
      R"({"group":"kiosks","ttl_seconds":3600})",
      R"({"model_id":"000102030405060708090a0b0c0d0e0f","group":"kiosks","budget":1000,)"
      R"("not_after":"2030-01-01T00:00:00Z","offline_grace_seconds":86400,)"
      R"("extension":{"manual":false,"auto_approve_up_to":100,"period_seconds":86400}})",
      R"({"granted":500})",
      R"({"reason":"over budget"})",
      R"({"scope":"licence","id":"lic_0123456789abcdef","reason":"unpaid"})",
      R"({"name":"ci","role":"operator"})",
      "after=12&limit=100&wait_ms=0&status=pending",
  };
  const char* const names[] = {"model",   "retire", "group",  "golden_set", "enroll", "licence",
                               "approve", "deny",   "revoke", "token",      "query"};
  for (uint8_t i = 0; i < std::size(bodies); ++i) {
    WriteMode(dir + "/" + names[i] + ".bin", i, bodies[i]);
  }
  WriteMode(dir + "/licence_device.bin", 5,
            R"({"model_id":"m","device_id":"dev_1","budget":1,"not_after":"2030-01-01",)"
            R"("offline_grace_seconds":0})");
  WriteMode(dir + "/approve_empty.bin", 6, "");
}

void UrlSeeds(const std::string& dir) {
  WriteText(dir + "/events.txt", "/v1/events?after=12&wait_ms=25000");
  WriteText(dir + "/path_param.txt", "/v1/admin/models/ab%2Fcd%C3%A9/retire");
  WriteText(dir + "/query.txt", "/v1/admin/extensions?status=pending&q=a+b%20c&flag&&x=");
  WriteText(dir + "/root.txt", "/");
}

void ConfigSeeds(const std::string& dir) {
  WriteText(dir + "/init.toml", custodian::DefaultConfigText("/var/lib/custody", "0.0.0.0:8443"));
  WriteText(dir + "/every_key.toml",
            "data_dir = \"/srv/custody\"\n"
            "[server]\nlisten = \"[::]:443\"\nio_threads = 4\nworker_threads = 16\n"
            "max_body_bytes = 2097152\nmax_header_bytes = 32768\nmax_connections = 1000\n"
            "header_timeout_ms = 5000\nbody_timeout_ms = 20000\nidle_timeout_ms = 60000\n"
            "rate_per_second = 12.5\nrate_burst = 25\n"
            "[store]\npath = \"/srv/db/custodian.db\"\ndurability = \"process-crash\"\n"
            "[tpm]\nek_ca_dir = \"/etc/custody/tpm-ca\"\n"
            "[log]\nlevel = \"debug\"\n");
  WriteText(dir + "/minimal.toml", "data_dir = '/d'\n");
}

#ifdef CUSTODY_FUZZ_WITH_NPY
void NpySeeds(const std::string& dir) {
  auto put = [&](const std::string& name, engine::DType dtype, std::vector<int64_t> shape) {
    engine::Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    auto n = t.ExpectedByteSize();
    if (!n) Die("npy seed " + name + ": " + n.error().ToString());
    t.data.resize(*n);
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<uint8_t>(i * 13 + 1);
    if (dtype == engine::DType::kBool) {
      for (auto& b : t.data) b &= 1;
    }
    Write(dir + "/" + name + ".npy", engine::SerializeNpy(t));
  };
  put("f32_2x3", engine::DType::kFloat32, {2, 3});
  put("i64_scalar", engine::DType::kInt64, {});
  put("u8_empty", engine::DType::kUInt8, {0, 4});
  put("bool_3", engine::DType::kBool, {3});
  put("f16_2x2x1", engine::DType::kFloat16, {2, 2, 1});
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: custody_fuzz_seeds OUT_DIR\n");
    return 2;
  }
  const std::string out = argv[1];
  mkdir(out.c_str(), 0755);
  mkdir((out + "/sealed").c_str(), 0755);
  SealedSeeds(out + "/sealed");
  mkdir((out + "/tpm").c_str(), 0755);
  TpmSeeds(out + "/tpm");
  mkdir((out + "/journal").c_str(), 0755);
  JournalSeeds(out + "/journal");
  const std::pair<const char*, void (*)(const std::string&)> text_seeds[] = {
      {"protocol", ProtocolSeeds}, {"envelope", EnvelopeSeeds}, {"audit", AuditSeeds},
      {"json", JsonSeeds},         {"admin", AdminSeeds},       {"url", UrlSeeds},
      {"config", ConfigSeeds},     {"kserve", KserveSeeds},
  };
  for (const auto& [name, make] : text_seeds) {
    mkdir((out + "/" + name).c_str(), 0755);
    make(out + "/" + name);
  }
#ifdef CUSTODY_FUZZ_WITH_NPY
  mkdir((out + "/npy").c_str(), 0755);
  NpySeeds(out + "/npy");
#endif
  return 0;
}
