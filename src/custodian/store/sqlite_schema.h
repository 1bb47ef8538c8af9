// The custodian database's schema and its versioned migrations (internal to the store).
//
// `schema_version` holds one row per applied migration (version, applied time). Migrations are
// an ordered list of SQL scripts; at open, every script newer than the database's version runs
// in its own transaction together with the row that records it, so a database is always at
// exactly one version. A database newer than this build is refused (kUnimplemented): an older
// custodian must not write into a schema it does not know.
//
// The schema (sqlite_schema.cc) is plain SQL that a PostgreSQL store mirrors table for table:
// TEXT, INTEGER (BIGINT), BLOB (bytea); booleans are INTEGER 0/1; times are INTEGER seconds
// since the Unix epoch (UTC); uint64 values are stored as the int64 with the same 64 bits.
#pragma once

#include <span>

#include "core/base/status.h"
#include "custodian/store/sqlite_db.h"

namespace custody::custodian::sqlite {

struct Migration {
  int version;      // 1, 2, 3, ... without gaps
  const char* sql;  // a script of statements
};

// The migrations of this build, oldest first.
std::span<const Migration> Migrations();

// Brings the database behind `c` (the writer connection) to the last version in `migrations`;
// returns that version. kUnimplemented if the database is newer, kFailedPrecondition if the file
// is an SQLite database of something else (tables but no schema_version); a failing script
// leaves the database at the version before it.
Result<int> Migrate(Connection& c, std::span<const Migration> migrations);

}  // namespace custody::custodian::sqlite
