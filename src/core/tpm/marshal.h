// tss2-mu encoding helpers shared by the TPM code: one place that sizes buffers, checks that a
// decoded structure used every byte, and turns tss2-mu codes into Statuses.
#pragma once

#include <tss2/tss2_mu.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "core/tpm/tss_status.h"

namespace custody::tpm {

// `value` marshalled with its tss2-mu function (e.g. Tss2_MU_TPMT_PUBLIC_Marshal). A failure
// means a structure Custody built is inconsistent: kInternal, naming `what`.
template <typename T>
Result<Bytes> MarshalTss(const T& value, TSS2_RC (*marshal)(const T*, uint8_t*, size_t, size_t*),
                         std::string_view what) {
  Bytes out(sizeof(T));  // every marshalled form is at most its in-memory size
  size_t offset = 0;
  TSS2_RC rc = marshal(&value, out.data(), out.size(), &offset);
  if (rc != TSS2_RC_SUCCESS) {
    return Internal("cannot encode " + std::string(what) + ": " + RcHex(rc));
  }
  out.resize(offset);
  return out;
}

// Decodes exactly one structure from untrusted `bytes`: kInvalidArgument, naming `what`, if it
// does not parse or is followed by anything.
template <typename T>
Result<T> UnmarshalTss(ByteSpan bytes, TSS2_RC (*unmarshal)(const uint8_t*, size_t, size_t*, T*),
                       std::string_view what) {
  T value{};
  size_t offset = 0;
  if (bytes.empty()) return InvalidArgument(std::string(what) + " is empty");
  TSS2_RC rc = unmarshal(bytes.data(), bytes.size(), &offset, &value);
  if (rc != TSS2_RC_SUCCESS) {
    return InvalidArgument(std::string(what) + " (" + std::to_string(bytes.size()) +
                           " bytes) is not a valid structure: " + RcHex(rc));
  }
  if (offset != bytes.size()) {
    return InvalidArgument(std::string(what) + " is followed by " +
                           std::to_string(bytes.size() - offset) + " unexpected bytes");
  }
  return value;
}

}  // namespace custody::tpm
