#include "agent/journal.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/base/file.h"
#include "tests/support/must.h"

namespace custody::agent {
namespace {

// Most tests use this journal: created at counter kBase, two blocks of kBlock, five served
// records, seq 1..7.
constexpr uint64_t kBase = 1000;
constexpr uint64_t kBlock = 10;
constexpr uint64_t kLastBlock = 1020;

UsageCounts Counts(std::initializer_list<std::pair<UsageKey, uint64_t>> entries) {
  return UsageCounts(entries.begin(), entries.end());
}

// After all seven records, and without the last (seq 7: m1/kiosk 1).
const UsageCounts kAllServed =
    Counts({{{"m1", "kiosk"}, 4}, {{"m1", "web"}, 2}, {{"m2", "kiosk"}, 9}});
const UsageCounts kServedBeforeLast =
    Counts({{{"m1", "kiosk"}, 3}, {{"m1", "web"}, 2}, {{"m2", "kiosk"}, 9}});

void ExpectError(const Status& s, StatusCode code, std::initializer_list<std::string_view> parts) {
  EXPECT_EQ(StatusCodeName(s.code()), StatusCodeName(code)) << s.ToString();
  for (std::string_view part : parts) {
    EXPECT_NE(s.message().find(part), std::string::npos)
        << "'" << part << "' not in: " << s.message();
  }
}

// Where each record starts, following the length fields of a journal that verifies.
std::vector<size_t> RecordStarts(const Bytes& file) {
  std::vector<size_t> starts;
  for (size_t at = kJournalHeaderBytes; at + 4 <= file.size(); at += LoadBigEndian32(&file[at])) {
    starts.push_back(at);
  }
  return starts;
}

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("custody-journal-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "journal").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (dir_ / name).string(); }
  Bytes FileBytes(const std::string& path) const { return MUST(ReadFile(path)); }
  // Replaces a file's contents (no fsync: the tests open what they wrote, nothing crashes).
  void Put(const std::string& path, ByteSpan bytes) const {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << "cannot write " << path;
  }

  void WriteStandard(const std::string& path) const {
    std::unique_ptr<Journal> j = MUST(Journal::Create(path, kBase));
    ASSERT_OK(j->AppendBlock(1010));
    ASSERT_OK(j->AppendServed("m1", "kiosk", 3));
    ASSERT_OK(j->AppendServed("m1", "web", 2));
    ASSERT_OK(j->AppendServed("m2", "kiosk", 5));
    ASSERT_OK(j->AppendBlock(kLastBlock));
    ASSERT_OK(j->AppendServed("m2", "kiosk", 4));
    ASSERT_OK(j->AppendServed("m1", "kiosk", 1));
  }

  // Opens `path` expecting an error; the file must be left exactly as it was.
  Status OpenError(const std::string& path, uint64_t counter) const {
    const Bytes before = FileBytes(path);
    Result<OpenedJournal> opened = Journal::Open(path, counter);
    EXPECT_FALSE(opened.has_value()) << "opened " << path;
    EXPECT_EQ(FileBytes(path), before) << "a refused open changed the file";
    return opened.has_value() ? OkStatus() : opened.error();
  }

  std::filesystem::path dir_;
  std::string path_;
};

// ----- create, append, reopen ----------------------------------------------------------------

TEST_F(JournalTest, CreateWritesAnEmptyOwnerOnlyJournalThatAllowsNothingYet) {
  std::unique_ptr<Journal> j = MUST(Journal::Create(path_, kBase));
  EXPECT_EQ(j->allowance(), 0u);
  EXPECT_EQ(j->last_block(), kBase);
  struct stat st {};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(static_cast<size_t>(st.st_size), kJournalHeaderBytes);
  j.reset();

  OpenedJournal opened = MUST(Journal::Open(path_, kBase));
  const Reconciliation& r = opened.reconciliation;
  EXPECT_EQ(r.counter_base, kBase);
  EXPECT_EQ(r.last_block, kBase);
  EXPECT_EQ(r.last_seq, 0u);
  EXPECT_EQ(r.served_total, 0u);
  EXPECT_TRUE(r.served.empty());
  EXPECT_FALSE(r.journal_behind_counter);
  EXPECT_FALSE(r.rollback_suspected);
  EXPECT_EQ(r.torn_tail_bytes, 0u);
}

TEST_F(JournalTest, CreateRefusesToReplaceAJournal) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes before = FileBytes(path_);
  Result<std::unique_ptr<Journal>> again = Journal::Create(path_, kBase);
  ASSERT_FALSE(again.has_value());
  ExpectError(again.error(), StatusCode::kAlreadyExists, {path_, "move it aside"});
  EXPECT_EQ(FileBytes(path_), before);
}

TEST_F(JournalTest, OpenOfAMissingJournalIsNotFoundSayingWhatToDo) {
  Result<OpenedJournal> opened = Journal::Open(path_, kBase);
  ASSERT_FALSE(opened.has_value());
  ExpectError(opened.error(), StatusCode::kNotFound, {path_, "enrollment", "report the loss"});
}

TEST_F(JournalTest, RoundTripKeepsExactCountsPerModelAndClient) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  OpenedJournal opened = MUST(Journal::Open(path_, kLastBlock));
  const Reconciliation& r = opened.reconciliation;
  EXPECT_EQ(r.last_seq, 7u);
  EXPECT_EQ(r.last_block, kLastBlock);
  EXPECT_EQ(r.served_total, 15u);
  EXPECT_EQ(r.served, kAllServed);
  // A clean stop in the middle of a block: the rest of it is counted and still servable.
  EXPECT_EQ(r.unaccounted, 5u);
  EXPECT_EQ(r.unrecorded_advance, 0u);
  EXPECT_TRUE(r.journal_behind_counter);
  EXPECT_FALSE(r.rollback_suspected);
  EXPECT_EQ(r.budget_used, kLastBlock);
  EXPECT_EQ(r.torn_tail_bytes, 0u);

  Journal& j = *opened.journal;
  EXPECT_EQ(j.allowance(), 5u);
  const JournalSnapshot s = j.Snapshot();
  EXPECT_EQ(s.after_seq, 0u);
  EXPECT_EQ(s.through_seq, 7u);
  EXPECT_EQ(s.counts, kAllServed);
  EXPECT_EQ(s.total, 15u);
  // The chain goes on after a reopen.
  ASSERT_OK(j.AppendServed("m3", "kiosk", 5));
  EXPECT_EQ(j.allowance(), 0u);
  opened.journal.reset();
  EXPECT_EQ(MUST(Journal::Open(path_, kLastBlock)).reconciliation.served_total, 20u);
}

TEST_F(JournalTest, ScanSeesEveryRecordInOrderAndTheEncodingIsCanonical) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  std::vector<JournalRecord> records;
  const JournalScan scan =
      MUST(ScanJournal(file, path_, [&](const JournalRecord& r) { records.push_back(r); }));
  ASSERT_EQ(records.size(), 7u);
  for (size_t i = 0; i < records.size(); ++i) EXPECT_EQ(records[i].seq, i + 1);
  EXPECT_EQ(records[4].type, JournalRecordType::kBlock);
  EXPECT_EQ(records[4].counter, kLastBlock);
  EXPECT_EQ(records[5].type, JournalRecordType::kServed);
  EXPECT_EQ(records[5].model_id, "m2");
  EXPECT_EQ(records[5].client, "kiosk");
  EXPECT_EQ(records[5].count, 4u);
  EXPECT_EQ(scan.state.bytes, file.size());

  Bytes again = EncodeJournalHeader(scan.state.counter_base, scan.state.journal_id);
  crypto::Sha256Digest chain = JournalHeaderHash(ByteSpan(again).first(kJournalHeaderHashedBytes));
  for (const JournalRecord& r : records) EncodeJournalRecord(r, chain, again);
  EXPECT_EQ(again, file);
  EXPECT_EQ(chain, scan.state.chain);
}

// docs/FORMAT.md §10.6, computed there with Python's hashlib from the spec alone.
TEST_F(JournalTest, JournalSpecExampleIsReproducedByteForByte) {
  JournalId id{};
  for (size_t i = 0; i < id.size(); ++i) id[i] = static_cast<uint8_t>(0x10 + i);
  Bytes file = EncodeJournalHeader(1000, id);
  crypto::Sha256Digest chain = JournalHeaderHash(ByteSpan(file).first(kJournalHeaderHashedBytes));
  JournalRecord block;
  block.seq = 1;
  block.counter = 1016;
  EncodeJournalRecord(block, chain, file);
  JournalRecord served;
  served.seq = 2;
  served.type = JournalRecordType::kServed;
  served.model_id = "model";
  served.client = "kiosk";
  served.count = 3;
  EncodeJournalRecord(served, chain, file);
  EXPECT_EQ(HexEncode(file),
            "435553544f44594a0001000000000000000003e8101112131415161718191a1b"
            "1c1d1e1f22119ab95c4544c3a933435684ca97444e41c6c12a3e34a64b213e44"
            "f05c2b5b"
            "00000039ffffffc600000000000000010100000000000003f843bbef6bc3a5e8"
            "78c9a04df76053f497ac55aaaf898539c3c39cc57727a7e740"
            "00000045ffffffba0000000000000002020000000000000003056d6f64656c05"
            "6b696f736b8cbac415009226424643caf5f0b8a9b217e3e32a91c829c55327db"
            "943cd80dac");
  const JournalScan scan = MUST(ScanJournal(file, "example"));
  EXPECT_EQ(scan.state.served, Counts({{{"model", "kiosk"}, 3}}));
  EXPECT_EQ(scan.state.last_block, 1016u);
}

TEST_F(JournalTest, AppendsAreCheckedBeforeAnythingIsWritten) {
  std::unique_ptr<Journal> j = MUST(Journal::Create(path_, kBase));
  // Nothing may be served before the counter was advanced for it.
  ExpectError(j->AppendServed("m1", "kiosk", 1), StatusCode::kFailedPrecondition,
              {path_, "advance the TPM counter"});
  ExpectError(j->AppendBlock(kBase), StatusCode::kInvalidArgument, {"does not move past"});
  ExpectError(j->AppendBlock(kBase - 1), StatusCode::kInvalidArgument, {"does not move past"});
  ASSERT_OK(j->AppendBlock(kBase + 3));
  const size_t size = FileBytes(path_).size();

  ExpectError(j->AppendServed("m1", "kiosk", 4), StatusCode::kFailedPrecondition, {"3 left"});
  ExpectError(j->AppendServed("m1", "kiosk", 0), StatusCode::kInvalidArgument, {"0"});
  ExpectError(j->AppendServed("", "kiosk", 1), StatusCode::kInvalidArgument, {"model id"});
  ExpectError(j->AppendServed("m1", "", 1), StatusCode::kInvalidArgument, {"client name"});
  ExpectError(j->AppendServed(std::string(65, 'm'), "kiosk", 1), StatusCode::kInvalidArgument,
              {"65 bytes"});
  ExpectError(j->AppendServed("m1", std::string(129, 'c'), 1), StatusCode::kInvalidArgument,
              {"129 bytes"});
  ExpectError(j->AppendServed("m1", "kio\nsk", 1), StatusCode::kInvalidArgument, {"control"});
  ExpectError(j->AppendServed("m\xff", "kiosk", 1), StatusCode::kInvalidArgument, {"UTF-8"});
  ExpectError(j->AppendBlock(kBase + 3), StatusCode::kInvalidArgument, {"does not move past"});
  EXPECT_EQ(FileBytes(path_).size(), size);

  // The longest names fit, and the journal goes on as if nothing had been refused.
  ASSERT_OK(j->AppendServed(std::string(64, 'm'), std::string(128, 'c'), 3));
  EXPECT_EQ(FileBytes(path_).size(), size + kJournalMaxRecordBytes);
  j.reset();
  EXPECT_EQ(MUST(Journal::Open(path_, kBase + 3)).reconciliation.last_seq, 2u);
}

TEST_F(JournalTest, OpenRefusesABlockSizeOfZero) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  Result<OpenedJournal> opened = Journal::Open(path_, kLastBlock, JournalOptions{0});
  ASSERT_FALSE(opened.has_value());
  EXPECT_EQ(opened.error().code(), StatusCode::kInvalidArgument);
}

TEST_F(JournalTest, LargeCountsNearTheTopOfTheCounterAddUpExactly) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  constexpr uint64_t kBig = uint64_t{1} << 40;
  const uint64_t base = kMax - 3 * kBig;  // the first block leaves 3 * kBig - 1
  std::unique_ptr<Journal> j = MUST(Journal::Create(path_, base));
  ASSERT_OK(j->AppendBlock(kMax - 1));
  ASSERT_OK(j->AppendServed("m", "a", kBig + 1));
  ASSERT_OK(j->AppendServed("m", "b", kBig - 1));
  ASSERT_OK(j->AppendServed("m", "a", kBig - 1));
  EXPECT_EQ(j->allowance(), 0u);
  ExpectError(j->AppendServed("m", "a", 1), StatusCode::kFailedPrecondition, {"0 left"});
  ASSERT_OK(j->AppendBlock(kMax));
  ASSERT_OK(j->AppendServed("m", "b", 1));
  ExpectError(j->AppendServed("m", "b", kMax), StatusCode::kFailedPrecondition, {"0 left"});
  ExpectError(j->AppendBlock(kMax), StatusCode::kInvalidArgument, {"does not move past"});
  const UsageCounts expected = Counts({{{"m", "a"}, 2 * kBig}, {{"m", "b"}, kBig}});
  EXPECT_EQ(j->Snapshot().counts, expected);
  j.reset();

  OpenedJournal opened = MUST(Journal::Open(path_, kMax));
  EXPECT_EQ(opened.reconciliation.served, expected);
  EXPECT_EQ(opened.reconciliation.served_total, 3 * kBig);
  EXPECT_EQ(opened.reconciliation.unaccounted, 0u);
  EXPECT_FALSE(opened.reconciliation.journal_behind_counter);
  EXPECT_EQ(opened.reconciliation.budget_used, kMax);
}

// ----- crashes ---------------------------------------------------------------------------------

TEST_F(JournalTest, TornTailAtEveryByteOfTheLastRecordIsCutReportedAndNeverCounted) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  const size_t last = RecordStarts(file).back();
  const std::string cut_path = Path("cut");
  for (size_t cut = last; cut < file.size(); ++cut) {
    SCOPED_TRACE("file cut at " + std::to_string(cut));
    Put(cut_path, ByteSpan(file).first(cut));
    OpenedJournal opened = MUST(Journal::Open(cut_path, kLastBlock));
    const Reconciliation& r = opened.reconciliation;
    EXPECT_EQ(r.torn_tail_bytes, cut - last);
    EXPECT_EQ(r.torn_tail.empty(), cut == last) << r.torn_tail;
    EXPECT_EQ(r.last_seq, 6u);
    EXPECT_EQ(r.served, kServedBeforeLast);
    EXPECT_EQ(FileBytes(cut_path).size(), last) << "the torn tail was not cut off the file";
    // Appends continue the chain from the last whole record.
    ASSERT_OK(opened.journal->AppendServed("m1", "kiosk", 1));
    opened.journal.reset();
    OpenedJournal again = MUST(Journal::Open(cut_path, kLastBlock));
    EXPECT_EQ(again.reconciliation.torn_tail_bytes, 0u);
    EXPECT_EQ(again.reconciliation.served, kAllServed);
    EXPECT_EQ(FileBytes(cut_path), file);
  }
}

TEST_F(JournalTest, ZeroFilledTailLeftByACrashIsCut) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  const size_t last = RecordStarts(file).back();
  // Whole blocks of zeros after the records, or after part of the last record.
  for (size_t keep : {file.size(), last, last + 3, last + 20}) {
    SCOPED_TRACE("zeros after byte " + std::to_string(keep));
    Bytes torn(file.begin(), file.begin() + static_cast<ptrdiff_t>(keep));
    torn.resize(keep + 4096, 0);
    Put(path_, torn);
    OpenedJournal opened = MUST(Journal::Open(path_, kLastBlock));
    const bool whole = keep == file.size();
    EXPECT_EQ(opened.reconciliation.torn_tail_bytes, torn.size() - (whole ? file.size() : last));
    EXPECT_EQ(opened.reconciliation.served, whole ? kAllServed : kServedBeforeLast);
  }
}

// A real process kill in the middle of appends from several threads: every append acknowledged
// before the kill is in the journal, at most one unacknowledged one per thread is, nothing else
// is lost or broken, and the counter (advanced before each block is recorded) never counts as
// a rollback. The child reports on a pipe: "B <counter>" before each block (that is its TPM
// advance), "S <client>" after each acknowledged append.
constexpr int kChildThreads = 4;

void ChildLine(int fd, const std::string& line) {
  const std::string s = line + "\n";  // below PIPE_BUF: lines never interleave
  if (write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size())) _exit(4);
}

[[noreturn]] void ChildAppends(const std::string& path, uint64_t counter, int fd,
                               Durability durability) {
  Result<OpenedJournal> opened = Journal::Open(path, counter, JournalOptions{kBlock});
  if (!opened) ChildLine(fd, "E " + opened.error().ToString());
  if (!opened) _exit(3);
  Journal& j = *opened->journal;
  std::mutex tpm_mu;
  if (counter > j.last_block() && !j.AppendBlock(counter).ok()) _exit(3);
  std::vector<std::thread> threads;
  for (int t = 0; t < kChildThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string client = "c" + std::to_string(t);
      while (true) {
        const Status s = j.AppendServed("m", client, 1, durability);
        if (s.ok()) {
          ChildLine(fd, "S " + client);
          continue;
        }
        if (s.code() != StatusCode::kFailedPrecondition) ChildLine(fd, "E " + s.ToString());
        if (s.code() != StatusCode::kFailedPrecondition) _exit(3);
        std::lock_guard lock(tpm_mu);
        if (j.allowance() > 0) continue;
        counter = j.last_block() + kBlock;
        ChildLine(fd, "B " + std::to_string(counter));
        const Status b = j.AppendBlock(counter);
        if (!b.ok()) ChildLine(fd, "E " + b.ToString());
        if (!b.ok()) _exit(3);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  _exit(0);
}

// Runs the child for `run_for`, kills it, and returns every whole line it wrote.
std::vector<std::string> RunAndKill(const std::string& path, uint64_t counter,
                                    std::chrono::milliseconds run_for,
                                    Durability durability = Durability::kSynced) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {"E pipe2"};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    ChildAppends(path, counter, fds[1], durability);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + run_for;
  for (auto now = std::chrono::steady_clock::now(); now < deadline;
       now = std::chrono::steady_clock::now()) {
    pollfd p{fds[0], POLLIN, 0};
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
    if (poll(&p, 1, static_cast<int>(wait.count()) + 1) <= 0) continue;
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  if (pid > 0) kill(pid, SIGKILL);
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  if (pid > 0) waitpid(pid, nullptr, 0);
  std::vector<std::string> lines;
  for (size_t start = 0, end; (end = out.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(out.substr(start, end - start));  // a line the kill cut was never acknowledged
  }
  if (pid < 0) lines.push_back("E fork");
  return lines;
}

class JournalKillTest : public JournalTest, public ::testing::WithParamInterface<Durability> {};

TEST_P(JournalKillTest, KilledWhileAppendingFromThreadsLosesNothingAcknowledged) {
  ASSERT_TRUE(Journal::Create(path_, kBase).has_value());
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  uint64_t counter = kBase;
  std::map<std::string, uint64_t> acked;
  int rounds = 0;
  for (; rounds < 6; ++rounds) {
    const std::chrono::milliseconds run_for(std::uniform_int_distribution<int>(20, 150)(rng));
    for (const std::string& line : RunAndKill(path_, counter, run_for, GetParam())) {
      ASSERT_NE(line[0], 'E') << "round " << rounds << ": " << line;
      if (line[0] == 'B') counter = std::max<uint64_t>(counter, std::stoull(line.substr(2)));
      if (line[0] == 'S') ++acked[line.substr(2)];
    }
    OpenedJournal opened = MUST(Journal::Open(path_, counter, JournalOptions{kBlock}));
    const Reconciliation& r = opened.reconciliation;
    EXPECT_FALSE(r.rollback_suspected) << "round " << rounds;
    EXPECT_LE(r.unrecorded_advance, kBlock);
    EXPECT_EQ(r.budget_used, counter);
    for (const auto& [client, n] : acked) {
      const auto it = r.served.find(UsageKey{"m", client});
      const uint64_t served = it == r.served.end() ? 0 : it->second;
      EXPECT_GE(served, n) << client << ": an acknowledged append is missing";
      EXPECT_LE(served, n + static_cast<uint64_t>(rounds) + 1) << client;
    }
  }
  uint64_t total = 0;
  for (const auto& entry : acked) total += entry.second;
  EXPECT_GT(total, 0u) << "the child never acknowledged an append";
}

// kSynced: each acknowledged append was fdatasync'd. kWritten: each was only written, which is
// what the agent does per request; a killed process loses nothing the kernel has.
INSTANTIATE_TEST_SUITE_P(Durability, JournalKillTest,
                         ::testing::Values(Durability::kSynced, Durability::kWritten),
                         [](const ::testing::TestParamInfo<Durability>& p) {
                           return p.param == Durability::kSynced ? "Synced" : "Written";
                         });

TEST_F(JournalTest, WrittenRecordsAreInTheFileAtOnceAndInSnapshotsOnlyOnceSynced) {
  ASSERT_TRUE(Journal::Create(path_, kBase).has_value());
  OpenedJournal opened = MUST(Journal::Open(path_, kBase + kBlock));
  Journal& j = *opened.journal;
  ASSERT_OK(j.AppendBlock(kBase + kBlock));
  ASSERT_OK(j.AppendServed("m1", "kiosk", 3, Durability::kWritten));
  ASSERT_OK(j.AppendServed("m1", "web", 1, Durability::kWritten));
  EXPECT_EQ(j.allowance(), kBlock - 4);
  // Another reader of the file (the agent restarted after a kill) already sees them...
  const JournalScan scan = MUST(ScanJournal(FileBytes(path_), path_));
  EXPECT_EQ(scan.state.served_total, 4u);
  EXPECT_EQ(scan.torn_tail_bytes, 0u);
  // ...but a usage report is made only of durable records.
  EXPECT_EQ(j.Snapshot().total, 0u);
  ASSERT_OK(j.Sync());
  EXPECT_EQ(j.Snapshot().counts, Counts({{{"m1", "kiosk"}, 3}, {{"m1", "web"}, 1}}));
  // A block makes what came before it durable as well.
  ASSERT_OK(j.AppendServed("m1", "kiosk", 6, Durability::kWritten));
  ASSERT_OK(j.AppendBlock(kBase + 2 * kBlock));
  EXPECT_EQ(j.Snapshot().total, 10u);
}

TEST_F(JournalTest, FailedWriteRefusesLaterAppendsAndReopenCutsThePartialRecord) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  {
    OpenedJournal opened = MUST(Journal::Open(path_, kLastBlock + kBlock));
    Journal& j = *opened.journal;
    // The file may grow by 20 more bytes: the next record is written in part, then EFBIG.
    rlimit saved{};
    ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
    const auto previous_handler = signal(SIGXFSZ, SIG_IGN);
    rlimit small = saved;
    small.rlim_cur = file.size() + 20;
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    const Status failed = j.AppendBlock(kLastBlock + kBlock);
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, previous_handler);

    ASSERT_FALSE(failed.ok());
    ExpectError(failed, failed.code(), {path_, "opened again"});
    EXPECT_EQ(FileBytes(path_).size(), file.size() + 20);
    // Sticky: the file ends in part of a record, so nothing may follow it.
    EXPECT_EQ(j.AppendServed("m1", "kiosk", 1).ToString(), failed.ToString());
    EXPECT_EQ(j.AppendBlock(kLastBlock + 2 * kBlock).ToString(), failed.ToString());
    EXPECT_EQ(j.Snapshot().counts, kAllServed);
  }
  OpenedJournal opened = MUST(Journal::Open(path_, kLastBlock + kBlock));
  EXPECT_EQ(opened.reconciliation.torn_tail_bytes, 20u);
  EXPECT_EQ(opened.reconciliation.last_seq, 7u);
  EXPECT_EQ(opened.reconciliation.unrecorded_advance, kBlock);
  EXPECT_EQ(FileBytes(path_), file);
}

// ----- corruption and tampering ---------------------------------------------------------------

TEST_F(JournalTest, FlippedBitAnywhereBeforeTheLastRecordIsRefusedNamingFileAndOffset) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  const std::vector<size_t> starts = RecordStarts(file);
  for (size_t i = 0; i < starts.back(); ++i) {
    for (uint8_t bit : {0x01, 0x80}) {
      SCOPED_TRACE("byte " + std::to_string(i) + " ^ " + std::to_string(bit));
      Bytes bad = file;
      bad[i] ^= bit;
      Put(path_, bad);
      const Status s = OpenError(path_, kLastBlock);
      if (i == 8 || i == 9) {  // the version: the rest may mean something else in another one
        ExpectError(s, StatusCode::kUnimplemented, {path_, "offset 8", "version"});
        continue;
      }
      ExpectError(s, StatusCode::kDataLoss, {path_, "offset ", "move it aside"});
      if (i >= kJournalHeaderBytes) {
        const size_t record = *std::prev(std::upper_bound(starts.begin(), starts.end(), i));
        ExpectError(s, StatusCode::kDataLoss, {"offset " + std::to_string(record) + ":"});
      }
    }
  }
}

TEST_F(JournalTest, FlippedBitInTheLastRecordIsNeverCounted) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  for (size_t i = RecordStarts(file).back(); i < file.size(); ++i) {
    SCOPED_TRACE("byte " + std::to_string(i));
    Bytes bad = file;
    bad[i] ^= 0x01;
    Put(path_, bad);
    // Refused (a corrupt length), or cut as a torn tail: a crash looks the same there.
    Result<OpenedJournal> opened = Journal::Open(path_, kLastBlock);
    if (!opened) {
      EXPECT_EQ(opened.error().code(), StatusCode::kDataLoss) << opened.error().ToString();
      continue;
    }
    EXPECT_EQ(opened->reconciliation.served, kServedBeforeLast);
    EXPECT_GT(opened->reconciliation.torn_tail_bytes, 0u);
  }
}

TEST_F(JournalTest, ReorderedRemovedAndDuplicatedRecordsAreRefused) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  const std::vector<size_t> starts = RecordStarts(file);
  auto record = [&](size_t i) {
    const size_t end = i + 1 < starts.size() ? starts[i + 1] : file.size();
    return Bytes(file.begin() + static_cast<ptrdiff_t>(starts[i]),
                 file.begin() + static_cast<ptrdiff_t>(end));
  };
  auto file_of = [&](std::initializer_list<size_t> order) {
    Bytes out(file.begin(), file.begin() + kJournalHeaderBytes);
    for (size_t i : order) AppendBytes(out, record(i));
    return out;
  };
  const std::pair<const char*, Bytes> cases[] = {
      {"records 2 and 3 swapped", file_of({0, 2, 1, 3, 4, 5, 6})},
      {"record 3 removed", file_of({0, 1, 3, 4, 5, 6})},
      {"record 2 twice", file_of({0, 1, 1, 2, 3, 4, 5, 6})},
      {"the last two swapped", file_of({0, 1, 2, 3, 4, 6, 5})},
  };
  for (const auto& [what, bytes] : cases) {
    SCOPED_TRACE(what);
    Put(path_, bytes);
    ExpectError(OpenError(path_, kLastBlock), StatusCode::kDataLoss, {path_, "fails its checksum"});
  }
}

TEST_F(JournalTest, RecordsSplicedFromAnotherJournalAreRefused) {
  // Two journals with the same base and the same records differ in their random id only.
  const std::string other = Path("other");
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  ASSERT_NO_FATAL_FAILURE(WriteStandard(other));
  const Bytes mine = FileBytes(path_);
  const Bytes theirs = FileBytes(other);
  ASSERT_NE(mine, theirs);
  const size_t third = RecordStarts(mine)[2];
  Bytes spliced(mine.begin(), mine.begin() + static_cast<ptrdiff_t>(third));
  spliced.insert(spliced.end(), theirs.begin() + static_cast<ptrdiff_t>(third), theirs.end());
  Put(path_, spliced);
  ExpectError(OpenError(path_, kLastBlock), StatusCode::kDataLoss,
              {"offset " + std::to_string(third), "another journal"});
}

// Records with a valid chain (as a forger or a buggy writer makes them) must still obey the
// rules a Journal appends by.
TEST_F(JournalTest, ChainedRecordsThatBreakTheRulesAreRefused) {
  const JournalId id{1, 2, 3};
  auto block = [](uint64_t seq, uint64_t counter) {
    JournalRecord r;
    r.seq = seq;
    r.counter = counter;
    return r;
  };
  auto served = [](uint64_t seq, std::string model, std::string client, uint64_t count) {
    JournalRecord r;
    r.seq = seq;
    r.type = JournalRecordType::kServed;
    r.model_id = std::move(model);
    r.client = std::move(client);
    r.count = count;
    return r;
  };
  struct Case {
    const char* what;
    std::vector<JournalRecord> records;
    const char* error;
  };
  const Case cases[] = {
      {"a gap in seq", {block(1, 1010), block(3, 1020)}, "sequence number 3"},
      {"seq restarting", {block(1, 1010), block(1, 1020)}, "sequence number 1"},
      {"a block going back", {block(1, 1010), block(2, 1005)}, "does not move past"},
      {"a block at the base", {block(1, kBase)}, "does not move past"},
      {"served before any block", {served(1, "m", "c", 1)}, "advance the TPM counter"},
      {"served beyond the block", {block(1, 1010), served(2, "m", "c", 11)}, "10 left"},
      {"a count of 0", {block(1, 1010), served(2, "m", "c", 0)}, "count of 0"},
      {"an empty model", {block(1, 1010), served(2, "", "c", 1)}, "model id is empty"},
      {"a model too long", {block(1, 1010), served(2, std::string(65, 'm'), "c", 1)}, "65 bytes"},
      {"a control character", {block(1, 1010), served(2, "m", "c\x01", 1)}, "control"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Bytes file = EncodeJournalHeader(kBase, id);
    crypto::Sha256Digest chain = JournalHeaderHash(ByteSpan(file).first(kJournalHeaderHashedBytes));
    for (const JournalRecord& r : c.records) EncodeJournalRecord(r, chain, file);
    Put(path_, file);
    ExpectError(OpenError(path_, 2000), StatusCode::kDataLoss, {path_, c.error});
  }
}

TEST_F(JournalTest, MorePairsThanTheJournalHoldsAreRefused) {
  const uint64_t top = kBase + kJournalMaxPairs + 2;  // room for every record below
  Bytes file = EncodeJournalHeader(kBase, JournalId{});
  crypto::Sha256Digest chain = JournalHeaderHash(ByteSpan(file).first(kJournalHeaderHashedBytes));
  JournalRecord r;
  r.seq = 1;
  r.counter = top;
  EncodeJournalRecord(r, chain, file);
  r.type = JournalRecordType::kServed;
  r.model_id = "m";
  r.count = 1;
  for (size_t i = 0; i < kJournalMaxPairs; ++i) {
    r.seq = i + 2;
    r.client = "c" + std::to_string(i);
    EncodeJournalRecord(r, chain, file);
  }
  r.client = "c0";  // a pair it has: still counted
  ++r.seq;
  EncodeJournalRecord(r, chain, file);
  Put(path_, file);
  OpenedJournal opened = MUST(Journal::Open(path_, top));
  EXPECT_EQ(opened.reconciliation.served.size(), kJournalMaxPairs);
  ExpectError(opened.journal->AppendServed("m", "one-too-many", 1), StatusCode::kResourceExhausted,
              {"16384"});
  opened.journal.reset();

  r.client = "one-too-many";
  ++r.seq;
  EncodeJournalRecord(r, chain, file);
  Put(path_, file);
  ExpectError(OpenError(path_, top), StatusCode::kDataLoss,
              {"record " + std::to_string(r.seq), "16384"});
}

// A journal of the header and one record with the given fields (seq onwards), whose length
// fields and hash are right: what is wrong is inside.
Bytes WithRawRecord(ByteSpan fields, uint32_t length) {
  Bytes file = EncodeJournalHeader(kBase, JournalId{});
  const crypto::Sha256Digest h0 =
      JournalHeaderHash(ByteSpan(file).first(kJournalHeaderHashedBytes));
  const size_t start = file.size();
  AppendBigEndian32(file, length);
  AppendBigEndian32(file, ~length);
  AppendBytes(file, fields);
  AppendBytes(file, JournalRecordHash(h0, ByteSpan(file).subspan(start)));
  return file;
}

Bytes Fields(uint8_t type, std::initializer_list<uint8_t> payload) {
  Bytes f;
  AppendBigEndian64(f, 1);
  f.push_back(type);
  f.insert(f.end(), payload);
  return f;
}

TEST_F(JournalTest, MalformedRecordsAreRefusedNamingTheOffset) {
  const std::pair<Bytes, const char*> cases[] = {
      {Fields(4, {0, 0, 0, 0, 0, 0, 0x03, 0xf2}), "unknown type 4"},
      {Fields(1, {0, 0, 0, 0, 0, 0, 0x03, 0xf2, 0}), "do not fill"},
      // count 1, a model of 5 bytes in a record with room for 3
      {Fields(2, {0, 0, 0, 0, 0, 0, 0, 1, 5, 'm', 1, 'c'}), "do not fill"},
      // count 1, model "m", a client of 2 bytes, and one byte left over
      {Fields(2, {0, 0, 0, 0, 0, 0, 0, 1, 1, 'm', 1, 'c', 'd'}), "do not fill"},
  };
  for (const auto& [fields, error] : cases) {
    SCOPED_TRACE(error);
    const auto length = static_cast<uint32_t>(8 + fields.size() + crypto::kSha256Bytes);
    Put(path_, WithRawRecord(fields, length));
    ExpectError(OpenError(path_, 2000), StatusCode::kDataLoss,
                {path_, "offset " + std::to_string(kJournalHeaderBytes) + ":", error});
  }
}

TEST_F(JournalTest, LengthFieldsOutOfRangeAreRefusedWithoutAllocating) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  const Bytes file = FileBytes(path_);
  const size_t second = RecordStarts(file)[1];
  for (uint32_t length : {0xfffffff0u, 0xffffffffu, 252u, 56u, 0u}) {
    SCOPED_TRACE(length);
    // In the middle, and as the last thing in the file (where it is not a torn record either:
    // its two length fields agree, so it was written like that).
    for (bool at_end : {false, true}) {
      Bytes bad = file;
      if (at_end) bad.resize(second + 8);
      StoreBigEndian32(&bad[second], length);
      StoreBigEndian32(&bad[second + 4], ~length);
      Put(path_, bad);
      ExpectError(OpenError(path_, kLastBlock), StatusCode::kDataLoss,
                  {path_, "offset " + std::to_string(second), "claims " + std::to_string(length)});
    }
  }
}

TEST_F(JournalTest, HeadersThatAreNotAJournalOfThisVersionSaySo) {
  const Bytes good = EncodeJournalHeader(kBase, JournalId{7});
  auto rehashed = [](Bytes h) {
    const crypto::Sha256Digest hash =
        JournalHeaderHash(ByteSpan(h).first(kJournalHeaderHashedBytes));
    std::copy(hash.begin(), hash.end(), h.begin() + kJournalHeaderHashedBytes);
    return h;
  };
  Bytes magic = good;
  magic[7] = 'X';
  Bytes version = good;
  StoreBigEndian16(&version[8], 2);
  Bytes reserved = good;
  StoreBigEndian16(&reserved[10], 1);
  struct Case {
    const char* what;
    Bytes bytes;
    StatusCode code;
    std::vector<std::string> parts;
  };
  const Case cases[] = {
      {"empty", {}, StatusCode::kDataLoss, {"offset 0", "empty"}},
      {"short",
       Bytes(good.begin(), good.begin() + 30),
       StatusCode::kDataLoss,
       {"offset 0", "inside the header (30 of 68 bytes)"}},
      {"magic", rehashed(magic), StatusCode::kDataLoss, {"offset 0", "not a Custody metering"}},
      {"version",
       rehashed(version),
       StatusCode::kUnimplemented,
       {"offset 8", "version 2", "reads version 1", "move the file aside"}},
      {"reserved", rehashed(reserved), StatusCode::kDataLoss, {"offset 10", "reserved"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    Put(path_, c.bytes);
    const Status s = OpenError(path_, kBase);
    ExpectError(s, c.code, {path_});
    for (const std::string& part : c.parts) ExpectError(s, c.code, {part});
  }
}

// ----- reconciliation with the TPM counter ----------------------------------------------------

TEST_F(JournalTest, RestoredOlderCopyIsReportedAsARollbackWithTheNumbers) {
  const std::string old_copy = Path("old");
  {
    std::unique_ptr<Journal> j = MUST(Journal::Create(path_, kBase));
    ASSERT_OK(j->AppendBlock(1010));
    ASSERT_OK(j->AppendServed("m1", "kiosk", 10));
    Put(old_copy, FileBytes(path_));  // the copy someone keeps
    ASSERT_OK(j->AppendBlock(1020));
    ASSERT_OK(j->AppendServed("m1", "kiosk", 10));
    ASSERT_OK(j->AppendBlock(1030));
    ASSERT_OK(j->AppendServed("m1", "web", 5));
  }
  constexpr uint64_t kCounter = 1030;
  const Reconciliation current =
      MUST(Journal::Open(path_, kCounter, JournalOptions{kBlock})).reconciliation;
  EXPECT_FALSE(current.rollback_suspected);
  EXPECT_EQ(current.unaccounted, 5u);
  EXPECT_EQ(current.unrecorded_advance, 0u);

  Put(path_, FileBytes(old_copy));
  const Reconciliation r =
      MUST(Journal::Open(path_, kCounter, JournalOptions{kBlock})).reconciliation;
  EXPECT_TRUE(r.journal_behind_counter);
  EXPECT_TRUE(r.rollback_suspected);
  EXPECT_EQ(r.tpm_counter, kCounter);
  EXPECT_EQ(r.last_block, 1010u);
  EXPECT_EQ(r.served_total, 10u);
  EXPECT_EQ(r.served, Counts({{{"m1", "kiosk"}, 10}}));
  EXPECT_EQ(r.unaccounted, 20u);
  EXPECT_EQ(r.unrecorded_advance, 20u);
  EXPECT_EQ(r.budget_used, kCounter) << "the restored journal must not give budget back";
  EXPECT_EQ(r.torn_tail_bytes, 0u);

  // Until the agent records the counter, every open shows it again.
  OpenedJournal again = MUST(Journal::Open(path_, kCounter, JournalOptions{kBlock}));
  EXPECT_TRUE(again.reconciliation.rollback_suspected);
  EXPECT_EQ(again.journal->allowance(), 0u);
  ASSERT_OK(again.journal->AppendBlock(kCounter));
  EXPECT_EQ(again.journal->allowance(), 20u);
  again.journal.reset();
  EXPECT_FALSE(MUST(Journal::Open(path_, kCounter, JournalOptions{kBlock}))
                   .reconciliation.rollback_suspected);
}

TEST_F(JournalTest, WritingOffTheGapAfterARollbackGivesNoBudgetBackAcrossReopens) {
  std::unique_ptr<Journal> j = MUST(Journal::Create(path_, kBase));
  ASSERT_OK(j->AppendBlock(1010));
  ASSERT_OK(j->AppendServed("m1", "kiosk", 10));
  j.reset();
  constexpr uint64_t kCounter = 1040;  // 30 more were paid for by a journal that is gone
  OpenedJournal opened = MUST(Journal::Open(path_, kCounter, JournalOptions{kBlock}));
  ASSERT_TRUE(opened.reconciliation.rollback_suspected);
  ASSERT_OK(opened.journal->AppendBlock(kCounter));
  ExpectError(opened.journal->AppendWrittenOff(31), StatusCode::kFailedPrecondition,
              {"writing off 31", "30 left"});
  ASSERT_OK(opened.journal->AppendWrittenOff(30));
  EXPECT_EQ(opened.journal->allowance(), 0u);
  ExpectError(opened.journal->AppendServed("m1", "kiosk", 1), StatusCode::kFailedPrecondition,
              {"0 left"});
  const JournalSnapshot snapshot = opened.journal->Snapshot();
  EXPECT_EQ(snapshot.position, kCounter);
  EXPECT_EQ(snapshot.counts, Counts({{{"m1", "kiosk"}, 10}})) << "written off is not served";
  EXPECT_EQ(snapshot.written_off, 30u);
  // A usage report cursor before the record sees it; one after it does not (in memory).
  EXPECT_EQ(MUST(opened.journal->SnapshotSince(snapshot.through_seq)).written_off, 0u);
  opened.journal.reset();

  OpenedJournal reopened = MUST(Journal::Open(path_, kCounter, JournalOptions{kBlock}));
  // From the file: the agent restarted before it reported the write-off.
  EXPECT_EQ(MUST(reopened.journal->SnapshotSince(2)).written_off, 30u);
  EXPECT_EQ(MUST(reopened.journal->SnapshotSince(snapshot.through_seq)).written_off, 0u);
  const Reconciliation r = reopened.reconciliation;
  reopened.journal.reset();
  EXPECT_FALSE(r.journal_behind_counter);
  EXPECT_FALSE(r.rollback_suspected);
  EXPECT_EQ(r.written_off, 30u);
  EXPECT_EQ(r.served_total, 10u);
  EXPECT_EQ(r.unaccounted, 0u);
  // The record as FORMAT.md §10 gives it: type 3 and an 8-byte count.
  const Bytes file = FileBytes(path_);
  const std::vector<size_t> starts = RecordStarts(file);
  ASSERT_EQ(starts.size(), 4u);
  EXPECT_EQ(LoadBigEndian32(&file[starts[3]]), kJournalWrittenOffRecordBytes);
  EXPECT_EQ(file[starts[3] + 16], 3);
  EXPECT_EQ(LoadBigEndian64(&file[starts[3] + 17]), 30u);
}

TEST_F(JournalTest, CrashBetweenCounterAdvanceAndBlockRecordIsBehindButNoRollback) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  // One advance of B without its block record: a crash.
  const Reconciliation crash =
      MUST(Journal::Open(path_, kLastBlock + kBlock, JournalOptions{kBlock})).reconciliation;
  EXPECT_TRUE(crash.journal_behind_counter);
  EXPECT_FALSE(crash.rollback_suspected);
  EXPECT_EQ(crash.unrecorded_advance, kBlock);
  EXPECT_EQ(crash.unaccounted, kBlock + 5);
  EXPECT_EQ(crash.budget_used, kLastBlock + kBlock);
  // One more than B cannot be a crash.
  const Reconciliation more =
      MUST(Journal::Open(path_, kLastBlock + kBlock + 1, JournalOptions{kBlock})).reconciliation;
  EXPECT_TRUE(more.rollback_suspected);
  EXPECT_EQ(more.unrecorded_advance, kBlock + 1);
  // With a larger B configured it can.
  EXPECT_FALSE(MUST(Journal::Open(path_, kLastBlock + kBlock + 1, JournalOptions{kBlock + 1}))
                   .reconciliation.rollback_suspected);
}

TEST_F(JournalTest, CounterBehindTheJournalIsRefusedAndTheFileLeftAlone) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  ExpectError(OpenError(path_, kLastBlock - 1), StatusCode::kFailedPrecondition,
              {path_, "1020", "1019", "another TPM", "enroll the device again"});
  // Also with a torn tail, which a refused open must not cut either.
  Bytes torn = FileBytes(path_);
  torn.resize(torn.size() - 3);
  Put(path_, torn);
  ExpectError(OpenError(path_, 0), StatusCode::kFailedPrecondition, {"another TPM"});
  // And a journal without blocks: created at a counter this TPM has not reached.
  const std::string fresh = Path("fresh");
  ASSERT_TRUE(Journal::Create(fresh, kBase).has_value());
  ExpectError(OpenError(fresh, kBase - 1), StatusCode::kFailedPrecondition,
              {"created at 1000", "999"});
}

// ----- snapshots -------------------------------------------------------------------------------

TEST_F(JournalTest, SnapshotSinceCountsOnlyLaterRecordsAndSurvivesAReopen) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  OpenedJournal opened = MUST(Journal::Open(path_, kLastBlock + kBlock));
  Journal& j = *opened.journal;
  const JournalSnapshot first = j.Snapshot();
  EXPECT_EQ(first.counts, kAllServed);
  ASSERT_OK(j.AppendBlock(kLastBlock + kBlock));
  ASSERT_OK(j.AppendServed("m1", "kiosk", 2));
  ASSERT_OK(j.AppendServed("m9", "new", 7));
  const UsageCounts later = Counts({{{"m1", "kiosk"}, 2}, {{"m9", "new"}, 7}});

  // From the snapshot kept in memory...
  const JournalSnapshot second = MUST(j.SnapshotSince(first.through_seq));
  EXPECT_EQ(second.after_seq, 7u);
  EXPECT_EQ(second.through_seq, 10u);
  EXPECT_EQ(second.counts, later);
  EXPECT_EQ(second.total, 9u);
  EXPECT_EQ(second.position, first.position + 9);
  EXPECT_EQ(second.last_block, kLastBlock + kBlock);
  const JournalSnapshot none = MUST(j.SnapshotSince(second.through_seq));
  EXPECT_TRUE(none.counts.empty());
  EXPECT_EQ(none.total, 0u);
  ExpectError(j.SnapshotSince(11).error(), StatusCode::kInvalidArgument, {"record 11"});
  opened.journal.reset();

  // ...and from the file, after a restart.
  OpenedJournal reopened = MUST(Journal::Open(path_, kLastBlock + kBlock));
  const JournalSnapshot from_file = MUST(reopened.journal->SnapshotSince(first.through_seq));
  EXPECT_EQ(from_file.counts, later);
  EXPECT_EQ(from_file.through_seq, 10u);
  const JournalSnapshot middle = MUST(reopened.journal->SnapshotSince(4));
  EXPECT_EQ(middle.counts,
            Counts({{{"m1", "kiosk"}, 3}, {{"m2", "kiosk"}, 4}, {{"m9", "new"}, 7}}));
}

TEST_F(JournalTest, SnapshotSinceRefusesAFileChangedUnderneath) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  OpenedJournal opened = MUST(Journal::Open(path_, kLastBlock));
  const int fd = open(path_.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const uint8_t x = 'X';
  ASSERT_EQ(pwrite(fd, &x, 1, static_cast<off_t>(RecordStarts(FileBytes(path_))[2] + 20)), 1);
  close(fd);
  ExpectError(opened.journal->SnapshotSince(3).error(), StatusCode::kDataLoss,
              {path_, "fails its checksum"});
}

// ----- threads and processes ------------------------------------------------------------------

// Journal is thread-safe: appends from eight threads (with a ninth advancing the counter as
// blocks run out, and a tenth taking snapshots) are all counted, exactly, in one gapless chain.
TEST_F(JournalTest, ConcurrentAppendsFromEightThreadsAreAllDurableAndExact) {
  constexpr int kThreads = 8;
  constexpr uint64_t kAppends = 150;
  std::unique_ptr<Journal> j = MUST(Journal::Create(path_, kBase));
  std::mutex tpm_mu;
  uint64_t counter = kBase;
  std::atomic<int> running{kThreads};
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string model = t % 2 == 0 ? "even" : "odd";
      const std::string client = "c" + std::to_string(t);
      for (uint64_t n = 0; n < kAppends && !failed;) {
        const uint64_t count = 1 + n % 3;
        const Status s = j->AppendServed(model, client, count);
        if (s.ok()) {
          ++n;
          continue;
        }
        if (s.code() != StatusCode::kFailedPrecondition) {
          ADD_FAILURE() << s.ToString();
          failed = true;
        }
        std::lock_guard lock(tpm_mu);  // the agent's block advance: the TPM, then the journal
        if (j->allowance() >= count) continue;
        counter += kBlock;
        if (!j->AppendBlock(counter).ok()) failed = true;
      }
      --running;
    });
  }
  threads.emplace_back([&] {
    uint64_t seen = 0;
    while (running > 0) {
      const JournalSnapshot s = j->Snapshot();
      if (s.total < seen) failed = true;
      seen = s.total;
    }
  });
  for (std::thread& t : threads) t.join();
  ASSERT_FALSE(failed);

  // Each thread served 1, 2, 3, 1, 2, 3...: 50 of each.
  const uint64_t per_thread = 50 * (1 + 2 + 3);
  UsageCounts expected;
  for (int t = 0; t < kThreads; ++t) {
    expected[{t % 2 == 0 ? "even" : "odd", "c" + std::to_string(t)}] = per_thread;
  }
  EXPECT_EQ(j->Snapshot().counts, expected);
  j.reset();
  OpenedJournal opened = MUST(Journal::Open(path_, counter, JournalOptions{kBlock}));
  EXPECT_EQ(opened.reconciliation.served, expected);
  EXPECT_EQ(opened.reconciliation.served_total, kThreads * per_thread);
  EXPECT_EQ(opened.reconciliation.last_block, counter);
  EXPECT_EQ(opened.reconciliation.torn_tail_bytes, 0u);
  EXPECT_EQ(opened.reconciliation.unrecorded_advance, 0u);
}

TEST_F(JournalTest, SecondOpenerIsRefusedWhileTheJournalIsOpen) {
  ASSERT_NO_FATAL_FAILURE(WriteStandard(path_));
  OpenedJournal first = MUST(Journal::Open(path_, kLastBlock));
  Result<OpenedJournal> second = Journal::Open(path_, kLastBlock);
  ASSERT_FALSE(second.has_value());
  ExpectError(second.error(), StatusCode::kUnavailable, {path_, "in use"});
  first.journal.reset();
  EXPECT_TRUE(Journal::Open(path_, kLastBlock).has_value());
}

}  // namespace
}  // namespace custody::agent
