// A thin layer over the SQLite C API for the custodian's store (internal to the store):
// connections configured the one way the store needs them, cached prepared statements with
// typed binding, and the mapping of SQLite's result codes onto Custody's StatusCode.
//
// Values only ever reach SQL as bound parameters; SQL text is always a constant of the store.
//
// Threading: a Connection (and every Statement borrowed from it) is used by one thread at a time;
// the store's writer thread owns the writer connection and a pool hands out reader connections.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "custodian/store/sqlite_ptr.h"
#include "custodian/store/sqlite_store.h"
#include "custodian/store/store.h"

namespace custody::custodian::sqlite {

// Result codes to StatusCode (the store's contract, store.h):
//   SQLITE_BUSY, SQLITE_LOCKED (after the busy timeout), SQLITE_IOERR, SQLITE_CANTOPEN
//                                           -> kUnavailable (retrying may help)
//   SQLITE_CORRUPT, SQLITE_NOTADB           -> kDataLoss
//   SQLITE_FULL, SQLITE_NOMEM               -> kResourceExhausted
//   SQLITE_CONSTRAINT_UNIQUE / _PRIMARYKEY  -> kAlreadyExists
//   SQLITE_CONSTRAINT_FOREIGNKEY            -> kNotFound (a referenced row does not exist)
//   SQLITE_CONSTRAINT_CHECK / _NOTNULL      -> kInvalidArgument
//   SQLITE_CONSTRAINT_TRIGGER               -> kPermissionDenied (the audit log is append-only)
//   SQLITE_READONLY, SQLITE_PERM, SQLITE_AUTH -> kPermissionDenied
//   SQLITE_TOOBIG, SQLITE_RANGE             -> kOutOfRange
//   anything else                           -> kInternal
// The message is SQLite's own text (e.g. "UNIQUE constraint failed: models.model_id").
Status StatusFromSqlite(int rc, std::string_view message);

// What the records layer adds to a failed statement: "model 'abc' already exists (UNIQUE ...)"
// for kAlreadyExists, "<what>: <message>" otherwise.
Status NameEntity(const Status& status, const std::string& what);

enum class ConnectionRole {
  kWriter,  // read-write, creates the file (0600), sets WAL and the synchronous level
  kReader,  // read-only
};

struct ConnectionOptions {
  ConnectionRole role = ConnectionRole::kReader;
  Durability durability = Durability::kPowerLoss;
  std::chrono::milliseconds busy_timeout = kSqliteBusyTimeout;
};

class Connection;

// A prepared statement borrowed from a Connection for one execution: bind, step, read columns.
// Reset (and its bindings cleared) on destruction, so the cached statement is ready for reuse.
class Statement {
 public:
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&&) = delete;
  Statement(const Statement&) = delete;
  ~Statement();

  // Binds the arguments to parameters 1..n in order. Supported: strings, bytes (ByteSpan, Bytes,
  // digests), integers (uint64_t is stored as the int64_t with the same 64 bits), bool,
  // TimePoint (UTC seconds since the epoch), std::optional of those (nullopt is NULL). A failed
  // bind is reported by the next Step/Run.
  template <typename... Args>
  Statement& Bind(const Args&... args) {
    int index = 0;
    (BindOne(++index, args), ...);
    return *this;
  }

  // true: a row is ready to read; false: the statement is done.
  Result<bool> Step();
  // Steps to completion, ignoring any rows (INSERT, UPDATE, DELETE, DDL).
  Status Run();

  bool IsNull(int col) const;
  int64_t Int(int col) const;
  uint64_t Uint(int col) const;  // the inverse of binding a uint64_t
  bool Bool(int col) const;
  std::string Text(int col) const;  // "" for NULL
  Bytes Blob(int col) const;        // empty for NULL
  TimePoint Time(int col) const;
  std::optional<TimePoint> OptionalTime(int col) const;
  std::optional<uint64_t> OptionalUint(int col) const;
  std::optional<Bytes> OptionalBlob(int col) const;

 private:
  friend class Connection;
  Statement(Connection* connection, sqlite3_stmt* stmt, bool* in_use, SqliteStmtPtr owned);

  void BindOne(int index, std::string_view value);
  void BindOne(int index, const char* value) { BindOne(index, std::string_view(value)); }
  void BindOne(int index, ByteSpan value);
  void BindOne(int index, TimePoint value);
  void BindOne(int index, std::nullopt_t);
  template <std::integral T>
  void BindOne(int index, T value) {
    BindInt(index, static_cast<int64_t>(value));
  }
  template <typename T>
  void BindOne(int index, const std::optional<T>& value) {
    if (value) {
      BindOne(index, *value);
    } else {
      BindOne(index, std::nullopt);
    }
  }
  void BindInt(int index, int64_t value);
  void Check(int rc);

  Connection* connection_;
  sqlite3_stmt* stmt_;
  bool* in_use_;         // the cache slot's flag, or nullptr for an uncached statement
  SqliteStmtPtr owned_;  // set when the cached statement was busy (a nested use)
  int bind_rc_ = SQLITE_OK;
};

// One SQLite connection with its statement cache.
class Connection {
 public:
  // Opens `path` for `options.role`. Every connection has: extended result codes, the busy
  // timeout, foreign keys on, recursive triggers on (so REPLACE fires the audit log's delete
  // trigger), SQLITE_DBCONFIG_DEFENSIVE and trusted_schema off. The writer also sets
  // journal_mode=WAL and synchronous=FULL (kPowerLoss) or NORMAL (kProcessCrash).
  static Result<std::unique_ptr<Connection>> Open(const std::string& path,
                                                  const ConnectionOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs a script of statements without parameters (migrations, BEGIN/COMMIT).
  Status Exec(const char* sql);
  // A prepared statement for `sql` (cached by text).
  Result<Statement> Prepare(std::string_view sql);

  // The last error of this connection as a Status (see StatusFromSqlite).
  Status LastError(int rc) const;
  sqlite3* handle() const { return db_.get(); }
  const std::string& path() const { return path_; }
  bool in_transaction() const { return sqlite3_get_autocommit(db_.get()) == 0; }
  // Rows changed by the last INSERT, UPDATE or DELETE.
  int64_t changes() const { return sqlite3_changes64(db_.get()); }

 private:
  Connection(SqliteDbPtr db, std::string path) : db_(std::move(db)), path_(std::move(path)) {}

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct CachedStatement {
    SqliteStmtPtr stmt;
    bool in_use = false;
  };

  SqliteDbPtr db_;
  std::string path_;
  std::unordered_map<std::string, CachedStatement, StringHash, std::equal_to<>> cache_;
};

// Runs `sql` (one statement) with `args` bound and steps it to completion.
template <typename... Args>
Status RunStatement(Connection& c, std::string_view sql, const Args&... args) {
  CUSTODY_ASSIGN_OR_RETURN(Statement s, c.Prepare(sql));
  s.Bind(args...);
  return s.Run();
}

}  // namespace custody::custodian::sqlite
