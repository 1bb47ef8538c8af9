// Crash safety with a real process kill: a child process runs Transacts (a usage report and its
// audit entry each) from several threads and acknowledges each report id on a pipe only after
// Transact returned; the parent SIGKILLs it at a random moment, reopens the database, and checks
// that every acknowledged report is there, that each report has exactly one audit entry, and
// that the whole audit chain verifies. Repeated for both durabilities.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "custodian/store/sqlite_ptr.h"
#include "custodian/store/sqlite_store.h"

namespace custody::custodian {
namespace {

using namespace std::chrono_literals;

constexpr int kRounds = 20;
constexpr auto kTimeBudget = 15s;  // per durability; rounds stop early past it
constexpr int kChildThreads = 4;
constexpr char kDevice[] = "dev_crash";

const TimePoint kT0 = TimePoint(std::chrono::seconds(1'700'000'000));

UsageReport Report(const std::string& id) {
  UsageReport r;
  r.device_id = kDevice;
  r.report_id = id;
  r.counter_value = 1;
  r.counts = {{"m1", "kiosk", 1}};
  r.received = kT0;
  return r;
}

void WriteLine(int fd, const std::string& line) {
  // One write() below PIPE_BUF is atomic: lines of different threads never interleave.
  const std::string s = line + "\n";
  if (::write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size())) _exit(4);
}

// The child: never returns. Report ids are "<round>-<thread>-<n>".
[[noreturn]] void ChildMain(const std::string& path, Durability durability, int fd, int round) {
  auto store = SqliteStore::Open(path, {durability});
  if (!store) {
    WriteLine(fd, "E " + store.error().ToString());
    _exit(3);
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kChildThreads; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t n = 0;; ++n) {
        const std::string id =
            std::to_string(round) + "-" + std::to_string(t) + "-" + std::to_string(n);
        Status s = (*store)->Transact([&](Transaction& tx) -> Status {
          CUSTODY_RETURN_IF_ERROR(tx.PutUsageReport(Report(id)));
          return tx.Audit(std::string("device:") + kDevice, "usage.report", id, {{"n", n}});
        });
        if (!s.ok()) {
          WriteLine(fd, "E " + s.ToString());
          _exit(3);
        }
        WriteLine(fd, id);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  _exit(0);
}

struct RoundResult {
  std::vector<std::string> acked;
  std::string child_error;
  bool killed = false;
};

// Forks a child, lets it run for `run_for`, kills it and collects what it acknowledged.
RoundResult RunChild(const std::string& path, Durability durability, int round,
                     std::chrono::milliseconds run_for) {
  RoundResult result;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe2 failed";
    return result;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork failed";
    return result;
  }
  if (pid == 0) {
    ::close(fds[0]);
    ChildMain(path, durability, fds[1], round);
  }
  ::close(fds[1]);
  std::string data;
  char buf[65536];
  const auto kill_at = std::chrono::steady_clock::now() + run_for;
  bool eof = false;
  while (!eof) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        kill_at - std::chrono::steady_clock::now());
    if (left <= 0ms) break;
    pollfd p{fds[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) eof = true;
    if (n > 0) data.append(buf, static_cast<size_t>(n));
  }
  ::kill(pid, SIGKILL);
  // Everything written before the kill is still in the pipe: drain it to EOF.
  while (true) {
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
  size_t start = 0;
  while (true) {
    const size_t end = data.find('\n', start);
    if (end == std::string::npos) break;  // a line cut by the kill was never acknowledged
    std::string line = data.substr(start, end - start);
    start = end + 1;
    if (line.rfind("E ", 0) == 0) {
      result.child_error = line;
    } else {
      result.acked.push_back(std::move(line));
    }
  }
  return result;
}

// Every report id in the database, read with a plain connection.
std::unordered_set<std::string> StoredReportIds(const std::string& path) {
  std::unordered_set<std::string> ids;
  sqlite3* raw = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite::SqliteDbPtr db(raw);
  sqlite3_stmt* stmt_raw = nullptr;
  EXPECT_EQ(
      sqlite3_prepare_v2(db.get(), "SELECT report_id FROM usage_reports", -1, &stmt_raw, nullptr),
      SQLITE_OK);
  sqlite::SqliteStmtPtr stmt(stmt_raw);
  while (stmt != nullptr && sqlite3_step(stmt.get()) == SQLITE_ROW) {
    ids.insert(reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), 0)));
  }
  return ids;
}

void RunCrashRounds(Durability durability, const char* name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() /
      ("custody-store-crash-" + std::to_string(getpid()) + "-" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "custodian.db").string();
  {
    auto store = SqliteStore::Open(path, {durability});
    ASSERT_TRUE(store.has_value()) << store.error().ToString();
    ASSERT_TRUE((*store)
                    ->Transact([](Transaction& tx) -> Status {
                      GroupRecord g;
                      g.name = "g";
                      CUSTODY_RETURN_IF_ERROR(tx.PutGroup(g));
                      DeviceRecord d;
                      d.device_id = kDevice;
                      d.group = "g";
                      return tx.PutDevice(d);
                    })
                    .ok());
  }

  const uint64_t seed = std::random_device{}();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> run_ms(2, 250);
  std::unordered_set<std::string> acked_all;
  size_t most_in_a_round = 0;
  int rounds_run = 0, rounds_without_ack = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < kRounds; ++round) {
    if (std::chrono::steady_clock::now() - start > kTimeBudget) break;
    const std::chrono::milliseconds run_for(run_ms(rng));
    RoundResult r = RunChild(path, durability, round, run_for);
    ++rounds_run;
    ASSERT_TRUE(r.child_error.empty()) << "round " << round << ": " << r.child_error;
    ASSERT_TRUE(r.killed) << "round " << round << ": the child was not killed";
    acked_all.insert(r.acked.begin(), r.acked.end());
    most_in_a_round = std::max(most_in_a_round, r.acked.size());
    if (r.acked.empty()) ++rounds_without_ack;

    // The store reopens (recovering the WAL) and its audit chain verifies.
    auto store = SqliteStore::Open(path, {durability});
    ASSERT_TRUE(store.has_value())
        << "round " << round << " (seed " << seed << "): " << store.error().ToString();
    auto audit = (*store)->AuditAfter(0, SIZE_MAX);
    ASSERT_TRUE(audit.has_value()) << audit.error().ToString();
    ASSERT_TRUE(protocol::VerifyAuditChain(*audit).ok())
        << "round " << round << ": " << protocol::VerifyAuditChain(*audit).ToString();
    store->reset();

    const std::unordered_set<std::string> stored = StoredReportIds(path);
    size_t missing = 0;
    for (const std::string& id : acked_all) missing += stored.count(id) == 0 ? 1 : 0;
    ASSERT_EQ(missing, 0u) << "round " << round << " (seed " << seed << ", killed after "
                           << run_for.count() << " ms): acknowledged reports were lost";
    // Each report committed together with its audit entry, and nothing else did.
    ASSERT_EQ(audit->size(), stored.size()) << "round " << round;
  }
  std::printf(
      "crash test (%s): %d kills (seed %llu), %zu acknowledged transactions all present after "
      "reopen (at most %zu in one run; %d kills before the first acknowledgement)\n",
      name, rounds_run, static_cast<unsigned long long>(seed), acked_all.size(), most_in_a_round,
      rounds_without_ack);
  std::filesystem::remove_all(dir);
}

TEST(SqliteStoreCrashTest, AcknowledgedTransactsSurviveSigkillWithProcessCrashDurability) {
  RunCrashRounds(Durability::kProcessCrash, "process-crash");
}

TEST(SqliteStoreCrashTest, AcknowledgedTransactsSurviveSigkillWithPowerLossDurability) {
  RunCrashRounds(Durability::kPowerLoss, "power-loss");
}

}  // namespace
}  // namespace custody::custodian
