// custody_seal_rss: peak resident memory of sealing a large model.
//
//   custody_seal_rss --work-dir DIR [--size-mib N] [--cli PATH] [--seal-tool PATH] [--keep]
//
// Writes an N MiB (default 2048) model of pseudo-random bytes (a real file, not sparse, so the
// sealer reads real page-cache data) into a fresh directory under DIR, then runs each sealer as a
// child process and reads its peak RSS from wait4()'s rusage.ru_maxrss:
//   --cli PATH        `custody keygen` once, then `custody seal` (what a vendor runs; the
//                     headline figure), and `custody --help` to show the start-up share;
//   --seal-tool PATH  custody_bench_seal_file, which calls format::SealFile: the library's own
//                     cost, and the headline when the build has no CLI.
// Each sealed output is checked (header authenticates, size is what the header implies) and all
// files are removed afterwards unless --keep.
//
// Note on the measurement: Linux carries the pre-exec RSS high-water mark of the forked child
// (a copy of this runner) into ru_maxrss, so the runner's own peak RSS, printed as the floor, is
// a lower bound on what can be reported. The runner keeps it small (1 MiB write buffer).
//
// Prints `RESULT key=value` lines for scripts/bench.sh.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/format/sealed.h"

namespace custody::bench {
namespace {

constexpr double kTargetPeakRssBytes = 64e6;  // 64 MB

// Our mkdtemp directory, removed with everything in it on every exit path (including a sealer's
// leftover temporary file): 2 GiB leftovers are not welcome.
std::string g_work_dir;
bool g_keep = false;

void Cleanup() {
  if (g_keep || g_work_dir.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(g_work_dir, ec);
  if (ec) {
    std::fprintf(stderr, "custody_seal_rss: could not remove %s: %s\n", g_work_dir.c_str(),
                 ec.message().c_str());
  }
  g_work_dir.clear();
}

struct Args {
  std::string work_dir;
  uint64_t size_mib = 2048;
  std::string cli;
  std::string seal_tool;
  bool keep = false;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  Flags flags;
  flags.values["--work-dir"] = [&](const std::string& v) { a.work_dir = v; };
  flags.values["--size-mib"] = [&](const std::string& v) { a.size_mib = std::stoull(v); };
  flags.values["--cli"] = [&](const std::string& v) { a.cli = v; };
  flags.values["--seal-tool"] = [&](const std::string& v) { a.seal_tool = v; };
  flags.switches["--keep"] = [&] { a.keep = true; };
  ParseFlags(argc, argv, flags,
             "custody_seal_rss --work-dir DIR [--size-mib N] [--cli PATH] [--seal-tool PATH] "
             "[--keep]");
  if (a.work_dir.empty() || (a.cli.empty() && a.seal_tool.empty())) {
    Die("need --work-dir and at least one of --cli / --seal-tool");
  }
  return a;
}

// Writes `bytes` of splitmix64 output to `path` in 1 MiB blocks and fsyncs it.
void WriteModel(const std::string& path, uint64_t bytes) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) Die("create " + path + ": " + std::strerror(errno));
  Bytes block(1u << 20);
  uint64_t state = 0x5ea1ed;
  for (uint64_t done = 0; done < bytes;) {
    FillPseudoRandom(block, &state);
    size_t n = static_cast<size_t>(std::min<uint64_t>(block.size(), bytes - done));
    const uint8_t* p = block.data();
    for (size_t off = 0; off < n;) {
      ssize_t w = write(fd, p + off, n - off);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) Die("write " + path + ": " + std::strerror(errno));
      off += static_cast<size_t>(w);
    }
    done += n;
  }
  if (fsync(fd) != 0) Die("fsync " + path + ": " + std::strerror(errno));
  close(fd);
}

struct ChildResult {
  int exit_status = -1;
  long maxrss_kib = 0;
  double seconds = 0;
};

// fork + exec + wait4; the child's stdout and stderr go to `log_path`.
ChildResult Run(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<char*> cargv;
  for (const auto& s : argv) cargv.push_back(const_cast<char*>(s.c_str()));
  cargv.push_back(nullptr);
  int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (log < 0) Die("open " + log_path + ": " + std::strerror(errno));
  auto t0 = std::chrono::steady_clock::now();
  pid_t pid = fork();
  if (pid < 0) Die(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    dup2(log, STDOUT_FILENO);
    dup2(log, STDERR_FILENO);
    execv(cargv[0], cargv.data());
    std::fprintf(stderr, "exec %s: %s\n", cargv[0], std::strerror(errno));
    _exit(127);
  }
  close(log);
  ChildResult r;
  struct rusage ru {};
  int status = 0;
  for (;;) {
    pid_t w = wait4(pid, &status, 0, &ru);
    if (w == pid) break;
    if (w < 0 && errno == EINTR) continue;
    Die(std::string("wait4: ") + std::strerror(errno));
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.maxrss_kib = ru.ru_maxrss;  // KiB on Linux
  return r;
}

void DumpLog(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return;
  char line[4096];
  while (std::fgets(line, sizeof(line), f) != nullptr) std::fprintf(stderr, "    | %s", line);
  std::fclose(f);
}

// Checks that `out` is a complete, authentic sealed model of `size` plaintext bytes.
void CheckSealed(const std::string& out, uint64_t size) {
  auto header = format::ReadHeaderFromFile(out, nullptr);
  if (!header) Die("sealed output does not parse: " + header.error().ToString());
  struct stat st {};
  if (stat(out.c_str(), &st) != 0) Die("stat " + out);
  if (header->plaintext_size != size ||
      header->sealed_size() != static_cast<uint64_t>(st.st_size)) {
    Die("sealed output " + out + " has the wrong size");
  }
}

double Mb(long kib) { return static_cast<double>(kib) * 1024.0 / 1e6; }

// Runs one sealer over `model`, checks its output, deletes it (2 GiB each), prints a line.
ChildResult Measure(const std::string& label, const std::vector<std::string>& cmd,
                    const std::string& out, uint64_t size, const std::string& log) {
  ChildResult r = Run(cmd, log);
  if (r.exit_status != 0) {
    DumpLog(log);
    Die(label + " exited with status " + std::to_string(r.exit_status));
  }
  CheckSealed(out, size);
  std::remove(out.c_str());
  std::printf("  %-44s peak RSS %8ld KiB = %6.1f MB   (%.1f s, %.0f MB/s incl. fsync)\n",
              label.c_str(), r.maxrss_kib, Mb(r.maxrss_kib), r.seconds,
              static_cast<double>(size) / r.seconds / 1e6);
  return r;
}

int Main(int argc, char** argv) {
  InitBench("custody_seal_rss", &Cleanup);
  const Args args = ParseArgs(argc, argv);
  const uint64_t size = args.size_mib << 20;
  std::string tmpl = args.work_dir + "/seal_rss.XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp " + tmpl + ": " + std::strerror(errno));
  const std::string dir = tmpl;
  const std::string model = dir + "/model.bin";
  const std::string out = dir + "/model.sealed";
  const std::string key = dir + "/vendor.key";
  const std::string dek = dir + "/model.dek";
  const std::string log = dir + "/seal.log";
  g_keep = args.keep;
  g_work_dir = dir;

  std::printf("custody_seal_rss: sealing a %llu MiB model (pseudo-random bytes, not sparse)\n",
              static_cast<unsigned long long>(args.size_mib));
  WriteModel(model, size);

  // The headline is the CLI when there is one (what a vendor runs), else the library.
  long headline_kib = 0;
  std::string headline;
  if (!args.cli.empty()) {
    ChildResult kg = Run({args.cli, "keygen", "--out", key}, log);
    if (kg.exit_status != 0) {
      DumpLog(log);
      Die("custody keygen failed");
    }
    ChildResult r =
        Measure("custody seal (CLI)",
                {args.cli, "seal", model, "--engine", "bench", "--name", "seal-rss", "--version",
                 "1", "--signing-key", key, "--dek-out", dek, "--out", out},
                out, size, log);
    headline_kib = r.maxrss_kib;
    headline = "cli";
    // What the CLI costs before it reads a byte: loading the binary and its shared libraries.
    ChildResult idle = Run({args.cli, "--help"}, log);
    std::printf("  %-44s peak RSS %8ld KiB = %6.1f MB   (start-up alone)\n", "custody --help",
                idle.maxrss_kib, Mb(idle.maxrss_kib));
    std::printf("RESULT seal_cli_startup_rss_mb=%.1f\n", Mb(idle.maxrss_kib));
  }
  if (!args.seal_tool.empty()) {
    ChildResult r = Measure("format::SealFile (custody_bench_seal_file)",
                            {args.seal_tool, model, out}, out, size, log);
    std::printf("RESULT seal_library_rss_mb=%.1f\n", Mb(r.maxrss_kib));
    if (headline.empty()) {
      headline_kib = r.maxrss_kib;
      headline = "library";
    }
  }

  struct rusage self {};
  getrusage(RUSAGE_SELF, &self);
  const bool pass = Mb(headline_kib) < kTargetPeakRssBytes / 1e6;
  std::printf("  peak RSS sealing %llu MiB (%s): %.1f MB   target < 64 MB   %s\n",
              static_cast<unsigned long long>(args.size_mib), headline.c_str(), Mb(headline_kib),
              pass ? "PASS" : "MISS");
  std::printf("  (floor: this runner's own peak RSS, inherited across fork, is %ld KiB)\n",
              self.ru_maxrss);

  if (args.keep) std::printf("  kept %s\n", dir.c_str());
  Cleanup();

  std::printf("RESULT seal_peak_rss_mb=%.1f %s\n", Mb(headline_kib), pass ? "PASS" : "MISS");
  std::printf("RESULT seal_sealer=%s\n", headline.c_str());
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
