// Shared fixtures for the sealed-format tests.
#pragma once

#include <gtest/gtest.h>

#include "core/format/sealed.h"

namespace custody::format::testing {

inline ModelInfo TestInfo() {
  ModelInfo info;
  info.name = "test-model";
  info.version = "1.0";
  info.engine = "onnx";
  info.meta["labels"] = "cat,dog";
  return info;
}

inline Bytes Pattern(size_t n, uint8_t seed = 1) {
  Bytes b(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& v : b) {
    x = x * 1103515245u + 12345u;
    v = static_cast<uint8_t>(x >> 16);
  }
  return b;
}

struct Sealer {
  crypto::Ed25519PrivateKey vendor = crypto::Ed25519PrivateKey::Generate().value();
  SecretBuffer dek = GenerateDek().value();

  Bytes Seal(ByteSpan plaintext, uint8_t chunk_log2 = 4, ModelInfo info = TestInfo()) const {
    SealOptions o;
    o.info = std::move(info);
    o.chunk_size_log2 = chunk_log2;
    auto sealed = SealBytes(plaintext, dek.span(), vendor, o);
    EXPECT_TRUE(sealed.has_value()) << sealed.error().ToString();
    return sealed.value();
  }
  Result<OpenedModel> OpenBytes(ByteSpan sealed, int threads = 0) const {
    OpenOptions o;
    o.threads = threads;
    return Open(sealed, dek.span(), vendor.public_key(), o);
  }
};

// Offset of chunk i (ciphertext start) in a sealed file.
inline uint64_t ChunkOffset(const SealedHeader& h, uint64_t i) {
  return h.payload_offset() + (i << h.chunk_size_log2) + i * kTagBytes;
}

}  // namespace custody::format::testing
