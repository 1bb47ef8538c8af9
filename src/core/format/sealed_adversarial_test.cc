// Attacks on sealed files: every one must fail with its specific, clear error.
#include <gtest/gtest.h>

#include <cstring>

#include "core/format/format_test_util.h"
#include "core/format/sealed.h"
#include "core/format/sealed_internal.h"

namespace custody::format {
namespace {

using testing::ChunkOffset;
using testing::Pattern;
using testing::Sealer;

bool Contains(const Status& s, std::string_view text) {
  return s.message().find(text) != std::string::npos;
}

// A 100-byte model in 16-byte chunks: 7 chunks, the last one 4 bytes.
class SealedAttack : public ::testing::Test {
 protected:
  void SetUp() override {
    plain_ = Pattern(100);
    sealed_ = s_.Seal(plain_, 4);
    header_ = ParseHeader(sealed_, nullptr).value();
    ASSERT_EQ(header_.chunk_count(), 7u);
  }
  Status OpenStatus(ByteSpan bytes) const {
    auto r = s_.OpenBytes(bytes);
    if (r.has_value()) return OkStatus();
    return r.error();
  }
  // Re-signs a modified signed region with the genuine vendor key (simulates a vendor-signed but
  // malformed header, to reach the checks behind the signature).
  Bytes Resign(Bytes region, ByteSpan rest) const {
    auto sig = s_.vendor.Sign(SignatureMessage(region)).value();
    Bytes out = region;
    AppendBytes(out, sig);
    AppendBytes(out, rest);
    return out;
  }
  ByteSpan Chunks() const { return ByteSpan(sealed_).subspan(header_.payload_offset()); }
  Bytes WithChunks(const Bytes& from, ByteSpan chunks) const {
    Bytes out(from.begin(), from.begin() + static_cast<ptrdiff_t>(header_.payload_offset()));
    AppendBytes(out, chunks);
    return out;
  }

  Sealer s_;
  Bytes plain_;
  Bytes sealed_;
  SealedHeader header_;
};

TEST_F(SealedAttack, EveryBitFlipIsDetectedWithTheErrorOfItsRegion) {
  const size_t signed_end = header_.signed_region.size();
  const size_t sig_end = header_.payload_offset();
  for (size_t byte = 0; byte < sealed_.size(); ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes bad = sealed_;
      bad[byte] ^= static_cast<uint8_t>(1u << bit);
      Status st = OpenStatus(bad);
      ASSERT_FALSE(st.ok()) << "flip of byte " << byte << " bit " << bit << " went unnoticed";
      if (byte < 8) {
        EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << byte;
        EXPECT_TRUE(Contains(st, "not a Custody sealed model"));
      } else if (byte < 10) {
        EXPECT_EQ(st.code(), StatusCode::kUnimplemented) << byte;
      } else if (byte < 12) {
        EXPECT_EQ(st.code(), StatusCode::kDataLoss) << byte;
        EXPECT_TRUE(Contains(st, "reserved"));
      } else if (byte < 16) {
        // A different header length either falls outside the range, truncates the file, or
        // moves the signature: all refused before any decryption.
        EXPECT_TRUE(st.code() == StatusCode::kDataLoss || st.code() == StatusCode::kUnauthenticated)
            << st.ToString();
      } else if (byte < sig_end) {
        EXPECT_EQ(st.code(), StatusCode::kUnauthenticated) << byte << " " << st.ToString();
        if (byte < signed_end && (byte < 16 + 84 || byte >= 16 + 116)) {
          EXPECT_TRUE(Contains(st, "signature does not verify")) << st.ToString();
        }
      } else {
        EXPECT_EQ(st.code(), StatusCode::kDataLoss) << byte;
        const uint64_t chunk = (byte - sig_end) / (16 + kTagBytes);
        EXPECT_TRUE(Contains(st, "chunk " + std::to_string(chunk) + " of 7 failed authentication"))
            << st.ToString();
      }
    }
  }
}

TEST_F(SealedAttack, TruncationAtEveryLengthIsDetected) {
  for (size_t len = 0; len < sealed_.size(); ++len) {
    Status st = OpenStatus(ByteSpan(sealed_).first(len));
    ASSERT_FALSE(st.ok()) << "truncation to " << len << " bytes went unnoticed";
    if (len < 8) {
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    } else {
      EXPECT_EQ(st.code(), StatusCode::kDataLoss) << len;
      EXPECT_TRUE(Contains(st, "truncated")) << st.ToString();
    }
  }
}

TEST_F(SealedAttack, TruncationAtChunkBoundariesIsDetected) {
  for (uint64_t i = 0; i < header_.chunk_count(); ++i) {
    Status st = OpenStatus(ByteSpan(sealed_).first(ChunkOffset(header_, i)));
    EXPECT_EQ(st.code(), StatusCode::kDataLoss);
    EXPECT_TRUE(Contains(st, "truncated"));
  }
}

TEST_F(SealedAttack, AppendedBytesAreDetected) {
  Bytes longer = sealed_;
  longer.push_back(0);
  Status st = OpenStatus(longer);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(st, "1 trailing bytes"));
}

TEST_F(SealedAttack, SwappedChunksAreDetected) {
  const size_t stride = 16 + kTagBytes;
  Bytes bad = sealed_;
  std::swap_ranges(bad.begin() + static_cast<ptrdiff_t>(ChunkOffset(header_, 1)),
                   bad.begin() + static_cast<ptrdiff_t>(ChunkOffset(header_, 1) + stride),
                   bad.begin() + static_cast<ptrdiff_t>(ChunkOffset(header_, 4)));
  Status st = OpenStatus(bad);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(st, "chunk 1 of 7 failed authentication")) << st.ToString();
}

TEST_F(SealedAttack, DuplicatedChunkIsDetected) {
  const size_t stride = 16 + kTagBytes;
  // In place of another chunk (same size).
  Bytes bad = sealed_;
  std::memcpy(bad.data() + ChunkOffset(header_, 3), sealed_.data() + ChunkOffset(header_, 2),
              stride);
  Status st = OpenStatus(bad);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(st, "chunk 3 of 7 failed authentication"));
  // Inserted as an extra chunk.
  Bytes longer(sealed_.begin(), sealed_.begin() + static_cast<ptrdiff_t>(ChunkOffset(header_, 3)));
  AppendBytes(longer, ByteSpan(sealed_).subspan(ChunkOffset(header_, 2), stride));
  AppendBytes(longer, ByteSpan(sealed_).subspan(ChunkOffset(header_, 3)));
  EXPECT_EQ(OpenStatus(longer).code(), StatusCode::kDataLoss);
}

TEST_F(SealedAttack, DroppedChunkIsDetected) {
  const size_t stride = 16 + kTagBytes;
  Bytes bad(sealed_.begin(), sealed_.begin() + static_cast<ptrdiff_t>(ChunkOffset(header_, 2)));
  AppendBytes(bad, ByteSpan(sealed_).subspan(ChunkOffset(header_, 2) + stride));
  Status st = OpenStatus(bad);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(st, "truncated"));
}

TEST_F(SealedAttack, LastChunkCannotBePassedOffAsAMiddleChunk) {
  // A 96-byte model sealed with the same key: its chunk 5 is a full middle-position chunk.
  // Dropping the final chunk and relabelling is impossible because the size is signed; this test
  // checks the last-chunk flag: a full last chunk of one file never opens as a middle chunk.
  Bytes plain96 = Pattern(96);
  Bytes a = s_.Seal(plain96, 4);  // 6 chunks, last is full
  Bytes b = s_.Seal(Pattern(112), 4);
  (void)b;
  auto ha = ParseHeader(a, nullptr).value();
  ASSERT_EQ(ha.chunk_count(), 6u);
  Bytes swapped = a;
  const size_t stride = 16 + kTagBytes;
  std::swap_ranges(swapped.begin() + static_cast<ptrdiff_t>(ChunkOffset(ha, 4)),
                   swapped.begin() + static_cast<ptrdiff_t>(ChunkOffset(ha, 4) + stride),
                   swapped.begin() + static_cast<ptrdiff_t>(ChunkOffset(ha, 5)));
  EXPECT_EQ(OpenStatus(swapped).code(), StatusCode::kDataLoss);
}

TEST_F(SealedAttack, ChunksSplicedFromAnotherFileWithTheSameDekAreDetected) {
  Bytes other = s_.Seal(Pattern(100, 9), 4);
  Bytes bad = sealed_;
  const size_t stride = 16 + kTagBytes;
  std::memcpy(bad.data() + ChunkOffset(header_, 2), other.data() + ChunkOffset(header_, 2), stride);
  Status st = OpenStatus(bad);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(st, "chunk 2 of 7 failed authentication"));
}

TEST_F(SealedAttack, SwappedHeadersAreDetected) {
  // Same DEK, same size, same vendor: the header of one file on the chunks of the other.
  Bytes other = s_.Seal(Pattern(100, 9), 4);
  auto ho = ParseHeader(other, nullptr).value();
  ASSERT_EQ(ho.payload_offset(), header_.payload_offset());
  Bytes bad = WithChunks(other, Chunks());
  Status st = OpenStatus(bad);
  EXPECT_EQ(st.code(), StatusCode::kDataLoss);
  EXPECT_TRUE(Contains(st, "chunk 0 of 7 failed authentication")) << st.ToString();
}

TEST_F(SealedAttack, WrongDekIsRefusedByKeyCommitment) {
  auto wrong = GenerateDek().value();
  auto r = Open(sealed_, wrong.span(), s_.vendor.public_key());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(Contains(r.error(), "key commitment mismatch"));
  EXPECT_EQ(Open(sealed_, ByteSpan(wrong.data(), 16), s_.vendor.public_key()).error().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(SealedAttack, WrongVendorKeyIsRefused) {
  auto other_vendor = crypto::Ed25519PrivateKey::Generate().value();
  auto r = Open(sealed_, s_.dek.span(), other_vendor.public_key());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(Contains(r.error(), "different vendor key"));
}

TEST_F(SealedAttack, HeaderResignedByAnotherKeyIsRefused) {
  // The attacker rewrites the header (name, vendor key) and signs it with their own key.
  auto attacker = crypto::Ed25519PrivateKey::Generate().value();
  SealedHeader forged = header_;
  forged.info.name = "forged";
  forged.vendor_key = attacker.public_key().raw();
  Bytes region = EncodeSignedRegion(forged).value();
  Bytes file = region;
  AppendBytes(file, attacker.Sign(SignatureMessage(region)).value());
  AppendBytes(file, Chunks());
  // Inspection without a trusted key sees a self-consistent header signed by the attacker...
  auto inspected = ParseHeader(file, nullptr);
  ASSERT_TRUE(inspected.has_value());
  EXPECT_EQ(inspected->vendor_fingerprint(), attacker.public_key().Fingerprint());
  // ...but opening against the trusted vendor key refuses it.
  Status st = OpenStatus(file);
  EXPECT_EQ(st.code(), StatusCode::kUnauthenticated);
  EXPECT_TRUE(Contains(st, "different vendor key"));
}

TEST_F(SealedAttack, UnsupportedVersionIsNamed) {
  Bytes bad = sealed_;
  StoreBigEndian16(bad.data() + 8, 2);
  Status st = OpenStatus(bad);
  EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(Contains(st, "version 2 is not supported"));
  EXPECT_EQ(ParseHeader(bad, nullptr).error().code(), StatusCode::kUnimplemented);
}

TEST_F(SealedAttack, VendorSignedButMalformedHeadersAreRefused) {
  const ByteSpan rest = ByteSpan(sealed_).subspan(header_.payload_offset());
  auto expect = [&](Bytes region, StatusCode code, std::string_view text) {
    Status st = OpenStatus(Resign(std::move(region), rest));
    EXPECT_EQ(st.code(), code) << st.ToString();
    EXPECT_TRUE(Contains(st, text)) << st.ToString();
  };
  Bytes region = header_.signed_region;
  region[16] = 7;  // suite
  expect(region, StatusCode::kUnimplemented, "cipher suite 7");
  region = header_.signed_region;
  region[17] = 3;  // chunk size below minimum
  expect(region, StatusCode::kDataLoss, "chunk size");
  region = header_.signed_region;
  region[17] = 25;
  expect(region, StatusCode::kDataLoss, "chunk size");
  region = header_.signed_region;
  region[19] = 1;  // reserved
  expect(region, StatusCode::kDataLoss, "reserved");
  region = header_.signed_region;
  region[16 + 51] = 1;  // reserved after nonce prefix
  expect(region, StatusCode::kDataLoss, "reserved");
  region = header_.signed_region;
  StoreBigEndian32(region.data() + 16 + 116, 3);  // metadata_len lies
  expect(region, StatusCode::kDataLoss, "metadata length");
  region = header_.signed_region;
  region[16 + 120] = '[';  // metadata not an object
  expect(region, StatusCode::kDataLoss, "metadata");
  region = header_.signed_region;
  StoreBigEndian64(region.data() + 20, 101);  // plaintext size changed: size no longer matches
  expect(region, StatusCode::kDataLoss, "truncated");
  region = header_.signed_region;
  region[16 + 60] ^= 1;  // key commitment
  expect(region, StatusCode::kUnauthenticated, "key commitment mismatch");
}

TEST_F(SealedAttack, GarbageIsNotASealedModel) {
  Status st = OpenStatus(AsBytes("PK\x03\x04 this is a zip file, not a sealed model"));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(st, "not a Custody sealed model"));
  EXPECT_EQ(OpenStatus(ByteSpan()).code(), StatusCode::kInvalidArgument);
}

TEST_F(SealedAttack, FailedOpenWipesEverythingDecrypted) {
  // Corrupt the last chunk so that, single-threaded, all the others decrypt first; after the
  // failure the destination must hold no plaintext at all.
  Bytes bad = sealed_;
  bad.back() ^= 1;
  auto plain = SecretBuffer::Allocate(plain_.size()).value();
  OpenOptions o;
  o.threads = 1;
  Status st = DecryptBytesInto(header_, bad, s_.dek.span(), o, plain);
  EXPECT_TRUE(Contains(st, "chunk 6 of 7"));
  for (uint8_t b : plain.span()) ASSERT_EQ(b, 0);
  // Control: the same call on the intact file fills the buffer.
  ASSERT_TRUE(DecryptBytesInto(header_, sealed_, s_.dek.span(), o, plain).ok());
  EXPECT_TRUE(ConstantTimeEquals(plain.span(), plain_));
}

}  // namespace
}  // namespace custody::format
