#include "core/base/secret_buffer.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstring>

#include "tests/support/unprivileged.h"

namespace custody {
namespace {

TEST(SecretBuffer, AllocatesZeroedAndReportsProtection) {
  auto buf = SecretBuffer::Allocate(1000);
  ASSERT_TRUE(buf.has_value());
  EXPECT_EQ(buf->size(), 1000u);
  for (uint8_t b : buf->span()) ASSERT_EQ(b, 0);
  // Small buffers always fit in any memlock limit, so they must be locked and undumpable.
  EXPECT_TRUE(buf->protection().locked) << buf->protection().ToString();
  EXPECT_TRUE(buf->protection().dontdump);
}

TEST(SecretBuffer, ReusedPagesComeBackWipedAndProtected) {
  const uint8_t* first = nullptr;
  {
    auto key = SecretBuffer::Allocate(32).value();
    std::memset(key.data(), 0xA5, key.size());
    first = key.data();
  }
  // A one-page region may be handed out again; it must hold none of the old bytes.
  {
    auto again = SecretBuffer::Allocate(4000).value();
    if (again.data() == first) {
      for (uint8_t b : again.span()) ASSERT_EQ(b, 0);
    }
    EXPECT_TRUE(again.protection().full()) << again.protection().ToString();
  }
  // A kept page is waiting now. A child made by fork() must not be handed it: the page is not
  // mapped there (MADV_DONTFORK).
  EXPECT_EXIT(
      {
        auto child = SecretBuffer::Allocate(32);
        if (!child.has_value()) _exit(1);
        child->data()[0] = 1;  // would fault on a page that is not mapped here
        _exit(child->protection().full() ? 0 : 2);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(SecretBuffer, ResizeKeepsContentsAndWipesTheTail) {
  auto buf = SecretBuffer::CopyFrom(AsBytes("secret-bytes")).value();
  ASSERT_TRUE(buf.Resize(100000).ok());
  EXPECT_EQ(std::memcmp(buf.data(), "secret-bytes", 12), 0);
  EXPECT_EQ(buf.data()[50000], 0);
  ASSERT_TRUE(buf.Resize(6).ok());
  EXPECT_EQ(buf.size(), 6u);
  EXPECT_EQ(buf.data()[6], 0) << "bytes beyond the new size must be wiped";
  EXPECT_EQ(std::memcmp(buf.data(), "secret", 6), 0);
}

TEST(SecretBuffer, WipeZeroesAndMoveEmptiesTheSource) {
  auto buf = SecretBuffer::CopyFrom(AsBytes("key material")).value();
  SecretBuffer moved = std::move(buf);
  EXPECT_EQ(buf.size(), 0u);  // NOLINT(bugprone-use-after-move): documented state
  EXPECT_EQ(buf.data(), nullptr);
  moved.Wipe();
  for (uint8_t b : moved.span()) ASSERT_EQ(b, 0);
}

TEST(SecretBuffer, ConstantTimeEqualsComparesContentAndLength) {
  auto a = SecretBuffer::CopyFrom(AsBytes("abc")).value();
  auto b = SecretBuffer::CopyFrom(AsBytes("abc")).value();
  auto c = SecretBuffer::CopyFrom(AsBytes("abd")).value();
  EXPECT_TRUE(ConstantTimeEquals(a.span(), b.span()));
  EXPECT_FALSE(ConstantTimeEquals(a.span(), c.span()));
  EXPECT_FALSE(ConstantTimeEquals(a.span(), AsBytes("ab")));
  auto clone = a.Clone().value();
  EXPECT_TRUE(ConstantTimeEquals(a.span(), clone.span()));
  EXPECT_NE(a.data(), clone.data());
}

// Runs in a death-test child so the lowered limit does not affect other tests. Exit code 0 means
// the buffer was usable and either locked (root has CAP_IPC_LOCK) or honestly reported unlocked.
[[noreturn]] void AllocateOverMemlockLimit() {
  struct rlimit rl {};
  rl.rlim_cur = rl.rlim_max = 64 * 1024;
  setrlimit(RLIMIT_MEMLOCK, &rl);
  auto big = SecretBuffer::Allocate(16 << 20);
  if (!big.has_value()) _exit(2);
  const auto& p = big->protection();
  if (p.locked) _exit(geteuid() == 0 ? 0 : 3);
  if (p.detail.find("mlock") == std::string::npos) _exit(4);
  if (p.detail.find("RLIMIT_MEMLOCK") == std::string::npos) _exit(5);
  if (!p.dontdump) _exit(6);
  big->data()[big->size() - 1] = 1;  // still usable memory
  _exit(0);
}

TEST(SecretBuffer, ReportsWhenItCannotLockInsteadOfFailing) {
  EXPECT_EXIT(AllocateOverMemlockLimit(), ::testing::ExitedWithCode(0), "");
}

TEST(SecretBuffer, ReportsUnlockedMemoryForAnUnprivilegedUser) {
  // As root, drop to nobody in a child to see the non-root path for real (an unprivileged
  // runner is already on that path).
  EXPECT_EXIT(
      {
        if (!testing::DropToUnprivilegedUser()) _exit(7);
        AllocateOverMemlockLimit();
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(SecretBuffer, SecretMemFallsBackVisibly) {
  auto buf = SecretBuffer::Allocate(4096, SecretBacking::kSecretMem);
  ASSERT_TRUE(buf.has_value());
  if (!buf->protection().secretmem) {
    EXPECT_NE(buf->protection().detail.find("memfd_secret"), std::string::npos);
  }
  buf->data()[0] = 42;
  EXPECT_EQ(buf->data()[0], 42);
}

TEST(SecretBuffer, EmptyBufferIsValid) {
  auto buf = SecretBuffer::Allocate(0).value();
  EXPECT_TRUE(buf.empty());
  buf.Wipe();
  ASSERT_TRUE(buf.Resize(10).ok());
  EXPECT_EQ(buf.size(), 10u);
}

}  // namespace
}  // namespace custody
