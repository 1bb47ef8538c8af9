// Custody's structured log, for the custodian and the device agent: one JSON object per line
// (DESIGN.md §11, observability).
//
//   {"ts":"2024-05-01T12:34:56.789Z","level":"info","msg":"request","method":"GET","status":200}
//
// Only programs log (the custodian, the agent, and the HTTP layer they own); library code
// returns Statuses. Never pass secrets, bearer tokens or request bodies as fields.
//
// Format: "ts" (ISO-8601 UTC, milliseconds), "level" (debug|info|warn|error), "msg", then the
// fields in the order given. Strings are escaped per RFC 8259: quotes, backslashes and every
// control character (U+0000..U+001F and U+007F as \u00XX or the short escapes); bytes that are
// not valid UTF-8 become U+FFFD, so every line is valid JSON whatever a peer sent. Keys are
// escaped the same way. A field whose key repeats "ts", "level" or "msg" is written anyway (JSON
// readers keep the last); callers should not do that.
//
// Threading: a Logger is safe to use from any number of threads. A line is formatted outside the
// lock and written with one write(2) under it, so lines never interleave.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>

#include "core/base/status.h"

namespace custody {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// "debug", "info", "warn", "error".
std::string_view LogLevelName(LogLevel level);
// Parses a level name (as above); kInvalidArgument names the accepted values.
Result<LogLevel> ParseLogLevel(std::string_view name);

// One key/value pair of a log line. Holds views: build it inside the Log() call (the usual
// `{{"status", 200}, {"route", pattern}}`), never store it.
class LogField {
 public:
  LogField(std::string_view key, std::string_view value) : key_(key), value_(value) {}
  LogField(std::string_view key, const char* value) : key_(key), value_(std::string_view(value)) {}
  LogField(std::string_view key, const std::string& value)
      : key_(key), value_(std::string_view(value)) {}
  LogField(std::string_view key, bool value) : key_(key), value_(value) {}
  LogField(std::string_view key, double value) : key_(key), value_(value) {}
  template <typename T>
  requires(std::is_integral_v<T> && !std::is_same_v<T, bool>)
      LogField(std::string_view key, T value)
      : key_(key) {
    if constexpr (std::is_signed_v<T>) {
      value_ = static_cast<int64_t>(value);
    } else {
      value_ = static_cast<uint64_t>(value);
    }
  }

  std::string_view key() const { return key_; }
  // Appends `"key":value` to `out`.
  void AppendTo(std::string& out) const;

 private:
  std::string_view key_;
  std::variant<std::string_view, int64_t, uint64_t, double, bool> value_;
};

// Appends `s` to `out` as a quoted JSON string (escaping as described above).
void AppendJsonString(std::string& out, std::string_view s);

class Logger {
 public:
  // Receives each complete line (ending in '\n'); called under the logger's lock.
  using Sink = std::function<void(std::string_view line)>;

  // A logger writing to standard error.
  static std::unique_ptr<Logger> Stderr(LogLevel min_level = LogLevel::kInfo);
  // A logger appending to `path` (created 0640 if missing). Reopen() reopens it after the file
  // was rotated away. kUnavailable or kPermissionDenied if it cannot be opened.
  static Result<std::unique_ptr<Logger>> File(std::string path, LogLevel min_level);
  // A logger handing lines to `sink` (tests, embedding).
  Logger(Sink sink, LogLevel min_level);
  ~Logger();

  Logger(const Logger&) = delete;
  Logger& operator=(const Logger&) = delete;

  bool Enabled(LogLevel level) const { return level >= min_level_.load(std::memory_order_relaxed); }
  void set_min_level(LogLevel level) { min_level_.store(level, std::memory_order_relaxed); }

  void Log(LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {});
  void Debug(std::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kDebug, msg, fields);
  }
  void Info(std::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kInfo, msg, fields);
  }
  void Warn(std::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kWarn, msg, fields);
  }
  void Error(std::string_view msg, std::initializer_list<LogField> fields = {}) {
    Log(LogLevel::kError, msg, fields);
  }

  // For a file logger: reopens the path (log rotation, e.g. on SIGHUP). OK for other loggers.
  Status Reopen();

  // The line Log() would write at `time` (exposed for tests of the format).
  static std::string FormatLine(std::chrono::system_clock::time_point time, LogLevel level,
                                std::string_view msg, std::initializer_list<LogField> fields);

 private:
  Logger(int fd, std::string path, LogLevel min_level);
  void WriteFd(std::string_view line);

  std::atomic<LogLevel> min_level_;
  std::mutex mu_;
  Sink sink_;    // set for sink loggers
  int fd_ = -1;  // set for stderr and file loggers
  bool owns_fd_ = false;
  std::string path_;  // file loggers only
};

}  // namespace custody
