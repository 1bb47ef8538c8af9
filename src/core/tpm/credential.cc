#include "core/tpm/credential.h"

#include <tss2/tss2_mu.h>

#include <cstring>
#include <string>

#include "core/base/secret_buffer.h"
#include "core/crypto/crypto.h"
#include "core/tpm/objects.h"
#include "core/tpm/tpm_kdf.h"

namespace custody::tpm {
namespace {

constexpr size_t kSha256NameBytes = 2 + crypto::kSha256Bytes;
constexpr size_t kSeedBits = 8 * crypto::kSha256Bytes;  // the EK nameAlg's digest size
constexpr size_t kAes128KeyBits = 128;
constexpr size_t kAesBlockBytes = 16;
constexpr size_t kRsa2048ModulusBytes = 256;
constexpr size_t kEccCoordinateBytes = 32;
// Part 1 §24 and Annex B.10: the label of the credential seed, with its terminating NUL when it is
// an OAEP label (RSA); KDFe adds the NUL itself (ECC).
constexpr std::string_view kIdentityLabel = "IDENTITY";
constexpr uint8_t kIdentityOaepLabel[] = {'I', 'D', 'E', 'N', 'T', 'I', 'T', 'Y', 0};

// The seed and how the EK's TPM recovers it (inSymSeed of TPM2_ActivateCredential).
struct ProtectedSeed {
  SecretBuffer seed;
  Bytes encrypted_seed;  // the contents of TPM2B_ENCRYPTED_SECRET
};

Status CheckEkShape(const TPMT_PUBLIC& ek) {
  const TPMA_OBJECT attrs = ek.objectAttributes;
  if ((attrs & TPMA_OBJECT_RESTRICTED) == 0 || (attrs & TPMA_OBJECT_DECRYPT) == 0 ||
      (attrs & TPMA_OBJECT_SIGN_ENCRYPT) != 0) {
    return InvalidArgument(
        "EK public: not a restricted decryption key (restricted, decrypt set; "
        "sign clear)");
  }
  if (ek.nameAlg != TPM2_ALG_SHA256) {
    return InvalidArgument("EK public: nameAlg is " + AlgHex(ek.nameAlg) +
                           ", only SHA-256 (0x000b) is supported");
  }
  // The symmetric definition sits at the same place for ECC and RSA keys (TPMS_ASYM_PARMS).
  const TPMT_SYM_DEF_OBJECT& sym = ek.parameters.asymDetail.symmetric;
  if (sym.algorithm != TPM2_ALG_AES || sym.keyBits.aes != kAes128KeyBits ||
      sym.mode.aes != TPM2_ALG_CFB) {
    return InvalidArgument("EK public: symmetric definition is not AES-128-CFB (algorithm " +
                           AlgHex(sym.algorithm) + ", " + std::to_string(sym.keyBits.aes) +
                           " bits, mode " + AlgHex(sym.mode.aes) + ")");
  }
  if (ek.type == TPM2_ALG_ECC) {
    if (ek.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256) {
      return InvalidArgument("EK public: ECC curve " + AlgHex(ek.parameters.eccDetail.curveID) +
                             " is not supported (only NIST P-256)");
    }
    return OkStatus();
  }
  if (ek.type == TPM2_ALG_RSA) {
    if (ek.parameters.rsaDetail.keyBits != 2048 || ek.unique.rsa.size != kRsa2048ModulusBytes) {
      return InvalidArgument("EK public: RSA key of " +
                             std::to_string(ek.parameters.rsaDetail.keyBits) + " bits with a " +
                             std::to_string(ek.unique.rsa.size) +
                             "-byte modulus; only RSA 2048 is supported");
    }
    return OkStatus();
  }
  return InvalidArgument("EK public: key type " + AlgHex(ek.type) + " is neither ECC nor RSA");
}

// ECC (Part 1 Annex C.6, ECDH secret sharing): the TPM recomputes Z from the ephemeral point with
// its private key. PartyVInfo is the EK's x exactly as its public area carries it, as the TPM uses
// it.
Result<ProtectedSeed> EccSeed(const TPMT_PUBLIC& ek) {
  Result<crypto::P256PublicKey> ek_key = EccPublicKey(ek);
  if (!ek_key) return ek_key.error().WithContext("EK public");
  CUSTODY_ASSIGN_OR_RETURN(crypto::P256PrivateKey ephemeral, crypto::P256PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer z, ephemeral.Ecdh(*ek_key));
  const auto& point = ephemeral.public_key().uncompressed();
  ByteSpan ephemeral_x = ByteSpan(point).subspan(1, kEccCoordinateBytes);
  ByteSpan ek_x(ek.unique.ecc.x.buffer, ek.unique.ecc.x.size);
  ProtectedSeed out;
  CUSTODY_ASSIGN_OR_RETURN(out.seed, KdfE(z.span(), kIdentityLabel, ephemeral_x, ek_x, kSeedBits));

  TPMS_ECC_POINT ecc_point{};
  ecc_point.x.size = kEccCoordinateBytes;
  std::memcpy(ecc_point.x.buffer, point.data() + 1, kEccCoordinateBytes);
  ecc_point.y.size = kEccCoordinateBytes;
  std::memcpy(ecc_point.y.buffer, point.data() + 1 + kEccCoordinateBytes, kEccCoordinateBytes);
  CUSTODY_ASSIGN_OR_RETURN(out.encrypted_seed,
                           MarshalTss(ecc_point, Tss2_MU_TPMS_ECC_POINT_Marshal, "TPMS_ECC_POINT"));
  return out;
}

// RSA (Part 1 Annex B.10, OAEP secret sharing): a random seed the size of the nameAlg digest,
// OAEP-encrypted to the EK.
Result<ProtectedSeed> RsaSeed(const TPMT_PUBLIC& ek) {
  Result<crypto::EvpPkeyPtr> ek_key = RsaPublicKeyFromTpm(
      ByteSpan(ek.unique.rsa.buffer, ek.unique.rsa.size), ek.parameters.rsaDetail.exponent);
  if (!ek_key) return ek_key.error().WithContext("EK public");
  ProtectedSeed out;
  CUSTODY_ASSIGN_OR_RETURN(out.seed, crypto::RandomSecret(kSeedBits / 8));
  CUSTODY_ASSIGN_OR_RETURN(
      out.encrypted_seed, RsaOaepSha256Encrypt(ek_key->get(), kIdentityOaepLabel, out.seed.span()));
  return out;
}

}  // namespace

Result<Credential> MakeCredential(ByteSpan ek_public, ByteSpan ak_name, ByteSpan secret) {
  Result<TPMT_PUBLIC> parsed = UnmarshalPublic2B(ek_public);
  if (!parsed) return parsed.error().WithContext("EK public");
  const TPMT_PUBLIC& ek = *parsed;
  CUSTODY_RETURN_IF_ERROR(CheckEkShape(ek));
  if (ak_name.size() != kSha256NameBytes || ak_name[0] != 0x00 || ak_name[1] != 0x0B) {
    return InvalidArgument("AK name must be a 34-byte SHA-256 Name starting 0x000b, got " +
                           std::to_string(ak_name.size()) + " bytes");
  }
  if (secret.empty() || secret.size() > kMaxCredentialBytes) {
    return InvalidArgument("credential secret must be 1.." + std::to_string(kMaxCredentialBytes) +
                           " bytes, got " + std::to_string(secret.size()));
  }

  CUSTODY_ASSIGN_OR_RETURN(ProtectedSeed seed, ek.type == TPM2_ALG_ECC ? EccSeed(ek) : RsaSeed(ek));

  // Part 1 §24: the secret travels as a TPM2B_DIGEST, encrypted under a key bound to the AK's
  // Name (so the TPM releases it only to an object of that Name), then integrity-protected over
  // the ciphertext and the Name.
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer sym_key,
                           KdfA(seed.seed.span(), "STORAGE", ak_name, {}, kAes128KeyBits));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer plaintext, SecretBuffer::Allocate(2 + secret.size()));
  StoreBigEndian16(plaintext.data(), static_cast<uint16_t>(secret.size()));
  std::memcpy(plaintext.data() + 2, secret.data(), secret.size());
  const uint8_t zero_iv[kAesBlockBytes] = {};
  CUSTODY_ASSIGN_OR_RETURN(Bytes enc_identity,
                           Aes128CfbEncrypt(sym_key.span(), zero_iv, plaintext.span()));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer hmac_key,
                           KdfA(seed.seed.span(), "INTEGRITY", {}, {}, kSeedBits));
  Bytes hmac_input = enc_identity;
  AppendBytes(hmac_input, ak_name);
  CUSTODY_ASSIGN_OR_RETURN(crypto::Sha256Digest outer_hmac,
                           HmacSha256(hmac_key.span(), hmac_input));

  TPM2B_ID_OBJECT id_object{};
  Bytes blob;
  AppendBigEndian16(blob, static_cast<uint16_t>(outer_hmac.size()));
  AppendBytes(blob, outer_hmac);
  AppendBytes(blob, enc_identity);
  // 2 + 32 + 2 + 32 bytes at most: always within TPM2B_ID_OBJECT's buffer.
  id_object.size = static_cast<uint16_t>(blob.size());
  std::memcpy(id_object.credential, blob.data(), blob.size());
  TPM2B_ENCRYPTED_SECRET encrypted{};
  if (seed.encrypted_seed.size() > sizeof(encrypted.secret)) {
    return Internal("encrypted seed of " + std::to_string(seed.encrypted_seed.size()) +
                    " bytes does not fit a TPM2B_ENCRYPTED_SECRET");
  }
  encrypted.size = static_cast<uint16_t>(seed.encrypted_seed.size());
  std::memcpy(encrypted.secret, seed.encrypted_seed.data(), seed.encrypted_seed.size());

  Credential credential;
  CUSTODY_ASSIGN_OR_RETURN(
      credential.id_object,
      MarshalTss(id_object, Tss2_MU_TPM2B_ID_OBJECT_Marshal, "TPM2B_ID_OBJECT"));
  CUSTODY_ASSIGN_OR_RETURN(
      credential.encrypted_secret,
      MarshalTss(encrypted, Tss2_MU_TPM2B_ENCRYPTED_SECRET_Marshal, "TPM2B_ENCRYPTED_SECRET"));
  return credential;
}

}  // namespace custody::tpm
