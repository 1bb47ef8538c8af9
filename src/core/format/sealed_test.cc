// Round-trip and behaviour tests of sealed format v1.
#include "core/format/sealed.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include "core/format/format_test_util.h"

namespace custody::format {
namespace {

using testing::Pattern;
using testing::Sealer;
using testing::TestInfo;

TEST(SealedFormat, RoundTripsEdgeSizes) {
  Sealer s;
  for (uint8_t log2 : {4, 5, 12}) {
    const size_t chunk = size_t{1} << log2;
    for (size_t n : {size_t{0}, size_t{1}, chunk - 1, chunk, chunk + 1, 2 * chunk, 3 * chunk + 7}) {
      Bytes plain = Pattern(n, static_cast<uint8_t>(n));
      Bytes sealed = s.Seal(plain, log2);
      auto opened = s.OpenBytes(sealed);
      ASSERT_TRUE(opened.has_value()) << "size " << n << ": " << opened.error().ToString();
      ASSERT_EQ(opened->plaintext.size(), n);
      EXPECT_TRUE(ConstantTimeEquals(opened->plaintext.span(), plain)) << "size " << n;
      EXPECT_EQ(opened->header.chunk_count(), n == 0 ? 1 : (n + chunk - 1) / chunk);
      EXPECT_EQ(sealed.size(), opened->header.sealed_size());
    }
  }
}

TEST(SealedFormat, RoundTripsRandomSizesWithAnyThreadCount) {
  Sealer s;
  std::mt19937_64 rng(20261123);
  for (int iter = 0; iter < 60; ++iter) {
    uint8_t log2 = static_cast<uint8_t>(4 + rng() % 9);
    size_t n = rng() % 20000;
    Bytes plain = Pattern(n, static_cast<uint8_t>(iter));
    Bytes sealed = s.Seal(plain, log2);
    int threads = 1 + static_cast<int>(rng() % 4);
    auto opened = s.OpenBytes(sealed, threads);
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    EXPECT_TRUE(ConstantTimeEquals(opened->plaintext.span(), plain))
        << "n=" << n << " log2=" << int(log2) << " threads=" << threads;
  }
}

TEST(SealedFormat, HeaderCarriesSignedMetadata) {
  Sealer s;
  ModelInfo info = TestInfo();
  info.not_after = "2099-12-31T23:59:59Z";
  Bytes sealed = s.Seal(Pattern(100), 6, info);
  auto h = ParseHeader(sealed, &s.vendor.public_key());
  ASSERT_TRUE(h.has_value()) << h.error().ToString();
  EXPECT_EQ(h->info.name, "test-model");
  EXPECT_EQ(h->info.version, "1.0");
  EXPECT_EQ(h->info.engine, "onnx");
  EXPECT_EQ(h->info.meta.at("labels"), "cat,dog");
  EXPECT_EQ(h->info.not_after.value(), "2099-12-31T23:59:59Z");
  EXPECT_EQ(h->info.model_id.size(), 32u);
  EXPECT_EQ(h->plaintext_size, 100u);
  EXPECT_EQ(h->chunk_size(), 64u);
  EXPECT_EQ(h->vendor_fingerprint(), s.vendor.public_key().Fingerprint());
  // Inspection without a trusted key still authenticates the header against its own key.
  EXPECT_TRUE(ParseHeader(sealed, nullptr).has_value());
}

TEST(SealedFormat, SealingTwiceGivesUnrelatedCiphertexts) {
  Sealer s;
  Bytes plain = Pattern(4096);
  Bytes a = s.Seal(plain, 8);
  Bytes b = s.Seal(plain, 8);
  ASSERT_EQ(a.size(), b.size());
  auto ha = ParseHeader(a, nullptr).value();
  auto hb = ParseHeader(b, nullptr).value();
  EXPECT_NE(ha.salt, hb.salt);
  EXPECT_NE(ha.key_commitment, hb.key_commitment);
  size_t same = 0;
  for (size_t i = ha.payload_offset(); i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_LT(same, (a.size() - ha.payload_offset()) / 50);
}

TEST(SealedFormat, ExpiredModelIsRefused) {
  Sealer s;
  ModelInfo info = TestInfo();
  info.not_after = "2030-01-01T00:00:00Z";
  Bytes sealed = s.Seal(Pattern(10), 4, info);
  OpenOptions o;
  o.now = ParseTimestamp("2030-01-01T00:00:01Z").value();
  auto opened = Open(sealed, s.dek.span(), s.vendor.public_key(), o);
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(opened.error().message().find("expired at 2030-01-01T00:00:00Z"), std::string::npos);
  o.now = ParseTimestamp("2029-12-31T23:59:59Z").value();
  EXPECT_TRUE(Open(sealed, s.dek.span(), s.vendor.public_key(), o).has_value());
}

TEST(SealedFormat, InvalidMetadataIsRefusedAtSealTime) {
  Sealer s;
  ModelInfo info = TestInfo();
  info.engine = "Bad Engine!";
  SealOptions o;
  o.info = info;
  auto r = SealBytes(Pattern(5), s.dek.span(), s.vendor, o);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  o.info = TestInfo();
  o.info.name = "";
  EXPECT_EQ(SealBytes(Pattern(5), s.dek.span(), s.vendor, o).error().code(),
            StatusCode::kInvalidArgument);
  o.info = TestInfo();
  o.chunk_size_log2 = 30;
  EXPECT_EQ(SealBytes(Pattern(5), s.dek.span(), s.vendor, o).error().code(),
            StatusCode::kInvalidArgument);
}

TEST(SealedFormat, SourceThatChangesWhileSealingIsDetected) {
  Sealer s;
  SealOptions o;
  o.info = TestInfo();
  Bytes plain = Pattern(100);
  size_t pos = 0;
  ChunkSource short_source = [&](MutableByteSpan out) -> Result<size_t> {
    size_t n = std::min(out.size(), size_t{50} - std::min(pos, size_t{50}));
    pos += n;
    return n;
  };
  auto st = Seal(short_source, 100, s.dek.span(), s.vendor, o, [](ByteSpan) { return OkStatus(); });
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  ChunkSource long_source = [](MutableByteSpan out) -> Result<size_t> { return out.size(); };
  st = Seal(long_source, 100, s.dek.span(), s.vendor, o, [](ByteSpan) { return OkStatus(); });
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
}

class SealedFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("custody-sealed-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

TEST_F(SealedFileTest, SealFileAndOpenFileRoundTrip) {
  Sealer s;
  Bytes plain = Pattern(300000);
  ASSERT_TRUE(WriteFileAtomic(Path("model.bin"), plain).ok());
  SealOptions o;
  o.info = TestInfo();
  o.chunk_size_log2 = 16;
  uint64_t last_progress = 0;
  o.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_EQ(total, plain.size());
    EXPECT_GT(done, last_progress);
    last_progress = done;
  };
  ASSERT_TRUE(
      SealFile(Path("model.bin"), Path("m.sealed"), s.dek.span(), s.vendor, o, Overwrite::kRefuse)
          .ok());
  EXPECT_EQ(last_progress, plain.size());
  o.progress = nullptr;
  for (int threads : {1, 2, 3}) {
    OpenOptions oo;
    oo.threads = threads;
    auto opened = OpenFile(Path("m.sealed"), s.dek.span(), s.vendor.public_key(), oo);
    ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
    EXPECT_TRUE(ConstantTimeEquals(opened->plaintext.span(), plain));
  }
  // Refuses to overwrite without permission, leaves no temporary files behind.
  auto again =
      SealFile(Path("model.bin"), Path("m.sealed"), s.dek.span(), s.vendor, o, Overwrite::kRefuse);
  EXPECT_EQ(again.code(), StatusCode::kAlreadyExists);
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 2u);
  EXPECT_TRUE(
      SealFile(Path("model.bin"), Path("m.sealed"), s.dek.span(), s.vendor, o, Overwrite::kAllow)
          .ok());
}

TEST_F(SealedFileTest, OpenFileDetectsTruncationAndTrailingBytes) {
  Sealer s;
  Bytes sealed = s.Seal(Pattern(1000), 6);
  Bytes shorter(sealed.begin(), sealed.end() - 1);
  ASSERT_TRUE(WriteFileAtomic(Path("short.sealed"), shorter).ok());
  auto r = OpenFile(Path("short.sealed"), s.dek.span(), s.vendor.public_key());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.error().message().find("truncated"), std::string::npos);
  Bytes longer = sealed;
  longer.push_back(0);
  ASSERT_TRUE(WriteFileAtomic(Path("long.sealed"), longer).ok());
  r = OpenFile(Path("long.sealed"), s.dek.span(), s.vendor.public_key());
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("trailing"), std::string::npos);
  EXPECT_EQ(OpenFile(Path("missing.sealed"), s.dek.span(), s.vendor.public_key()).error().code(),
            StatusCode::kNotFound);
}

TEST_F(SealedFileTest, DekFileIsPrivateAndRoundTrips) {
  auto dek = GenerateDek().value();
  ASSERT_TRUE(WriteDekFile(Path("m.dek"), dek.span(), Overwrite::kRefuse).ok());
  struct stat st {};
  ASSERT_EQ(stat(Path("m.dek").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = ReadDekFile(Path("m.dek"));
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(ConstantTimeEquals(back->span(), dek.span()));
  EXPECT_EQ(WriteDekFile(Path("m.dek"), dek.span(), Overwrite::kRefuse).code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(WriteFileAtomic(Path("bad.dek"), AsBytes("not a key\n")).ok());
  EXPECT_EQ(ReadDekFile(Path("bad.dek")).error().code(), StatusCode::kInvalidArgument);
}

TEST(SealedFormat, TimestampsParseAndNormalise) {
  EXPECT_EQ(NormaliseTimestamp("2027-03-01").value(), "2027-03-01T23:59:59Z");
  EXPECT_EQ(NormaliseTimestamp("2027-03-01T08:00:00Z").value(), "2027-03-01T08:00:00Z");
  EXPECT_FALSE(NormaliseTimestamp("2027-02-30").has_value());
  EXPECT_FALSE(NormaliseTimestamp("tomorrow").has_value());
  EXPECT_FALSE(NormaliseTimestamp("2027-03-01T08:00:00+01:00").has_value());
  EXPECT_FALSE(NormaliseTimestamp("10000-01-01").has_value());
}

TEST(SealedFormat, TimestampsMustHaveTheExactShape) {
  EXPECT_TRUE(ParseTimestamp("2030-01-01").has_value());
  EXPECT_TRUE(ParseTimestamp("2030-01-01T12:00:00Z").has_value());
  for (const char* bad :
       {"2030- 1- 1", "1970-+1-01", "2030-1-01x", "2030-01-01T12:00:00+", "2030/01/01",
        "2030-01-01 12:00:00Z", " 2030-01-1", "2030-01-01T1:00:00Z"}) {
    EXPECT_FALSE(ParseTimestamp(bad).has_value()) << bad;
  }
}

// Found by the header fuzzer: a year past 2262 overflowed a nanosecond time_point. The format
// allows years up to 9999, and expiry must still be decided correctly there.
TEST(SealedFormat, FarFutureDatesParseAndCompare) {
  EXPECT_EQ(NormaliseTimestamp("9999-12-31").value(), "9999-12-31T23:59:59Z");
  EXPECT_EQ(NormaliseTimestamp("4052-01-01T00:00:00Z").value(), "4052-01-01T00:00:00Z");
  EXPECT_LT(ParseTimestamp("2262-04-12T00:00:00Z").value(),
            ParseTimestamp("9999-12-31T23:59:59Z").value());

  Sealer s;
  ModelInfo info = TestInfo();
  info.not_after = "9999-12-31T23:59:59Z";
  auto opened = s.OpenBytes(s.Seal(Pattern(100), 4, info));
  ASSERT_TRUE(opened.has_value()) << opened.error().ToString();
}

}  // namespace
}  // namespace custody::format
