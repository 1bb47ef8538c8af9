// File helpers with the error messages and permissions a security tool needs.
//
// Writers never leave a half-written file behind: they write a temporary file in the same
// directory, fsync it, and rename it into place (and fsync the directory). Secret files are
// created 0600 from the start, never chmod-ed afterwards.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/base/bytes.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"

namespace custody {

enum class Overwrite { kRefuse, kAllow };

struct WriteOptions {
  uint32_t mode = 0644;                      // permission bits of the new file
  Overwrite overwrite = Overwrite::kRefuse;  // kRefuse: kAlreadyExists if the path exists
};

// Reads a whole regular file; fails with kResourceExhausted if it is larger than max_bytes.
Result<Bytes> ReadFile(const std::string& path, uint64_t max_bytes = 64ull << 20);
// Reads a whole file straight into protected memory (for key files).
Result<SecretBuffer> ReadSecretFile(const std::string& path, uint64_t max_bytes = 1 << 20);

// Atomically writes `data` to `path` (temp file + fsync + rename + directory fsync).
Status WriteFileAtomic(const std::string& path, ByteSpan data, const WriteOptions& options = {});

// True if something exists at `path` (file, directory, dangling link...).
bool PathExists(const std::string& path);

// An output file that is written incrementally and only appears at `path` on Commit(). If the
// object is destroyed without Commit(), the temporary file is removed.
class AtomicFileWriter {
 public:
  static Result<AtomicFileWriter> Create(const std::string& path, const WriteOptions& options);
  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&&) = delete;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  Status Write(ByteSpan data);
  Status Commit();
  uint64_t bytes_written() const { return written_; }

 private:
  AtomicFileWriter() = default;
  int fd_ = -1;
  std::string path_;
  std::string tmp_path_;
  Overwrite overwrite_ = Overwrite::kRefuse;
  uint64_t written_ = 0;
};

}  // namespace custody
