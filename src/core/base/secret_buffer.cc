#include "core/base/secret_buffer.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

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

// Large regions start on a 2 MiB boundary and ask for transparent huge pages. Why: a model is
// decrypted into fresh memory, and on 4 KiB pages that costs one fault per page plus a TLB entry
// per page, which on virtual machines is several times the cost of the decryption itself
// (docs/OPERATIONS.md, "Huge pages"). Huge pages are as locked and as excluded from dumps as small
// ones; where THP is off the advice fails harmlessly and the region stays on small pages. The
// mapping is trimmed to exactly `mapped` bytes so that unmapping it needs nothing else.
constexpr size_t kHugePageBytes = size_t{2} << 20;

void* MapAnonymous(size_t mapped) {
  if (mapped < kHugePageBytes) {
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? nullptr : p;
  }
  const size_t slack = kHugePageBytes - PageSize();
  if (mapped > SIZE_MAX - slack) {
    errno = ENOMEM;
    return nullptr;
  }
  void* raw =
      mmap(nullptr, mapped + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  auto base = reinterpret_cast<uintptr_t>(raw);
  uintptr_t aligned = (base + kHugePageBytes - 1) & ~(uintptr_t{kHugePageBytes} - 1);
  if (aligned > base) munmap(raw, aligned - base);
  uintptr_t end = base + mapped + slack;
  if (end > aligned + mapped)
    munmap(reinterpret_cast<void*>(aligned + mapped), end - aligned - mapped);
  void* p = reinterpret_cast<void*>(aligned);
  madvise(p, mapped, MADV_HUGEPAGE);  // advice only: EINVAL where THP is disabled
  return p;
}

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 0x01
#endif

// Locks the region. Pages are locked as they are first touched (MLOCK_ONFAULT) rather than all
// populated here: untouched pages hold no secret, the RLIMIT_MEMLOCK check still covers the whole
// range now, and the kernel's zeroing of fresh pages then happens in whichever threads write them
// (the parallel opener's), instead of serially in the allocating thread. Kernels before 4.4 lack
// mlock2; they get a plain mlock.
int LockPages(void* p, size_t mapped) {
  if (mlock2(p, mapped, MLOCK_ONFAULT) == 0) return 0;
  if (errno != ENOSYS && errno != EINVAL) return -1;
  return mlock(p, mapped);
}

// Keys are the common secret (a DEK, an ECDH result, a key schedule's output) and fit in one
// page; a server wraps keys thousands of times a second, and mapping and unmapping a page each
// time costs a TLB shootdown on every core. Wiped one-page regions that got full protection are
// therefore kept, still locked and excluded from core dumps, on a small free list and handed out
// again. Only wiped pages are kept, so the pool holds no secret. The pages are MADV_DONTFORK, so a
// forked child starts with an empty pool.
class OnePageRegions {
 public:
  static OnePageRegions& Get() {
    static OnePageRegions* pool = [] {
      auto* p = new OnePageRegions();  // never destroyed: used until exit
      pthread_atfork([] { Get().mu_.lock(); }, [] { Get().mu_.unlock(); },
                     [] {
                       Get().free_.clear();  // not mapped in the child
                       Get().mu_.unlock();
                     });
      return p;
    }();
    return *pool;
  }

  bool Take(ProtectedRegion& out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.empty()) return false;
    out = std::move(free_.back());
    free_.pop_back();
    return true;
  }

  // Keeps `region` (already wiped) if it qualifies and there is room; false if the caller must
  // unmap it.
  bool Keep(ProtectedRegion& region) {
    if (region.mapped != PageSize() || !region.protection.full() || region.protection.secretmem) {
      return false;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() >= kMaxKept) return false;
    free_.push_back(std::move(region));
    return true;
  }

 private:
  static constexpr size_t kMaxKept = 64;  // 256 KiB of locked memory at most
  std::mutex mu_;
  std::vector<ProtectedRegion> free_;
};

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

  if (mapped == PageSize() && OnePageRegions::Get().Take(region)) return region;
  void* p = MapAnonymous(mapped);
  if (p == nullptr) {
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
  if (LockPages(p, mapped) == 0) {
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
  if (OnePageRegions::Get().Keep(region)) {
    region = ProtectedRegion{};
    return;
  }
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
