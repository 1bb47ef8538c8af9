#include "core/base/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <ctime>

namespace custody {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not one. Overlong forms,
// surrogates and code points above U+10FFFF are invalid (RFC 3629).
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  size_t len = 0;
  uint32_t cp = 0;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) return 0;
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
  return len;
}

void AppendIso8601(std::string& out, std::chrono::system_clock::time_point time) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch());
  const std::time_t secs =
      static_cast<std::time_t>(std::chrono::floor<std::chrono::seconds>(ms).count());
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  const long millis = static_cast<long>(ms.count() - static_cast<long long>(secs) * 1000);
  const int n =
      std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                    tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  if (n > 0) out.append(buf, static_cast<size_t>(n));
}

template <typename T>
void AppendNumber(std::string& out, T value) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  if (ec == std::errc()) out.append(buf, end);
}

}  // namespace

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "unknown";
}

Result<LogLevel> ParseLogLevel(std::string_view name) {
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    if (name == LogLevelName(level)) return level;
  }
  return InvalidArgument("log level '" + std::string(name) +
                         "' is not one of debug, info, warn, error");
}

void AppendJsonString(std::string& out, std::string_view s) {
  out.push_back('"');
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      // Peer-supplied text lands in logs (paths, user agents); a log line must stay valid JSON.
      const size_t len = Utf8SequenceLength(s, i);
      if (len == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.substr(i, len));
        i += len;
      }
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          out += "\\u00";
          out.push_back(kHexDigits[c >> 4]);
          out.push_back(kHexDigits[c & 0xF]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out.push_back('"');
}

void LogField::AppendTo(std::string& out) const {
  AppendJsonString(out, key_);
  out.push_back(':');
  std::visit(
      [&out](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::string_view>) {
          AppendJsonString(out, v);
        } else if constexpr (std::is_same_v<V, bool>) {
          out += v ? "true" : "false";
        } else if constexpr (std::is_same_v<V, double>) {
          // JSON has no NaN or infinities; a string keeps the line parseable.
          if (std::isfinite(v)) {
            AppendNumber(out, v);
          } else {
            AppendJsonString(out, std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf"));
          }
        } else {
          AppendNumber(out, v);
        }
      },
      value_);
}

std::string Logger::FormatLine(std::chrono::system_clock::time_point time, LogLevel level,
                               std::string_view msg, std::initializer_list<LogField> fields) {
  std::string line;
  line.reserve(128 + msg.size() + fields.size() * 32);
  line += "{\"ts\":\"";
  AppendIso8601(line, time);
  line += "\",\"level\":\"";
  line += LogLevelName(level);
  line += "\",\"msg\":";
  AppendJsonString(line, msg);
  for (const LogField& field : fields) {
    line.push_back(',');
    field.AppendTo(line);
  }
  line += "}\n";
  return line;
}

std::unique_ptr<Logger> Logger::Stderr(LogLevel min_level) {
  return std::unique_ptr<Logger>(new Logger(STDERR_FILENO, "", min_level));
}

Result<std::unique_ptr<Logger>> Logger::File(std::string path, LogLevel min_level) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return ErrnoStatus(errno, "open log file " + path);
  auto logger = std::unique_ptr<Logger>(new Logger(fd, std::move(path), min_level));
  logger->owns_fd_ = true;
  return logger;
}

Logger::Logger(Sink sink, LogLevel min_level) : min_level_(min_level), sink_(std::move(sink)) {}

Logger::Logger(int fd, std::string path, LogLevel min_level)
    : min_level_(min_level), fd_(fd), path_(std::move(path)) {}

Logger::~Logger() {
  if (owns_fd_ && fd_ >= 0) ::close(fd_);
}

void Logger::Log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields) {
  if (!Enabled(level)) return;
  const std::string line = FormatLine(std::chrono::system_clock::now(), level, msg, fields);
  std::lock_guard lock(mu_);
  if (sink_) {
    sink_(line);
  } else {
    WriteFd(line);
  }
}

void Logger::WriteFd(std::string_view line) {
  // A full disk or a closed stderr must not take the service down: the line is dropped.
  while (!line.empty()) {
    const ssize_t n = ::write(fd_, line.data(), line.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    line.remove_prefix(static_cast<size_t>(n));
  }
}

Status Logger::Reopen() {
  if (path_.empty()) return OkStatus();
  const int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return ErrnoStatus(errno, "reopen log file " + path_);
  std::lock_guard lock(mu_);
  ::close(fd_);
  fd_ = fd;
  return OkStatus();
}

}  // namespace custody
