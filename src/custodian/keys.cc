#include "custodian/keys.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_NOREPLACE
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "core/base/file.h"

namespace custody::custodian {
namespace {

constexpr mode_t kKeysDirMode = 0700;
constexpr uint32_t kPrivateFileMode = 0600;
constexpr uint32_t kPublicFileMode = 0644;
// Load refuses private files with any of these bits, and a keys directory others may write to.
constexpr mode_t kPrivateForbiddenBits = 0077;
constexpr mode_t kDirForbiddenBits = 0022;

constexpr char kCaKey[] = "ca.key";
constexpr char kCaCert[] = "ca.pem";
constexpr char kServerKey[] = "server.key";
constexpr char kServerCert[] = "server.pem";
constexpr char kLeaseKey[] = "lease.key";
constexpr char kLeasePub[] = "lease.pub";
constexpr char kPolicyKey[] = "policy.key";
constexpr char kPolicyPub[] = "policy.pub";
constexpr char kMasterKey[] = "master.key";

// Always in the server certificate, so that a custodian on one host works out of the box.
constexpr char kLocalhostName[] = "localhost";
constexpr char kLocalhostAddress[] = "127.0.0.1";

// master.key: the key as 64 lower-case hex digits and a newline.
constexpr size_t kMasterKeyHexDigits = 2 * kMasterKeyBytes;

// Sealed DEK v1: version (1) = 0x01 ‖ nonce (12) ‖ ciphertext (32) ‖ tag (16);
// AAD = "custody/dek/v1" ‖ 0x00 ‖ model id.
constexpr uint8_t kSealedDekVersion = 0x01;
constexpr size_t kSealedDekBytes = 1 + crypto::kGcmNonceBytes + kDekBytes + crypto::kGcmTagBytes;
constexpr std::string_view kDekAadLabel = "custody/dek/v1";
// DeriveKey: HKDF-SHA256(master, salt = empty, info = "custody/derive/v1" ‖ 0x00 ‖ label, 32).
constexpr std::string_view kDeriveInfoLabel = "custody/derive/v1";
constexpr size_t kDerivedKeyBytes = 32;

// label ‖ 0x00 ‖ value: the NUL keeps one label's values apart from another label's.
Bytes Labelled(std::string_view label, std::string_view value) {
  Bytes out(AsBytes(label).begin(), AsBytes(label).end());
  out.push_back(0x00);
  AppendBytes(out, AsBytes(value));
  return out;
}

class MasterKeySealer final : public DekSealer {
 public:
  explicit MasterKeySealer(SecretBuffer key) : key_(std::move(key)) {}

  Result<Bytes> Seal(ByteSpan dek, std::string_view model_id) const override {
    if (dek.size() != kDekBytes) {
      return InvalidArgument("a model DEK must be " + std::to_string(kDekBytes) + " bytes, got " +
                             std::to_string(dek.size()));
    }
    if (model_id.empty()) return InvalidArgument("sealing a DEK needs the model id");
    CUSTODY_ASSIGN_OR_RETURN(Bytes nonce, crypto::RandomBytes(crypto::kGcmNonceBytes));
    CUSTODY_ASSIGN_OR_RETURN(
        Bytes ciphertext,
        crypto::AesGcmSeal(key_.span(), nonce, Labelled(kDekAadLabel, model_id), dek));
    Bytes out;
    out.reserve(kSealedDekBytes);
    out.push_back(kSealedDekVersion);
    AppendBytes(out, nonce);
    AppendBytes(out, ciphertext);
    if (out.size() != kSealedDekBytes) Panic("sealed DEK has the wrong size");
    return out;
  }

  Result<SecretBuffer> Open(ByteSpan sealed, std::string_view model_id) const override {
    // Every refusal is kUnauthenticated: the caller cannot tell (and must not care) whether the
    // row was truncated, altered, or moved from another model.
    if (sealed.size() != kSealedDekBytes) {
      return Unauthenticated("sealed DEK is " + std::to_string(sealed.size()) +
                             " bytes, expected " + std::to_string(kSealedDekBytes));
    }
    if (sealed[0] != kSealedDekVersion) {
      return Unauthenticated("sealed DEK has version " + std::to_string(sealed[0]) + ", expected " +
                             std::to_string(kSealedDekVersion));
    }
    Result<SecretBuffer> dek = crypto::AesGcmOpen(
        key_.span(), sealed.subspan(1, crypto::kGcmNonceBytes), Labelled(kDekAadLabel, model_id),
        sealed.subspan(1 + crypto::kGcmNonceBytes));
    if (!dek && dek.error().code() == StatusCode::kUnauthenticated) {
      return Unauthenticated(
          "sealed DEK does not open for this model under this master key (authentication tag "
          "mismatch)");
    }
    return dek;
  }

  Result<SecretBuffer> DeriveKey(std::string_view label) const override {
    if (label.empty()) return InvalidArgument("a derived key needs a non-empty label");
    return crypto::HkdfSha256(key_.span(), {}, Labelled(kDeriveInfoLabel, label), kDerivedKeyBytes);
  }

 private:
  SecretBuffer key_;
};

// ----- master.key text --------------------------------------------------------------------

Result<SecretBuffer> EncodeMasterKeyFile(const SecretBuffer& key) {
  static constexpr char kHexDigits[] = "0123456789abcdef";
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer text, SecretBuffer::Allocate(kMasterKeyHexDigits + 1));
  for (size_t i = 0; i < key.size(); ++i) {
    text.data()[2 * i] = static_cast<uint8_t>(kHexDigits[key.data()[i] >> 4]);
    text.data()[2 * i + 1] = static_cast<uint8_t>(kHexDigits[key.data()[i] & 0x0f]);
  }
  text.data()[kMasterKeyHexDigits] = '\n';
  return text;
}

int HexValue(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Accepts the 64 hex digits with or without the final newline; nothing else.
Result<SecretBuffer> DecodeMasterKeyFile(const SecretBuffer& text, const std::string& path) {
  size_t digits = text.size();
  if (digits == kMasterKeyHexDigits + 1 && text.data()[kMasterKeyHexDigits] == '\n') --digits;
  if (digits != kMasterKeyHexDigits) {
    return DataLoss(path + " must hold " + std::to_string(kMasterKeyHexDigits) +
                    " hex digits and a newline; it holds " + std::to_string(text.size()) +
                    " bytes");
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer key, SecretBuffer::Allocate(kMasterKeyBytes));
  for (size_t i = 0; i < kMasterKeyBytes; ++i) {
    int hi = HexValue(text.data()[2 * i]);
    int lo = HexValue(text.data()[2 * i + 1]);
    if (hi < 0 || lo < 0) return DataLoss(path + " holds a character that is not a hex digit");
    key.data()[i] = static_cast<uint8_t>((hi << 4) | lo);
  }
  return key;
}

// ----- the keys directory -----------------------------------------------------------------

std::string KeysDir(const std::string& data_dir) { return data_dir + "/keys"; }

std::string ModeText(mode_t mode) {
  std::array<char, 8> buf{};
  std::snprintf(buf.data(), buf.size(), "%04o", static_cast<unsigned>(mode & 07777));
  return buf.data();
}

Status FsyncDirectory(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open " + path);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0 && err != EINVAL) return ErrnoStatus(err, "fsync " + path);
  return OkStatus();
}

Status RefuseExisting(const std::string& keys_dir) {
  return AlreadyExists(keys_dir +
                       " already exists; refusing to replace keys devices have pinned; move it "
                       "away to start over");
}

// Moves the fully written staging directory to DIR/keys in one step, never over an existing one.
Status Publish(const std::string& staging, const std::string& keys_dir) {
  if (renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, keys_dir.c_str(), RENAME_NOREPLACE) == 0) {
    return OkStatus();
  }
  int err = errno;
  if (err == EEXIST) return RefuseExisting(keys_dir);
  if (err != EINVAL && err != ENOSYS) {
    return ErrnoStatus(err, "rename " + staging + " to " + keys_dir);
  }
  // A file system without RENAME_NOREPLACE: rename(2) would replace an empty directory, so look
  // first (the window is only against a concurrent init of the same directory).
  if (PathExists(keys_dir)) return RefuseExisting(keys_dir);
  if (rename(staging.c_str(), keys_dir.c_str()) != 0) {
    return ErrnoStatus(errno, "rename " + staging + " to " + keys_dir);
  }
  return OkStatus();
}

// Removes a staging directory unless dismissed: an init that fails leaves nothing behind.
class StagingDir {
 public:
  explicit StagingDir(std::string path) : path_(std::move(path)) {}
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;
  ~StagingDir() {
    if (path_.empty()) return;
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  void Dismiss() { path_.clear(); }

 private:
  std::string path_;
};

struct KeyFile {
  const char* name;
  ByteSpan data;
  uint32_t mode;
};

void AppendUnique(std::vector<std::string>& list, const std::string& value) {
  if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(value);
}

// Checks that `path` is a regular file and, for a private file, that only its owner can use it.
Status CheckFile(const std::string& path, bool is_private) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) return NotFound(path + " is missing");
    return ErrnoStatus(err, "stat " + path);
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  if (is_private && (st.st_mode & kPrivateForbiddenBits) != 0) {
    return PermissionDenied(path + " is accessible by group or others (mode " +
                            ModeText(st.st_mode) + "); run: chmod 600 " + path);
  }
  return OkStatus();
}

// A key file we wrote that does not parse is stored data gone bad, not bad caller input.
Status Corrupt(const std::string& path, const Status& status) {
  if (status.code() == StatusCode::kInvalidArgument) {
    return DataLoss(path + ": " + status.message());
  }
  return status.WithContext(path);
}

class KeysReader {
 public:
  explicit KeysReader(std::string dir) : dir_(std::move(dir)) {}

  std::string Path(std::string_view name) const { return dir_ + "/" + std::string(name); }

  Result<SecretBuffer> Private(std::string_view name) const {
    std::string path = Path(name);
    CUSTODY_RETURN_IF_ERROR(CheckFile(path, /*is_private=*/true));
    return ReadSecretFile(path);
  }

  Result<std::string> Public(std::string_view name) const {
    std::string path = Path(name);
    CUSTODY_RETURN_IF_ERROR(CheckFile(path, /*is_private=*/false));
    CUSTODY_ASSIGN_OR_RETURN(Bytes bytes, ReadFile(path));
    return std::string(AsChars(bytes));
  }

  // A private key and its public file; `public_bytes` maps either public key to comparable bytes.
  template <typename PrivateKey, typename PublicKey, typename PublicBytes>
  Result<PrivateKey> KeyPair(std::string_view key_name, std::string_view pub_name,
                             PublicBytes public_bytes) const {
    CUSTODY_ASSIGN_OR_RETURN(SecretBuffer key_pem, Private(key_name));
    CUSTODY_ASSIGN_OR_RETURN(std::string pub_pem, Public(pub_name));
    Result<PrivateKey> key = PrivateKey::FromPem(AsChars(key_pem.span()));
    if (!key) return Corrupt(Path(key_name), key.error());
    Result<PublicKey> pub = PublicKey::FromPem(pub_pem);
    if (!pub) return Corrupt(Path(pub_name), pub.error());
    if (public_bytes(key->public_key()) != public_bytes(*pub)) {
      return DataLoss(Path(pub_name) + " is not the public half of " + Path(key_name));
    }
    return key;
  }

 private:
  std::string dir_;
};

}  // namespace

Result<std::unique_ptr<DekSealer>> NewMasterKeySealer(SecretBuffer master_key) {
  if (master_key.size() != kMasterKeyBytes) {
    return InvalidArgument("the master key must be " + std::to_string(kMasterKeyBytes) +
                           " bytes, got " + std::to_string(master_key.size()));
  }
  return std::unique_ptr<DekSealer>(std::make_unique<MasterKeySealer>(std::move(master_key)));
}

Status CreateKeys(const std::string& data_dir, const InitOptions& options) {
  if (data_dir.empty()) return InvalidArgument("the data directory is empty");
  const std::string keys_dir = KeysDir(data_dir);
  if (PathExists(keys_dir)) return RefuseExisting(keys_dir);

  // Everything is made in memory first: a bad name or address touches no file.
  std::vector<std::string> dns_names = options.dns_names;
  std::vector<std::string> ip_addresses = options.ip_addresses;
  AppendUnique(dns_names, kLocalhostName);
  AppendUnique(ip_addresses, kLocalhostAddress);
  CUSTODY_ASSIGN_OR_RETURN(CertificateAuthority ca, CertificateAuthority::Create(options.ca_name));
  CUSTODY_ASSIGN_OR_RETURN(CertificateAuthority::ServerIdentity server,
                           ca.IssueServer(dns_names, ip_addresses, options.server_cert_days));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer ca_key_pem, ca.KeyPem());
  CUSTODY_ASSIGN_OR_RETURN(crypto::Ed25519PrivateKey lease, crypto::Ed25519PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer lease_key_pem, lease.ToPem());
  const std::string lease_pub_pem = lease.public_key().ToPem();
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey policy, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer policy_key_pem, policy.ToPem());
  const std::string policy_pub_pem = policy.public_key().ToPem();
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer master, crypto::RandomSecret(kMasterKeyBytes));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer master_text, EncodeMasterKeyFile(master));

  const KeyFile files[] = {
      {kCaKey, ca_key_pem.span(), kPrivateFileMode},
      {kCaCert, AsBytes(ca.CertificatePem()), kPublicFileMode},
      {kServerKey, server.key_pem.span(), kPrivateFileMode},
      {kServerCert, AsBytes(server.certificate.pem), kPublicFileMode},
      {kLeaseKey, lease_key_pem.span(), kPrivateFileMode},
      {kLeasePub, AsBytes(lease_pub_pem), kPublicFileMode},
      {kPolicyKey, policy_key_pem.span(), kPrivateFileMode},
      {kPolicyPub, AsBytes(policy_pub_pem), kPublicFileMode},
      {kMasterKey, master_text.span(), kPrivateFileMode},
  };

  if (mkdir(data_dir.c_str(), kKeysDirMode) != 0 && errno != EEXIST) {
    return ErrnoStatus(errno, "create data directory " + data_dir);
  }
  // The keys are written into a private staging directory next to DIR/keys and renamed into
  // place at the end, so an interrupted init leaves either every key or none (a stray staging
  // directory at worst), never a DIR/keys that the next init would refuse to replace.
  std::string staging_template = data_dir + "/.keys.partial-XXXXXX";
  if (mkdtemp(staging_template.data()) == nullptr) {
    return ErrnoStatus(errno, "create a staging directory in " + data_dir);
  }
  StagingDir staging(staging_template);
  if (chmod(staging.path().c_str(), kKeysDirMode) != 0) {
    return ErrnoStatus(errno, "chmod " + staging.path());
  }
  for (const KeyFile& file : files) {
    CUSTODY_RETURN_IF_ERROR(WriteFileAtomic(staging.path() + "/" + file.name, file.data,
                                            {.mode = file.mode, .overwrite = Overwrite::kRefuse}));
  }
  CUSTODY_RETURN_IF_ERROR(Publish(staging.path(), keys_dir));
  staging.Dismiss();
  return FsyncDirectory(data_dir);
}

Result<CustodianKeys> LoadKeys(const std::string& data_dir) {
  const std::string keys_dir = KeysDir(data_dir);
  struct stat st {};
  if (stat(keys_dir.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT) {
      return NotFound(keys_dir + " does not exist; create it with `custodian init --data " +
                      data_dir + "`");
    }
    return ErrnoStatus(err, "stat " + keys_dir);
  }
  if (!S_ISDIR(st.st_mode)) return InvalidArgument(keys_dir + " is not a directory");
  if ((st.st_mode & kDirForbiddenBits) != 0) {
    return PermissionDenied(keys_dir + " is writable by group or others (mode " +
                            ModeText(st.st_mode) + "); run: chmod 700 " + keys_dir);
  }
  KeysReader reader(keys_dir);

  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer ca_key_pem, reader.Private(kCaKey));
  CUSTODY_ASSIGN_OR_RETURN(std::string ca_cert_pem, reader.Public(kCaCert));
  Result<CertificateAuthority> ca =
      CertificateAuthority::Load(AsChars(ca_key_pem.span()), ca_cert_pem);
  if (!ca) return Corrupt(reader.Path(kCaKey) + " and " + kCaCert, ca.error());

  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer server_key_pem, reader.Private(kServerKey));
  CUSTODY_ASSIGN_OR_RETURN(std::string server_cert_pem, reader.Public(kServerCert));
  Result<crypto::P256PrivateKey> server_key =
      crypto::P256PrivateKey::FromPem(AsChars(server_key_pem.span()));
  if (!server_key) return Corrupt(reader.Path(kServerKey), server_key.error());
  Status chains = ca->Verify(server_cert_pem, CertificateUse::kServer);
  if (!chains.ok()) return Corrupt(reader.Path(kServerCert), chains);
  CUSTODY_ASSIGN_OR_RETURN(bool matches, CertificateMatchesKey(server_cert_pem, *server_key));
  if (!matches) {
    return DataLoss(reader.Path(kServerCert) + " does not certify the key in " +
                    reader.Path(kServerKey));
  }
  if (!server_cert_pem.ends_with('\n')) server_cert_pem += '\n';
  std::string chain = server_cert_pem + ca->CertificatePem();

  auto ed25519_bytes = [](const crypto::Ed25519PublicKey& key) { return key.raw(); };
  CUSTODY_ASSIGN_OR_RETURN(crypto::Ed25519PrivateKey lease_key,
                           (reader.KeyPair<crypto::Ed25519PrivateKey, crypto::Ed25519PublicKey>(
                               kLeaseKey, kLeasePub, ed25519_bytes)));
  auto p256_bytes = [](const crypto::P256PublicKey& key) { return key.uncompressed(); };
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey policy_key,
                           (reader.KeyPair<crypto::P256PrivateKey, crypto::P256PublicKey>(
                               kPolicyKey, kPolicyPub, p256_bytes)));

  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer master_text, reader.Private(kMasterKey));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer master,
                           DecodeMasterKeyFile(master_text, reader.Path(kMasterKey)));
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<DekSealer> sealer,
                           NewMasterKeySealer(std::move(master)));

  return CustodianKeys{std::move(*ca),       std::move(chain),      std::move(server_key_pem),
                       std::move(lease_key), std::move(policy_key), std::move(sealer)};
}

}  // namespace custody::custodian
