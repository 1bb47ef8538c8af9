// Value types that travel between the device side (device.h, ESAPI) and the verifier side
// (verifier.h, pure code used by the custodian). TPM structures are carried in their standard
// marshalled encodings (TCG TPM 2.0 Part 2), exactly as tpm2-tools reads and writes them, so any
// standard tool can produce or check them (docs/PROTOCOL.md, "TPM").
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"

namespace custody::tpm {

inline constexpr uint32_t kPcrCount = 24;  // PCR 0..23, the PC Client platform's set

// A selection of PCRs of the SHA-256 bank: sorted, without duplicates, each below kPcrCount.
struct PcrSelection {
  std::vector<uint32_t> pcrs;

  // Validates and normalises (sorts, rejects duplicates and out-of-range indices).
  static Result<PcrSelection> Of(std::vector<uint32_t> pcrs);
  // "0,2,4,7" (also accepts spaces after the commas).
  static Result<PcrSelection> Parse(std::string_view text);
  std::string ToString() const;
  bool empty() const { return pcrs.empty(); }
  bool operator==(const PcrSelection&) const = default;
};

// PCR index -> SHA-256 bank value.
using PcrValues = std::map<uint32_t, crypto::Sha256Digest>;

// A named allow-listed platform state: a quote is accepted if the quoted values of all PCRs of
// this set equal the set's values (and the quote covers every PCR of the set).
struct GoldenPcrSet {
  std::string name;
  PcrValues pcrs;
};

enum class EkType { kEcc, kRsa };

// A TPM-generated key as stored by the device: its public and wrapped private parts, both as
// returned by TPM2_Create. Only its parent TPM can load the private part.
struct KeyBlob {
  Bytes public_area;   // TPM2B_PUBLIC
  Bytes private_area;  // TPM2B_PRIVATE
};

// A signed TPM attestation (TPM2_Quote, TPM2_Certify, TPM2_NV_Certify).
struct Attestation {
  Bytes attest;     // TPMS_ATTEST: the contents of TPM2B_ATTEST, i.e. the signed bytes
  Bytes signature;  // TPMT_SIGNATURE
};

struct Quote {
  Attestation attestation;
  PcrValues pcrs;  // the quoted PCRs' values, read in the same TPM session as the quote
};

// What MakeCredential produces and ActivateCredential consumes.
struct Credential {
  Bytes id_object;         // TPM2B_ID_OBJECT
  Bytes encrypted_secret;  // TPM2B_ENCRYPTED_SECRET
};

// TPMS_TIME_INFO. clock_ms never goes backwards while `safe`; reset_count counts TPM resets
// (reboots), restart_count restarts since the last reset.
struct TimeInfo {
  uint64_t time_ms = 0;   // since the last TPM reset/restart
  uint64_t clock_ms = 0;  // the TPM's monotonic clock (persisted in NV)
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  bool safe = false;
};

// A PCR policy the custodian approved for a device's binding key (TPM2_PolicyAuthorize).
// approved_digest = PolicyPCR digest (from an all-zero start) of `selection` with PCR values
// hashing to `pcr_digest`; signature = the custodian policy key's ECDSA P-256/SHA-256 signature
// over SHA-256(approved_digest || policy_ref), as a TPMT_SIGNATURE.
struct ApprovedPolicy {
  PcrSelection selection;
  crypto::Sha256Digest pcr_digest{};  // SHA-256 of the selected PCR values in index order
  crypto::Sha256Digest approved_digest{};
  Bytes policy_ref;  // empty, or up to 32 bytes binding the approval to a purpose
  Bytes signature;   // TPMT_SIGNATURE
};

}  // namespace custody::tpm
