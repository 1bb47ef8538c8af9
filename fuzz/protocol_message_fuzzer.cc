// libFuzzer target for the device protocol's message decoders (src/core/protocol/messages.h):
// what the custodian receives from devices and what a device receives from the custodian.
//
// The first input byte picks the decoder, the rest is the message text (protocol_fixtures.h
// names the modes, which custody_fuzz_seeds writes as fuzz/corpus/protocol/*):
//   0 EnrollBeginRequest   1 EnrollBeginResponse   2 EnrollCompleteRequest
//   3 EnrollCompleteResponse   4 NonceResponse   5 AttestRequest
//   6 AttestResponse (each lease then opened under the fixed custodian key and its payload read)
//   7 EventsResponse (each document opened as a lease and as a revocation)
//   8 LeasePayload   9 RevocationPayload   10 UsageRequest   11 ExtensionRequestMessage
// Properties beyond "no crash, no sanitizer report, no exception": whatever a decoder accepts, its
// encoder writes, and decoding that again gives the same message (one encoder and one decoder per
// message must agree), and the encoding never throws (no invalid UTF-8 gets through).
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "core/protocol/envelope.h"
#include "core/protocol/messages.h"
#include "protocol_fixtures.h"

namespace {

using namespace custody;
using namespace custody::protocol;

// Decodes `text` as a T with `parse`, and checks the encode/decode round trip.
template <typename T, typename Parse>
Result<T> Check(std::string_view text, Parse&& parse) {
  Result<T> first = parse(text);
  if (!first) return first;
  const nlohmann::json encoded = ToJson(*first);
  const std::string again_text = encoded.dump();
  Result<T> again = parse(again_text);
  if (!again || ToJson(*again) != encoded) std::abort();
  return first;
}

void Lease(ByteSpan payload) {
  Check<LeasePayload>(AsChars(payload),
                      [](std::string_view t) { return ParseLeasePayload(AsBytes(t)); })
      .status()
      .IgnoreError();
}

void Revocation(ByteSpan payload) {
  Check<RevocationPayload>(AsChars(payload),
                           [](std::string_view t) { return ParseRevocationPayload(AsBytes(t)); })
      .status()
      .IgnoreError();
}

// A device opening a document under its pinned key, then reading the payload.
void OpenDocument(const nlohmann::json& document) {
  const auto& key = fuzz::FixedCustodian().public_key();
  if (Result<Bytes> lease = OpenEnvelope(document, kLeaseDocument, key)) Lease(*lease);
  if (Result<Bytes> rev = OpenEnvelope(document, kRevocationDocument, key)) Revocation(*rev);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (static_cast<fuzz::MessageKind>(data[0] % fuzz::kMessageKinds)) {
    case fuzz::MessageKind::kEnrollBeginRequest:
      Check<EnrollBeginRequest>(text, ParseEnrollBeginRequest).status().IgnoreError();
      break;
    case fuzz::MessageKind::kEnrollBeginResponse:
      Check<EnrollBeginResponse>(text, ParseEnrollBeginResponse).status().IgnoreError();
      break;
    case fuzz::MessageKind::kEnrollCompleteRequest:
      Check<EnrollCompleteRequest>(text, ParseEnrollCompleteRequest).status().IgnoreError();
      break;
    case fuzz::MessageKind::kEnrollCompleteResponse:
      Check<EnrollCompleteResponse>(text, ParseEnrollCompleteResponse).status().IgnoreError();
      break;
    case fuzz::MessageKind::kNonceResponse:
      Check<NonceResponse>(text, ParseNonceResponse).status().IgnoreError();
      break;
    case fuzz::MessageKind::kAttestRequest:
      Check<AttestRequest>(text, ParseAttestRequest).status().IgnoreError();
      break;
    case fuzz::MessageKind::kAttestResponse: {
      Result<AttestResponse> r = Check<AttestResponse>(text, ParseAttestResponse);
      if (r) {
        for (const nlohmann::json& lease : r->leases) OpenDocument(lease);
      }
      break;
    }
    case fuzz::MessageKind::kEventsResponse: {
      Result<EventsResponse> r = Check<EventsResponse>(text, ParseEventsResponse);
      if (r) {
        for (const Event& e : r->events) OpenDocument(e.document);
      }
      break;
    }
    case fuzz::MessageKind::kLeasePayload:
      Lease(AsBytes(text));
      break;
    case fuzz::MessageKind::kRevocationPayload:
      Revocation(AsBytes(text));
      break;
    case fuzz::MessageKind::kUsageRequest:
      Check<UsageRequest>(text, ParseUsageRequest).status().IgnoreError();
      break;
    case fuzz::MessageKind::kExtensionRequest:
      Check<ExtensionRequestMessage>(text, ParseExtensionRequest).status().IgnoreError();
      break;
  }
  return 0;
}
