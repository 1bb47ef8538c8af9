// Small helpers for Custody's unit tests (GoogleTest). Test code only.
#pragma once

#include <gtest/gtest.h>

#include <string_view>

#include "core/base/bytes.h"

namespace custody::testing {

// Decodes a hex literal of a test vector; a typo fails the test instead of crashing it.
inline Bytes Hex(std::string_view hex) {
  Result<Bytes> bytes = HexDecode(hex);
  if (!bytes) ADD_FAILURE() << "bad hex in test: " << bytes.error().ToString();
  return bytes ? *bytes : Bytes();
}

inline Bytes ToBytes(ByteSpan span) { return Bytes(span.begin(), span.end()); }

}  // namespace custody::testing
