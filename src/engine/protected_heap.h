// ProtectedHeap: a small allocator over protected pages, for third-party engines' allocators.
//
// libtorch (c10::Allocator) and OpenCV (cv::MatAllocator) let us replace the allocator behind
// their tensors; both adapters (torch_engine.cc, opencv_engine.cc) and the plugin host
// (plugin_engine.cc) allocate from here, so decrypted weights that an engine copies into its own
// tensors land in memory that is locked, excluded from core dumps and wiped on free (DESIGN.md
// §9).
//
// Layout: requests up to kMaxSmallBytes come from 256 KiB protected slabs carved into
// power-of-two classes (64 B .. 32 KiB); larger ones get their own MapProtected region. Freed
// blocks are wiped at once; freed large regions (already wiped) are kept in a bounded cache so an
// inference loop does not mmap/mlock/munmap its activations on every call. Slabs are never
// returned to the OS (their blocks are wiped and reused).
//
// Degradation is reported, never fatal: if mlock fails (a non-root process may lock only
// RLIMIT_MEMLOCK bytes, often 8 MiB) the memory is still mapped, wiped and excluded from dumps,
// and protection() says what is missing. The flags are sticky: once any region failed to lock
// since start-up, protection().locked stays false, because its contents may have been swapped.
//
// Threading: all methods are thread-safe (one mutex; engines allocate from several threads).
// Every pointer is kAlignmentBytes-aligned (c10 requires 64).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/base/secret_buffer.h"

namespace custody::engine {

class ProtectedHeap {
 public:
  static constexpr size_t kAlignmentBytes = 64;
  static constexpr size_t kMaxSmallBytes = 32 * 1024;
  static constexpr size_t kSlabBytes = 256 * 1024;
  // Wiped large regions kept for reuse; beyond this they are unmapped.
  static constexpr size_t kCacheLimitBytes = 64 * 1024 * 1024;

  struct Stats {
    size_t live_bytes = 0;  // requested bytes currently allocated
    size_t peak_live_bytes = 0;
    size_t mapped_bytes = 0;            // bytes currently mapped (slabs, live and cached regions)
    size_t cached_bytes = 0;            // of which in the free-region cache
    uint64_t allocations = 0;           // successful Allocate calls since start-up
    uint64_t regions_mapped = 0;        // MapProtected calls that succeeded since start-up
    uint64_t regions_unlocked = 0;      // ... of which mlock failed
    uint64_t bytes_unlocked = 0;        // ... their mapped bytes
    uint64_t regions_dumpable = 0;      // ... of which MADV_DONTDUMP failed
    uint64_t failed_allocations = 0;    // Allocate returned nullptr (no memory could be mapped)
    uint64_t fallback_allocations = 0;  // adapters fell back to the library's own allocator
    uint64_t fallback_bytes = 0;
    std::string first_problem;  // the first mlock/madvise/mmap failure, verbatim
  };

  ProtectedHeap() = default;
  // Wipes and unmaps everything. The process-wide heap (Global()) is never destroyed, because
  // engines may free tensors during static destruction.
  ~ProtectedHeap();
  ProtectedHeap(const ProtectedHeap&) = delete;
  ProtectedHeap& operator=(const ProtectedHeap&) = delete;

  // The heap shared by every engine adapter in the process.
  static ProtectedHeap& Global();

  // Zeroed, kAlignmentBytes-aligned memory of at least `size` bytes (a 0-byte request gets a
  // unique 64-byte block). nullptr only when no memory could be mapped at all; never throws.
  void* Allocate(size_t size) noexcept;
  // Wipes and releases a block from Allocate. Returns false (and does nothing) for a pointer
  // this heap did not hand out, so an adapter can pass it on to the allocator that did.
  bool TryFree(void* ptr) noexcept;
  // TryFree that aborts on a foreign pointer (a broken invariant). nullptr is a no-op.
  void Free(void* ptr) noexcept;

  // Adapters call this when they had to use the library's ordinary allocator instead.
  void RecordFallback(size_t size) noexcept;

  Stats stats() const;
  // Aggregate protection since start-up; detail summarises the numbers and the first problem.
  MemoryProtection protection() const;
  // The address ranges currently mapped by this heap (for tests that scan process memory).
  std::vector<std::pair<uintptr_t, size_t>> MappedRanges() const;

 private:
  static constexpr int kClassCount = 10;  // 64 << 0 .. 64 << 9 = 32 KiB

  struct Block {
    size_t size = 0;      // requested size, wiped on free
    int size_class = -1;  // -1: a large block owning `region`
    ProtectedRegion region;
  };

  // All private helpers expect mu_ to be held.
  void* AllocateSmallLocked(size_t size, int size_class);
  void* AllocateLargeLocked(size_t size);
  bool MapRegionLocked(size_t size, ProtectedRegion& region);
  void ReleaseRegionLocked(ProtectedRegion& region);

  mutable std::mutex mu_;
  std::unordered_map<void*, Block> live_;
  std::vector<void*> free_small_[kClassCount];
  size_t carved_[kClassCount] = {};  // blocks carved per class
  std::vector<ProtectedRegion> slabs_;
  std::multimap<size_t, ProtectedRegion> cache_;  // by mapped size, all bytes zero
  Stats stats_;
};

// "12.3 MiB".
std::string FormatMiB(uint64_t bytes);

}  // namespace custody::engine
