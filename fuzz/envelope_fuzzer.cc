// libFuzzer target for signed documents (src/core/protocol/envelope.h): how a device checks a
// lease or a revocation from the custodian before it reads the payload.
//
// Each input is the JSON text of an envelope, opened three ways under the fixed custodian key of
// protocol_fixtures.h:
//  1. as sent, expecting a lease and a revocation (mutations of a signed seed that keep the
//     signed parts intact reach the payload decoders);
//  2. re-signed: when the input has a string "type" and a base64 "payload", its "signature" is
//     replaced by a real one over them, so mutated payloads get past the signature check and the
//     lease and revocation decoders see them;
//  3. the input itself sealed as a payload, which must open to exactly the same bytes.
// Properties beyond "no crash, no sanitizer report": an envelope opens only under its own type;
// a re-signed one opens to its own payload; seal then open is the identity.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/protocol/envelope.h"
#include "core/protocol/json.h"
#include "core/protocol/messages.h"
#include "protocol_fixtures.h"

namespace {

using namespace custody;
using namespace custody::protocol;

void ReadPayload(std::string_view type, const Bytes& payload) {
  if (type == kLeaseDocument) {
    ParseLeasePayload(payload).status().IgnoreError();
  } else if (type == kRevocationDocument) {
    ParseRevocationPayload(payload).status().IgnoreError();
  }
}

void OpenAsSent(const nlohmann::json& envelope) {
  const auto& key = fuzz::FixedCustodian().public_key();
  Result<Bytes> lease = OpenEnvelope(envelope, kLeaseDocument, key);
  Result<Bytes> revocation = OpenEnvelope(envelope, kRevocationDocument, key);
  if (lease && revocation) std::abort();  // one signature, two document types
  if (lease) ReadPayload(kLeaseDocument, *lease);
  if (revocation) ReadPayload(kRevocationDocument, *revocation);
}

void OpenResigned(nlohmann::json envelope) {
  auto type = envelope.find("type");
  auto payload = envelope.find("payload");
  if (type == envelope.end() || payload == envelope.end() || !type->is_string() ||
      !payload->is_string()) {
    return;
  }
  const std::string type_text = type->get<std::string>();
  Result<Bytes> payload_bytes = Base64Decode(payload->get_ref<const std::string&>());
  if (!payload_bytes) return;
  Bytes message(kEnvelopeContext.begin(), kEnvelopeContext.end());
  message.push_back(0);
  message.insert(message.end(), type_text.begin(), type_text.end());
  message.push_back(0);
  message.insert(message.end(), payload_bytes->begin(), payload_bytes->end());
  auto signature = fuzz::FixedCustodian().Sign(message);
  if (!signature) std::abort();
  envelope["signature"] = Base64Encode(*signature);
  Result<Bytes> opened = OpenEnvelope(envelope, type_text, fuzz::FixedCustodian().public_key());
  if (!opened) return;  // malformed in another way (a field too long, an unknown field, ...)
  if (*opened != *payload_bytes) std::abort();
  ReadPayload(type_text, *opened);
}

void SealThenOpen(ByteSpan payload) {
  Result<nlohmann::json> sealed = SealEnvelope(fuzz::FixedCustodian(), kLeaseDocument, payload);
  if (!sealed) {
    if (payload.size() <= kMaxEnvelopePayloadBytes) std::abort();
    return;
  }
  // Through its text, as it travels.
  Result<nlohmann::json> parsed = ParseJsonObject(sealed->dump(), 2 * kMaxRequestBytes, "document");
  if (!parsed) std::abort();
  Result<Bytes> opened = OpenEnvelope(*parsed, kLeaseDocument, fuzz::FixedCustodian().public_key());
  if (!opened || *opened != Bytes(payload.begin(), payload.end())) std::abort();
  if (OpenEnvelope(*parsed, kRevocationDocument, fuzz::FixedCustodian().public_key())) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ByteSpan in(data, size);
  Result<nlohmann::json> envelope = ParseJsonObject(AsChars(in), kMaxRequestBytes, "document");
  if (envelope) {
    OpenAsSent(*envelope);
    OpenResigned(*envelope);
  }
  SealThenOpen(in);
  return 0;
}
