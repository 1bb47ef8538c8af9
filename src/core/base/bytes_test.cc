#include "core/base/bytes.h"

#include <gtest/gtest.h>

namespace custody {
namespace {

TEST(Bytes, HexRoundTripAndErrors) {
  Bytes b = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(HexEncode(b), "0001abff");
  EXPECT_EQ(HexDecode("0001ABff").value(), b);
  EXPECT_EQ(HexDecode("abc").error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(HexDecode("zz").error().code(), StatusCode::kInvalidArgument);
}

TEST(Bytes, EqualsIgnoreCaseFoldsAsciiLettersOnly) {
  EXPECT_TRUE(EqualsIgnoreCase("Content-Length", "content-length"));
  EXPECT_TRUE(EqualsIgnoreCase("", ""));
  EXPECT_FALSE(EqualsIgnoreCase("host", "hosts"));
  EXPECT_FALSE(EqualsIgnoreCase("a[", "A{"));  // '[' and '{' are 32 apart but not letters
  EXPECT_FALSE(EqualsIgnoreCase("\xc3\xa9", "\xc3\x89"));  // UTF-8 is compared exactly
}

TEST(Bytes, BigEndianHelpersRoundTrip) {
  Bytes out;
  AppendBigEndian16(out, 0x0102);
  AppendBigEndian32(out, 0x03040506);
  AppendBigEndian64(out, 0x0708090a0b0c0d0eull);
  EXPECT_EQ(HexEncode(out), "0102030405060708090a0b0c0d0e");
  ByteReader r(out);
  uint16_t a;
  uint32_t b;
  uint64_t c;
  ASSERT_TRUE(r.ReadU16(a) && r.ReadU32(b) && r.ReadU64(c));
  EXPECT_EQ(a, 0x0102);
  EXPECT_EQ(b, 0x03040506u);
  EXPECT_EQ(c, 0x0708090a0b0c0d0eull);
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(Bytes, ReaderNeverReadsPastTheEnd) {
  Bytes three = {1, 2, 3};
  ByteReader r(three);
  uint32_t v;
  EXPECT_FALSE(r.ReadU32(v));
  uint8_t u;
  EXPECT_FALSE(r.ReadU8(u));  // stays failed at the end
  ByteSpan s;
  ByteReader r2(three);
  EXPECT_FALSE(r2.ReadSpan(SIZE_MAX, s));
}

TEST(Bytes, Base64MatchesRfc4648AndIsStrict) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},
                                                         {"f", "Zg=="},
                                                         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},
                                                         {"foob", "Zm9vYg=="},
                                                         {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, encoded] : vectors) {
    EXPECT_EQ(Base64Encode(AsBytes(plain)), encoded);
    Result<Bytes> back = Base64Decode(encoded);
    ASSERT_TRUE(back.has_value()) << encoded;
    EXPECT_EQ(AsChars(*back), plain);
  }
  Bytes all(256);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Base64Decode(Base64Encode(all)).value(), all);
  for (const char* bad : {"Zg=", "Zg", "Z===", "Zm9v\n", "Zm 9", "Zh==", "Zm9=", "=Zm9",
                          "Zg==Zg==", "Zm8=Zm8=", "****"}) {
    EXPECT_FALSE(Base64Decode(bad).has_value()) << bad;
  }
}

}  // namespace
}  // namespace custody
