// Fixed keys and sample messages shared by the protocol fuzzers and the seed generator, so seeds
// made by custody_fuzz_seeds are signed by the key the fuzzers pin and mutations of them get past
// the envelope signature (or are re-signed by the fuzzer to get past it). Test keys only.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/crypto/crypto.h"
#include "core/protocol/audit.h"
#include "core/protocol/messages.h"

namespace custody::fuzz {

// The custodian's lease-signing key as a device pins it.
inline const crypto::Ed25519PrivateKey& FixedCustodian() {
  static const crypto::Ed25519PrivateKey* key = [] {
    std::array<uint8_t, 32> seed{};
    for (size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<uint8_t>(0xc0 + i);  // c0..df
    auto k = crypto::Ed25519PrivateKey::FromSeed(seed);
    if (!k) std::abort();
    return new crypto::Ed25519PrivateKey(std::move(k).value());
  }();
  return *key;
}

// The first input byte of protocol_message_fuzzer.cc.
enum class MessageKind : uint8_t {
  kEnrollBeginRequest = 0,
  kEnrollBeginResponse,
  kEnrollCompleteRequest,
  kEnrollCompleteResponse,
  kNonceResponse,
  kAttestRequest,
  kAttestResponse,
  kEventsResponse,
  kLeasePayload,
  kRevocationPayload,
  kUsageRequest,
  kExtensionRequest,
};
inline constexpr uint8_t kMessageKinds = 12;

inline Bytes Pattern(size_t n, uint8_t start) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(start + i);
  return b;
}

inline tpm::Attestation SampleAttestation(uint8_t start) {
  return tpm::Attestation{Pattern(40, start), Pattern(24, static_cast<uint8_t>(start + 0x40))};
}

inline tpm::PcrValues SamplePcrs() {
  tpm::PcrValues pcrs;
  for (uint32_t index : {0u, 7u, 23u}) {
    Bytes v = Pattern(32, static_cast<uint8_t>(index * 3));
    std::copy(v.begin(), v.end(), pcrs[index].begin());
  }
  return pcrs;
}

inline protocol::LeasePayload SampleLease() {
  protocol::LeasePayload l;
  l.lease_id = "lse_0011223344556677";
  l.device_id = "dev_8899aabbccddeeff";
  l.licence_id = "lic_0123456789abcdef";
  l.model_id = "000102030405060708090a0b0c0d0e0f";
  l.model_name = "example";
  l.model_version = "1.0";
  l.wrapped_dek = Pattern(97, 0x10);
  tpm::ApprovedPolicy approval;
  approval.selection = tpm::PcrSelection::Of({0, 7}).value();
  Bytes digest = Pattern(32, 0x20);
  std::copy(digest.begin(), digest.end(), approval.pcr_digest.begin());
  digest = Pattern(32, 0x40);
  std::copy(digest.begin(), digest.end(), approval.approved_digest.begin());
  approval.policy_ref = Pattern(8, 0x60);
  approval.signature = Pattern(72, 0x70);
  l.approvals.push_back(approval);
  l.counter_limit = 1000;
  l.counter_unit = 16;
  l.not_after = "2030-01-01T00:00:00Z";
  l.offline_grace_ms = 86400000;
  l.tpm_clock_ms = 123456789;
  l.tpm_reset_count = 0x9e3779b9;  // as an AK quotes it: obfuscated
  l.sequence = 3;
  l.revocation_epoch = 1;
  l.issued_at = "2026-06-01T00:00:00Z";
  return l;
}

inline protocol::RevocationPayload SampleRevocation() {
  protocol::RevocationPayload r;
  r.device_id = "dev_8899aabbccddeeff";
  r.scope = "licence";
  r.subject = "lic_0123456789abcdef";
  r.reason = "unpaid";
  r.revocation_epoch = 2;
  r.issued_at = "2026-06-02T00:00:00Z";
  return r;
}

// A document of `type` over the compact JSON of `payload`, signed by FixedCustodian().
inline nlohmann::json SampleEnvelope(std::string_view type, const nlohmann::json& payload) {
  auto env = protocol::SealEnvelope(FixedCustodian(), type, AsBytes(payload.dump()));
  if (!env) std::abort();
  return *env;
}

// A valid audit chain of `n` entries from seq 1.
inline std::vector<protocol::AuditEntry> SampleAuditChain(size_t n) {
  std::vector<protocol::AuditEntry> chain;
  const char* actions[] = {"model.register", "licence.create", "lease.issue", "revocation.create"};
  for (size_t i = 0; i < n; ++i) {
    protocol::AuditEntry e;
    e.time = "2026-06-01T00:00:0" + std::to_string(i % 10) + "Z";
    e.actor = i % 2 == 0 ? "admin:alice (tok_0011)" : "device:dev_8899aabbccddeeff";
    e.action = actions[i % 4];
    e.subject = "lic_0123456789abcdef";
    e.details = R"({"budget":100,"note":"x\u0001y"})";
    protocol::ChainAuditEntry(e, chain.empty() ? nullptr : &chain.back());
    chain.push_back(e);
  }
  return chain;
}

}  // namespace custody::fuzz
