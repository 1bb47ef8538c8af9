#include "engine/npy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>

namespace custody::engine {
namespace {

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// numpy 1.24: np.save(f, np.arange(6, dtype='<i4').reshape(2, 3))
constexpr char kNumpyInt32Hex[] =
    "934e554d5059010076007b276465736372273a20273c6934272c2027666f727472616e5f6f72646572273a2046"
    "616c73652c20277368617065273a2028322c2033292c207d2020202020202020202020202020202020202020202020"
    "20202020202020202020202020202020202020202020202020202020202020202020200a0000000001000000020000"
    "00030000000400000005000000";

Bytes NumpyInt32() { return HexDecode(kNumpyInt32Hex).value(); }

// A .npy file with the given version and raw header text (padding and '\n' added) and data.
Bytes MakeNpy(uint8_t major, const std::string& dict, size_t data_bytes, uint8_t minor = 0) {
  Bytes out = {0x93, 'N', 'U', 'M', 'P', 'Y', major, minor};
  std::string header = dict + "\n";
  if (major == 1) {
    out.push_back(static_cast<uint8_t>(header.size()));
    out.push_back(static_cast<uint8_t>(header.size() >> 8));
  } else {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(header.size() >> (8 * i)));
  }
  out.insert(out.end(), header.begin(), header.end());
  out.resize(out.size() + data_bytes, 0x11);
  return out;
}

TEST(NpyTest, ParsesWhatNumpyWrites) {
  Result<Tensor> t = ParseNpy(NumpyInt32());
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  EXPECT_EQ(t->dtype, DType::kInt32);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  ASSERT_EQ(t->data.size(), 24u);
  int32_t values[6];
  std::memcpy(values, t->data.data(), sizeof(values));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(values[i], i);
}

TEST(NpyTest, WritesExactlyWhatNumpyWrites) {
  Tensor t = *ParseNpy(NumpyInt32());
  EXPECT_EQ(SerializeNpy(t), NumpyInt32());
}

TEST(NpyTest, RoundTripsEveryDTypeAndShape) {
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {5}, {2, 0, 3}, {1, 3, 4, 4}};
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kInt64, DType::kInt32,
                  DType::kInt8, DType::kUInt8, DType::kBool}) {
    for (const auto& shape : shapes) {
      Tensor t;
      t.dtype = d;
      t.shape = shape;
      t.data.resize(*t.ExpectedByteSize());
      for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<uint8_t>(i * 37);
      Bytes file = SerializeNpy(t);
      // numpy's alignment: the data starts at a multiple of 64.
      EXPECT_EQ((file.size() - t.data.size()) % 64, 0u);
      Result<Tensor> back = ParseNpy(file);
      ASSERT_TRUE(back.has_value()) << DTypeName(d) << ": " << back.error().ToString();
      EXPECT_EQ(back->dtype, d);
      EXPECT_EQ(back->shape, shape);
      EXPECT_EQ(back->data, t.data);
    }
  }
}

TEST(NpyTest, AcceptsVersions2And3AndHeaderVariants) {
  EXPECT_TRUE(ParseNpy(MakeNpy(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 12))
                  .has_value());
  EXPECT_TRUE(
      ParseNpy(MakeNpy(3, "{\"shape\": (3,), \"descr\": \"<f8\", \"fortran_order\": False}", 24))
          .has_value());
  // Old numpy wrote Python 2 longs; one-byte types with any byte-order mark.
  Result<Tensor> t =
      ParseNpy(MakeNpy(1, "{'descr':'<u1','fortran_order':False,'shape':(2L, 3L)}", 6));
  ASSERT_TRUE(t.has_value()) << t.error().ToString();
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(
      ParseNpy(MakeNpy(1, "{'descr': '|b1', 'fortran_order': False, 'shape': ()}", 1)).has_value());
}

TEST(NpyTest, FortranOrderIsAClearError) {
  Result<Tensor> t =
      ParseNpy(MakeNpy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16));
  ASSERT_FALSE(t.has_value());
  EXPECT_EQ(t.error().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(t.error().message(), "Fortran-order")) << t.error().message();
}

TEST(NpyTest, UnsupportedDTypesAreClearErrors) {
  struct Case {
    const char* descr;
    const char* text;
  };
  for (const Case& c :
       {Case{">f4", "big-endian"}, Case{"<c8", "not supported"}, Case{"<U10", "not supported"},
        Case{"|O", "not supported"}, Case{"<f4,<f4", "not supported"}}) {
    Result<Tensor> t = ParseNpy(MakeNpy(
        1, std::string("{'descr': '") + c.descr + "', 'fortran_order': False, 'shape': (1,), }",
        8));
    ASSERT_FALSE(t.has_value()) << c.descr;
    EXPECT_EQ(t.error().code(), StatusCode::kUnimplemented) << c.descr;
    EXPECT_TRUE(Contains(t.error().message(), c.text)) << t.error().message();
  }
}

TEST(NpyTest, MalformedHeadersAreRejected) {
  const char* headers[] = {
      "",
      "{",
      "[]",
      "{'descr': '<f4', 'fortran_order': False}",                                 // no shape
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}",          // extra key
      "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}",  // duplicate
      "{'descr': '<f4', 'fortran_order': false, 'shape': (1,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1.5,)}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': [1]}",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} junk",
      "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}",
      "{'descr': '<f\\x34', 'fortran_order': False, 'shape': (1,)}",
      "{'descr: '<f4', 'fortran_order': False, 'shape': (1,)}",
  };
  for (const char* h : headers) {
    Result<Tensor> t = ParseNpy(MakeNpy(1, h, 4));
    ASSERT_FALSE(t.has_value()) << h;
    EXPECT_EQ(t.error().code(), StatusCode::kInvalidArgument) << h << ": " << t.error().ToString();
  }
}

TEST(NpyTest, DataSizeMustMatchTheShapeExactly) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  Result<Tensor> short_data = ParseNpy(MakeNpy(1, dict, 23));
  ASSERT_FALSE(short_data.has_value());
  EXPECT_TRUE(Contains(short_data.error().message(),
                       "needs 24 bytes of data, the file has 23 "
                       "(truncated)"))
      << short_data.error().message();
  Result<Tensor> long_data = ParseNpy(MakeNpy(1, dict, 25));
  ASSERT_FALSE(long_data.has_value());
  EXPECT_TRUE(Contains(long_data.error().message(), "trailing bytes"));
}

TEST(NpyTest, HugeShapesDoNotOverflow) {
  for (const char* shape : {"(9223372036854775807, 9223372036854775807)",
                            "(4294967296, 4294967296, 4294967296)", "(4611686018427387904,)"}) {
    Result<Tensor> t = ParseNpy(MakeNpy(
        1, std::string("{'descr': '<f8', 'fortran_order': False, 'shape': ") + shape + "}", 8));
    ASSERT_FALSE(t.has_value()) << shape;
    EXPECT_EQ(t.error().code(), StatusCode::kInvalidArgument) << shape;
  }
}

TEST(NpyTest, PreludeErrors) {
  Bytes good = NumpyInt32();
  Bytes bad_magic = good;
  bad_magic[1] = 'X';
  EXPECT_EQ(ParseNpy(bad_magic).error().code(), StatusCode::kInvalidArgument);
  Bytes v4 = good;
  v4[6] = 4;
  EXPECT_EQ(ParseNpy(v4).error().code(), StatusCode::kUnimplemented);
  Bytes minor = good;
  minor[7] = 1;
  EXPECT_EQ(ParseNpy(minor).error().code(), StatusCode::kUnimplemented);
  // A v2 header length far beyond the file and beyond the limit.
  Bytes v2 = MakeNpy(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 4);
  v2[11] = 0x7f;
  EXPECT_EQ(ParseNpy(v2).error().code(), StatusCode::kInvalidArgument);
  Bytes big = MakeNpy(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 4);
  big[8] = 0xa1;
  big[9] = 0x86;
  big[10] = 0x01;  // 100001 bytes
  Result<Tensor> r = ParseNpy(big);
  EXPECT_TRUE(Contains(r.error().message(), "exceeds the limit")) << r.error().message();
  EXPECT_FALSE(ParseNpy({}).has_value());
}

TEST(NpyTest, EveryTruncationIsAnErrorNotACrash) {
  Bytes good = NumpyInt32();
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_FALSE(ParseNpy(ByteSpan(good.data(), n)).has_value()) << n;
  }
}

TEST(NpyTest, EveryBitFlipInThePreludeAndHeaderIsHandled) {
  Bytes good = NumpyInt32();
  const size_t header_end = good.size() - 24;
  for (size_t i = 0; i < header_end; ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes flipped = good;
      flipped[i] ^= static_cast<uint8_t>(1 << bit);
      Result<Tensor> t = ParseNpy(flipped);  // must not crash; may parse (e.g. padding)
      if (t.has_value()) {
        EXPECT_TRUE(t->Validate().ok());
      }
    }
  }
}

}  // namespace
}  // namespace custody::engine
