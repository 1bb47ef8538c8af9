// Fixed keys and clock shared by the sealed-model fuzzer and the seed generator, so seeds made
// by custody_fuzz_seeds open under the fuzzer's keys and mutations of them reach the chunk path.
// The DEK and vendor seed are those of docs/FORMAT.md §6, so the spec's worked example
// (src/core/format/testdata/v1_example.hex) is a valid seed too. Test keys only.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdlib>

#include "core/format/sealed.h"

namespace custody::fuzz {

inline std::array<uint8_t, format::kDekBytes> FixedDek() {
  std::array<uint8_t, format::kDekBytes> dek{};
  for (size_t i = 0; i < dek.size(); ++i) dek[i] = static_cast<uint8_t>(i);  // 00..1f
  return dek;
}

inline const crypto::Ed25519PrivateKey& FixedVendor() {
  static const crypto::Ed25519PrivateKey* vendor = [] {
    std::array<uint8_t, 32> seed{};
    for (size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<uint8_t>(0x80 + i);  // 80..9f
    auto key = crypto::Ed25519PrivateKey::FromSeed(seed);
    if (!key) std::abort();
    return new crypto::Ed25519PrivateKey(std::move(key).value());
  }();
  return *vendor;
}

// 2026-06-01T00:00:00Z: after every seed's `created`, before the `not_after` of all but the
// deliberately expired seed. Fixed so a run's outcome never depends on the wall clock.
inline std::chrono::system_clock::time_point FixedNow() {
  return std::chrono::system_clock::time_point(std::chrono::seconds(1780272000));
}

}  // namespace custody::fuzz
