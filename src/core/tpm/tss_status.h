// TPM and tss2 return codes as Custody Statuses: one mapping, used by every TPM call, carrying
// the decoded text (Tss2_RC_Decode) so an operator sees e.g. "tpm:session(1):a policy check
// failed" rather than a number.
#pragma once

#include <tss2/tss2_common.h>

#include <string>
#include <string_view>

#include "core/base/status.h"

namespace custody::tpm {

// OK for TSS2_RC_SUCCESS; otherwise "<what>: <decoded rc> (0x<rc>)" with a code chosen from the
// rc: authorisation and policy failures kPermissionDenied, lockout and busy TPMs and transport
// (TCTI) failures kUnavailable, a defined NV index kAlreadyExists, a missing handle kNotFound,
// malformed tss2-mu input kInvalidArgument, anything else kInternal.
Status TssStatus(TSS2_RC rc, std::string_view what);

// The format-level part of an rc with the session/parameter/handle number removed, for
// comparing against TPM2_RC_* constants.
TSS2_RC TpmBaseCode(TSS2_RC rc);

// "0x0000098e".
std::string RcHex(TSS2_RC rc);

}  // namespace custody::tpm
