#include "custodian/store/sqlite_db.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace custody::custodian::sqlite {
namespace {

// SQLite takes a null pointer as "bind NULL"; an empty string or byte string must stay empty.
constexpr char kEmpty[] = "";

}  // namespace

Status StatusFromSqlite(int rc, std::string_view message) {
  std::string msg(message);
  switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
      return OkStatus();
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Unavailable("database busy: " + msg);
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
      return Unavailable("database I/O failed: " + msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return DataLoss("database is corrupt or not a custodian database: " + msg);
    case SQLITE_FULL:
      return ResourceExhausted("database or disk is full: " + msg);
    case SQLITE_NOMEM:
      return ResourceExhausted("out of memory: " + msg);
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return PermissionDenied(msg);
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
      return OutOfRange(msg);
    case SQLITE_CONSTRAINT:
      switch (rc) {
        case SQLITE_CONSTRAINT_UNIQUE:
        case SQLITE_CONSTRAINT_PRIMARYKEY:
          return AlreadyExists(msg);
        case SQLITE_CONSTRAINT_FOREIGNKEY:
          return NotFound("a referenced row does not exist (" + msg + ")");
        case SQLITE_CONSTRAINT_CHECK:
        case SQLITE_CONSTRAINT_NOTNULL:
          return InvalidArgument(msg);
        case SQLITE_CONSTRAINT_TRIGGER:
          return PermissionDenied(msg);
        default:
          return Internal(msg);
      }
    default:
      return Internal("sqlite: " + msg);
  }
}

Status NameEntity(const Status& status, const std::string& what) {
  if (status.ok()) return status;
  if (status.code() == StatusCode::kAlreadyExists) {
    return AlreadyExists(what + " already exists (" + status.message() + ")");
  }
  return status.WithContext(what);
}

// ----- Statement ----------------------------------------------------------------------------

Statement::Statement(Connection* connection, sqlite3_stmt* stmt, bool* in_use, SqliteStmtPtr owned)
    : connection_(connection), stmt_(stmt), in_use_(in_use), owned_(std::move(owned)) {
  if (in_use_ != nullptr) *in_use_ = true;
}

Statement::Statement(Statement&& other) noexcept
    : connection_(other.connection_),
      stmt_(other.stmt_),
      in_use_(other.in_use_),
      owned_(std::move(other.owned_)),
      bind_rc_(other.bind_rc_) {
  other.stmt_ = nullptr;
  other.in_use_ = nullptr;
}

Statement::~Statement() {
  if (stmt_ == nullptr) return;
  sqlite3_reset(stmt_);
  sqlite3_clear_bindings(stmt_);
  if (in_use_ != nullptr) *in_use_ = false;
}

void Statement::Check(int rc) {
  if (rc != SQLITE_OK && bind_rc_ == SQLITE_OK) bind_rc_ = rc;
}

void Statement::BindOne(int index, std::string_view value) {
  const char* data = value.empty() ? kEmpty : value.data();
  Check(sqlite3_bind_text64(stmt_, index, data, value.size(), SQLITE_STATIC, SQLITE_UTF8));
}

void Statement::BindOne(int index, ByteSpan value) {
  if (value.empty()) {
    Check(sqlite3_bind_zeroblob(stmt_, index, 0));
  } else {
    Check(sqlite3_bind_blob64(stmt_, index, value.data(), value.size(), SQLITE_STATIC));
  }
}

void Statement::BindOne(int index, TimePoint value) {
  BindInt(index, static_cast<int64_t>(value.time_since_epoch().count()));
}

void Statement::BindOne(int index, std::nullopt_t) { Check(sqlite3_bind_null(stmt_, index)); }

void Statement::BindInt(int index, int64_t value) {
  Check(sqlite3_bind_int64(stmt_, index, value));
}

Result<bool> Statement::Step() {
  if (bind_rc_ != SQLITE_OK) return connection_->LastError(bind_rc_);
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return connection_->LastError(rc);
}

Status Statement::Run() {
  while (true) {
    CUSTODY_ASSIGN_OR_RETURN(bool row, Step());
    if (!row) return OkStatus();
  }
}

bool Statement::IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
int64_t Statement::Int(int col) const { return sqlite3_column_int64(stmt_, col); }
uint64_t Statement::Uint(int col) const { return static_cast<uint64_t>(Int(col)); }
bool Statement::Bool(int col) const { return Int(col) != 0; }

std::string Statement::Text(int col) const {
  const unsigned char* p = sqlite3_column_text(stmt_, col);
  const int n = sqlite3_column_bytes(stmt_, col);
  if (p == nullptr || n <= 0) return std::string();
  return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
}

Bytes Statement::Blob(int col) const {
  const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, col));
  const int n = sqlite3_column_bytes(stmt_, col);
  if (p == nullptr || n <= 0) return Bytes();
  return Bytes(p, p + n);
}

TimePoint Statement::Time(int col) const { return TimePoint(std::chrono::seconds(Int(col))); }

std::optional<TimePoint> Statement::OptionalTime(int col) const {
  if (IsNull(col)) return std::nullopt;
  return Time(col);
}

std::optional<uint64_t> Statement::OptionalUint(int col) const {
  if (IsNull(col)) return std::nullopt;
  return Uint(col);
}

std::optional<Bytes> Statement::OptionalBlob(int col) const {
  if (IsNull(col)) return std::nullopt;
  return Blob(col);
}

// ----- Connection ---------------------------------------------------------------------------

Result<std::unique_ptr<Connection>> Connection::Open(const std::string& path,
                                                     const ConnectionOptions& options) {
  const bool writer = options.role == ConnectionRole::kWriter;
  if (writer) {
    // The file holds sealed model keys and token hashes: create it owner-only from the start
    // (SQLite gives the -wal and -shm files the database file's permissions).
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return ErrnoStatus(errno, "open the database " + path);
    ::close(fd);
  }
  int flags = SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
  flags |= writer ? SQLITE_OPEN_READWRITE : SQLITE_OPEN_READONLY;
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  SqliteDbPtr db(raw);
  if (rc != SQLITE_OK) {
    const int err = raw != nullptr ? sqlite3_system_errno(raw) : 0;
    if (err != 0) return ErrnoStatus(err, "open the database " + path);
    return StatusFromSqlite(rc, raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc))
        .WithContext("open the database " + path);
  }
  auto c = std::unique_ptr<Connection>(new Connection(std::move(db), path));
  sqlite3* h = c->handle();
  sqlite3_extended_result_codes(h, 1);
  sqlite3_busy_timeout(h, static_cast<int>(options.busy_timeout.count()));
  int fk_enabled = 0;
  sqlite3_db_config(h, SQLITE_DBCONFIG_DEFENSIVE, 1, nullptr);
  sqlite3_db_config(h, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, nullptr);
  sqlite3_db_config(h, SQLITE_DBCONFIG_ENABLE_FKEY, 1, &fk_enabled);
  if (fk_enabled != 1) return Internal("this SQLite cannot enforce foreign keys");
  CUSTODY_RETURN_IF_ERROR(c->Exec("PRAGMA recursive_triggers = ON"));
  if (writer) {
    CUSTODY_ASSIGN_OR_RETURN(Statement wal, c->Prepare("PRAGMA journal_mode = WAL"));
    CUSTODY_ASSIGN_OR_RETURN(bool row, wal.Step());
    if (!row || wal.Text(0) != "wal") {
      return Unavailable("database " + path + " cannot use write-ahead logging (journal mode " +
                         (row ? wal.Text(0) : std::string("unknown")) + ")");
    }
    CUSTODY_RETURN_IF_ERROR(c->Exec(options.durability == Durability::kPowerLoss
                                        ? "PRAGMA synchronous = FULL"
                                        : "PRAGMA synchronous = NORMAL"));
  } else {
    CUSTODY_RETURN_IF_ERROR(c->Exec("PRAGMA query_only = ON"));
  }
  return c;
}

Connection::~Connection() {
  // Statements first: sqlite3_close_v2 would otherwise keep a zombie connection around.
  cache_.clear();
}

Status Connection::Exec(const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, &err);
  if (rc == SQLITE_OK) return OkStatus();
  std::string msg = err != nullptr ? err : sqlite3_errstr(rc);
  sqlite3_free(err);
  return StatusFromSqlite(sqlite3_extended_errcode(db_.get()), msg);
}

Result<Statement> Connection::Prepare(std::string_view sql) {
  auto it = cache_.find(sql);
  if (it != cache_.end() && !it->second.in_use) {
    return Statement(this, it->second.stmt.get(), &it->second.in_use, nullptr);
  }
  sqlite3_stmt* raw = nullptr;
  const unsigned flags = it == cache_.end() ? SQLITE_PREPARE_PERSISTENT : 0;
  int rc =
      sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()), flags, &raw, nullptr);
  SqliteStmtPtr stmt(raw);
  if (rc != SQLITE_OK) return LastError(rc).WithContext("prepare");
  if (stmt == nullptr) return Internal("prepare: empty SQL statement");
  if (it != cache_.end()) {
    // The cached one is in use further up the stack: this execution gets its own statement.
    return Statement(this, raw, nullptr, std::move(stmt));
  }
  auto [slot, inserted] = cache_.emplace(std::string(sql), CachedStatement{std::move(stmt), false});
  (void)inserted;
  return Statement(this, slot->second.stmt.get(), &slot->second.in_use, nullptr);
}

Status Connection::LastError(int rc) const {
  const char* msg = sqlite3_errmsg(db_.get());
  // A bind error (SQLITE_RANGE, SQLITE_TOOBIG) is not recorded as the connection's error.
  if (sqlite3_extended_errcode(db_.get()) != rc) msg = sqlite3_errstr(rc);
  return StatusFromSqlite(rc, msg);
}

}  // namespace custody::custodian::sqlite
