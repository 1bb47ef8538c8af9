#include "custodian/store/sqlite_store.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "core/format/sealed.h"  // FormatTimestamp
#include "core/protocol/json.h"  // IsCleanText
#include "custodian/store/sqlite_db.h"
#include "custodian/store/sqlite_records.h"
#include "custodian/store/sqlite_schema.h"

namespace custody::custodian {
namespace {

using protocol::AuditEntry;
using sqlite::Connection;
using sqlite::ConnectionOptions;
using sqlite::ConnectionRole;

// The store whose Transact callback this thread is running (the writer thread, during a
// callback), so that a nested Transact and a Transaction used out of its callback are caught.
thread_local const void* tls_in_callback = nullptr;

// Audit entries are refused unless the export parser (protocol::AuditEntryFromJsonLine) can read
// them back, so that every entry can be exported and verified offline: these are its limits.
constexpr size_t kMaxAuditActorBytes = 256;
constexpr size_t kMaxAuditActionBytes = 128;
constexpr size_t kMaxAuditSubjectBytes = 256;
// A line is at most 1 MiB; escaping in the line can double the details.
constexpr size_t kMaxAuditDetailsBytes = 256 << 10;

Result<std::string> DetailsText(const nlohmann::json& details) {
  if (details.is_null()) return std::string("{}");
  if (!details.is_object()) return InvalidArgument("audit details must be a JSON object");
  try {
    return details.dump();                      // compact
  } catch (const nlohmann::json::exception&) {  // a string that is not UTF-8
    return InvalidArgument("audit details hold a string that is not valid UTF-8");
  }
}

Status CheckExportable(const AuditEntry& e) {
  const struct {
    const char* name;
    const std::string& value;
    size_t max;
  } fields[] = {{"actor", e.actor, kMaxAuditActorBytes},
                {"action", e.action, kMaxAuditActionBytes},
                {"subject", e.subject, kMaxAuditSubjectBytes},
                {"details", e.details, kMaxAuditDetailsBytes}};
  for (const auto& f : fields) {
    if (f.value.size() > f.max) {
      return InvalidArgument("audit " + std::string(f.name) + " is " +
                             std::to_string(f.value.size()) + " bytes, more than the " +
                             std::to_string(f.max) + " allowed");
    }
    // dump() escapes control characters but not DEL, so the details are checked too.
    if (!protocol::IsCleanText(f.value)) {
      return InvalidArgument("audit " + std::string(f.name) +
                             " must be UTF-8 text without control characters");
    }
  }
  return OkStatus();
}

// The writer's one Transaction object, reused for every callback: a reference kept past its
// callback finds it closed instead of freed.
class SqliteTransaction final : public Transaction {
 public:
  SqliteTransaction(const void* owner, Connection& c) : owner_(owner), c_(c) {}

  void Begin(const std::optional<AuditEntry>& tail) {
    tail_ = tail;
    open_ = true;
  }
  void End() { open_ = false; }
  const std::optional<AuditEntry>& tail() const { return tail_; }

  Status PutToken(const ApiToken& token) override { return sqlite::InsertToken(db(), token); }
  Status RevokeToken(const std::string& id, TimePoint when) override {
    return sqlite::RevokeToken(db(), id, when);
  }
  Status PutModel(const ModelRecord& model) override { return sqlite::InsertModel(db(), model); }
  Status RetireModel(const std::string& model_id, TimePoint when) override {
    return sqlite::RetireModel(db(), model_id, when);
  }
  Status PutGroup(const GroupRecord& group) override { return sqlite::UpsertGroup(db(), group); }
  Status PutEnrollmentToken(const EnrollmentTokenRecord& token) override {
    return sqlite::InsertEnrollmentToken(db(), token);
  }
  Status UseEnrollmentToken(ByteSpan token_hash, const std::string& device_id,
                            TimePoint when) override {
    return sqlite::UseEnrollmentToken(db(), token_hash, device_id, when);
  }
  Status PutPendingEnrollment(const PendingEnrollment& pending) override {
    return sqlite::InsertPendingEnrollment(db(), pending);
  }
  Status DeletePendingEnrollment(const std::string& id) override {
    return sqlite::DeletePendingEnrollment(db(), id);
  }
  Status PutDevice(const DeviceRecord& device) override {
    return sqlite::UpsertDevice(db(), device);
  }
  Status PutLicence(const LicenceRecord& licence) override {
    return sqlite::UpsertLicence(db(), licence);
  }
  Status PutLease(const LeaseRecord& lease) override { return sqlite::InsertLease(db(), lease); }
  Status ConsumeNonce(ByteSpan nonce, const std::string& device_id, TimePoint when) override {
    return sqlite::InsertNonce(db(), nonce, device_id, when);
  }
  Status PutUsageReport(const UsageReport& report) override {
    return sqlite::InsertUsageReport(db(), report);
  }
  Status PutExtension(const ExtensionRequest& request) override {
    return sqlite::UpsertExtension(db(), request);
  }
  Result<uint64_t> AddEvent(const DeviceEvent& event) override {
    return sqlite::InsertEvent(db(), event);
  }
  Result<DeviceRecord> GetDevice(const std::string& device_id) override {
    return sqlite::GetDevice(db(), device_id);
  }
  Result<LicenceRecord> GetLicence(const std::string& licence_id) override {
    return sqlite::GetLicence(db(), licence_id);
  }
  Result<ExtensionRequest> GetExtension(const std::string& request_id) override {
    return sqlite::GetExtension(db(), request_id);
  }
  Result<PendingEnrollment> GetPendingEnrollment(const std::string& id) override {
    return sqlite::GetPendingEnrollment(db(), id);
  }
  Result<EnrollmentTokenRecord> GetEnrollmentToken(ByteSpan token_hash) override {
    return sqlite::GetEnrollmentToken(db(), token_hash);
  }

  Status Audit(const std::string& actor, const std::string& action, const std::string& subject,
               const nlohmann::json& details) override {
    Connection& c = db();
    AuditEntry e;
    e.time = format::FormatTimestamp(
        std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
    e.actor = actor;
    e.action = action;
    e.subject = subject;
    CUSTODY_ASSIGN_OR_RETURN(e.details, DetailsText(details));
    CUSTODY_RETURN_IF_ERROR(CheckExportable(e));
    protocol::ChainAuditEntry(e, tail_ ? &*tail_ : nullptr);
    CUSTODY_RETURN_IF_ERROR(sqlite::InsertAudit(c, e));
    tail_ = std::move(e);
    return OkStatus();
  }

 private:
  Connection& db() {
    if (!open_ || tls_in_callback != owner_) {
      Panic("a store Transaction was used outside its Transact callback");
    }
    return c_;
  }

  const void* owner_;
  Connection& c_;
  bool open_ = false;
  std::optional<AuditEntry> tail_;  // the last entry of the chain as this callback sees it
};

// Read-only connections handed to one reader at a time.
class ReaderPool {
 public:
  void Add(std::unique_ptr<Connection> c) { free_.push_back(std::move(c)); }

  template <typename Fn>
  auto With(Fn&& fn) -> decltype(fn(std::declval<Connection&>())) {
    std::unique_ptr<Connection> c;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !free_.empty(); });
      c = std::move(free_.back());
      free_.pop_back();
    }
    auto result = fn(*c);
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(std::move(c));
    }
    cv_.notify_one();
    return result;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Connection>> free_;
};

class SqliteStoreImpl final : public SqliteStore {
 public:
  SqliteStoreImpl(std::unique_ptr<Connection> writer, std::optional<AuditEntry> tail,
                  const SqliteTuning& tuning)
      : tuning_(tuning),
        writer_(std::move(writer)),
        tx_(this, *writer_),
        committed_tail_(std::move(tail)) {}

  ~SqliteStoreImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    queue_cv_.notify_all();
    if (writer_thread_.joinable()) writer_thread_.join();
  }

  void AddReader(std::unique_ptr<Connection> c) { readers_.Add(std::move(c)); }
  void Start() {
    writer_thread_ = std::thread([this] { WriterLoop(); });
  }

  Status Transact(const std::function<Status(Transaction&)>& fn) override {
    if (tls_in_callback == this) {
      Panic(
          "Store::Transact was called from inside a Transact callback of the same store; the "
          "writer would wait for itself");
    }
    Request request{&fn, OkStatus(), false};
    std::unique_lock<std::mutex> lock(mu_);
    queue_.push_back(&request);
    queue_cv_.notify_one();
    done_cv_.wait(lock, [&] { return request.done; });
    return request.result;
  }

  Result<PruneCounts> Prune(TimePoint now, std::chrono::seconds nonce_lifetime) override {
    PruneCounts counts;
    CUSTODY_RETURN_IF_ERROR(Transact([&](Transaction&) -> Status {
      CUSTODY_ASSIGN_OR_RETURN(counts, sqlite::PruneExpired(*writer_, now - nonce_lifetime, now));
      return OkStatus();
    }));
    return counts;
  }

  WriterStats writer_stats() const override {
    WriterStats s;
    s.batches = batches_.load();
    s.callbacks = callbacks_.load();
    s.largest_batch = largest_batch_.load();
    std::lock_guard<std::mutex> lock(mu_);
    s.queued = queue_.size();
    return s;
  }

  // ----- reads: any thread, on a pooled reader connection ----------------------------------

  Result<std::optional<ApiToken>> FindTokenByHash(ByteSpan token_hash) const override {
    return Read([&](Connection& c) { return sqlite::FindTokenByHash(c, token_hash); });
  }
  Result<std::vector<ApiToken>> ListTokens() const override {
    return Read([&](Connection& c) { return sqlite::ListTokens(c); });
  }
  Result<ModelRecord> GetModel(const std::string& model_id) const override {
    return Read([&](Connection& c) { return sqlite::GetModel(c, model_id); });
  }
  Result<std::vector<ModelRecord>> ListModels() const override {
    return Read([&](Connection& c) { return sqlite::ListModels(c); });
  }
  Result<GroupRecord> GetGroup(const std::string& name) const override {
    return Read([&](Connection& c) { return sqlite::GetGroup(c, name); });
  }
  Result<std::vector<GroupRecord>> ListGroups() const override {
    return Read([&](Connection& c) { return sqlite::ListGroups(c); });
  }
  Result<DeviceRecord> GetDevice(const std::string& device_id) const override {
    return Read([&](Connection& c) { return sqlite::GetDevice(c, device_id); });
  }
  Result<std::vector<DeviceRecord>> ListDevices() const override {
    return Read([&](Connection& c) { return sqlite::ListDevices(c); });
  }
  Result<LicenceRecord> GetLicence(const std::string& licence_id) const override {
    return Read([&](Connection& c) { return sqlite::GetLicence(c, licence_id); });
  }
  Result<std::vector<LicenceRecord>> LicencesForDevice(const std::string& device_id,
                                                       const std::string& group) const override {
    return Read([&](Connection& c) { return sqlite::LicencesForDevice(c, device_id, group); });
  }
  Result<std::vector<LicenceRecord>> ListLicences() const override {
    return Read([&](Connection& c) { return sqlite::ListLicences(c); });
  }
  Result<std::vector<LeaseRecord>> LeasesForDevice(const std::string& device_id) const override {
    return Read([&](Connection& c) { return sqlite::LeasesForDevice(c, device_id); });
  }
  Result<std::vector<std::string>> DevicesWithModel(const std::string& model_id) const override {
    return Read([&](Connection& c) { return sqlite::DevicesWithModel(c, model_id); });
  }
  Result<std::vector<ExtensionRequest>> ListExtensions(
      std::optional<ExtensionStatus> status) const override {
    return Read([&](Connection& c) { return sqlite::ListExtensions(c, status); });
  }
  Result<uint64_t> GrantedSince(const std::string& licence_id, TimePoint since) const override {
    return Read([&](Connection& c) { return sqlite::GrantedSince(c, licence_id, since); });
  }
  Result<uint64_t> GrantedToDevice(const std::string& licence_id,
                                   const std::string& device_id) const override {
    return Read([&](Connection& c) { return sqlite::GrantedToDevice(c, licence_id, device_id); });
  }
  Result<std::vector<UsageCount>> UsageForDevice(const std::string& device_id) const override {
    return Read([&](Connection& c) { return sqlite::UsageForDevice(c, device_id); });
  }
  Result<std::vector<DeviceEvent>> EventsAfter(const std::string& device_id, uint64_t after,
                                               size_t limit) const override {
    return Read([&](Connection& c) { return sqlite::EventsAfter(c, device_id, after, limit); });
  }
  Result<uint64_t> LastEventSeq() const override {
    return Read([&](Connection& c) { return sqlite::LastEventSeq(c); });
  }
  Result<std::vector<AuditEntry>> AuditAfter(uint64_t after, size_t limit) const override {
    return Read([&](Connection& c) { return sqlite::AuditAfter(c, after, limit); });
  }
  Status Ping() const override {
    return Read([&](Connection& c) { return sqlite::Ping(c); });
  }

 private:
  struct Request {
    const std::function<Status(Transaction&)>* fn;
    Status result;
    bool done;
  };

  template <typename Fn>
  auto Read(Fn&& fn) const -> decltype(fn(std::declval<Connection&>())) {
    return readers_.With(std::forward<Fn>(fn));
  }

  void WriterLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every caller has had its answer
      lock.unlock();
      RunBatch();
      lock.lock();
    }
  }

  Request* PopRequest() {
    std::lock_guard<std::mutex> lock(mu_);
    if (queue_.empty()) return nullptr;
    Request* r = queue_.front();
    queue_.pop_front();
    return r;
  }

  // One SQLite transaction for as many queued callbacks as the bounds allow.
  void RunBatch() {
    const auto start = std::chrono::steady_clock::now();
    std::vector<Request*> batch;
    const Status begin = sqlite::RunStatement(*writer_, "BEGIN IMMEDIATE");
    std::optional<AuditEntry> batch_tail = committed_tail_;
    while (batch.size() < tuning_.max_batch_callbacks &&
           (batch.empty() || std::chrono::steady_clock::now() - start < tuning_.max_batch_time)) {
      Request* r = PopRequest();
      if (r == nullptr) break;
      batch.push_back(r);
      if (!begin.ok()) {
        r->result = begin.WithContext("begin a transaction");
        continue;
      }
      r->result = RunCallback(*r->fn, batch_tail);
      if (!writer_->in_transaction()) {
        // SQLite rolled the whole transaction back (disk full, I/O error): every callback of
        // this batch is lost; the rest of the queue waits for the next batch.
        for (Request* earlier : batch) {
          if (earlier->result.ok()) {
            earlier->result = Unavailable("the transaction was rolled back by the database");
          }
        }
        batch_tail = committed_tail_;
        break;
      }
    }
    if (writer_->in_transaction()) {
      Status commit = sqlite::RunStatement(*writer_, "COMMIT");
      if (commit.ok()) {
        committed_tail_ = std::move(batch_tail);
      } else {
        if (writer_->in_transaction()) writer_->Exec("ROLLBACK").IgnoreError();
        for (Request* r : batch) {
          if (r->result.ok()) r->result = commit.WithContext("commit");
        }
      }
      batches_.fetch_add(1);
    }
    callbacks_.fetch_add(batch.size());
    if (batch.size() > largest_batch_.load()) largest_batch_.store(batch.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (Request* r : batch) r->done = true;
    }
    done_cv_.notify_all();
  }

  // Runs one callback inside its own savepoint; on success `batch_tail` moves to its last audit
  // entry. A failure is rolled back to the savepoint.
  Status RunCallback(const std::function<Status(Transaction&)>& fn,
                     std::optional<AuditEntry>& batch_tail) {
    CUSTODY_RETURN_IF_ERROR(sqlite::RunStatement(*writer_, "SAVEPOINT tx"));
    Status s;
    tx_.Begin(batch_tail);
    tls_in_callback = this;
    try {
      s = fn(tx_);
    } catch (const std::exception& e) {
      s = Internal(std::string("a Transact callback threw: ") + e.what());
    } catch (...) {
      s = Internal("a Transact callback threw");
    }
    tls_in_callback = nullptr;
    tx_.End();
    if (!writer_->in_transaction()) return s.ok() ? Unavailable("transaction lost") : s;
    if (s.ok()) {
      s = sqlite::RunStatement(*writer_, "RELEASE tx");
      if (s.ok()) {
        batch_tail = tx_.tail();
        return s;
      }
    }
    Status undo = sqlite::RunStatement(*writer_, "ROLLBACK TO tx");
    if (undo.ok()) undo = sqlite::RunStatement(*writer_, "RELEASE tx");
    // Without its savepoint the callback cannot be undone alone: give up the whole batch.
    if (!undo.ok()) writer_->Exec("ROLLBACK").IgnoreError();
    return s;
  }

  const SqliteTuning tuning_;
  // Declared before the readers so it is closed after them.
  std::unique_ptr<Connection> writer_;
  mutable ReaderPool readers_;

  // The writer thread's state: tx_ and committed_tail_ are touched only by it once started.
  SqliteTransaction tx_;
  std::optional<AuditEntry> committed_tail_;  // the last entry on disk
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> callbacks_{0};
  std::atomic<uint64_t> largest_batch_{0};

  mutable std::mutex mu_;
  std::condition_variable queue_cv_;  // the writer waits for work
  std::condition_variable done_cv_;   // callers wait for their batch to commit
  std::deque<Request*> queue_;
  bool stopping_ = false;
  std::thread writer_thread_;
};

// Verifies the last kAuditEntriesVerifiedAtOpen entries and returns the last one.
Result<std::optional<AuditEntry>> LoadAuditTail(Connection& c) {
  CUSTODY_ASSIGN_OR_RETURN(std::vector<AuditEntry> tail,
                           sqlite::AuditTail(c, kAuditEntriesVerifiedAtOpen));
  if (tail.empty()) return std::optional<AuditEntry>();
  // A window that does not start at entry 1 is anchored on its first entry's link; every entry
  // in it is checked against its hash and the one before it.
  std::optional<crypto::Sha256Digest> anchor;
  if (tail.front().seq != 1) anchor = tail.front().prev_hash;
  CUSTODY_RETURN_IF_ERROR(protocol::VerifyAuditChain(tail, anchor));
  return std::optional<AuditEntry>(std::move(tail.back()));
}

}  // namespace

Result<std::unique_ptr<SqliteStore>> SqliteStore::Open(const std::string& path,
                                                       StoreOptions options, SqliteTuning tuning) {
  if (tuning.max_batch_callbacks == 0) return InvalidArgument("max_batch_callbacks must be >= 1");
  ConnectionOptions writer_options;
  writer_options.role = ConnectionRole::kWriter;
  writer_options.durability = options.durability;
  writer_options.busy_timeout = tuning.busy_timeout;
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<Connection> writer,
                           Connection::Open(path, writer_options));
  CUSTODY_RETURN_IF_ERROR(sqlite::Migrate(*writer, sqlite::Migrations()).error());
  Result<std::optional<AuditEntry>> tail = LoadAuditTail(*writer);
  if (!tail) return tail.error().WithContext("database " + path + ": audit log");

  auto store = std::make_unique<SqliteStoreImpl>(std::move(writer), std::move(*tail), tuning);
  ConnectionOptions reader_options;
  reader_options.role = ConnectionRole::kReader;
  reader_options.busy_timeout = tuning.busy_timeout;
  for (size_t i = 0; i < kSqliteReaderConnections; ++i) {
    CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<Connection> reader,
                             Connection::Open(path, reader_options));
    store->AddReader(std::move(reader));
  }
  store->Start();
  return std::unique_ptr<SqliteStore>(std::move(store));
}

Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path, StoreOptions options) {
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<SqliteStore> store, SqliteStore::Open(path, options));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace custody::custodian
