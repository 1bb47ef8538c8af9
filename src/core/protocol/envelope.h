// Signed documents (DESIGN.md §6): leases, budget approvals, revocations and policy updates
// travel as envelopes whose signature covers the exact payload bytes carried inside, together
// with the document type. The receiver verifies first and parses after; nothing is ever
// re-serialised to be verified. docs/PROTOCOL.md §10 specifies the encoding:
//
//   {"type": "custody.lease.v1", "key": "ed25519:<fingerprint>",
//    "payload": "<base64 of the payload bytes (a JSON object)>",
//    "signature": "<base64 of Ed25519(key, "custody/envelope/v1" 0x00 type 0x00 payload)>"}
//
// The context string and the type inside the signed message are domain separation: a signature
// over one kind of document can never pass as another (a revocation is not a lease), and no
// other Custody signature (sealed-model headers) can pass as an envelope.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::protocol {

inline constexpr std::string_view kEnvelopeContext = "custody/envelope/v1";
inline constexpr size_t kMaxEnvelopePayloadBytes = 256 * 1024;

// Document types.
inline constexpr std::string_view kLeaseDocument = "custody.lease.v1";
inline constexpr std::string_view kRevocationDocument = "custody.revocation.v1";

// Signs `payload` (the exact bytes; callers pass a compact JSON dump) as a document of `type`.
Result<nlohmann::json> SealEnvelope(const crypto::Ed25519PrivateKey& key, std::string_view type,
                                    ByteSpan payload);

// Verifies an envelope against the pinned `key` and the `expected_type` and returns the payload
// bytes, which only now may be parsed. Errors: kInvalidArgument (malformed envelope),
// kUnauthenticated (another type, another key, or a signature that does not verify).
Result<Bytes> OpenEnvelope(const nlohmann::json& envelope, std::string_view expected_type,
                           const crypto::Ed25519PublicKey& key);

}  // namespace custody::protocol
