// custody_load_bench: what sealing costs at load time, through the real engine.
//
//   custody_load_bench --model PATH --kind KIND [--runs N] [--dir DIR]
//
// Seals the plain model at PATH once (format::SealFile, fresh vendor key and DEK, default 1 MiB
// chunks) into DIR, then times, median of N runs (default 11), the four ways a model reaches an
// engine, interleaved so drift hits all of them alike:
//   plain  (file):   ReadFile(model) + LoadEngine                                    [baseline]
//   sealed (file):   format::OpenFile(sealed file, all threads) + LoadEngine
//   plain  (memory): LoadEngine(kind, plain bytes already in memory)
//   sealed (memory): format::Open(sealed bytes already in memory, all threads) + LoadEngine
// Timings end when the engine is ready; releasing the input afterwards (wiping and unmapping the
// opened plaintext, freeing the read buffer) is reported beside them, and destroying the engine
// is not timed. Files come from a warm page cache. One untimed warm-up of each comes first: it
// pays the engine library's one-time set-up (libtorch's allocator hook, OpenCV's DNN registry),
// which would otherwise land on whichever ran first.
// Headline: sealed/plain from the file, target <= 1.10. The memory pair is stricter (the plain
// side then does no I/O at all) and is printed with the same target.
//
// Prints `RESULT key=value` lines for scripts/bench.sh.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "core/base/file.h"
#include "core/format/sealed.h"
#include "engine/engine.h"

namespace custody::bench {
namespace {

using Clock = std::chrono::steady_clock;

constexpr double kTargetSealedVsPlain = 1.10;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "custody_load_bench: %s\n", what.c_str());
  std::exit(2);
}

template <typename T>
T Check(Result<T> r, const std::string& what) {
  if (!r) Die(what + ": " + r.error().ToString());
  return std::move(r).value();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Args {
  std::string model;
  std::string kind;
  int runs = 11;
  std::string dir;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  const char* tmp = std::getenv("TMPDIR");
  a.dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(k + " needs a value");
      return argv[++i];
    };
    if (k == "--model") {
      a.model = next();
    } else if (k == "--kind") {
      a.kind = next();
    } else if (k == "--runs") {
      a.runs = std::max(1, std::stoi(next()));
    } else if (k == "--dir") {
      a.dir = next();
    } else {
      Die("usage: custody_load_bench --model PATH --kind KIND [--runs N] [--dir DIR]");
    }
  }
  if (a.model.empty() || a.kind.empty()) Die("--model and --kind are required");
  return a;
}

int Main(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);
  const uint64_t kMaxModelBytes = 4ull << 30;
  const Bytes plain = Check(ReadFile(args.model, kMaxModelBytes), "read model");
  auto vendor = Check(crypto::Ed25519PrivateKey::Generate(), "vendor key");
  const SecretBuffer dek = Check(format::GenerateDek(), "DEK");
  const auto& pub = vendor.public_key();
  format::SealOptions seal_options;
  seal_options.info.name = "load-bench";
  seal_options.info.version = "1";
  seal_options.info.engine = args.kind;
  const std::string sealed_path =
      args.dir + "/custody_load_bench." + std::to_string(getpid()) + ".sealed";
  Status s = format::SealFile(args.model, sealed_path, dek.span(), vendor, seal_options,
                              Overwrite::kAllow);
  if (!s.ok()) Die("seal: " + s.ToString());
  const Bytes sealed = Check(ReadFile(sealed_path, kMaxModelBytes + (64ull << 20)), "read sealed");

  engine::LoadOptions load_options;
  format::OpenOptions open_options;  // threads = all cores
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  std::string protection;
  auto load = [&](ByteSpan bytes) {
    auto e = engine::LoadEngine(args.kind, bytes, load_options);
    if (!e) Die("LoadEngine: " + e.error().ToString());
    protection = (*e)->Protection().report;
    return std::move(e).value();
  };
  // Each variant returns the seconds until the engine is ready (the headline) and adds the time
  // to release its input bytes afterwards (wiping the opened plaintext, freeing a read buffer) to
  // `release`; destroying the engine is not timed.
  struct Timing {
    std::vector<double> ready;
    std::vector<double> release;
  };
  auto timed = [](Timing& t, auto&& body) {
    auto t0 = Clock::now();
    Clock::time_point t1;
    std::unique_ptr<engine::Engine> e = body(t1);
    auto t2 = Clock::now();
    t.ready.push_back(std::chrono::duration<double>(t1 - t0).count());
    t.release.push_back(std::chrono::duration<double>(t2 - t1).count());
  };
  Timing pm, sm, pf, sf;
  auto plain_memory = [&](Timing& t) {
    timed(t, [&](Clock::time_point& ready) {
      auto e = load(plain);
      ready = Clock::now();
      return e;
    });
  };
  auto sealed_memory = [&](Timing& t) {
    timed(t, [&](Clock::time_point& ready) {
      auto opened = Check(format::Open(sealed, dek.span(), pub, open_options), "Open");
      auto e = load(opened.plaintext.span());
      ready = Clock::now();
      return e;  // `opened` is wiped and unmapped here, after `ready`
    });
  };
  auto plain_file = [&](Timing& t) {
    timed(t, [&](Clock::time_point& ready) {
      Bytes bytes = Check(ReadFile(args.model, kMaxModelBytes), "read model");
      auto e = load(bytes);
      ready = Clock::now();
      return e;
    });
  };
  auto sealed_file = [&](Timing& t) {
    timed(t, [&](Clock::time_point& ready) {
      auto opened = Check(format::OpenFile(sealed_path, dek.span(), pub, open_options), "OpenFile");
      auto e = load(opened.plaintext.span());
      ready = Clock::now();
      return e;
    });
  };

  std::printf("custody_load_bench: %s (%s, %.1f MB), median of %d runs, Open with %d threads\n",
              args.model.c_str(), args.kind.c_str(), static_cast<double>(plain.size()) / 1e6,
              args.runs, threads);
  Timing warm_up;
  plain_memory(warm_up);
  sealed_memory(warm_up);
  plain_file(warm_up);
  sealed_file(warm_up);
  for (int r = 0; r < args.runs; ++r) {
    plain_file(pf);
    sealed_file(sf);
    plain_memory(pm);
    sealed_memory(sm);
  }
  std::remove(sealed_path.c_str());

  const double ratio_file = Median(sf.ready) / Median(pf.ready);
  const double ratio_memory = Median(sm.ready) / Median(pm.ready);
  const bool pass_file = ratio_file <= kTargetSealedVsPlain;
  const bool pass_memory = ratio_memory <= kTargetSealedVsPlain;
  auto row = [](const char* label, const Timing& t) {
    std::printf("  %-50s %8.1f ms   (then %5.1f ms to release the input)\n", label,
                Median(t.ready) * 1e3, Median(t.release) * 1e3);
  };
  std::printf("  engine memory: %s\n", protection.c_str());
  std::printf("  time until the engine is ready (median):\n");
  row("plain:  ReadFile + LoadEngine [baseline]", pf);
  row("sealed: OpenFile + LoadEngine", sf);
  row("plain:  LoadEngine(plain bytes already in memory)", pm);
  row("sealed: Open(sealed bytes in memory) + LoadEngine", sm);
  std::printf("  sealed/plain, from the file   = %.3f   target <= %.2f   %s\n", ratio_file,
              kTargetSealedVsPlain, pass_file ? "PASS" : "MISS");
  std::printf(
      "  sealed/plain, from memory     = %.3f   target <= %.2f   %s  (stricter: the plain\n"
      "    side reads nothing, so all of Open's allocation and decryption shows)\n",
      ratio_memory, kTargetSealedVsPlain, pass_memory ? "PASS" : "MISS");
  std::printf("RESULT load_kind=%s\n", args.kind.c_str());
  std::printf("RESULT load_plain_file_ms=%.1f\n", Median(pf.ready) * 1e3);
  std::printf("RESULT load_sealed_file_ms=%.1f\n", Median(sf.ready) * 1e3);
  std::printf("RESULT load_ratio_file=%.3f %s\n", ratio_file, pass_file ? "PASS" : "MISS");
  std::printf("RESULT load_plain_memory_ms=%.1f\n", Median(pm.ready) * 1e3);
  std::printf("RESULT load_sealed_memory_ms=%.1f\n", Median(sm.ready) * 1e3);
  std::printf("RESULT load_ratio_memory=%.3f %s\n", ratio_memory, pass_memory ? "PASS" : "MISS");
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
