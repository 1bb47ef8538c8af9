#include "agent/journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/base/file.h"
#include "core/protocol/json.h"

namespace custody::agent {
namespace {

constexpr char kMagic[] = "CUSTODYJ";  // 8 bytes on disk, without the terminator
constexpr size_t kMagicBytes = 8;
constexpr std::string_view kHeaderHashContext = "custody/journal/v1";
constexpr size_t kLengthFieldBytes = 8;  // length ‖ NOT length
constexpr size_t kReadWindowBytes = 64 << 10;
constexpr size_t kZeroCheckBytes = 4096;

// What an operator should do about a journal that does not verify. The counter is what the
// custodian meters by, so abandoning the journal loses exact per-client counts, never budget.
constexpr std::string_view kCorruptAdvice =
    "the journal was changed outside the agent or the disk is failing. Keep the file for "
    "inspection and move it aside: a new journal starts from the TPM counter, which still bounds "
    "the budget used";

Status Corrupt(std::string_view name, uint64_t offset, std::string_view what) {
  return DataLoss(std::string(name) + ": offset " + std::to_string(offset) + ": " +
                  std::string(what) + "; " + std::string(kCorruptAdvice));
}

std::string Num(uint64_t v) { return std::to_string(v); }

class UniqueFd {
 public:
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// ----- reading ---------------------------------------------------------------------------------

// The bytes of a journal: a file read through one bounded window, or memory.
class Source {
 public:
  virtual ~Source() = default;
  virtual uint64_t size() const = 0;
  // The n bytes at offset (offset + n <= size(), n <= kReadWindowBytes); valid until the next
  // call.
  virtual Result<ByteSpan> View(uint64_t offset, size_t n) = 0;
};

class MemorySource final : public Source {
 public:
  explicit MemorySource(ByteSpan data) : data_(data) {}
  uint64_t size() const override { return data_.size(); }
  Result<ByteSpan> View(uint64_t offset, size_t n) override { return data_.subspan(offset, n); }

 private:
  ByteSpan data_;
};

class FileSource final : public Source {
 public:
  FileSource(int fd, uint64_t size, std::string_view name) : fd_(fd), size_(size), name_(name) {}
  uint64_t size() const override { return size_; }

  Result<ByteSpan> View(uint64_t offset, size_t n) override {
    if (offset < window_offset_ || offset + n > window_offset_ + window_.size()) {
      window_.resize(static_cast<size_t>(std::min<uint64_t>(kReadWindowBytes, size_ - offset)));
      window_offset_ = offset;
      size_t done = 0;
      while (done < window_.size()) {
        const ssize_t got = pread(fd_, window_.data() + done, window_.size() - done,
                                  static_cast<off_t>(offset + done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) return ErrnoStatus(errno, "read " + name_);
        if (got == 0) return DataLoss(name_ + " shrank while being read");
        done += static_cast<size_t>(got);
      }
    }
    return ByteSpan(window_).subspan(offset - window_offset_, n);
  }

 private:
  int fd_;
  uint64_t size_;
  std::string name_;
  Bytes window_;
  uint64_t window_offset_ = 0;
};

// True if every byte from `offset` to the end is zero: blocks the file system allocated for an
// append that a crash left unwritten.
Result<bool> ZeroToEnd(Source& src, uint64_t offset) {
  while (offset < src.size()) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kZeroCheckBytes, src.size() - offset));
    CUSTODY_ASSIGN_OR_RETURN(ByteSpan bytes, src.View(offset, n));
    if (std::any_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b != 0; })) return false;
    offset += n;
  }
  return true;
}

Status CheckName(std::string_view value, std::string_view what, size_t max_bytes) {
  if (value.empty()) return InvalidArgument(std::string(what) + " is empty");
  if (value.size() > max_bytes) {
    return InvalidArgument(std::string(what) + " is " + Num(value.size()) + " bytes; at most " +
                           Num(max_bytes) + " are allowed");
  }
  if (!protocol::IsCleanText(value)) {
    return InvalidArgument(std::string(what) + " contains control characters or invalid UTF-8");
  }
  return OkStatus();
}

// Whether `r` may follow the records that made `s`: the same rules for appending and reading.
Status CheckRecord(const JournalState& s, const JournalRecord& r) {
  switch (r.type) {
    case JournalRecordType::kBlock:
      if (r.counter <= s.last_block) {
        return InvalidArgument("a block to counter " + Num(r.counter) +
                               " does not move past the last block, " + Num(s.last_block));
      }
      return OkStatus();
    case JournalRecordType::kWrittenOff:
      if (r.count == 0) return InvalidArgument("a written-off count of 0");
      if (r.count > s.allowance()) {
        return FailedPrecondition("writing off " + Num(r.count) +
                                  " does not fit under the last block " + Num(s.last_block) + " (" +
                                  Num(s.allowance()) + " left)");
      }
      return OkStatus();
    case JournalRecordType::kServed: {
      CUSTODY_RETURN_IF_ERROR(CheckName(r.model_id, "model id", kJournalMaxModelIdBytes));
      CUSTODY_RETURN_IF_ERROR(CheckName(r.client, "client name", kJournalMaxClientBytes));
      if (r.count == 0) return InvalidArgument("a served count of 0");
      if (r.count > s.allowance()) {
        return FailedPrecondition("serving " + Num(r.count) +
                                  " does not fit under the last block " + Num(s.last_block) + " (" +
                                  Num(s.allowance()) +
                                  " left): advance the TPM counter and record the block first");
      }
      if (s.served.size() >= kJournalMaxPairs && !s.served.contains({r.model_id, r.client})) {
        return ResourceExhausted("the journal already counts " + Num(kJournalMaxPairs) +
                                 " (model, client) pairs, the most it holds");
      }
      return OkStatus();
    }
  }
  return InvalidArgument("unknown record type " + Num(static_cast<uint8_t>(r.type)));
}

void ApplyRecord(JournalState& s, const JournalRecord& r, const crypto::Sha256Digest& hash,
                 size_t bytes) {
  s.last_seq = r.seq;
  s.chain = hash;
  s.bytes += bytes;
  if (r.type == JournalRecordType::kBlock) {
    s.last_block = r.counter;
  } else if (r.type == JournalRecordType::kWrittenOff) {
    s.written_off += r.count;
  } else {
    s.served_total += r.count;
    s.served[{r.model_id, r.client}] += r.count;
  }
}

// The fields of a record whose length and hash have been checked.
Result<JournalRecord> DecodeRecord(ByteSpan record) {
  ByteReader in(
      record.subspan(kLengthFieldBytes, record.size() - kLengthFieldBytes - crypto::kSha256Bytes));
  JournalRecord r;
  uint8_t type = 0;
  bool ok = in.ReadU64(r.seq) && in.ReadU8(type);
  r.type = static_cast<JournalRecordType>(type);
  if (ok && r.type == JournalRecordType::kBlock) {
    ok = in.ReadU64(r.counter);
  } else if (ok && r.type == JournalRecordType::kWrittenOff) {
    ok = in.ReadU64(r.count);
  } else if (ok && r.type == JournalRecordType::kServed) {
    uint8_t model_len = 0, client_len = 0;
    ByteSpan model, client;
    ok = in.ReadU64(r.count) && in.ReadU8(model_len) && in.ReadSpan(model_len, model) &&
         in.ReadU8(client_len) && in.ReadSpan(client_len, client);
    r.model_id.assign(AsChars(model));
    r.client.assign(AsChars(client));
  } else if (ok) {
    return InvalidArgument("record " + Num(r.seq) + " has the unknown type " + Num(type));
  }
  if (!ok || in.remaining() != 0) {
    return InvalidArgument("record " + Num(r.seq) + " of type " + Num(type) +
                           ": its fields do not fill its " + Num(record.size()) + " bytes");
  }
  return r;
}

Result<JournalState> ParseHeader(ByteSpan header, std::string_view name) {
  if (std::memcmp(header.data(), kMagic, kMagicBytes) != 0) {
    return Corrupt(name, 0,
                   "not a Custody metering journal (magic " + HexEncode(header.first(kMagicBytes)) +
                       ", expected \"CUSTODYJ\")");
  }
  // The version before the checksum: another version may hash its header differently.
  const uint16_t version = LoadBigEndian16(header.data() + 8);
  if (version != kJournalVersion) {
    return Unimplemented(std::string(name) + ": offset 8: journal format version " + Num(version) +
                         "; this build reads version " + Num(kJournalVersion) +
                         ". Run the agent version that wrote it, or move the file aside to start "
                         "a new journal from the TPM counter");
  }
  const uint16_t reserved = LoadBigEndian16(header.data() + 10);
  if (reserved != 0) return Corrupt(name, 10, "reserved field is " + Num(reserved) + ", not 0");
  const crypto::Sha256Digest hash = JournalHeaderHash(header.first(kJournalHeaderHashedBytes));
  if (!std::equal(hash.begin(), hash.end(), header.begin() + kJournalHeaderHashedBytes)) {
    return Corrupt(name, kJournalHeaderHashedBytes, "the header fails its checksum");
  }
  JournalState s;
  s.counter_base = LoadBigEndian64(header.data() + 12);
  std::copy_n(header.begin() + 20, kJournalIdBytes, s.journal_id.begin());
  s.chain = hash;
  s.last_block = s.counter_base;
  s.bytes = kJournalHeaderBytes;
  return s;
}

JournalScan TornTail(JournalScan scan, uint64_t size, std::string why) {
  scan.torn_tail_bytes = size - scan.state.bytes;
  scan.torn_tail = "offset " + Num(scan.state.bytes) + ": " + why;
  return scan;
}

// Reads and verifies a journal from the start (docs/FORMAT.md §10.3 says what is torn and what
// is corrupt).
Result<JournalScan> Scan(Source& src, std::string_view name, const JournalVisitor& visit) {
  const uint64_t size = src.size();
  if (size < kJournalHeaderBytes) {
    return Corrupt(name, 0,
                   size == 0 ? std::string("the file is empty")
                             : "the file ends inside the header (" + Num(size) + " of " +
                                   Num(kJournalHeaderBytes) + " bytes)");
  }
  JournalScan scan;
  {
    CUSTODY_ASSIGN_OR_RETURN(ByteSpan header, src.View(0, kJournalHeaderBytes));
    CUSTODY_ASSIGN_OR_RETURN(scan.state, ParseHeader(header, name));
  }
  while (scan.state.bytes < size) {
    const uint64_t offset = scan.state.bytes;
    const uint64_t left = size - offset;
    const std::string what = "record " + Num(scan.state.last_seq + 1);
    if (left < kLengthFieldBytes) {
      return TornTail(std::move(scan), size, "the last record ends inside its length field");
    }
    CUSTODY_ASSIGN_OR_RETURN(ByteSpan length_field, src.View(offset, kLengthFieldBytes));
    const uint32_t length = LoadBigEndian32(length_field.data());
    if (LoadBigEndian32(length_field.data() + 4) != static_cast<uint32_t>(~length)) {
      CUSTODY_ASSIGN_OR_RETURN(bool zeros, ZeroToEnd(src, offset));
      if (zeros) return TornTail(std::move(scan), size, "zero-filled tail");
      return Corrupt(name, offset, what + ": the length field is corrupt");
    }
    if (length < kJournalMinRecordBytes || length > kJournalMaxRecordBytes) {
      return Corrupt(name, offset,
                     what + " claims " + Num(length) + " bytes; records are " +
                         Num(kJournalMinRecordBytes) + " to " + Num(kJournalMaxRecordBytes));
    }
    if (length > left) {
      return TornTail(
          std::move(scan), size,
          "the last record is incomplete (" + Num(left) + " of " + Num(length) + " bytes)");
    }
    CUSTODY_ASSIGN_OR_RETURN(ByteSpan record, src.View(offset, length));
    const crypto::Sha256Digest hash =
        JournalRecordHash(scan.state.chain, record.first(length - crypto::kSha256Bytes));
    if (!std::equal(hash.begin(), hash.end(), record.end() - crypto::kSha256Bytes)) {
      CUSTODY_ASSIGN_OR_RETURN(bool zeros, ZeroToEnd(src, offset + length));
      if (zeros) return TornTail(std::move(scan), size, "the last record fails its checksum");
      return Corrupt(name, offset,
                     what +
                         " fails its checksum (changed, or a record before it was removed, "
                         "reordered or copied from another journal)");
    }
    Result<JournalRecord> r = DecodeRecord(record);
    if (!r) return Corrupt(name, offset, r.error().message());
    if (r->seq != scan.state.last_seq + 1) {
      return Corrupt(name, offset, what + " has the sequence number " + Num(r->seq));
    }
    const Status allowed = CheckRecord(scan.state, *r);
    if (!allowed.ok()) return Corrupt(name, offset, what + ": " + allowed.message());
    ApplyRecord(scan.state, *r, hash, length);
    if (visit) visit(*r);
  }
  return scan;
}

Result<Reconciliation> Reconcile(const JournalScan& scan, uint64_t tpm_counter, uint64_t block_size,
                                 std::string_view name) {
  const JournalState& s = scan.state;
  if (s.last_block > tpm_counter) {
    return FailedPrecondition(
        std::string(name) + ": the journal's last block is counter value " + Num(s.last_block) +
        " (it was created at " + Num(s.counter_base) + "), but the TPM counter is " +
        Num(tpm_counter) +
        ": this state directory belongs to another TPM, or the TPM was cleared. Refusing to "
        "serve: restore this device's own state directory, or enroll the device again");
  }
  Reconciliation r;
  r.tpm_counter = tpm_counter;
  r.counter_base = s.counter_base;
  r.last_block = s.last_block;
  r.last_seq = s.last_seq;
  r.served_total = s.served_total;
  r.written_off = s.written_off;
  r.served = s.served;
  r.torn_tail_bytes = scan.torn_tail_bytes;
  r.torn_tail = scan.torn_tail;
  r.unaccounted = tpm_counter - s.position();
  r.unrecorded_advance = tpm_counter - s.last_block;
  r.journal_behind_counter = r.unaccounted > 0;
  r.rollback_suspected = r.unrecorded_advance > block_size;
  r.budget_used = std::max(tpm_counter, s.position());
  return r;
}

// Opens an existing journal for appending and takes its lock.
Result<UniqueFd> OpenJournalFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return NotFound(path +
                      ": no metering journal here. A device's journal is created at enrollment; "
                      "if it was lost, counts since the last usage report cannot be recovered: "
                      "create a new one (it starts from the TPM counter) and report the loss");
    }
    return ErrnoStatus(err, "open journal " + path);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + " is not a regular file");
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Unavailable(path + " is in use by another process (is another agent running?)");
    }
    return ErrnoStatus(errno, "lock " + path);
  }
  return fd;
}

// Counts in `later` beyond those in `earlier` (a state before it).
JournalSnapshot Difference(uint64_t after_seq, const JournalState& later,
                           const UsageCounts& earlier, uint64_t earlier_written_off) {
  JournalSnapshot out;
  out.after_seq = after_seq;
  out.through_seq = later.last_seq;
  out.position = later.position();
  out.last_block = later.last_block;
  out.written_off = later.written_off - earlier_written_off;
  for (const auto& [key, count] : later.served) {
    const auto before = earlier.find(key);
    const uint64_t more = count - (before == earlier.end() ? 0 : before->second);
    if (more == 0) continue;
    out.counts.emplace(key, more);
    out.total += more;
  }
  return out;
}

}  // namespace

// ----- format --------------------------------------------------------------------------------

crypto::Sha256Digest JournalHeaderHash(ByteSpan hashed_header_bytes) {
  Bytes input(kHeaderHashContext.begin(), kHeaderHashContext.end());
  input.push_back(0);
  AppendBytes(input, hashed_header_bytes);
  return crypto::Sha256(input);
}

crypto::Sha256Digest JournalRecordHash(const crypto::Sha256Digest& previous, ByteSpan record_head) {
  Bytes input(previous.begin(), previous.end());
  AppendBytes(input, record_head);
  return crypto::Sha256(input);
}

Bytes EncodeJournalHeader(uint64_t counter_base, const JournalId& id) {
  Bytes out;
  out.reserve(kJournalHeaderBytes);
  AppendBytes(out, AsBytes(std::string_view(kMagic, kMagicBytes)));
  AppendBigEndian16(out, kJournalVersion);
  AppendBigEndian16(out, 0);
  AppendBigEndian64(out, counter_base);
  AppendBytes(out, id);
  const crypto::Sha256Digest hash = JournalHeaderHash(out);
  AppendBytes(out, hash);
  return out;
}

void EncodeJournalRecord(const JournalRecord& record, crypto::Sha256Digest& chain, Bytes& out) {
  size_t length = 0;
  switch (record.type) {
    case JournalRecordType::kBlock:
      length = kJournalBlockRecordBytes;
      break;
    case JournalRecordType::kWrittenOff:
      length = kJournalWrittenOffRecordBytes;
      break;
    case JournalRecordType::kServed:
      if (record.model_id.size() > 255 || record.client.size() > 255) {
        Panic("EncodeJournalRecord: a name longer than its one-byte length field");
      }
      length = kJournalServedRecordFixedBytes + record.model_id.size() + record.client.size();
      break;
    default:
      Panic("EncodeJournalRecord: unknown record type");
  }
  const size_t start = out.size();
  AppendBigEndian32(out, static_cast<uint32_t>(length));
  AppendBigEndian32(out, ~static_cast<uint32_t>(length));
  AppendBigEndian64(out, record.seq);
  out.push_back(static_cast<uint8_t>(record.type));
  if (record.type == JournalRecordType::kBlock) {
    AppendBigEndian64(out, record.counter);
  } else if (record.type == JournalRecordType::kWrittenOff) {
    AppendBigEndian64(out, record.count);
  } else {
    AppendBigEndian64(out, record.count);
    out.push_back(static_cast<uint8_t>(record.model_id.size()));
    AppendBytes(out, AsBytes(record.model_id));
    out.push_back(static_cast<uint8_t>(record.client.size()));
    AppendBytes(out, AsBytes(record.client));
  }
  chain = JournalRecordHash(chain, ByteSpan(out).subspan(start));
  AppendBytes(out, chain);
}

Result<JournalScan> ScanJournal(ByteSpan file, std::string_view name, const JournalVisitor& visit) {
  MemorySource src(file);
  return Scan(src, name, visit);
}

// ----- Journal -------------------------------------------------------------------------------

Journal::Journal(std::string path, int fd, JournalState state)
    : path_(std::move(path)),
      fd_(fd),
      id_(state.journal_id),
      tail_(state),
      durable_(std::move(state)) {}

Journal::~Journal() { close(fd_); }

Result<std::unique_ptr<Journal>> Journal::Create(const std::string& path,
                                                 uint64_t tpm_counter_now) {
  if (PathExists(path)) {
    return AlreadyExists(path +
                         ": a journal is already there; refusing to replace it (move it "
                         "aside first if it is to be abandoned)");
  }
  JournalId id;
  CUSTODY_RETURN_IF_ERROR(crypto::RandomBytes(id));
  const Bytes header = EncodeJournalHeader(tpm_counter_now, id);
  CUSTODY_RETURN_IF_ERROR(WriteFileAtomic(path, header, WriteOptions{0600, Overwrite::kRefuse}));
  CUSTODY_ASSIGN_OR_RETURN(UniqueFd fd, OpenJournalFile(path));
  CUSTODY_ASSIGN_OR_RETURN(JournalState state, ParseHeader(header, path));
  return std::unique_ptr<Journal>(new Journal(path, fd.release(), std::move(state)));
}

Result<OpenedJournal> Journal::Open(const std::string& path, uint64_t tpm_counter_now,
                                    const JournalOptions& options) {
  if (options.block_size == 0) return InvalidArgument("journal block size must be at least 1");
  CUSTODY_ASSIGN_OR_RETURN(UniqueFd fd, OpenJournalFile(path));
  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "stat " + path);
  FileSource src(fd.get(), static_cast<uint64_t>(st.st_size), path);
  CUSTODY_ASSIGN_OR_RETURN(JournalScan scan, Scan(src, path, nullptr));
  CUSTODY_ASSIGN_OR_RETURN(Reconciliation reconciliation,
                           Reconcile(scan, tpm_counter_now, options.block_size, path));
  if (scan.torn_tail_bytes > 0) {
    if (ftruncate(fd.get(), static_cast<off_t>(scan.state.bytes)) != 0) {
      return ErrnoStatus(errno, "cut the torn tail off " + path);
    }
    if (fdatasync(fd.get()) != 0) return ErrnoStatus(errno, "fdatasync " + path);
  }
  return OpenedJournal{
      std::unique_ptr<Journal>(new Journal(path, fd.release(), std::move(scan.state))),
      std::move(reconciliation)};
}

Status Journal::AppendBlock(uint64_t counter) {
  JournalRecord r;
  r.type = JournalRecordType::kBlock;
  r.counter = counter;
  return Append(std::move(r), Durability::kSynced);
}

Status Journal::AppendServed(std::string_view model_id, std::string_view client, uint64_t count,
                             Durability durability) {
  JournalRecord r;
  r.type = JournalRecordType::kServed;
  r.model_id = model_id;
  r.client = client;
  r.count = count;
  return Append(std::move(r), durability);
}

Status Journal::AppendWrittenOff(uint64_t count) {
  JournalRecord r;
  r.type = JournalRecordType::kWrittenOff;
  r.count = count;
  return Append(std::move(r), Durability::kSynced);
}

Status Journal::Sync() {
  std::unique_lock lock(mu_);
  return SyncLocked(lock, tail_.last_seq);
}

Status Journal::Append(JournalRecord record, Durability durability) {
  std::unique_lock lock(mu_);
  if (!failed_.ok()) return failed_;
  record.seq = tail_.last_seq + 1;
  CUSTODY_RETURN_IF_ERROR(CheckRecord(tail_, record).WithContext(path_));
  // Written under the lock, so records reach the file in sequence order; a write of one record
  // is a copy into the page cache, which outlives the process. Only fdatasync is slow, and it
  // runs without the lock (SyncLocked).
  Bytes bytes;
  crypto::Sha256Digest hash = tail_.chain;
  EncodeJournalRecord(record, hash, bytes);
  const Status written = WriteAll(bytes);
  if (!written.ok()) {
    // The file may now end in part of a record: only a fresh Open can say what it holds.
    failed_ = Status(written.code(), written.message() +
                                         "; the journal refuses appends until it is opened again "
                                         "(Open cuts a partial record)");
    return failed_;
  }
  ApplyRecord(tail_, record, hash, bytes.size());
  if (durability == Durability::kWritten) return OkStatus();
  return SyncLocked(lock, record.seq);
}

Status Journal::SyncLocked(std::unique_lock<std::mutex>& lock, uint64_t seq) {
  // Group commit: whoever finds no sync in progress syncs everything written so far; callers
  // that arrive meanwhile wait for it, then sync again only if their record came after it.
  while (durable_.last_seq < seq) {
    if (!failed_.ok()) return failed_;
    if (syncing_) {
      synced_.wait(lock);
      continue;
    }
    syncing_ = true;
    JournalState covered = tail_;
    lock.unlock();
    const int rc = fdatasync(fd_);
    const int err = errno;
    lock.lock();
    syncing_ = false;
    if (rc != 0) {
      // After a failed fdatasync the kernel may have dropped pages it reported written.
      failed_ = ErrnoStatus(err, "fdatasync " + path_)
                    .WithContext("the journal refuses appends until it is opened again");
    } else if (covered.last_seq > durable_.last_seq) {
      durable_ = std::move(covered);
    }
    synced_.notify_all();
  }
  return OkStatus();
}

Status Journal::WriteAll(ByteSpan bytes) const {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus(errno, "write " + path_);
    if (n == 0) return Internal("write " + path_ + " wrote nothing");
    done += static_cast<size_t>(n);
  }
  return OkStatus();
}

uint64_t Journal::allowance() const {
  std::lock_guard lock(mu_);
  return tail_.allowance();
}

uint64_t Journal::last_block() const {
  std::lock_guard lock(mu_);
  return tail_.last_block;
}

JournalSnapshot Journal::Snapshot() const {
  Result<JournalSnapshot> all = SnapshotSince(0);
  if (!all) Panic("Journal::Snapshot: " + all.error().ToString());  // seq 0 always exists
  return std::move(all).value();
}

Result<JournalSnapshot> Journal::SnapshotSince(uint64_t after_seq) const {
  std::unique_lock lock(mu_);
  if (after_seq > durable_.last_seq) {
    return InvalidArgument(path_ + ": no snapshot after record " + Num(after_seq) +
                           ": the last durable record is " + Num(durable_.last_seq));
  }
  if (after_seq == 0 || (checkpoint_.has_value() && checkpoint_->seq == after_seq)) {
    JournalSnapshot out = after_seq == 0 ? Difference(after_seq, durable_, UsageCounts(), 0)
                                         : Difference(after_seq, durable_, checkpoint_->counts,
                                                      checkpoint_->written_off);
    checkpoint_ = Checkpoint{durable_.last_seq, durable_.served, durable_.written_off};
    return out;
  }
  // Not at hand: read the records again, up to what is durable now. Appends go on meanwhile;
  // they only add bytes after these.
  const JournalState durable = durable_;
  lock.unlock();
  UsageCounts before;
  uint64_t written_off_before = 0;
  const JournalVisitor count_before = [&](const JournalRecord& r) {
    if (r.seq > after_seq) return;
    if (r.type == JournalRecordType::kServed) before[UsageKey{r.model_id, r.client}] += r.count;
    if (r.type == JournalRecordType::kWrittenOff) written_off_before += r.count;
  };
  FileSource src(fd_, durable.bytes, path_);
  CUSTODY_ASSIGN_OR_RETURN(JournalScan scan, Scan(src, path_, count_before));
  if (scan.torn_tail_bytes != 0 || scan.state.last_seq != durable.last_seq ||
      scan.state.chain != durable.chain) {
    return Corrupt(path_, scan.state.bytes,
                   "the file no longer holds the records this agent wrote to it");
  }
  lock.lock();
  checkpoint_ = Checkpoint{durable.last_seq, durable.served, durable.written_off};
  return Difference(after_seq, durable, before, written_off_before);
}

}  // namespace custody::agent
