// The custodian's key material and data directory (DESIGN.md §4, §11), created once by
// `custodian init --data DIR` and loaded by `custodian serve`.
//
//   DIR/custodian.db                   the store (created by the caller, not here)
//   DIR/keys/ca.key, ca.pem            internal CA (ca.h)
//   DIR/keys/server.key, server.pem    TLS identity of the custodian, issued by that CA
//   DIR/keys/lease.key, lease.pub      Ed25519: signs leases, approvals and revocations;
//                                      pinned by agents
//   DIR/keys/policy.key, policy.pub    ECDSA P-256: signs approved PCR policies; named in every
//                                      binding key's policy and pinned by agents
//   DIR/keys/master.key                32 random bytes (hex): encrypts model DEKs at rest
//                                      (envelope encryption); never in the database
//
// Private key files are mode 0600 in a 0700 directory; Load refuses files that group or others
// can read (kPermissionDenied naming the file and the chmod to run), like ssh does.
// The master key is behind a small interface so that a TPM or PKCS#11 token can hold it later.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "custodian/ca.h"

namespace custody::custodian {

// Seals model DEKs for storage. Implementations: the file-backed master key (below).
class DekSealer {
 public:
  virtual ~DekSealer() = default;
  // AES-256-GCM under the master key with a random nonce; the model id is bound as AAD
  // ("custody/dek/v1" ‖ 0x00 ‖ model id), so a sealed DEK moved to another model's row does not
  // open. Layout (docs/OPERATIONS.md):
  // version (1) = 0x01 ‖ nonce (12) ‖ ciphertext (32) ‖ tag (16).
  virtual Result<Bytes> Seal(ByteSpan dek, std::string_view model_id) const = 0;
  // kUnauthenticated if the blob was altered or belongs to another model or master key.
  virtual Result<SecretBuffer> Open(ByteSpan sealed, std::string_view model_id) const = 0;
  // Derives a purpose-bound key (HKDF-SHA256 with `label`) for other at-rest or stateless
  // secrets (e.g. the nonce MAC key), so the master key itself is used for nothing else.
  virtual Result<SecretBuffer> DeriveKey(std::string_view label) const = 0;
};

inline constexpr size_t kMasterKeyBytes = 32;
inline constexpr size_t kDekBytes = 32;

// The master-key implementation of DekSealer, for a key already in memory (LoadKeys reads it
// from DIR/keys/master.key). Seal refuses a DEK that is not kDekBytes long and an empty model id
// (kInvalidArgument); DeriveKey returns 32 bytes of HKDF-SHA256(master key, salt = empty,
// info = "custody/derive/v1" ‖ 0x00 ‖ label) and refuses an empty label. Thread-safe.
// kInvalidArgument unless `master_key` is kMasterKeyBytes long.
Result<std::unique_ptr<DekSealer>> NewMasterKeySealer(SecretBuffer master_key);

struct CustodianKeys {
  CertificateAuthority ca;
  std::string server_cert_pem;  // chain: server certificate then the CA certificate
  SecretBuffer server_key_pem;
  crypto::Ed25519PrivateKey lease_key;
  crypto::P256PrivateKey policy_key;
  std::unique_ptr<DekSealer> dek_sealer;
};

struct InitOptions {
  std::string ca_name = "Custody custodian CA";
  // Names and addresses devices and operators use to reach the custodian (server cert SAN);
  // "localhost" and 127.0.0.1 are always included.
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  int server_cert_days = 825;
};

// Creates DIR/keys with every key above. Refuses (kAlreadyExists) if DIR/keys exists already:
// re-running init must never replace keys that devices have pinned. DIR is created (0700) if it
// is missing. The files are written into a staging directory DIR/.keys.partial-XXXXXX that is
// renamed to DIR/keys only when complete, so an interrupted init leaves no DIR/keys (at most a
// stray staging directory); invalid options (kInvalidArgument) write nothing.
Status CreateKeys(const std::string& data_dir, const InitOptions& options);

// Loads and checks everything CreateKeys wrote. kNotFound names a missing file (or DIR/keys);
// kPermissionDenied names a private file others can access, or a DIR/keys others can write, with
// the chmod to run; kDataLoss names a file that does not parse or does not match its pair;
// kUnauthenticated if server.pem does not verify as a TLS server certificate of ca.pem.
Result<CustodianKeys> LoadKeys(const std::string& data_dir);

}  // namespace custody::custodian
