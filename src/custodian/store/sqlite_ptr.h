// Owning pointers for the SQLite handles the custodian's store uses. One header, one deleter per
// type, so no connection or statement is ever closed by hand.
#pragma once

#include <sqlite3.h>

#include <memory>

namespace custody::custodian::sqlite {

template <typename T, int (*Free)(T*)>
struct SqliteDeleter {
  void operator()(T* p) const { Free(p); }
};

// sqlite3_close_v2: if a statement were still alive the connection would become a zombie that
// closes with its last statement, instead of leaking; statements are owned by the connection
// object and finalized first anyway.
using SqliteDbPtr = std::unique_ptr<sqlite3, SqliteDeleter<sqlite3, sqlite3_close_v2>>;
using SqliteStmtPtr = std::unique_ptr<sqlite3_stmt, SqliteDeleter<sqlite3_stmt, sqlite3_finalize>>;

}  // namespace custody::custodian::sqlite
