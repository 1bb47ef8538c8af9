#include "core/tpm/tss_status.h"

#include <tss2/tss2_rc.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstdio>
#include <cstdlib>

namespace custody::tpm {
namespace {

// tpm2-tss logs its own warnings and errors to stderr (the decoder on every malformed input, ESAPI
// on every TPM error). Custody reports each failure in its Status instead, and its library logs
// nothing above debug, so tss2's log is off unless the operator asks for it with TSS2_LOG. tss2
// reads the variable lazily, at its first log call, so it is set when libcustody-core is loaded,
// before main and before any thread exists (setenv is not safe next to other threads' getenv).
[[gnu::constructor]] void QuietTss2Logging() { setenv("TSS2_LOG", "all+NONE", /*overwrite=*/0); }

}  // namespace

std::string RcHex(TSS2_RC rc) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", rc);
  return buf;
}

TSS2_RC TpmBaseCode(TSS2_RC rc) {
  if ((rc & TSS2_RC_LAYER_MASK) != TSS2_TPM_RC_LAYER) return rc;
  // Format-one codes (bit 7) carry a parameter, handle or session number in bits 8..11.
  if ((rc & TPM2_RC_FMT1) != 0) return rc & (TPM2_RC_FMT1 | 0x3f);
  return rc & 0xfff;
}

Status TssStatus(TSS2_RC rc, std::string_view what) {
  if (rc == TSS2_RC_SUCCESS) return OkStatus();
  const char* decoded = Tss2_RC_Decode(rc);
  std::string message = std::string(what) + ": " + (decoded != nullptr ? decoded : "TPM error") +
                        " (" + RcHex(rc) + ")";
  const TSS2_RC layer = rc & TSS2_RC_LAYER_MASK;
  if (layer == TSS2_TCTI_RC_LAYER) return Unavailable(message + "; is the TPM reachable?");
  if (layer == TSS2_MU_RC_LAYER) return InvalidArgument(message);
  if (layer != TSS2_TPM_RC_LAYER) {
    const TSS2_RC base = rc & 0xffff;  // tss2 layers share the TSS2_BASE_RC_* codes
    if (base == TSS2_BASE_RC_IO_ERROR || base == TSS2_BASE_RC_NO_CONNECTION ||
        base == TSS2_BASE_RC_TRY_AGAIN) {
      return Unavailable(message + "; is the TPM reachable?");
    }
    if (base == TSS2_BASE_RC_BAD_VALUE || base == TSS2_BASE_RC_BAD_REFERENCE ||
        base == TSS2_BASE_RC_INSUFFICIENT_BUFFER || base == TSS2_BASE_RC_MALFORMED_RESPONSE) {
      return base == TSS2_BASE_RC_MALFORMED_RESPONSE ? DataLoss(message) : InvalidArgument(message);
    }
    return Internal(message);
  }
  switch (TpmBaseCode(rc)) {
    case TPM2_RC_AUTH_FAIL:
    case TPM2_RC_BAD_AUTH:
    case TPM2_RC_POLICY_FAIL:
    case TPM2_RC_POLICY_CC:
    case TPM2_RC_PCR_CHANGED:
    case TPM2_RC_EXPIRED:
    case TPM2_RC_TICKET:
    case TPM2_RC_SIGNATURE:
    case TPM2_RC_AUTH_UNAVAILABLE:
    case TPM2_RC_POLICY:
    case TPM2_RC_NV_AUTHORIZATION:
    case TPM2_RC_HIERARCHY:
      return PermissionDenied(message);
    case TPM2_RC_LOCKOUT:
    case TPM2_RC_RETRY:
    case TPM2_RC_YIELDED:
    case TPM2_RC_TESTING:
    case TPM2_RC_NV_RATE:
    case TPM2_RC_NV_UNAVAILABLE:
    case TPM2_RC_INITIALIZE:
    case TPM2_RC_OBJECT_MEMORY:
    case TPM2_RC_SESSION_MEMORY:
    case TPM2_RC_MEMORY:
      return Unavailable(message);
    case TPM2_RC_NV_DEFINED:
      return AlreadyExists(message);
    case TPM2_RC_HANDLE:
    case TPM2_RC_REFERENCE_H0:
      return NotFound(message);
    case TPM2_RC_NV_SPACE:
    case TPM2_RC_NV_LOCKED:
      return ResourceExhausted(message);
    case TPM2_RC_INTEGRITY:
      return DataLoss(message);
    default:
      return Internal(message);
  }
}

}  // namespace custody::tpm
