// Parallel opener: decrypts every chunk straight into one SecretBuffer, verifying each tag, and
// releases the buffer only when all chunks verified.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "core/format/sealed.h"
#include "core/format/sealed_internal.h"

namespace custody::format {
namespace {

// Where chunk ciphertext comes from. For memory it is read in place; for a file it is read with
// preadv into the destination (then decrypted in place) so no plaintext-sized staging copy exists
// and a concurrently truncated file yields an error, not SIGBUS as a mapping would.
constexpr uint64_t kWorkBatchBytes = uint64_t{2} << 20;

struct ChunkInput {
  ByteSpan memory;  // whole sealed file, when opening from memory
  int fd = -1;      // file descriptor, when opening from a file
};

Status CheckExpiry(const SealedHeader& h, const OpenOptions& options) {
  if (!h.info.not_after) return OkStatus();
  CUSTODY_ASSIGN_OR_RETURN(auto not_after, ParseTimestamp(*h.info.not_after));
  // Compared in seconds: not_after may lie beyond what a nanosecond time_point can hold.
  auto now = std::chrono::floor<std::chrono::seconds>(
      options.now.value_or(std::chrono::system_clock::now()));
  if (now > not_after) {
    return FailedPrecondition("model '" + h.info.name + "' " + h.info.version + " expired at " +
                              *h.info.not_after);
  }
  return OkStatus();
}

Status CheckSize(const SealedHeader& h, uint64_t actual) {
  const uint64_t expected = h.sealed_size();
  if (actual < expected) {
    return DataLoss("sealed model is truncated: the header announces " + std::to_string(expected) +
                    " bytes, the file has " + std::to_string(actual));
  }
  if (actual > expected) {
    return DataLoss("sealed model has " + std::to_string(actual - expected) +
                    " trailing bytes after its last chunk");
  }
  return OkStatus();
}

// Decrypts chunk `i` into `out`. Returns false on a tag failure or read error.
Status OpenChunk(const SealedHeader& h, const ChunkInput& in, crypto::AesGcm& gcm, uint64_t i,
                 MutableByteSpan out) {
  const uint64_t plain_off = i << h.chunk_size_log2;
  const uint64_t sealed_off = h.payload_offset() + plain_off + i * kTagBytes;
  uint8_t nonce[crypto::kGcmNonceBytes];
  ChunkNonce(h, i, nonce);
  if (in.fd < 0) {
    ByteSpan ct = in.memory.subspan(sealed_off, out.size());
    ByteSpan tag = in.memory.subspan(sealed_off + out.size(), kTagBytes);
    return gcm.Open(ByteSpan(nonce), h.header_hash, ct, tag, out);
  }
  uint8_t tag[kTagBytes];
  struct iovec iov[2] = {{out.data(), out.size()}, {tag, kTagBytes}};
  size_t want = out.size() + kTagBytes;
  size_t got = 0;
  while (got < want) {
    // Advance the iovecs past what was already read (short reads are legal).
    struct iovec cur[2];
    int n_iov = 0;
    size_t skip = got;
    for (auto& v : iov) {
      if (skip >= v.iov_len) {
        skip -= v.iov_len;
        continue;
      }
      cur[n_iov++] = {static_cast<uint8_t*>(v.iov_base) + skip, v.iov_len - skip};
      skip = 0;
    }
    ssize_t n = preadv(in.fd, cur, n_iov, static_cast<off_t>(sealed_off + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "read chunk " + std::to_string(i));
    if (n == 0) return DataLoss("sealed model shrank while it was being read");
    got += static_cast<size_t>(n);
  }
  return gcm.Open(ByteSpan(nonce), h.header_hash, out, ByteSpan(tag, kTagBytes), out);
}

// Checks expiry and key commitment, then decrypts every chunk into `plain`, which must hold
// exactly plaintext_size bytes. On failure `plain` is wiped.
Status DecryptInto(const SealedHeader& header, const ChunkInput& in, ByteSpan dek,
                   const OpenOptions& options, SecretBuffer& plain) {
  CUSTODY_RETURN_IF_ERROR(CheckExpiry(header, options));
  CUSTODY_ASSIGN_OR_RETURN(DerivedKeys keys, DeriveKeys(dek, header.salt));
  if (!ConstantTimeEquals(keys.commitment, header.key_commitment)) {
    return Unauthenticated("the key does not match this sealed model (key commitment mismatch)");
  }
  if (plain.size() != header.plaintext_size) {
    return Internal("destination buffer has the wrong size");
  }
  const uint64_t chunks = header.chunk_count();
  unsigned threads = options.threads > 0 ? static_cast<unsigned>(options.threads)
                                         : std::max(1u, std::thread::hardware_concurrency());

  // Workers take chunks in batches that cover at least 2 MiB of plaintext, so two threads do not
  // fault the same (huge) page of the fresh destination at once; with 1 MiB chunks that is two
  // chunks per batch, with 16-byte chunks it is many.
  const uint64_t batch = std::max<uint64_t>(1, kWorkBatchBytes >> header.chunk_size_log2);
  threads = static_cast<unsigned>(std::min<uint64_t>(threads, (chunks + batch - 1) / batch));
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<Status> errors(threads);
  std::vector<uint64_t> error_chunk(threads, std::numeric_limits<uint64_t>::max());
  auto worker = [&](unsigned t) {
    auto gcm = crypto::AesGcm::Create(keys.payload_key.span());
    if (!gcm) {
      errors[t] = gcm.error();
      error_chunk[t] = 0;
      failed = true;
      return;
    }
    for (;;) {
      uint64_t first = next.fetch_add(batch, std::memory_order_relaxed);
      if (first >= chunks) return;
      for (uint64_t i = first; i < std::min(chunks, first + batch); ++i) {
        if (failed.load(std::memory_order_relaxed)) return;
        uint64_t off = i << header.chunk_size_log2;
        size_t len =
            static_cast<size_t>(std::min(header.chunk_size(), header.plaintext_size - off));
        Status s = OpenChunk(header, in, *gcm, i, plain.span().subspan(off, len));
        if (!s.ok()) {
          errors[t] = s;
          error_chunk[t] = i;
          failed = true;
          return;
        }
      }
    }
  };
  if (threads <= 1) {
    worker(0);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(worker, t);
    for (auto& th : pool) th.join();
  }
  if (failed) {
    plain.Wipe();
    // Report the lowest failing chunk so the error is deterministic.
    size_t worst = static_cast<size_t>(std::min_element(error_chunk.begin(), error_chunk.end()) -
                                       error_chunk.begin());
    const Status& s = errors[worst];
    if (s.code() == StatusCode::kUnauthenticated) {
      return DataLoss("chunk " + std::to_string(error_chunk[worst]) + " of " +
                      std::to_string(chunks) +
                      " failed authentication: the sealed model is corrupt or was tampered with");
    }
    return s;
  }
  return OkStatus();
}

Result<OpenedModel> Decrypt(SealedHeader header, const ChunkInput& in, ByteSpan dek,
                            const OpenOptions& options) {
  if (header.plaintext_size > std::numeric_limits<size_t>::max()) {
    return ResourceExhausted("model too large for this address space");
  }
  CUSTODY_ASSIGN_OR_RETURN(
      SecretBuffer plain,
      SecretBuffer::Allocate(static_cast<size_t>(header.plaintext_size), options.backing));
  CUSTODY_RETURN_IF_ERROR(DecryptInto(header, in, dek, options, plain));
  return OpenedModel{std::move(header), std::move(plain)};
}

struct FileCloser {
  int fd;
  ~FileCloser() {
    if (fd >= 0) close(fd);
  }
};

Status PreadExact(int fd, uint8_t* out, size_t n, uint64_t off, const std::string& path) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, out + got, n - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ErrnoStatus(errno, "read " + path);
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  if (got < n) {
    return DataLoss(path + " is truncated inside its header (" + std::to_string(off + n) +
                    " bytes needed, " + std::to_string(off + got) + " present)");
  }
  return OkStatus();
}

// Opens `path` and reads and authenticates its header.
Result<SealedHeader> ReadHeaderFd(int fd, const std::string& path,
                                  const crypto::Ed25519PublicKey* trusted, uint64_t* file_size) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  *file_size = static_cast<uint64_t>(st.st_size);
  Bytes head(std::min<uint64_t>(kPreambleBytes, *file_size));
  CUSTODY_RETURN_IF_ERROR(PreadExact(fd, head.data(), head.size(), 0, path));
  CUSTODY_ASSIGN_OR_RETURN(PreambleFields pre, ParsePreamble(head));
  head.resize(kPreambleBytes + pre.header_len + kSignatureBytes);
  CUSTODY_RETURN_IF_ERROR(PreadExact(fd, head.data() + kPreambleBytes, head.size() - kPreambleBytes,
                                     kPreambleBytes, path));
  return ParseHeader(head, trusted);
}

}  // namespace

Status DecryptBytesInto(const SealedHeader& header, ByteSpan sealed, ByteSpan dek,
                        const OpenOptions& options, SecretBuffer& plain) {
  CUSTODY_RETURN_IF_ERROR(CheckSize(header, sealed.size()));
  return DecryptInto(header, ChunkInput{sealed, -1}, dek, options, plain);
}

Result<OpenedModel> Open(ByteSpan sealed, ByteSpan dek, const crypto::Ed25519PublicKey& vendor,
                         const OpenOptions& options) {
  CUSTODY_ASSIGN_OR_RETURN(SealedHeader header, ParseHeader(sealed, &vendor));
  CUSTODY_RETURN_IF_ERROR(CheckSize(header, sealed.size()));
  return Decrypt(std::move(header), ChunkInput{sealed, -1}, dek, options);
}

Result<SealedHeader> ReadHeaderFromFile(const std::string& path,
                                        const crypto::Ed25519PublicKey* trusted_vendor) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open " + path);
  FileCloser closer{fd};
  uint64_t size = 0;
  return ReadHeaderFd(fd, path, trusted_vendor, &size);
}

Result<OpenedModel> OpenFile(const std::string& path, ByteSpan dek,
                             const crypto::Ed25519PublicKey& vendor, const OpenOptions& options) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "open " + path);
  FileCloser closer{fd};
  uint64_t size = 0;
  CUSTODY_ASSIGN_OR_RETURN(SealedHeader header, ReadHeaderFd(fd, path, &vendor, &size));
  CUSTODY_RETURN_IF_ERROR(CheckSize(header, size));
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return Decrypt(std::move(header), ChunkInput{{}, fd}, dek, options);
}

}  // namespace custody::format
