#include "core/base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>

#include "core/crypto/crypto.h"

namespace custody {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

std::string DirName(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

Status FsyncDir(const std::string& path) {
  Fd dir{open(DirName(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (dir.fd < 0) return ErrnoStatus(errno, "open directory of " + path);
  if (fsync(dir.fd) != 0 && errno != EINVAL)
    return ErrnoStatus(errno, "fsync directory of " + path);
  return OkStatus();
}

// Opens `path` for reading and checks it is a regular file no larger than max_bytes.
Result<uint64_t> OpenRegular(const std::string& path, uint64_t max_bytes, Fd& fd) {
  fd.fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd.fd < 0) return ErrnoStatus(errno, "open " + path);
  struct stat st {};
  if (fstat(fd.fd, &st) != 0) return ErrnoStatus(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  auto size = static_cast<uint64_t>(st.st_size);
  if (size > max_bytes) {
    return ResourceExhausted(path + " is " + std::to_string(size) + " bytes; at most " +
                             std::to_string(max_bytes) + " are accepted here");
  }
  return size;
}

Status ReadAll(int fd, uint8_t* out, uint64_t size, const std::string& path) {
  uint64_t done = 0;
  while (done < size) {
    ssize_t n = read(fd, out + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "read " + path);
    }
    if (n == 0) return DataLoss(path + " shrank while being read");
    done += static_cast<uint64_t>(n);
  }
  return OkStatus();
}

Status WriteAll(int fd, ByteSpan data, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write " + path);
    }
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

}  // namespace

Result<Bytes> ReadFile(const std::string& path, uint64_t max_bytes) {
  Fd fd;
  CUSTODY_ASSIGN_OR_RETURN(uint64_t size, OpenRegular(path, max_bytes, fd));
  Bytes out(size);
  CUSTODY_RETURN_IF_ERROR(ReadAll(fd.fd, out.data(), size, path));
  return out;
}

Result<SecretBuffer> ReadSecretFile(const std::string& path, uint64_t max_bytes) {
  Fd fd;
  CUSTODY_ASSIGN_OR_RETURN(uint64_t size, OpenRegular(path, max_bytes, fd));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer out, SecretBuffer::Allocate(size));
  CUSTODY_RETURN_IF_ERROR(ReadAll(fd.fd, out.data(), size, path));
  return out;
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

Result<AtomicFileWriter> AtomicFileWriter::Create(const std::string& path,
                                                  const WriteOptions& options) {
  if (path.empty()) return InvalidArgument("output path is empty");
  if (options.overwrite == Overwrite::kRefuse && PathExists(path)) {
    return AlreadyExists(path + " already exists; refusing to overwrite it (use --force)");
  }
  CUSTODY_ASSIGN_OR_RETURN(Bytes rnd, crypto::RandomBytes(6));
  AtomicFileWriter w;
  w.path_ = path;
  w.tmp_path_ = path + ".tmp-" + HexEncode(rnd);
  w.overwrite_ = options.overwrite;
  // O_EXCL: never follow or reuse something an attacker placed at the temporary name.
  w.fd_ = open(w.tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
               static_cast<mode_t>(options.mode));
  if (w.fd_ < 0) return ErrnoStatus(errno, "create " + w.tmp_path_);
  // The umask may have removed bits the caller asked for; it can never add any.
  if (fchmod(w.fd_, static_cast<mode_t>(options.mode)) != 0) {
    return ErrnoStatus(errno, "chmod " + w.tmp_path_);
  }
  return w;
}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      tmp_path_(std::move(other.tmp_path_)),
      overwrite_(other.overwrite_),
      written_(other.written_) {}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    close(fd_);
    unlink(tmp_path_.c_str());
  }
}

Status AtomicFileWriter::Write(ByteSpan data) {
  if (fd_ < 0) return FailedPrecondition("write to a closed output file " + path_);
  CUSTODY_RETURN_IF_ERROR(WriteAll(fd_, data, tmp_path_));
  written_ += data.size();
  return OkStatus();
}

Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return FailedPrecondition("output file " + path_ + " already committed");
  if (fsync(fd_) != 0) return ErrnoStatus(errno, "fsync " + tmp_path_);
  if (overwrite_ == Overwrite::kRefuse) {
    // link() fails if the target appeared meanwhile, so a concurrent writer is never clobbered.
    if (link(tmp_path_.c_str(), path_.c_str()) != 0) {
      int err = errno;
      if (err == EEXIST) {
        return AlreadyExists(path_ + " already exists; refusing to overwrite it (use --force)");
      }
      return ErrnoStatus(err, "create " + path_);
    }
    unlink(tmp_path_.c_str());
  } else if (rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    return ErrnoStatus(errno, "rename " + tmp_path_ + " to " + path_);
  }
  close(fd_);
  fd_ = -1;
  return FsyncDir(path_);
}

Status WriteFileAtomic(const std::string& path, ByteSpan data, const WriteOptions& options) {
  CUSTODY_ASSIGN_OR_RETURN(AtomicFileWriter w, AtomicFileWriter::Create(path, options));
  CUSTODY_RETURN_IF_ERROR(w.Write(data));
  return w.Commit();
}

}  // namespace custody
