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

}  // namespace
}  // namespace custody
