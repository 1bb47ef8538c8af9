#include "core/base/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace custody {
namespace {

class FileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("custody-file-test-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const char* name) { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

TEST_F(FileTest, AtomicWriteCreatesWithModeAndRefusesOverwrite) {
  ASSERT_TRUE(WriteFileAtomic(Path("k"), AsBytes("abc"), {0600, Overwrite::kRefuse}).ok());
  struct stat st {};
  ASSERT_EQ(stat(Path("k").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ReadFile(Path("k")).value(), Bytes({'a', 'b', 'c'}));
  Status again = WriteFileAtomic(Path("k"), AsBytes("xyz"), {0600, Overwrite::kRefuse});
  EXPECT_EQ(again.code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFile(Path("k")).value(), Bytes({'a', 'b', 'c'})) << "must not be clobbered";
  ASSERT_TRUE(WriteFileAtomic(Path("k"), AsBytes("xyz"), {0600, Overwrite::kAllow}).ok());
  EXPECT_EQ(ReadFile(Path("k")).value(), Bytes({'x', 'y', 'z'}));
}

TEST_F(FileTest, UncommittedWriterLeavesNothing) {
  {
    auto w = AtomicFileWriter::Create(Path("partial"), {});
    ASSERT_TRUE(w.has_value());
    ASSERT_TRUE(w->Write(AsBytes("half")).ok());
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir_));
}

TEST_F(FileTest, ReadErrorsNameThePath) {
  auto r = ReadFile(Path("missing"));
  EXPECT_EQ(r.error().code(), StatusCode::kNotFound);
  EXPECT_NE(r.error().message().find("missing"), std::string::npos);
  EXPECT_EQ(ReadFile(dir_.string()).error().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteFileAtomic(Path("big"), Bytes(100)).ok());
  EXPECT_EQ(ReadFile(Path("big"), 10).error().code(), StatusCode::kResourceExhausted);
  auto secret = ReadSecretFile(Path("big"));
  ASSERT_TRUE(secret.has_value());
  EXPECT_EQ(secret->size(), 100u);
}

}  // namespace
}  // namespace custody
