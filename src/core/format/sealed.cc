// Header encoding and parsing, metadata, timestamps and DEK files of sealed format v1.
#include "core/format/sealed.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <cstring>
#include <ctime>

#include "core/format/sealed_internal.h"

namespace custody::format {
namespace {

bool IsPrintable(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

bool IsEngineName(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
  }
  return true;
}

Status CheckText(std::string_view field, std::string_view value, size_t max) {
  if (value.empty() || value.size() > max) {
    return InvalidArgument(std::string(field) + " must be 1.." + std::to_string(max) +
                           " characters, got " + std::to_string(value.size()));
  }
  if (!IsPrintable(value)) {
    return InvalidArgument(std::string(field) + " contains control characters");
  }
  return OkStatus();
}

}  // namespace

uint64_t SealedHeader::chunk_count() const { return ChunkCount(plaintext_size, chunk_size_log2); }

uint64_t SealedHeader::sealed_size() const {
  return payload_offset() + plaintext_size + chunk_count() * kTagBytes;
}

std::string SealedHeader::vendor_fingerprint() const {
  auto key = crypto::Ed25519PublicKey::FromRaw(vendor_key);
  return key ? key->Fingerprint() : "invalid-key:" + HexEncode(vendor_key);
}

uint64_t ChunkCount(uint64_t plaintext_size, uint8_t chunk_size_log2) {
  if (plaintext_size == 0) return 1;
  return ((plaintext_size - 1) >> chunk_size_log2) + 1;
}

// ----- timestamps ----------------------------------------------------------------------------

Result<std::chrono::sys_seconds> ParseTimestamp(std::string_view s) {
  int y = 0, mo = 0, d = 0, h = 23, mi = 59, sec = 59;
  char tail = 0;
  std::string text(s);
  // The exact shape first: sscanf alone would take "2030- 1- 1" or "1970-+1-01".
  constexpr std::string_view kLong = "DDDD-DD-DDTDD:DD:DDZ";
  bool ok = text.size() == 10 || text.size() == kLong.size();
  for (size_t i = 0; ok && i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    ok = kLong[i] == 'D' ? std::isdigit(c) != 0 : c == static_cast<unsigned char>(kLong[i]);
  }
  if (ok && text.size() == 10) {
    ok = std::sscanf(text.c_str(), "%4d-%2d-%2d%c", &y, &mo, &d, &tail) == 3;
  } else if (ok) {
    ok = std::sscanf(text.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &sec,
                     &tail) == 7 &&
         tail == 'Z';
  }
  if (!ok || y < 1970 || y > 9999 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
      sec > 59 || h < 0 || mi < 0 || sec < 0) {
    return InvalidArgument("'" + text +
                           "' is not a date: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)");
  }
  std::tm tm{};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = sec;
  time_t t = timegm(&tm);
  std::tm back{};
  gmtime_r(&t, &back);
  if (back.tm_mday != d || back.tm_mon != mo - 1) {
    return InvalidArgument("'" + text + "' is not a valid calendar date");
  }
  return std::chrono::sys_seconds(std::chrono::seconds(t));
}

std::string FormatTimestamp(std::chrono::sys_seconds t) {
  time_t tt = static_cast<time_t>(t.time_since_epoch().count());
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<std::string> NormaliseTimestamp(std::string_view text) {
  CUSTODY_ASSIGN_OR_RETURN(auto t, ParseTimestamp(text));
  return FormatTimestamp(t);
}

// ----- metadata ------------------------------------------------------------------------------

Status ValidateModelInfo(const ModelInfo& info) {
  if (info.model_id.size() != 32 || !HexDecode(info.model_id).has_value() ||
      HexEncode(*HexDecode(info.model_id)) != info.model_id) {
    return InvalidArgument("model_id must be 32 lower-case hex digits, got '" + info.model_id +
                           "'");
  }
  CUSTODY_RETURN_IF_ERROR(CheckText("model name", info.name, 128));
  CUSTODY_RETURN_IF_ERROR(CheckText("model version", info.version, 64));
  if (!IsEngineName(info.engine)) {
    return InvalidArgument("engine must match [a-z0-9_-]{1,32}, got '" + info.engine + "'");
  }
  auto created = ParseTimestamp(info.created);
  if (!created || info.created.size() != 20) {
    return InvalidArgument("created must be an RFC 3339 UTC timestamp, got '" + info.created + "'");
  }
  if (info.not_after) {
    auto na = ParseTimestamp(*info.not_after);
    if (!na || info.not_after->size() != 20) {
      return InvalidArgument("not_after must be an RFC 3339 UTC timestamp, got '" +
                             *info.not_after + "'");
    }
  }
  for (const auto& [k, v] : info.meta) {
    CUSTODY_RETURN_IF_ERROR(CheckText("metadata key", k, 128));
    if (v.size() > 16384 || !IsPrintable(v)) {
      return InvalidArgument("metadata value for '" + k +
                             "' must be at most 16384 printable characters");
    }
  }
  return OkStatus();
}

std::string MetadataJson(const ModelInfo& info) {
  nlohmann::json j;
  j["model_id"] = info.model_id;
  j["name"] = info.name;
  j["version"] = info.version;
  j["engine"] = info.engine;
  j["created"] = info.created;
  if (info.not_after) j["not_after"] = *info.not_after;
  j["meta"] = nlohmann::json::object();
  for (const auto& [k, v] : info.meta) j["meta"][k] = v;
  // nlohmann::json keeps object keys sorted, so the encoding is deterministic.
  return j.dump();
}

Result<ModelInfo> ParseMetadataJson(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return DataLoss("header metadata is not a JSON object");
  }
  ModelInfo info;
  auto get_string = [&](const char* key, std::string& out, bool required) -> Status {
    auto it = j.find(key);
    if (it == j.end()) {
      return required ? DataLoss(std::string("header metadata lacks '") + key + "'") : OkStatus();
    }
    if (!it->is_string())
      return DataLoss(std::string("header metadata '") + key + "' not a string");
    out = it->get<std::string>();
    return OkStatus();
  };
  CUSTODY_RETURN_IF_ERROR(get_string("model_id", info.model_id, true));
  CUSTODY_RETURN_IF_ERROR(get_string("name", info.name, true));
  CUSTODY_RETURN_IF_ERROR(get_string("version", info.version, true));
  CUSTODY_RETURN_IF_ERROR(get_string("engine", info.engine, true));
  CUSTODY_RETURN_IF_ERROR(get_string("created", info.created, true));
  if (j.contains("not_after")) {
    std::string na;
    CUSTODY_RETURN_IF_ERROR(get_string("not_after", na, true));
    info.not_after = na;
  }
  if (auto it = j.find("meta"); it != j.end()) {
    if (!it->is_object()) return DataLoss("header metadata 'meta' is not an object");
    for (auto& [k, v] : it->items()) {
      if (!v.is_string()) return DataLoss("header metadata meta." + k + " is not a string");
      info.meta[k] = v.get<std::string>();
    }
  }
  Status valid = ValidateModelInfo(info);
  if (!valid.ok()) return DataLoss("header metadata is invalid: " + valid.message());
  return info;
}

// ----- header --------------------------------------------------------------------------------

Bytes SignatureMessage(ByteSpan signed_region) {
  Bytes msg;
  msg.reserve(sizeof(kSignatureContext) + signed_region.size());
  AppendBytes(msg, AsBytes(kSignatureContext));
  msg.push_back(0x00);
  AppendBytes(msg, signed_region);
  return msg;
}

Result<Bytes> EncodeSignedRegion(const SealedHeader& h) {
  std::string metadata = MetadataJson(h.info);
  if (metadata.size() > kMaxMetadataBytes) {
    return InvalidArgument("metadata is " + std::to_string(metadata.size()) +
                           " bytes encoded; at most " + std::to_string(kMaxMetadataBytes) +
                           " are allowed");
  }
  Bytes out;
  AppendBytes(out, kMagic);
  AppendBigEndian16(out, kFormatVersion);
  AppendBigEndian16(out, 0);
  AppendBigEndian32(out, static_cast<uint32_t>(kHeaderFixedBytes + metadata.size()));
  out.push_back(h.suite);
  out.push_back(h.chunk_size_log2);
  AppendBigEndian16(out, 0);
  AppendBigEndian64(out, h.plaintext_size);
  AppendBytes(out, h.salt);
  AppendBytes(out, h.nonce_prefix);
  out.push_back(0);
  AppendBytes(out, h.key_commitment);
  AppendBytes(out, h.vendor_key);
  AppendBigEndian32(out, static_cast<uint32_t>(metadata.size()));
  AppendBytes(out, AsBytes(metadata));
  return out;
}

Result<PreambleFields> ParsePreamble(ByteSpan bytes) {
  if (bytes.size() < kMagic.size() ||
      std::memcmp(bytes.data(), kMagic.data(), kMagic.size()) != 0) {
    return InvalidArgument("not a Custody sealed model (the file does not start with 'CUSTODYM')");
  }
  if (bytes.size() < kPreambleBytes) {
    return DataLoss("sealed model is truncated inside its 16-byte preamble");
  }
  PreambleFields p;
  p.version = LoadBigEndian16(bytes.data() + 8);
  uint16_t reserved = LoadBigEndian16(bytes.data() + 10);
  p.header_len = LoadBigEndian32(bytes.data() + 12);
  if (p.version != kFormatVersion) {
    return Unimplemented("sealed model format version " + std::to_string(p.version) +
                         " is not supported; this build reads version " +
                         std::to_string(kFormatVersion));
  }
  if (reserved != 0) return DataLoss("sealed model preamble has a non-zero reserved field");
  if (p.header_len < kHeaderFixedBytes || p.header_len > kHeaderFixedBytes + kMaxMetadataBytes) {
    return DataLoss("sealed model header length " + std::to_string(p.header_len) +
                    " is outside the allowed range " + std::to_string(kHeaderFixedBytes) + ".." +
                    std::to_string(kHeaderFixedBytes + kMaxMetadataBytes));
  }
  return p;
}

Result<SealedHeader> ParseHeader(ByteSpan bytes, const crypto::Ed25519PublicKey* trusted_vendor) {
  CUSTODY_ASSIGN_OR_RETURN(PreambleFields pre, ParsePreamble(bytes));
  const size_t signed_len = kPreambleBytes + pre.header_len;
  if (bytes.size() < signed_len + kSignatureBytes) {
    return DataLoss("sealed model is truncated inside its header (" +
                    std::to_string(signed_len + kSignatureBytes) + " bytes needed, " +
                    std::to_string(bytes.size()) + " present)");
  }
  SealedHeader h;
  h.version = pre.version;
  h.signed_region.assign(bytes.begin(), bytes.begin() + static_cast<ptrdiff_t>(signed_len));
  std::memcpy(h.signature.data(), bytes.data() + signed_len, kSignatureBytes);
  // The vendor key sits at a fixed offset; read it (and nothing else) before verifying.
  constexpr size_t kVendorKeyOffset = kPreambleBytes + 84;
  std::memcpy(h.vendor_key.data(), bytes.data() + kVendorKeyOffset, h.vendor_key.size());

  Bytes msg = SignatureMessage(h.signed_region);
  if (trusted_vendor != nullptr) {
    if (!ConstantTimeEquals(h.vendor_key, trusted_vendor->raw())) {
      return Unauthenticated("sealed by a different vendor key (" + h.vendor_fingerprint() +
                             ") than the trusted one (" + trusted_vendor->Fingerprint() + ")");
    }
    Status sig = trusted_vendor->Verify(msg, h.signature);
    if (!sig.ok()) {
      return Unauthenticated("header signature does not verify under the vendor key " +
                             trusted_vendor->Fingerprint() + ": the file was altered");
    }
  } else {
    auto embedded = crypto::Ed25519PublicKey::FromRaw(h.vendor_key);
    if (!embedded) return Unauthenticated("header names an invalid vendor key");
    Status sig = embedded->Verify(msg, h.signature);
    if (!sig.ok()) {
      return Unauthenticated("header signature does not verify under the vendor key it names (" +
                             embedded->Fingerprint() + "): the file was altered");
    }
  }

  // Authenticated: now interpret the rest.
  ByteReader r(ByteSpan(h.signed_region).subspan(kPreambleBytes));
  uint16_t reserved16 = 0;
  uint8_t reserved8 = 0;
  uint32_t metadata_len = 0;
  ByteSpan field;
  bool ok = r.ReadU8(h.suite) && r.ReadU8(h.chunk_size_log2) && r.ReadU16(reserved16) &&
            r.ReadU64(h.plaintext_size);
  ok = ok && r.ReadSpan(kSaltBytes, field);
  if (ok) std::memcpy(h.salt.data(), field.data(), kSaltBytes);
  ok = ok && r.ReadSpan(kNoncePrefixBytes, field);
  if (ok) std::memcpy(h.nonce_prefix.data(), field.data(), kNoncePrefixBytes);
  ok = ok && r.ReadU8(reserved8) && r.ReadSpan(kCommitmentBytes, field);
  if (ok) std::memcpy(h.key_commitment.data(), field.data(), kCommitmentBytes);
  ok = ok && r.ReadSpan(crypto::kEd25519PublicKeyBytes, field) && r.ReadU32(metadata_len);
  if (!ok) return DataLoss("sealed model header is shorter than its fixed fields");
  if (h.suite != kSuiteAes256GcmHkdfSha256Ed25519) {
    return Unimplemented("cipher suite " + std::to_string(h.suite) +
                         " is not supported; this build knows suite 1 "
                         "(AES-256-GCM, HKDF-SHA256, Ed25519)");
  }
  if (h.chunk_size_log2 < kMinChunkSizeLog2 || h.chunk_size_log2 > kMaxChunkSizeLog2) {
    return DataLoss("chunk size 2^" + std::to_string(h.chunk_size_log2) + " is outside 2^" +
                    std::to_string(kMinChunkSizeLog2) + "..2^" + std::to_string(kMaxChunkSizeLog2));
  }
  if (reserved16 != 0 || reserved8 != 0) {
    return DataLoss("sealed model header has a non-zero reserved field");
  }
  if (metadata_len != r.remaining()) {
    return DataLoss("metadata length " + std::to_string(metadata_len) + " does not match the " +
                    std::to_string(r.remaining()) + " bytes left in the header");
  }
  if (h.chunk_count() > kMaxChunks) {
    return DataLoss("plaintext size " + std::to_string(h.plaintext_size) +
                    " needs more than 2^32 chunks");
  }
  if (h.plaintext_size > (uint64_t{1} << 62)) {
    return DataLoss("plaintext size " + std::to_string(h.plaintext_size) + " is implausible");
  }
  r.ReadSpan(metadata_len, field);
  CUSTODY_ASSIGN_OR_RETURN(h.info, ParseMetadataJson(AsChars(field)));
  h.header_hash = crypto::Sha256(h.signed_region);
  return h;
}

// ----- keys ----------------------------------------------------------------------------------

Result<DerivedKeys> DeriveKeys(ByteSpan dek, ByteSpan salt) {
  if (dek.size() != kDekBytes) {
    return InvalidArgument("a model DEK is " + std::to_string(kDekBytes) + " bytes, got " +
                           std::to_string(dek.size()));
  }
  DerivedKeys k;
  CUSTODY_ASSIGN_OR_RETURN(k.payload_key,
                           crypto::HkdfSha256(dek, salt, AsBytes(kPayloadKeyInfo), 32));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer commitment,
                           crypto::HkdfSha256(dek, salt, AsBytes(kCommitmentInfo), 32));
  std::memcpy(k.commitment.data(), commitment.data(), kCommitmentBytes);
  return k;
}

void ChunkNonce(const SealedHeader& h, uint64_t index, uint8_t out[crypto::kGcmNonceBytes]) {
  std::memcpy(out, h.nonce_prefix.data(), kNoncePrefixBytes);
  StoreBigEndian32(out + kNoncePrefixBytes, static_cast<uint32_t>(index));
  out[11] = index + 1 == h.chunk_count() ? 0x01 : 0x00;
}

// ----- DEK files -----------------------------------------------------------------------------

Result<SecretBuffer> GenerateDek() { return crypto::RandomSecret(kDekBytes); }

Status WriteDekFile(const std::string& path, ByteSpan dek, Overwrite overwrite) {
  if (dek.size() != kDekBytes) return InvalidArgument("a model DEK is 32 bytes");
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer text, SecretBuffer::Allocate(2 * kDekBytes + 1));
  static constexpr char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < kDekBytes; ++i) {
    text.data()[2 * i] = static_cast<uint8_t>(kDigits[dek[i] >> 4]);
    text.data()[2 * i + 1] = static_cast<uint8_t>(kDigits[dek[i] & 0xf]);
  }
  text.data()[2 * kDekBytes] = '\n';
  return WriteFileAtomic(path, text.span(), WriteOptions{0600, overwrite});
}

Result<SecretBuffer> ReadDekFile(const std::string& path) {
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer text, ReadSecretFile(path, 4096));
  size_t n = text.size();
  while (n > 0 && std::isspace(text.data()[n - 1])) --n;
  if (n != 2 * kDekBytes) {
    return InvalidArgument(path + " is not a DEK file: expected 64 hex digits, found " +
                           std::to_string(n) + " characters");
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, SecretBuffer::Allocate(kDekBytes));
  for (size_t i = 0; i < kDekBytes; ++i) {
    int v = 0;
    for (int half = 0; half < 2; ++half) {
      char c = static_cast<char>(text.data()[2 * i + half]);
      int d = (c >= '0' && c <= '9')   ? c - '0'
              : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                       : -1;
      if (d < 0) return InvalidArgument(path + " is not a DEK file: non-hex character");
      v = v << 4 | d;
    }
    dek.data()[i] = static_cast<uint8_t>(v);
  }
  return dek;
}

}  // namespace custody::format
