// Assertions on Custody's Status/Result for tests that use real parts (a software TPM, a running
// custodian), where a failed setup step leaves nothing sensible to continue with.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <utility>

#include "core/base/status.h"

namespace custody::testing {

// The value of `r`, or a test failure naming `what` and the error, then abort: setup steps that
// cannot fail in a working tree use this instead of threading errors through every fixture.
template <typename T>
T Must(Result<T> r, const char* what) {
  if (!r.has_value()) {
    ADD_FAILURE() << what << ": " << r.error().ToString();
    std::abort();
  }
  return std::move(r).value();
}

}  // namespace custody::testing

#define MUST(expr) ::custody::testing::Must((expr), #expr)
#define ASSERT_OK(expr)                                     \
  do {                                                      \
    const ::custody::Status s_ = (expr);                    \
    ASSERT_TRUE(s_.ok()) << #expr << ": " << s_.ToString(); \
  } while (0)
