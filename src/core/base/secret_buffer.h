// SecretBuffer: the container for key bytes and decrypted model weights (DESIGN.md §9).
//
// Security properties:
//  - backed by its own anonymous mapping (or a memfd_secret mapping when asked), never by the
//    general heap, so no copy is left behind in freed heap blocks;
//  - excluded from core dumps (MADV_DONTDUMP) and locked in RAM (mlock) where the OS allows;
//    whether that worked is reported by protection(), never silently dropped: a non-root process
//    may lock only RLIMIT_MEMLOCK bytes (8 MiB on many systems);
//  - wiped (OPENSSL_cleanse) on destruction, on Wipe(), and on Resize() before the old mapping
//    is released;
//  - move-only; copying must be spelled Clone(), so accidental copies are visible in review;
//  - equality is constant-time (ConstantTimeEquals).
//
// Threading: a SecretBuffer is not synchronised; distinct, non-overlapping byte ranges may be
// written from different threads (the parallel opener does this).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "core/base/bytes.h"
#include "core/base/status.h"

namespace custody {

enum class SecretBacking {
  kLocked,     // anonymous private mapping, mlock + MADV_DONTDUMP (best effort, reported)
  kSecretMem,  // memfd_secret(2): also removed from the kernel direct map; falls back to kLocked
};

// What protection a buffer actually got. `detail` explains anything that is missing in words an
// operator can act on (e.g. "mlock: Cannot allocate memory (RLIMIT_MEMLOCK is 8388608 bytes)").
struct MemoryProtection {
  bool locked = false;     // pages are pinned in RAM (mlock, or memfd_secret which implies it)
  bool secretmem = false;  // pages come from memfd_secret
  bool dontdump = false;   // MADV_DONTDUMP applied
  std::string detail;

  bool full() const { return locked && dontdump; }
  std::string ToString() const;
};

class SecretBuffer {
 public:
  SecretBuffer() = default;  // empty, size 0
  ~SecretBuffer();
  SecretBuffer(SecretBuffer&& other) noexcept;
  SecretBuffer& operator=(SecretBuffer&& other) noexcept;
  SecretBuffer(const SecretBuffer&) = delete;
  SecretBuffer& operator=(const SecretBuffer&) = delete;

  // Allocates `size` zeroed bytes. Fails only if no memory can be mapped at all; missing
  // locking is reported through protection(), not as an error.
  static Result<SecretBuffer> Allocate(size_t size, SecretBacking backing = SecretBacking::kLocked);
  // Allocates and copies `bytes` in. The caller remains responsible for wiping its source.
  static Result<SecretBuffer> CopyFrom(ByteSpan bytes,
                                       SecretBacking backing = SecretBacking::kLocked);

  // An explicit deep copy with the same backing.
  Result<SecretBuffer> Clone() const;

  // Changes the size. Growing maps a new region, copies, and wipes and unmaps the old one; new
  // bytes are zero. Shrinking wipes the tail in place.
  Status Resize(size_t new_size);

  // Overwrites every byte with zeros (the mapping is kept).
  void Wipe();

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  MutableByteSpan span() { return {data_, size_}; }
  ByteSpan span() const { return {data_, size_}; }
  const MemoryProtection& protection() const { return protection_; }
  SecretBacking backing() const { return backing_; }

 private:
  void Release();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;  // bytes mapped (page multiple), 0 when nothing is mapped
  SecretBacking backing_ = SecretBacking::kLocked;
  MemoryProtection protection_;
};

// Constant-time comparison: the time taken depends only on the lengths.
bool ConstantTimeEquals(ByteSpan a, ByteSpan b);

// Wipes arbitrary memory in a way the compiler may not elide.
void SecureWipe(void* p, size_t n);

// Low-level protected region used by SecretBuffer and by engine allocators that must place an
// engine's own weight tensors in protected memory. The returned pointer is page-aligned.
struct ProtectedRegion {
  void* data = nullptr;
  size_t mapped = 0;
  MemoryProtection protection;
};
Result<ProtectedRegion> MapProtected(size_t size, SecretBacking backing);
// Wipes `region.mapped` bytes, then unlocks and unmaps them, or keeps a wiped, still protected
// one-page region for the next MapProtected of one page. Safe on an empty region.
void UnmapProtected(ProtectedRegion& region);

}  // namespace custody
