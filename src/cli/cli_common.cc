#include "cli/cli_common.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "core/base/file.h"

namespace custody::cli {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

int ExitCodeFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
      return kExitUsage;
    case StatusCode::kNotFound:
    case StatusCode::kPermissionDenied:
      return kExitNotFound;
    case StatusCode::kAlreadyExists:
      return kExitExists;
    case StatusCode::kUnauthenticated:
    case StatusCode::kDataLoss:
      return kExitVerifyFailed;
    case StatusCode::kUnimplemented:
      return kExitUnsupported;
    case StatusCode::kFailedPrecondition:
      return kExitRefused;
    case StatusCode::kResourceExhausted:
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
      return kExitUnavailable;
    case StatusCode::kInternal:
      return kExitInternal;
  }
  return kExitInternal;
}

int Fail(const Status& status) {
  std::fprintf(stderr, "custody: error: %s\n", status.message().c_str());
  return ExitCodeFor(status.code());
}

Result<crypto::Ed25519PrivateKey> LoadSigningKey(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return ErrnoStatus(errno, "signing key " + path);
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", st.st_mode & 07777);
    return FailedPrecondition("signing key " + path + " is accessible by other users (mode " +
                              mode + "); run: chmod 600 " + path);
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer pem, ReadSecretFile(path, 64 * 1024));
  auto key = crypto::Ed25519PrivateKey::FromPem(AsChars(pem.span()));
  if (!key) {
    return InvalidArgument(
        path + " is not an Ed25519 private key in PEM (PKCS#8) form: " + key.error().message());
  }
  return key;
}

Result<crypto::Ed25519PublicKey> LoadVendorPublicKey(const std::string& path) {
  CUSTODY_ASSIGN_OR_RETURN(Bytes pem, ReadFile(path, 64 * 1024));
  auto key = crypto::Ed25519PublicKey::FromPem(AsChars(pem));
  if (!key) {
    return InvalidArgument(path +
                           " is not an Ed25519 public key in PEM form: " + key.error().message());
  }
  return key;
}

std::string HumanBytes(uint64_t n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(n));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(isatty(STDERR_FILENO) == 1), start_ms_(NowMs()) {}

ProgressBar::~ProgressBar() {
  if (drawn_) std::fputc('\n', stderr);
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  int64_t now = NowMs();
  if (done < total && now - last_draw_ms_ < 100) return;
  last_draw_ms_ = now;
  constexpr int kWidth = 30;
  double frac = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
  int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  double secs = static_cast<double>(now - start_ms_) / 1000.0;
  double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
  std::fprintf(stderr, "\r%s [%s] %3d%%  %s / %s  %s/s ", label_.c_str(), bar.c_str(),
               static_cast<int>(frac * 100), HumanBytes(done).c_str(), HumanBytes(total).c_str(),
               HumanBytes(static_cast<uint64_t>(rate)).c_str());
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace custody::cli
