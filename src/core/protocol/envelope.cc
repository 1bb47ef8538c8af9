#include "core/protocol/envelope.h"

#include "core/protocol/json.h"

namespace custody::protocol {
namespace {

Bytes SignedMessage(std::string_view type, ByteSpan payload) {
  Bytes msg(kEnvelopeContext.begin(), kEnvelopeContext.end());
  msg.push_back(0);
  msg.insert(msg.end(), type.begin(), type.end());
  msg.push_back(0);
  msg.insert(msg.end(), payload.begin(), payload.end());
  return msg;
}

}  // namespace

Result<nlohmann::json> SealEnvelope(const crypto::Ed25519PrivateKey& key, std::string_view type,
                                    ByteSpan payload) {
  if (payload.size() > kMaxEnvelopePayloadBytes) {
    return InvalidArgument("document payload of " + std::to_string(payload.size()) +
                           " bytes exceeds " + std::to_string(kMaxEnvelopePayloadBytes));
  }
  CUSTODY_ASSIGN_OR_RETURN(auto signature, key.Sign(SignedMessage(type, payload)));
  return nlohmann::json{{"type", std::string(type)},
                        {"key", key.public_key().Fingerprint()},
                        {"payload", Base64Encode(payload)},
                        {"signature", Base64Encode(signature)}};
}

Result<Bytes> OpenEnvelope(const nlohmann::json& envelope, std::string_view expected_type,
                           const crypto::Ed25519PublicKey& key) {
  if (!envelope.is_object()) return InvalidArgument("a signed document must be a JSON object");
  JsonObject env(envelope, "document");
  CUSTODY_RETURN_IF_ERROR(env.RejectUnknown({"type", "key", "payload", "signature"}));
  CUSTODY_ASSIGN_OR_RETURN(std::string type, env.String("type", 64));
  if (type != expected_type) {
    return Unauthenticated("signed document is a '" + type + "', expected a '" +
                           std::string(expected_type) + "'");
  }
  CUSTODY_ASSIGN_OR_RETURN(Bytes payload, env.Base64("payload", kMaxEnvelopePayloadBytes));
  CUSTODY_ASSIGN_OR_RETURN(Bytes signature,
                           env.Base64("signature", crypto::kEd25519SignatureBytes));
  Status verified = key.Verify(SignedMessage(type, payload), signature);
  if (!verified.ok()) {
    return Unauthenticated("signature of the '" + type +
                           "' document does not verify under the pinned custodian key " +
                           key.Fingerprint());
  }
  return payload;
}

}  // namespace custody::protocol
