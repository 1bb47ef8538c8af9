#include "engine/protected_heap.h"

#include <cstdio>
#include <cstring>
#include <string>

namespace custody::engine {
namespace {

int SizeClassFor(size_t size) {
  size_t block = ProtectedHeap::kAlignmentBytes;
  for (int c = 0; block <= ProtectedHeap::kMaxSmallBytes; ++c, block <<= 1) {
    if (size <= block) return c;
  }
  return -1;
}

size_t ClassBytes(int size_class) { return ProtectedHeap::kAlignmentBytes << size_class; }

}  // namespace

std::string FormatMiB(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

ProtectedHeap::~ProtectedHeap() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [ptr, block] : live_) {
    if (block.size_class < 0) UnmapProtected(block.region);
  }
  for (auto& [mapped, region] : cache_) UnmapProtected(region);
  for (auto& slab : slabs_) UnmapProtected(slab);
}

ProtectedHeap& ProtectedHeap::Global() {
  // Leaked on purpose: tensors owned by static objects elsewhere may be freed after any static
  // destructor of ours would have run.
  static ProtectedHeap* heap = new ProtectedHeap();
  return *heap;
}

bool ProtectedHeap::MapRegionLocked(size_t size, ProtectedRegion& region) {
  Result<ProtectedRegion> mapped = MapProtected(size, SecretBacking::kLocked);
  if (!mapped.has_value()) {
    if (stats_.first_problem.empty()) stats_.first_problem = mapped.error().message();
    return false;
  }
  region = std::move(mapped).value();
  ++stats_.regions_mapped;
  stats_.mapped_bytes += region.mapped;
  if (!region.protection.locked) {
    ++stats_.regions_unlocked;
    stats_.bytes_unlocked += region.mapped;
  }
  if (!region.protection.dontdump) ++stats_.regions_dumpable;
  if (!region.protection.full() && stats_.first_problem.empty()) {
    stats_.first_problem = region.protection.detail;
  }
  return true;
}

void ProtectedHeap::ReleaseRegionLocked(ProtectedRegion& region) {
  stats_.mapped_bytes -= region.mapped;
  UnmapProtected(region);
}

void* ProtectedHeap::AllocateSmallLocked(size_t size, int size_class) {
  std::vector<void*>& free_list = free_small_[size_class];
  if (free_list.empty()) {
    ProtectedRegion slab;
    if (!MapRegionLocked(kSlabBytes, slab)) return nullptr;
    size_t block = ClassBytes(size_class);
    size_t blocks = kSlabBytes / block;
    try {
      // Capacity for every block ever carved, so TryFree's push_back never allocates.
      free_list.reserve(carved_[size_class] + blocks);
      slabs_.push_back(slab);
    } catch (...) {
      ReleaseRegionLocked(slab);
      return nullptr;
    }
    carved_[size_class] += blocks;
    auto* base = static_cast<uint8_t*>(slab.data);
    // Push in reverse so blocks are handed out in address order.
    for (size_t i = blocks; i > 0; --i) free_list.push_back(base + (i - 1) * block);
  }
  void* p = free_list.back();
  live_.emplace(p, Block{size, size_class, {}});  // may throw: then the block stays free
  free_list.pop_back();
  return p;
}

void* ProtectedHeap::AllocateLargeLocked(size_t size) {
  // Reuse a cached (wiped) region of at least `size` bytes but not more than twice that, so a
  // small request does not pin a huge region.
  auto it = cache_.lower_bound(size);
  ProtectedRegion region;
  if (it != cache_.end() && it->first / 2 <= size) {
    region = it->second;
    stats_.cached_bytes -= it->first;
    cache_.erase(it);
  } else if (!MapRegionLocked(size, region)) {
    return nullptr;
  }
  void* p = region.data;
  try {
    live_.emplace(p, Block{size, -1, region});
  } catch (...) {
    ReleaseRegionLocked(region);
    return nullptr;
  }
  return p;
}

void* ProtectedHeap::Allocate(size_t size) noexcept {
  try {
    std::lock_guard<std::mutex> lock(mu_);
    int size_class = SizeClassFor(size == 0 ? 1 : size);
    void* p = size_class >= 0 ? AllocateSmallLocked(size, size_class) : AllocateLargeLocked(size);
    if (p == nullptr) {
      ++stats_.failed_allocations;
      return nullptr;
    }
    ++stats_.allocations;
    stats_.live_bytes += size;
    if (stats_.live_bytes > stats_.peak_live_bytes) stats_.peak_live_bytes = stats_.live_bytes;
    return p;
  } catch (...) {
    // std::bad_alloc from the bookkeeping containers: report as an allocation failure.
    return nullptr;
  }
}

bool ProtectedHeap::TryFree(void* ptr) noexcept {
  if (ptr == nullptr) return true;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return false;
  Block block = it->second;
  live_.erase(it);
  stats_.live_bytes -= block.size;
  // Invariant: every free block is entirely zero, so wiping what the user could have written
  // (the requested size) restores it.
  SecureWipe(ptr, block.size);
  if (block.size_class >= 0) {
    // Cannot allocate: the list has capacity for every block of its class (see AllocateSmall).
    free_small_[block.size_class].push_back(ptr);
    return true;
  }
  if (stats_.cached_bytes + block.region.mapped <= kCacheLimitBytes) {
    try {
      cache_.emplace(block.region.mapped, block.region);
      stats_.cached_bytes += block.region.mapped;
      return true;
    } catch (...) {
      // Fall through and unmap.
    }
  }
  ReleaseRegionLocked(block.region);
  return true;
}

void ProtectedHeap::Free(void* ptr) noexcept {
  if (!TryFree(ptr)) Panic("ProtectedHeap::Free of a pointer it did not allocate");
}

void ProtectedHeap::RecordFallback(size_t size) noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.fallback_allocations;
  stats_.fallback_bytes += size;
}

ProtectedHeap::Stats ProtectedHeap::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

MemoryProtection ProtectedHeap::protection() const {
  Stats s = stats();
  MemoryProtection p;
  p.locked = s.regions_unlocked == 0;
  p.dontdump = s.regions_dumpable == 0;
  p.detail = FormatMiB(s.live_bytes) + " live in " + std::to_string(s.regions_mapped) +
             " protected regions mapped since start-up";
  if (s.regions_unlocked > 0) {
    p.detail += "; " + std::to_string(s.regions_unlocked) + " regions (" +
                FormatMiB(s.bytes_unlocked) + ") could NOT be locked";
  }
  if (s.regions_dumpable > 0) {
    p.detail += "; " + std::to_string(s.regions_dumpable) + " regions NOT excluded from core dumps";
  }
  if (s.failed_allocations > 0 || s.fallback_allocations > 0) {
    p.detail += "; " + std::to_string(s.fallback_allocations) + " allocations (" +
                FormatMiB(s.fallback_bytes) + ") fell back to the ordinary heap";
    p.locked = false;
    p.dontdump = false;
  }
  if (!s.first_problem.empty()) p.detail += "; first problem: " + s.first_problem;
  return p;
}

std::vector<std::pair<uintptr_t, size_t>> ProtectedHeap::MappedRanges() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uintptr_t, size_t>> out;
  for (const auto& slab : slabs_)
    out.emplace_back(reinterpret_cast<uintptr_t>(slab.data), slab.mapped);
  for (const auto& [ptr, block] : live_) {
    if (block.size_class < 0) {
      out.emplace_back(reinterpret_cast<uintptr_t>(block.region.data), block.region.mapped);
    }
  }
  for (const auto& [mapped, region] : cache_) {
    out.emplace_back(reinterpret_cast<uintptr_t>(region.data), region.mapped);
  }
  return out;
}

}  // namespace custody::engine
