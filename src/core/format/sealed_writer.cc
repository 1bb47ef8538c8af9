// Streaming sealer: one chunk of memory whatever the model size.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/format/sealed.h"
#include "core/format/sealed_internal.h"

namespace custody::format {
namespace {

// Fills `out` completely unless the source ends; returns the bytes obtained.
Result<size_t> FillChunk(const ChunkSource& source, MutableByteSpan out) {
  size_t got = 0;
  while (got < out.size()) {
    CUSTODY_ASSIGN_OR_RETURN(size_t n, source(out.subspan(got)));
    if (n == 0) break;
    got += n;
  }
  return got;
}

}  // namespace

Status Seal(const ChunkSource& source, uint64_t plaintext_size, ByteSpan dek,
            const crypto::Ed25519PrivateKey& vendor, const SealOptions& options,
            const ByteSink& sink) {
  if (options.chunk_size_log2 < kMinChunkSizeLog2 || options.chunk_size_log2 > kMaxChunkSizeLog2) {
    return InvalidArgument("chunk size must be 2^" + std::to_string(kMinChunkSizeLog2) + "..2^" +
                           std::to_string(kMaxChunkSizeLog2) + " bytes");
  }
  if (ChunkCount(plaintext_size, options.chunk_size_log2) > kMaxChunks) {
    return InvalidArgument("model of " + std::to_string(plaintext_size) +
                           " bytes needs more than 2^32 chunks; use a larger chunk size");
  }
  SealedHeader h;
  h.version = kFormatVersion;
  h.suite = kSuiteAes256GcmHkdfSha256Ed25519;
  h.chunk_size_log2 = options.chunk_size_log2;
  h.plaintext_size = plaintext_size;
  h.info = options.info;
  if (h.info.model_id.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(Bytes id, crypto::RandomBytes(16));
    h.info.model_id = HexEncode(id);
  }
  if (h.info.created.empty())
    h.info.created =
        FormatTimestamp(std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
  CUSTODY_RETURN_IF_ERROR(ValidateModelInfo(h.info));

  if (options.determinism.salt) {
    h.salt = *options.determinism.salt;
  } else {
    CUSTODY_RETURN_IF_ERROR(crypto::RandomBytes(h.salt));
  }
  if (options.determinism.nonce_prefix) {
    h.nonce_prefix = *options.determinism.nonce_prefix;
  } else {
    CUSTODY_RETURN_IF_ERROR(crypto::RandomBytes(h.nonce_prefix));
  }
  CUSTODY_ASSIGN_OR_RETURN(DerivedKeys keys, DeriveKeys(dek, h.salt));
  h.key_commitment = keys.commitment;
  h.vendor_key = vendor.public_key().raw();

  CUSTODY_ASSIGN_OR_RETURN(h.signed_region, EncodeSignedRegion(h));
  CUSTODY_ASSIGN_OR_RETURN(h.signature, vendor.Sign(SignatureMessage(h.signed_region)));
  h.header_hash = crypto::Sha256(h.signed_region);
  CUSTODY_RETURN_IF_ERROR(sink(h.signed_region));
  CUSTODY_RETURN_IF_ERROR(sink(h.signature));

  CUSTODY_ASSIGN_OR_RETURN(crypto::AesGcm gcm, crypto::AesGcm::Create(keys.payload_key.span()));
  const uint64_t chunks = h.chunk_count();
  const size_t buffer_size = static_cast<size_t>(
      std::min<uint64_t>(h.chunk_size(), std::max<uint64_t>(plaintext_size, 1)));
  // The plaintext passes through this buffer, so it is protected like any other secret.
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer buffer, SecretBuffer::Allocate(buffer_size + kTagBytes));
  uint64_t done = 0;
  for (uint64_t i = 0; i < chunks; ++i) {
    const size_t want =
        static_cast<size_t>(std::min<uint64_t>(h.chunk_size(), plaintext_size - done));
    MutableByteSpan chunk = buffer.span().subspan(0, want);
    CUSTODY_ASSIGN_OR_RETURN(size_t got, FillChunk(source, chunk));
    if (got != want) {
      return DataLoss("the model ended after " + std::to_string(done + got) + " bytes but " +
                      std::to_string(plaintext_size) +
                      " were expected: it changed while being sealed");
    }
    uint8_t nonce[crypto::kGcmNonceBytes];
    ChunkNonce(h, i, nonce);
    auto tag = std::span<uint8_t, kTagBytes>(buffer.data() + want, kTagBytes);
    CUSTODY_RETURN_IF_ERROR(gcm.Seal(ByteSpan(nonce), h.header_hash, chunk, chunk, tag));
    CUSTODY_RETURN_IF_ERROR(sink(buffer.span().subspan(0, want + kTagBytes)));
    done += want;
    if (options.progress) options.progress(done, plaintext_size);
  }
  // A source that still has bytes means the model grew while we read it.
  uint8_t probe = 0;
  CUSTODY_ASSIGN_OR_RETURN(size_t extra, source(MutableByteSpan(&probe, 1)));
  if (extra != 0) {
    return DataLoss("the model is longer than the " + std::to_string(plaintext_size) +
                    " bytes announced: it changed while being sealed");
  }
  return OkStatus();
}

Result<Bytes> SealBytes(ByteSpan plaintext, ByteSpan dek, const crypto::Ed25519PrivateKey& vendor,
                        const SealOptions& options) {
  size_t pos = 0;
  ChunkSource source = [&](MutableByteSpan out) -> Result<size_t> {
    size_t n = std::min(out.size(), plaintext.size() - pos);
    if (n > 0) std::memcpy(out.data(), plaintext.data() + pos, n);
    pos += n;
    return n;
  };
  Bytes sealed;
  ByteSink sink = [&](ByteSpan b) {
    AppendBytes(sealed, b);
    return OkStatus();
  };
  CUSTODY_RETURN_IF_ERROR(Seal(source, plaintext.size(), dek, vendor, options, sink));
  return sealed;
}

Status SealFile(const std::string& model_path, const std::string& out_path, ByteSpan dek,
                const crypto::Ed25519PrivateKey& vendor, const SealOptions& options,
                Overwrite overwrite) {
  int fd = open(model_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open model " + model_path);
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "stat model " + model_path);
  if (!S_ISREG(st.st_mode))
    return InvalidArgument("model " + model_path + " is not a regular file");
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  CUSTODY_ASSIGN_OR_RETURN(AtomicFileWriter out,
                           AtomicFileWriter::Create(out_path, WriteOptions{0644, overwrite}));
  ChunkSource source = [&](MutableByteSpan buf) -> Result<size_t> {
    for (;;) {
      ssize_t n = read(fd, buf.data(), buf.size());
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) return ErrnoStatus(errno, "read model " + model_path);
    }
  };
  ByteSink sink = [&](ByteSpan b) { return out.Write(b); };
  CUSTODY_RETURN_IF_ERROR(
      Seal(source, static_cast<uint64_t>(st.st_size), dek, vendor, options, sink));
  return out.Commit();
}

}  // namespace custody::format
