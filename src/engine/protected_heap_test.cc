#include "engine/protected_heap.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <thread>

#include "engine/engine_test_util.h"

namespace custody::engine {
namespace {

bool AllZero(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) {
    if (b[i] != 0) return false;
  }
  return true;
}

TEST(ProtectedHeapTest, BlocksAreAlignedZeroedAndDistinct) {
  ProtectedHeap heap;
  std::vector<void*> ptrs;
  for (size_t size : {0, 1, 63, 64, 65, 1000, 32768, 32769, 1 << 20, (5 << 20) + 3}) {
    void* p = heap.Allocate(size);
    ASSERT_NE(p, nullptr) << size;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % ProtectedHeap::kAlignmentBytes, 0u) << size;
    EXPECT_TRUE(AllZero(p, size)) << size;
    std::memset(p, 0xab, size);
    ptrs.push_back(p);
  }
  std::sort(ptrs.begin(), ptrs.end());
  EXPECT_EQ(std::adjacent_find(ptrs.begin(), ptrs.end()), ptrs.end());
  for (void* p : ptrs) heap.Free(p);
  EXPECT_EQ(heap.stats().live_bytes, 0u);
}

TEST(ProtectedHeapTest, FreeWipesSmallAndLargeBlocks) {
  ProtectedHeap heap;
  for (size_t size : {100, 4096, 32768, 200000, 3 << 20}) {
    void* p = heap.Allocate(size);
    ASSERT_NE(p, nullptr);
    std::memset(p, 0x5a, size);
    heap.Free(p);
    // Slabs and cached regions stay mapped, so the freed bytes can be inspected: all wiped.
    EXPECT_TRUE(AllZero(p, size)) << size;
    // And the next block of that size (likely the same one) comes back zeroed.
    void* q = heap.Allocate(size);
    EXPECT_TRUE(AllZero(q, size)) << size;
    heap.Free(q);
  }
}

TEST(ProtectedHeapTest, LargeRegionsAreReusedFromTheCache) {
  ProtectedHeap heap;
  void* p = heap.Allocate(1 << 20);
  heap.Free(p);
  uint64_t mapped = heap.stats().regions_mapped;
  void* q = heap.Allocate((1 << 20) - 100);
  EXPECT_EQ(q, p);
  EXPECT_EQ(heap.stats().regions_mapped, mapped);
  // Far smaller requests do not pin the big cached region.
  void* small = heap.Allocate(40000);
  EXPECT_NE(small, p);
  heap.Free(q);
  heap.Free(small);
}

TEST(ProtectedHeapTest, ForeignPointersAreNotFreed) {
  ProtectedHeap heap;
  int on_stack = 0;
  EXPECT_FALSE(heap.TryFree(&on_stack));
  EXPECT_TRUE(heap.TryFree(nullptr));
  void* p = heap.Allocate(10);
  EXPECT_FALSE(heap.TryFree(static_cast<char*>(p) + 64));  // inside the slab, not a block start
  EXPECT_TRUE(heap.TryFree(p));
  EXPECT_FALSE(heap.TryFree(p));  // double free is detected, not corrupting
}

TEST(ProtectedHeapTest, StatsAndRangesTrackAllocations) {
  ProtectedHeap heap;
  void* a = heap.Allocate(100);
  void* b = heap.Allocate(1 << 20);
  ProtectedHeap::Stats s = heap.stats();
  EXPECT_EQ(s.live_bytes, 100u + (1 << 20));
  EXPECT_EQ(s.allocations, 2u);
  EXPECT_EQ(s.regions_mapped, 2u);  // one slab, one large region
  auto ranges = heap.MappedRanges();
  auto inside = [&](void* p) {
    auto addr = reinterpret_cast<uintptr_t>(p);
    for (const auto& [begin, size] : ranges) {
      if (addr >= begin && addr < begin + size) return true;
    }
    return false;
  };
  EXPECT_TRUE(inside(a));
  EXPECT_TRUE(inside(b));
  MemoryProtection p = heap.protection();
  if (p.locked) {
    EXPECT_EQ(s.regions_unlocked, 0u);
  }
  EXPECT_NE(p.detail.find("protected regions"), std::string::npos);
  heap.Free(a);
  heap.Free(b);
  EXPECT_EQ(heap.stats().peak_live_bytes, 100u + (1 << 20));
}

TEST(ProtectedHeapTest, ConcurrentAllocationIsSafe) {
  ProtectedHeap heap;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&heap, &errors, t] {
      std::mt19937 rng(t);
      std::vector<std::pair<uint8_t*, size_t>> live;
      for (int i = 0; i < 3000; ++i) {
        if (live.empty() || rng() % 3 != 0) {
          size_t size = rng() % 3 == 0 ? rng() % 100000 : rng() % 2000;
          auto* p = static_cast<uint8_t*>(heap.Allocate(size));
          if (p == nullptr || !AllZero(p, size)) ++errors;
          if (p != nullptr) std::memset(p, t + 1, size);
          live.emplace_back(p, size);
        } else {
          size_t k = rng() % live.size();
          auto [p, size] = live[k];
          for (size_t j = 0; j < size; ++j) {
            if (p[j] != t + 1) {
              ++errors;
              break;
            }
          }
          heap.Free(p);
          live.erase(live.begin() + static_cast<long>(k));
        }
      }
      for (auto [p, size] : live) heap.Free(p);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(heap.stats().live_bytes, 0u);
}

// With CAP_IPC_LOCK dropped and a 64 KiB memlock limit (what a service account gets, scaled
// down), allocations still succeed, stay wiped and excluded from dumps, and the heap says that
// locking failed instead of failing or pretending.
TEST(ProtectedHeapDeathTest, DegradesVisiblyWhenMlockIsRefused) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        if (!testing::SimulateMemlockLimit(64 * 1024)) {
          std::cerr << "cannot simulate the limit\n";
          std::exit(2);
        }
        ProtectedHeap heap;
        void* p = heap.Allocate(1 << 20);
        if (p == nullptr) std::exit(3);
        std::memset(p, 1, 1 << 20);
        MemoryProtection prot = heap.protection();
        std::cerr << prot.ToString() << "\n";
        heap.Free(p);
        std::exit(!prot.locked && prot.dontdump && heap.stats().regions_unlocked == 1 ? 0 : 4);
      },
      ::testing::ExitedWithCode(0), "NOT locked.*could NOT be locked.*RLIMIT_MEMLOCK is 65536");
}

}  // namespace
}  // namespace custody::engine
