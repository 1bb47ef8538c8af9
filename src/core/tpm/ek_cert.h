// EK certificate checks (DESIGN.md §4, "Device EK"): the certificate a TPM maker stored in the
// TPM's NV chains to a TPM-maker CA the custodian trusts, and certifies this very EK.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "core/base/bytes.h"
#include "core/base/status.h"

namespace custody::tpm {

// ek_cert: DER X.509 certificate. ek_public: TPM2B_PUBLIC of the EK the device presented.
// ca_dir: a directory of trusted certificates (PEM or DER, one or more per file; roots and
// intermediates); every file in it is read. now: for tests (defaults to the system clock).
// Checks the chain to a root in ca_dir (EK certificates' TCG-specific critical extensions are
// accepted), validity at `now`, and that the certificate's public key equals the EK's.
// kUnauthenticated: does not chain or does not match the EK; kInvalidArgument: not a
// certificate; kNotFound / kPermissionDenied: ca_dir unusable (the message names it).
Status VerifyEkCertificate(ByteSpan ek_cert, ByteSpan ek_public, const std::string& ca_dir,
                           std::optional<std::chrono::sys_seconds> now = std::nullopt);

// What an operator wants to see of an EK certificate, without trusting it.
struct EkCertificateSummary {
  std::string subject;  // RFC 2253 form; EK certificates often have an empty subject
  std::string issuer;
  std::string not_after;  // RFC 3339 UTC
};
// kInvalidArgument if `ek_cert` is not a DER certificate.
Result<EkCertificateSummary> DescribeEkCertificate(ByteSpan ek_cert);

}  // namespace custody::tpm
