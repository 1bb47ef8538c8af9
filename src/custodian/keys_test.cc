#include "custodian/keys.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"

namespace custody::custodian {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kPrivateFiles = {"ca.key", "server.key", "lease.key", "policy.key",
                                                "master.key"};
const std::vector<std::string> kPublicFiles = {"ca.pem", "server.pem", "lease.pub", "policy.pub"};
const std::vector<std::string> kPemFiles = {"ca.key",    "ca.pem",    "server.key", "server.pem",
                                            "lease.key", "lease.pub", "policy.key", "policy.pub"};

void ExpectError(const Status& status, StatusCode code, std::string_view needle = "") {
  EXPECT_EQ(status.code(), code) << status.ToString();
  EXPECT_NE(status.message().find(needle), std::string::npos)
      << "'" << status.message() << "' does not mention '" << needle << "'";
}

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

std::string ReadText(const std::string& path) {
  Result<Bytes> bytes = ReadFile(path);
  EXPECT_TRUE(bytes.ok()) << bytes.error().ToString();
  return bytes.ok() ? std::string(AsChars(*bytes)) : std::string();
}

void Overwrite(const std::string& path, std::string_view text) {
  mode_t mode = ModeOf(path);
  ASSERT_TRUE(
      WriteFileAtomic(path, AsBytes(text), {.mode = mode, .overwrite = Overwrite::kAllow}).ok());
}

// Every certificate in a PEM chain, in order.
std::vector<crypto::X509Ptr> ParseChain(const std::string& pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<crypto::X509Ptr> out;
  while (crypto::X509Ptr cert{PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)}) {
    out.push_back(std::move(cert));
  }
  return out;
}

class KeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "keys_test.XXXXXX";
    ASSERT_NE(mkdtemp(root_.data()), nullptr);
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  // A fresh data directory with keys in it.
  std::string NewDataDir(const std::string& name, const InitOptions& options = {}) {
    std::string dir = root_ + "/" + name;
    Status status = CreateKeys(dir, options);
    EXPECT_TRUE(status.ok()) << status.ToString();
    return dir;
  }

  std::string root_;
};

TEST_F(KeysTest, CreateKeysWritesEveryFileWithItsMode) {
  std::string dir = NewDataDir("data");
  std::string keys = dir + "/keys";
  EXPECT_EQ(ModeOf(keys), 0700u);
  for (const std::string& name : kPrivateFiles) EXPECT_EQ(ModeOf(keys + "/" + name), 0600u) << name;
  for (const std::string& name : kPublicFiles) EXPECT_EQ(ModeOf(keys + "/" + name), 0644u) << name;
  // Nothing else: no temporary or staging files left behind.
  size_t entries = 0;
  for (const auto& entry : fs::directory_iterator(keys)) {
    (void)entry;
    ++entries;
  }
  EXPECT_EQ(entries, kPrivateFiles.size() + kPublicFiles.size());
  std::vector<std::string> data_entries;
  for (const auto& entry : fs::directory_iterator(dir)) {
    data_entries.push_back(entry.path().filename());
  }
  EXPECT_EQ(data_entries, std::vector<std::string>{"keys"});

  // master.key: 64 lower-case hex digits and a newline.
  std::string master = ReadText(keys + "/master.key");
  ASSERT_EQ(master.size(), 65u);
  EXPECT_EQ(master.back(), '\n');
  EXPECT_EQ(master.find_first_not_of("0123456789abcdef"), 64u);
}

TEST_F(KeysTest, CreateKeysRefusesAnExistingKeysDirectory) {
  std::string dir = NewDataDir("data");
  std::string ca_before = ReadText(dir + "/keys/ca.pem");
  ExpectError(CreateKeys(dir, {}), StatusCode::kAlreadyExists, "move it away to start over");
  EXPECT_EQ(ReadText(dir + "/keys/ca.pem"), ca_before);

  // Even an empty one (rename(2) would happily replace it).
  std::string empty = root_ + "/empty";
  ASSERT_EQ(mkdir(empty.c_str(), 0700), 0);
  ASSERT_EQ(mkdir((empty + "/keys").c_str(), 0700), 0);
  ExpectError(CreateKeys(empty, {}), StatusCode::kAlreadyExists, empty + "/keys already exists");
  EXPECT_TRUE(fs::is_empty(empty + "/keys"));
}

// An init killed half way leaves only a staging directory, which neither blocks the next init
// nor is mistaken for keys.
TEST_F(KeysTest, AnInterruptedInitDoesNotBlockTheNextOne) {
  std::string dir = root_ + "/data";
  ASSERT_EQ(mkdir(dir.c_str(), 0700), 0);
  std::string partial = dir + "/.keys.partial-AbCdEf";
  ASSERT_EQ(mkdir(partial.c_str(), 0700), 0);
  ASSERT_TRUE(WriteFileAtomic(partial + "/ca.key", AsBytes("half a key"), {.mode = 0600}).ok());
  ExpectError(LoadKeys(dir).error(), StatusCode::kNotFound, "custodian init");
  ASSERT_TRUE(CreateKeys(dir, {}).ok());
  EXPECT_TRUE(LoadKeys(dir).ok());
}

TEST_F(KeysTest, CreateKeysWithABadNameWritesNothing) {
  std::string dir = root_ + "/data";
  InitOptions options;
  options.dns_names = {"bad_name"};
  ExpectError(CreateKeys(dir, options), StatusCode::kInvalidArgument, "bad_name");
  EXPECT_FALSE(PathExists(dir + "/keys"));
  options.dns_names = {};
  options.server_cert_days = 0;
  ExpectError(CreateKeys(dir, options), StatusCode::kInvalidArgument, "days");
  EXPECT_FALSE(PathExists(dir + "/keys"));
}

TEST_F(KeysTest, LoadKeysRoundTrip) {
  InitOptions options;
  options.ca_name = "Acme custodian CA";
  options.dns_names = {"custodian.acme.example"};
  options.ip_addresses = {"10.1.2.3"};
  std::string dir = NewDataDir("data", options);
  std::string keys_dir = dir + "/keys";
  Result<CustodianKeys> keys = LoadKeys(dir);
  ASSERT_TRUE(keys.ok()) << keys.error().ToString();

  // The CA is the one on disk.
  EXPECT_EQ(keys->ca.CertificatePem(), ReadText(keys_dir + "/ca.pem"));

  // server_cert_pem: the server certificate, then the CA certificate.
  std::vector<crypto::X509Ptr> chain = ParseChain(keys->server_cert_pem);
  ASSERT_EQ(chain.size(), 2u);
  std::vector<crypto::X509Ptr> ca_file = ParseChain(ReadText(keys_dir + "/ca.pem"));
  ASSERT_EQ(ca_file.size(), 1u);
  EXPECT_EQ(X509_cmp(chain[1].get(), ca_file[0].get()), 0);
  EXPECT_EQ(X509_check_issued(chain[1].get(), chain[0].get()), X509_V_OK);
  EXPECT_EQ(X509_verify(chain[0].get(), X509_get0_pubkey(ca_file[0].get())), 1);
  EXPECT_TRUE(keys->ca.Verify(keys->server_cert_pem, CertificateUse::kServer).ok());
  // The names asked for, and localhost / 127.0.0.1 always.
  EXPECT_EQ(X509_check_host(chain[0].get(), "custodian.acme.example", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(chain[0].get(), "localhost", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(chain[0].get(), "10.1.2.3", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(chain[0].get(), "127.0.0.1", 0), 1);
  Result<crypto::P256PrivateKey> server_key =
      crypto::P256PrivateKey::FromPem(AsChars(keys->server_key_pem.span()));
  ASSERT_TRUE(server_key.ok());
  EXPECT_EQ(X509_check_private_key(chain[0].get(), server_key->get()), 1);

  // The lease key signs and the pinned public file verifies it.
  const Bytes message = {'l', 'e', 'a', 's', 'e'};
  auto lease_sig = keys->lease_key.Sign(message);
  ASSERT_TRUE(lease_sig.ok());
  Result<crypto::Ed25519PublicKey> lease_pub =
      crypto::Ed25519PublicKey::FromPem(ReadText(keys_dir + "/lease.pub"));
  ASSERT_TRUE(lease_pub.ok());
  EXPECT_TRUE(lease_pub->Verify(message, *lease_sig).ok());
  EXPECT_EQ(lease_pub->Verify(Bytes{'x'}, *lease_sig).code(), StatusCode::kUnauthenticated);

  // Likewise the policy key.
  crypto::Sha256Digest digest = crypto::Sha256(message);
  auto policy_sig = keys->policy_key.SignDigest(digest);
  ASSERT_TRUE(policy_sig.ok());
  Result<crypto::P256PublicKey> policy_pub =
      crypto::P256PublicKey::FromPem(ReadText(keys_dir + "/policy.pub"));
  ASSERT_TRUE(policy_pub.ok());
  EXPECT_TRUE(policy_pub->VerifyDigest(digest, *policy_sig).ok());

  // The master key persists: a DEK sealed by one load opens in the next.
  ASSERT_NE(keys->dek_sealer, nullptr);
  Bytes dek(kDekBytes, 0x5a);
  Result<Bytes> sealed = keys->dek_sealer->Seal(dek, "mdl_1");
  ASSERT_TRUE(sealed.ok());
  Result<CustodianKeys> again = LoadKeys(dir);
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  Result<SecretBuffer> opened = again->dek_sealer->Open(*sealed, "mdl_1");
  ASSERT_TRUE(opened.ok()) << opened.error().ToString();
  EXPECT_TRUE(ConstantTimeEquals(opened->span(), dek));
}

TEST_F(KeysTest, LoadKeysRefusesAPrivateFileOthersCanRead) {
  std::string dir = NewDataDir("data");
  for (const std::string& name : kPrivateFiles) {
    std::string path = dir + "/keys/" + name;
    for (mode_t mode : {0640, 0604, 0644, 0620}) {
      ASSERT_EQ(chmod(path.c_str(), mode), 0);
      ExpectError(LoadKeys(dir).error(), StatusCode::kPermissionDenied, "chmod 600 " + path);
    }
    ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  }
  // 0400 is fine.
  ASSERT_EQ(chmod((dir + "/keys/ca.key").c_str(), 0400), 0);
  EXPECT_TRUE(LoadKeys(dir).ok());
}

TEST_F(KeysTest, LoadKeysRefusesAKeysDirectoryOthersCanWrite) {
  std::string dir = NewDataDir("data");
  std::string keys_dir = dir + "/keys";
  ASSERT_EQ(chmod(keys_dir.c_str(), 0770), 0);
  ExpectError(LoadKeys(dir).error(), StatusCode::kPermissionDenied, "chmod 700 " + keys_dir);
  ASSERT_EQ(chmod(keys_dir.c_str(), 0700), 0);
}

TEST_F(KeysTest, LoadKeysNamesAMissingFile) {
  std::string dir = NewDataDir("data");
  ExpectError(LoadKeys(root_ + "/nowhere").error(), StatusCode::kNotFound, "custodian init");
  std::vector<std::string> all = kPrivateFiles;
  all.insert(all.end(), kPublicFiles.begin(), kPublicFiles.end());
  for (const std::string& name : all) {
    std::string path = dir + "/keys/" + name;
    ASSERT_EQ(rename(path.c_str(), (root_ + "/aside").c_str()), 0);
    ExpectError(LoadKeys(dir).error(), StatusCode::kNotFound, path + " is missing");
    ASSERT_EQ(rename((root_ + "/aside").c_str(), path.c_str()), 0);
  }
  EXPECT_TRUE(LoadKeys(dir).ok());
}

TEST_F(KeysTest, LoadKeysRefusesACorruptedFile) {
  std::string dir = NewDataDir("data");
  for (const std::string& name : kPemFiles) {
    std::string path = dir + "/keys/" + name;
    std::string original = ReadText(path);
    // Truncated in the middle of the base64 body.
    Overwrite(path, original.substr(0, original.size() / 2));
    Result<CustodianKeys> truncated = LoadKeys(dir);
    ExpectError(truncated.error(), StatusCode::kDataLoss, name);
    // Not PEM at all.
    Overwrite(path, "not a key\n");
    ExpectError(LoadKeys(dir).error(), StatusCode::kDataLoss, name);
    Overwrite(path, original);
  }
  std::string master = dir + "/keys/master.key";
  std::string original = ReadText(master);
  Overwrite(master, original.substr(0, 40));
  ExpectError(LoadKeys(dir).error(), StatusCode::kDataLoss, "64 hex digits");
  Overwrite(master, "z" + original.substr(1));
  ExpectError(LoadKeys(dir).error(), StatusCode::kDataLoss, "not a hex digit");
  Overwrite(master, original);
  EXPECT_TRUE(LoadKeys(dir).ok());
}

TEST_F(KeysTest, LoadKeysRefusesAServerCertificateFromAnotherCa) {
  std::string dir = NewDataDir("a");
  std::string other = NewDataDir("b");
  // B's whole server identity in A: a matching pair, but not A's CA.
  for (const char* name : {"server.key", "server.pem"}) {
    Overwrite(dir + "/keys/" + name, ReadText(other + "/keys/" + name));
  }
  ExpectError(LoadKeys(dir).error(), StatusCode::kUnauthenticated, "server.pem");
}

TEST_F(KeysTest, LoadKeysRefusesMismatchedPairs) {
  std::string dir = NewDataDir("a");
  std::string other = NewDataDir("b");
  auto swap_in = [&](const std::string& name) {
    std::string original = ReadText(dir + "/keys/" + name);
    Overwrite(dir + "/keys/" + name, ReadText(other + "/keys/" + name));
    Status status = LoadKeys(dir).error();
    Overwrite(dir + "/keys/" + name, original);
    return status;
  };
  ExpectError(swap_in("ca.key"), StatusCode::kDataLoss, "two CAs");
  ExpectError(swap_in("ca.pem"), StatusCode::kDataLoss, "two CAs");
  ExpectError(swap_in("server.key"), StatusCode::kDataLoss, "does not certify the key");
  ExpectError(swap_in("lease.pub"), StatusCode::kDataLoss, "lease.pub is not the public half");
  ExpectError(swap_in("policy.pub"), StatusCode::kDataLoss, "policy.pub is not the public half");

  // A server certificate this CA issued, but for another key.
  Result<CustodianKeys> keys = LoadKeys(dir);
  ASSERT_TRUE(keys.ok()) << keys.error().ToString();
  Result<CertificateAuthority::ServerIdentity> fresh = keys->ca.IssueServer({"localhost"}, {}, 1);
  ASSERT_TRUE(fresh.ok());
  Overwrite(dir + "/keys/server.pem", fresh->certificate.pem);
  ExpectError(LoadKeys(dir).error(), StatusCode::kDataLoss, "does not certify the key");
}

// ----- DekSealer ----------------------------------------------------------------------------

std::unique_ptr<DekSealer> NewSealer() {
  Result<SecretBuffer> master = crypto::RandomSecret(kMasterKeyBytes);
  EXPECT_TRUE(master.ok());
  Result<std::unique_ptr<DekSealer>> sealer = NewMasterKeySealer(std::move(*master));
  EXPECT_TRUE(sealer.ok()) << sealer.error().ToString();
  return std::move(*sealer);
}

Bytes TestDek() {
  Bytes dek(kDekBytes);
  for (size_t i = 0; i < dek.size(); ++i) dek[i] = static_cast<uint8_t>(i * 7 + 1);
  return dek;
}

TEST(DekSealerTest, SealOpenRoundTripWithTheDocumentedLayout) {
  Bytes master(kMasterKeyBytes, 0x11);
  Result<SecretBuffer> master_secret = SecretBuffer::CopyFrom(master);
  ASSERT_TRUE(master_secret.ok());
  auto sealer = NewMasterKeySealer(std::move(*master_secret));
  ASSERT_TRUE(sealer.ok());
  Bytes dek = TestDek();
  Result<Bytes> sealed = (*sealer)->Seal(dek, "mdl_abc");
  ASSERT_TRUE(sealed.ok()) << sealed.error().ToString();
  ASSERT_EQ(sealed->size(), 1u + 12u + 32u + 16u);
  EXPECT_EQ((*sealed)[0], 0x01);

  Result<SecretBuffer> opened = (*sealer)->Open(*sealed, "mdl_abc");
  ASSERT_TRUE(opened.ok()) << opened.error().ToString();
  EXPECT_TRUE(ConstantTimeEquals(opened->span(), dek));

  // version ‖ nonce ‖ AES-256-GCM(master, nonce, "custody/dek/v1" ‖ 0x00 ‖ model id) ‖ tag.
  std::string aad("custody/dek/v1\0mdl_abc", 22);
  Result<SecretBuffer> direct = crypto::AesGcmOpen(master, ByteSpan(*sealed).subspan(1, 12),
                                                   AsBytes(aad), ByteSpan(*sealed).subspan(13));
  ASSERT_TRUE(direct.ok()) << direct.error().ToString();
  EXPECT_TRUE(ConstantTimeEquals(direct->span(), dek));

  // A fresh nonce every time.
  Result<Bytes> again = (*sealer)->Seal(dek, "mdl_abc");
  ASSERT_TRUE(again.ok());
  EXPECT_NE(*again, *sealed);
}

TEST(DekSealerTest, EveryBitFlipIsRefused) {
  auto sealer = NewSealer();
  Result<Bytes> sealed = sealer->Seal(TestDek(), "mdl_abc");
  ASSERT_TRUE(sealed.ok());
  for (size_t bit = 0; bit < sealed->size() * 8; ++bit) {
    Bytes tampered = *sealed;
    tampered[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_EQ(sealer->Open(tampered, "mdl_abc").error().code(), StatusCode::kUnauthenticated)
        << "bit " << bit;
  }
}

TEST(DekSealerTest, EveryTruncationAndExtensionIsRefused) {
  auto sealer = NewSealer();
  Result<Bytes> sealed = sealer->Seal(TestDek(), "mdl_abc");
  ASSERT_TRUE(sealed.ok());
  for (size_t len = 0; len < sealed->size(); ++len) {
    EXPECT_EQ(sealer->Open(ByteSpan(*sealed).first(len), "mdl_abc").error().code(),
              StatusCode::kUnauthenticated)
        << "length " << len;
  }
  Bytes longer = *sealed;
  longer.push_back(0);
  EXPECT_EQ(sealer->Open(longer, "mdl_abc").error().code(), StatusCode::kUnauthenticated);
}

TEST(DekSealerTest, AnotherModelIdIsRefused) {
  auto sealer = NewSealer();
  Result<Bytes> sealed = sealer->Seal(TestDek(), "mdl_abc");
  ASSERT_TRUE(sealed.ok());
  for (const char* other : {"mdl_abd", "mdl_ab", "mdl_abcd", "", "MDL_ABC"}) {
    ExpectError(sealer->Open(*sealed, other).error(), StatusCode::kUnauthenticated,
                "does not open");
  }
}

TEST(DekSealerTest, AnotherMasterKeyIsRefused) {
  auto sealer = NewSealer();
  auto other = NewSealer();
  Result<Bytes> sealed = sealer->Seal(TestDek(), "mdl_abc");
  ASSERT_TRUE(sealed.ok());
  ExpectError(other->Open(*sealed, "mdl_abc").error(), StatusCode::kUnauthenticated,
              "does not open");
}

TEST(DekSealerTest, RefusesBadDekLengthsModelIdsAndMasterKeys) {
  auto sealer = NewSealer();
  for (size_t len : {0, 16, 31, 33, 64}) {
    ExpectError(sealer->Seal(Bytes(len, 1), "mdl_abc").error(), StatusCode::kInvalidArgument,
                "32 bytes");
  }
  ExpectError(sealer->Seal(TestDek(), "").error(), StatusCode::kInvalidArgument, "model id");
  for (size_t len : {0, 16, 31, 33}) {
    Result<SecretBuffer> key = SecretBuffer::Allocate(len);
    ASSERT_TRUE(key.ok());
    ExpectError(NewMasterKeySealer(std::move(*key)).error(), StatusCode::kInvalidArgument,
                "master key must be 32 bytes");
  }
}

TEST(DekSealerTest, DeriveKeyIsDeterministicPerLabelAndDiffersBetweenLabels) {
  Bytes master(kMasterKeyBytes, 0x42);
  auto make = [&master] {
    Result<SecretBuffer> secret = SecretBuffer::CopyFrom(master);
    EXPECT_TRUE(secret.ok());
    return std::move(*NewMasterKeySealer(std::move(*secret)));
  };
  auto a = make();
  auto b = make();
  Result<SecretBuffer> nonce_a = a->DeriveKey("nonce-mac");
  Result<SecretBuffer> nonce_b = b->DeriveKey("nonce-mac");
  Result<SecretBuffer> nonce_a2 = a->DeriveKey("nonce-mac");
  Result<SecretBuffer> other = a->DeriveKey("session");
  ASSERT_TRUE(nonce_a.ok() && nonce_b.ok() && nonce_a2.ok() && other.ok());
  EXPECT_EQ(nonce_a->size(), 32u);
  EXPECT_TRUE(ConstantTimeEquals(nonce_a->span(), nonce_b->span()));
  EXPECT_TRUE(ConstantTimeEquals(nonce_a->span(), nonce_a2->span()));
  EXPECT_FALSE(ConstantTimeEquals(nonce_a->span(), other->span()));
  // Never the master key itself.
  EXPECT_FALSE(ConstantTimeEquals(nonce_a->span(), master));

  // HKDF-SHA256(master, salt empty, info "custody/derive/v1" ‖ 0x00 ‖ label, 32).
  std::string info("custody/derive/v1\0nonce-mac", 27);
  Result<SecretBuffer> expected = crypto::HkdfSha256(master, {}, AsBytes(info), 32);
  ASSERT_TRUE(expected.ok());
  EXPECT_TRUE(ConstantTimeEquals(nonce_a->span(), expected->span()));

  // Another master key derives another key.
  auto c = NewSealer();
  Result<SecretBuffer> nonce_c = c->DeriveKey("nonce-mac");
  ASSERT_TRUE(nonce_c.ok());
  EXPECT_FALSE(ConstantTimeEquals(nonce_a->span(), nonce_c->span()));

  ExpectError(a->DeriveKey("").error(), StatusCode::kInvalidArgument, "label");
}

}  // namespace
}  // namespace custody::custodian
