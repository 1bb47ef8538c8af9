// The worked example of docs/FORMAT.md §6 as a known-answer test: sealing with every random input
// fixed must reproduce testdata/v1_example.hex byte for byte, and that file must open. A second
// implementation can use the same vector.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/format/sealed.h"

#ifndef CUSTODY_FORMAT_TESTDATA
#error "CUSTODY_FORMAT_TESTDATA must name the testdata directory"
#endif

namespace custody::format {
namespace {

struct Example {
  Bytes dek;
  Bytes seed;
  std::string plaintext = "Custody sealed model v1 worked example.\n";  // 40 bytes
  SealOptions options;
};

Example MakeExample() {
  Example e;
  for (int i = 0; i < 32; ++i) e.dek.push_back(static_cast<uint8_t>(i));          // 00 01 .. 1f
  for (int i = 0; i < 32; ++i) e.seed.push_back(static_cast<uint8_t>(0x80 + i));  // 80 81 .. 9f
  e.options.info.model_id = "000102030405060708090a0b0c0d0e0f";
  e.options.info.name = "example";
  e.options.info.version = "1";
  e.options.info.engine = "onnx";
  e.options.info.created = "2026-01-01T00:00:00Z";
  e.options.info.meta["task"] = "demo";
  e.options.chunk_size_log2 = 4;  // 16-byte chunks: 3 chunks of 16, 16 and 8 bytes
  std::array<uint8_t, kSaltBytes> salt{};
  for (size_t i = 0; i < salt.size(); ++i) salt[i] = static_cast<uint8_t>(0xa0 + i);
  std::array<uint8_t, kNoncePrefixBytes> prefix = {0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6};
  e.options.determinism.salt = salt;
  e.options.determinism.nonce_prefix = prefix;
  return e;
}

std::string VectorPath() { return std::string(CUSTODY_FORMAT_TESTDATA) + "/v1_example.hex"; }

std::string ReadVector() {
  std::ifstream in(VectorPath());
  std::stringstream ss;
  ss << in.rdbuf();
  std::string hex;
  for (char c : ss.str()) {
    if (std::isxdigit(static_cast<unsigned char>(c))) hex.push_back(c);
  }
  return hex;
}

TEST(SealedFormatVector, DeterministicSealingReproducesTheSpecExample) {
  Example e = MakeExample();
  auto vendor = crypto::Ed25519PrivateKey::FromSeed(e.seed).value();
  auto sealed = SealBytes(AsBytes(e.plaintext), e.dek, vendor, e.options);
  ASSERT_TRUE(sealed.has_value()) << sealed.error().ToString();
  if (std::getenv("CUSTODY_WRITE_VECTORS") != nullptr) {
    std::ofstream out(VectorPath());
    std::string hex = HexEncode(*sealed);
    for (size_t i = 0; i < hex.size(); i += 64) out << hex.substr(i, 64) << "\n";
  }
  EXPECT_EQ(HexEncode(*sealed), ReadVector())
      << "sealed format v1 bytes changed: this breaks every sealed file in the field";
}

TEST(SealedFormatVector, SpecExampleOpens) {
  Example e = MakeExample();
  auto vendor = crypto::Ed25519PrivateKey::FromSeed(e.seed).value();
  Bytes file = HexDecode(ReadVector()).value();
  auto opened = Open(file, e.dek, vendor.public_key());
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
  EXPECT_EQ(AsChars(opened->plaintext.span()), e.plaintext);
  EXPECT_EQ(opened->header.chunk_count(), 3u);
}

}  // namespace
}  // namespace custody::format
