#include "core/base/secret_buffer.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace custody {
namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

size_t RoundUpToPage(size_t n) {
  size_t page = PageSize();
  return (n + page - 1) / page * page;
}

std::string MemlockLimitText() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) return "RLIMIT_MEMLOCK unknown";
  if (rl.rlim_cur == RLIM_INFINITY) return "RLIMIT_MEMLOCK is unlimited";
  return "RLIMIT_MEMLOCK is " + std::to_string(rl.rlim_cur) + " bytes";
}

void AppendDetail(std::string& detail, const std::string& more) {
  if (!detail.empty()) detail += "; ";
  detail += more;
}

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447  // x86_64 and arm64 share this number
#endif

// memfd_secret(2): pages are locked, unmapped from the kernel direct map and never swapped.
// Returns nullptr with `why` set when the kernel does not offer it (it is off by default on
// many distribution kernels) or the memlock limit is too low.
void* MapSecretMem(size_t mapped, std::string& why) {
  long fd = syscall(SYS_memfd_secret, 0);
  if (fd < 0) {
    why = std::string("memfd_secret unavailable: ") + std::strerror(errno);
    return nullptr;
  }
  void* p = nullptr;
  if (ftruncate(static_cast<int>(fd), static_cast<off_t>(mapped)) != 0) {
    why = std::string("memfd_secret ftruncate: ") + std::strerror(errno);
  } else {
    p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED, static_cast<int>(fd), 0);
    if (p == MAP_FAILED) {
      why = std::string("memfd_secret mmap: ") + std::strerror(errno) + " (" + MemlockLimitText() +
            ")";
      p = nullptr;
    }
  }
  close(static_cast<int>(fd));
  return p;
}

}  // namespace

std::string MemoryProtection::ToString() const {
  std::string out = locked ? "locked" : "NOT locked";
  if (secretmem) out += ", memfd_secret";
  out += dontdump ? ", excluded from core dumps" : ", NOT excluded from core dumps";
  if (!detail.empty()) out += " (" + detail + ")";
  return out;
}

Result<ProtectedRegion> MapProtected(size_t size, SecretBacking backing) {
  ProtectedRegion region;
  if (size == 0) {
    region.protection.locked = true;  // nothing to protect
    region.protection.dontdump = true;
    return region;
  }
  size_t mapped = RoundUpToPage(size);
  if (mapped < size) return ResourceExhausted("secret buffer size overflows");

  if (backing == SecretBacking::kSecretMem) {
    std::string why;
    void* p = MapSecretMem(mapped, why);
    if (p != nullptr) {
      region.data = p;
      region.mapped = mapped;
      region.protection.locked = true;
      region.protection.secretmem = true;
      // secretmem pages are never written to core dumps; the advice is belt and braces.
      madvise(p, mapped, MADV_DONTDUMP);
      region.protection.dontdump = true;
      return region;
    }
    AppendDetail(region.protection.detail, why + "; fell back to mlock");
  }

  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return ErrnoStatus(errno, "mmap of " + std::to_string(mapped) + " bytes for a secret buffer");
  }
  region.data = p;
  region.mapped = mapped;
  if (madvise(p, mapped, MADV_DONTDUMP) == 0) {
    region.protection.dontdump = true;
  } else {
    AppendDetail(region.protection.detail,
                 std::string("madvise(MADV_DONTDUMP): ") + std::strerror(errno));
  }
  // Keep the pages out of any child made by fork(): a forked helper must not inherit secrets.
  madvise(p, mapped, MADV_DONTFORK);
  if (mlock(p, mapped) == 0) {
    region.protection.locked = true;
  } else {
    int err = errno;
    AppendDetail(region.protection.detail,
                 std::string("mlock: ") + std::strerror(err) + " (" + MemlockLimitText() + ")");
  }
  return region;
}

void UnmapProtected(ProtectedRegion& region) {
  if (region.data == nullptr) return;
  OPENSSL_cleanse(region.data, region.mapped);
  if (region.protection.locked && !region.protection.secretmem) munlock(region.data, region.mapped);
  munmap(region.data, region.mapped);
  region.data = nullptr;
  region.mapped = 0;
}

SecretBuffer::~SecretBuffer() { Release(); }

SecretBuffer::SecretBuffer(SecretBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)),
      backing_(other.backing_),
      protection_(std::move(other.protection_)) {}

SecretBuffer& SecretBuffer::operator=(SecretBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
    backing_ = other.backing_;
    protection_ = std::move(other.protection_);
  }
  return *this;
}

void SecretBuffer::Release() {
  ProtectedRegion region{data_, mapped_, protection_};
  UnmapProtected(region);
  data_ = nullptr;
  size_ = 0;
  mapped_ = 0;
}

Result<SecretBuffer> SecretBuffer::Allocate(size_t size, SecretBacking backing) {
  CUSTODY_ASSIGN_OR_RETURN(ProtectedRegion region, MapProtected(size, backing));
  SecretBuffer buf;
  buf.data_ = static_cast<uint8_t*>(region.data);
  buf.size_ = size;
  buf.mapped_ = region.mapped;
  buf.backing_ = backing;
  buf.protection_ = std::move(region.protection);
  return buf;
}

Result<SecretBuffer> SecretBuffer::CopyFrom(ByteSpan bytes, SecretBacking backing) {
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer buf, Allocate(bytes.size(), backing));
  if (!bytes.empty()) std::memcpy(buf.data_, bytes.data(), bytes.size());
  return buf;
}

Result<SecretBuffer> SecretBuffer::Clone() const { return CopyFrom(span(), backing_); }

Status SecretBuffer::Resize(size_t new_size) {
  if (new_size <= mapped_ && data_ != nullptr) {
    if (new_size < size_) SecureWipe(data_ + new_size, size_ - new_size);
    size_ = new_size;
    return OkStatus();
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer bigger, Allocate(new_size, backing_));
  if (size_ > 0) std::memcpy(bigger.data_, data_, size_);
  *this = std::move(bigger);  // move-assignment wipes and unmaps the old region
  return OkStatus();
}

void SecretBuffer::Wipe() {
  if (data_ != nullptr) OPENSSL_cleanse(data_, mapped_);
}

bool ConstantTimeEquals(ByteSpan a, ByteSpan b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void SecureWipe(void* p, size_t n) {
  if (p != nullptr && n > 0) OPENSSL_cleanse(p, n);
}

}  // namespace custody
