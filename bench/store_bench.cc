// custody_store_bench: how many state changes per second the custodian's SQLite store commits.
//
//   custody_store_bench [--seconds S] [--threads N] [--dir DIR]
//
// A state change is what the custodian does per request: one Store::Transact holding one small
// record (a consumed 16-byte nonce) and its audit entry, durable when Transact returns. N threads
// (default 16, like concurrent HTTP handlers) each run Transacts back to back for S seconds
// (default 3), on a fresh database in DIR, once per durability:
//   kPowerLoss     synchronous=FULL: the WAL is fsync'd at every commit (one per batch);
//   kProcessCrash  synchronous=NORMAL: no fsync at commit, only at checkpoints.
// One thread alone is measured too, as context: it cannot share a commit with anybody, so its
// rate is one fsync (plus the work) per state change. The writer's batch counters show how many
// callbacks shared each commit (group commit, sqlite_store.h). The fsync latency of DIR's file
// system (4 KiB write + fdatasync) is printed first: it is what one commit costs at the least.
//
// Prints `RESULT key=value` lines for scripts/bench.sh.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/crypto/crypto.h"
#include "custodian/store/sqlite_store.h"

namespace custody::bench {
namespace {

using custodian::Durability;
using custodian::SqliteStore;
using custodian::Transaction;

constexpr double kTargetPowerLossPerSecond = 1000;

struct Args {
  double seconds = 3.0;
  int threads = 16;
  std::string dir = DefaultScratchDir();
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  Flags flags;
  flags.values["--seconds"] = [&](const std::string& v) { a.seconds = std::stod(v); };
  flags.values["--threads"] = [&](const std::string& v) { a.threads = std::max(1, std::stoi(v)); };
  flags.values["--dir"] = [&](const std::string& v) { a.dir = v; };
  ParseFlags(argc, argv, flags, "custody_store_bench [--seconds S] [--threads N] [--dir DIR]");
  return a;
}

std::string g_work_dir;
void Cleanup() {
  if (!g_work_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(g_work_dir, ec);
  }
}

// Median latency of a 4 KiB write + fdatasync in `dir`, in ms.
double FsyncMs(const std::string& dir) {
  const std::string path = dir + "/fsync-probe";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) Die("open " + path);
  std::vector<char> block(4096, 'x');
  std::vector<double> ms;
  for (int i = 0; i < 200; ++i) {
    const auto t0 = Clock::now();
    if (::pwrite(fd, block.data(), block.size(), 0) != static_cast<ssize_t>(block.size()) ||
        ::fdatasync(fd) != 0) {
      Die("write/fdatasync " + path);
    }
    ms.push_back(Seconds(t0, Clock::now()) * 1e3);
  }
  ::close(fd);
  ::unlink(path.c_str());
  return Median(ms);
}

struct Run {
  double per_second = 0;
  double mean_batch = 0;
  uint64_t largest_batch = 0;
  double median_ms = 0;
  double p99_ms = 0;
};

Run Measure(const std::string& dir, Durability durability, int threads, double seconds) {
  const std::string path = dir + "/store-" + std::to_string(static_cast<int>(durability)) + "-" +
                           std::to_string(threads) + ".db";
  auto store = Check(SqliteStore::Open(path, {durability}), "open " + path);
  const auto before = store->writer_stats();
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> latencies(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<double>& mine = latencies[static_cast<size_t>(t)];
      while (!stop.load(std::memory_order_relaxed)) {
        Bytes nonce = Check(crypto::RandomBytes(16), "random nonce");
        const auto t0 = Clock::now();
        Check(store->Transact([&](Transaction& tx) -> Status {
          CUSTODY_RETURN_IF_ERROR(tx.ConsumeNonce(nonce, "dev_bench", custodian::TimePoint{}));
          return tx.Audit("device:dev_bench", "attestation.nonce", "dev_bench",
                          {{"thread", t}, {"n", mine.size()}});
        }),
              "Transact");
        mine.push_back(Seconds(t0, Clock::now()) * 1e3);
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (std::thread& w : workers) w.join();
  const double elapsed = Seconds(start, Clock::now());
  const auto after = store->writer_stats();

  std::vector<double> all;
  for (const auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Run r;
  r.per_second = static_cast<double>(all.size()) / elapsed;
  const uint64_t batches = after.batches - before.batches;
  r.mean_batch = batches == 0 ? 0
                              : static_cast<double>(after.callbacks - before.callbacks) /
                                    static_cast<double>(batches);
  r.largest_batch = after.largest_batch;
  r.median_ms = Median(all);
  r.p99_ms = all.empty() ? 0 : all[std::min(all.size() - 1, all.size() * 99 / 100)];
  // The audit chain must verify after the run: speed that breaks it would be worthless.
  auto audit = Check(store->AuditAfter(0, SIZE_MAX), "read the audit log");
  Check(protocol::VerifyAuditChain(audit), "verify the audit chain");
  if (audit.size() != all.size()) Die("audit entries and state changes differ");
  return r;
}

void Print(const char* label, const Run& r) {
  std::printf(
      "  %-34s %9.0f /s   batch mean %6.1f, largest %4llu   latency median %6.2f ms, "
      "p99 %6.2f ms\n",
      label, r.per_second, r.mean_batch, static_cast<unsigned long long>(r.largest_batch),
      r.median_ms, r.p99_ms);
}

int Main(int argc, char** argv) {
  InitBench("custody_store_bench", Cleanup);
  const Args args = ParseArgs(argc, argv);
  g_work_dir = args.dir + "/custody-store-bench-" + std::to_string(::getpid());
  std::filesystem::create_directories(g_work_dir);

  const double fsync_ms = FsyncMs(g_work_dir);
  std::printf("store: %d threads x %.1f s per run, database in %s\n", args.threads, args.seconds,
              g_work_dir.c_str());
  std::printf("  fsync (4 KiB write + fdatasync), median: %.3f ms\n\n", fsync_ms);

  const std::string threads_label = std::to_string(args.threads) + " threads";
  const Run power = Measure(g_work_dir, Durability::kPowerLoss, args.threads, args.seconds);
  const Run power_1 = Measure(g_work_dir, Durability::kPowerLoss, 1, args.seconds);
  const Run crash = Measure(g_work_dir, Durability::kProcessCrash, args.threads, args.seconds);
  const Run crash_1 = Measure(g_work_dir, Durability::kProcessCrash, 1, args.seconds);
  std::printf("state changes (one record + one audit entry per Transact), durable on return:\n");
  Print(("kPowerLoss, " + threads_label).c_str(), power);
  Print("kPowerLoss, 1 thread", power_1);
  Print(("kProcessCrash, " + threads_label).c_str(), crash);
  Print("kProcessCrash, 1 thread", crash_1);
  const bool pass = power.per_second >= kTargetPowerLossPerSecond;
  std::printf("\n  kPowerLoss, %s: %.0f /s   target >= %.0f /s   %s\n", threads_label.c_str(),
              power.per_second, kTargetPowerLossPerSecond, Verdict(pass));

  std::printf("\nRESULT store_fsync_ms=%.3f\n", fsync_ms);
  std::printf("RESULT store_threads=%d\n", args.threads);
  std::printf("RESULT store_power_loss_per_s=%.0f %s\n", power.per_second, Verdict(pass));
  std::printf("RESULT store_power_loss_mean_batch=%.1f\n", power.mean_batch);
  std::printf("RESULT store_power_loss_1thread_per_s=%.0f\n", power_1.per_second);
  std::printf("RESULT store_process_crash_per_s=%.0f\n", crash.per_second);
  std::printf("RESULT store_process_crash_mean_batch=%.1f\n", crash.mean_batch);
  std::printf("RESULT store_process_crash_1thread_per_s=%.0f\n", crash_1.per_second);
  Cleanup();
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
