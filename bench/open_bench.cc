// custody_open_bench: how fast a sealed model opens, measured against OpenSSL's own AES-256-GCM.
//
//   custody_open_bench [--size-mib N] [--reps N] [--dir DIR]
//
// One model of N MiB (default 256) of pseudo-random bytes is sealed once with SealBytes at the
// default chunk size (1 MiB). Then, best of --reps runs each:
//   (a) OpenSSL EVP AES-256-GCM, one EVP_CIPHER_CTX keyed once, one thread, decrypting the very
//       chunks of the sealed blob (same nonces, AAD and tags; tag checked) from the blob into a
//       separate buffer that was touched beforehand: the pure cipher rate, the baseline;
//   (b) format::Open from memory, threads=1;
//   (c) format::Open from memory, threads=all cores;
//   (d) format::OpenFile from a sealed file in DIR (page cache warm), threads=all cores.
// Open is timed as a caller sees it: header authentication, key derivation, allocating the
// protected destination and decrypting into it. Destroying the result (wipe, unmap) is timed
// apart and not included. Nothing is prefaulted for Open: a fresh destination is part of its job.
//
// Diagnostics follow, to explain a miss: one single-thread Open taken apart (header, allocation,
// decryption into an already-touched buffer), and the same OpenSSL decryption into destinations
// prepared in different ways (fresh 4 KiB pages, 4 KiB pages locked up front, and a fresh
// SecretBuffer as Open gets it), on one thread and on all, so the cost of the memory can be seen
// apart from the cost of the cipher: the kernel must fault and zero every page of a fresh
// destination, which the baseline, decrypting into memory it already touched, does not pay.
// MB/s counts plaintext bytes, MB = 10^6 bytes.
//
// The last lines, `RESULT key=value`, are what scripts/bench.sh collects for its summary.
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "core/base/file.h"
#include "core/crypto/crypto.h"
#include "core/crypto/openssl_ptr.h"
#include "core/format/sealed.h"
#include "core/format/sealed_internal.h"  // DeriveKeys, ChunkNonce, DecryptBytesInto: diagnostics

namespace custody::bench {
namespace {

constexpr double kTargetSingleVsOpenSsl = 0.90;
constexpr double kTargetAllVsSingle = 1.70;

double MBps(uint64_t bytes, double seconds) { return static_cast<double>(bytes) / seconds / 1e6; }

// Best (shortest) of `reps` timings of `fn`, which returns its own measured seconds.
double Best(int reps, const std::function<double()>& fn) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) best = std::min(best, fn());
  return best;
}

// The reference decryption: OpenSSL's EVP AES-256-GCM driven exactly as the opener drives it
// (one context per thread keyed once, then per chunk: new nonce, 32-byte AAD, decrypt, set tag,
// final = tag check), chunks handed out to `threads` threads from one counter. With threads=1 it
// runs on the calling thread: baseline (a).
void OpenSslDecrypt(const format::SealedHeader& h, ByteSpan sealed, ByteSpan payload_key,
                    MutableByteSpan out, int threads) {
  const uint64_t chunks = h.chunk_count();
  std::atomic<uint64_t> next{0};
  auto worker = [&] {
    crypto::EvpCipherPtr cipher(EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr));
    crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    if (!cipher || !ctx ||
        EVP_DecryptInit_ex2(ctx.get(), cipher.get(), payload_key.data(), nullptr, nullptr) != 1) {
      Die("OpenSSL baseline: key setup failed");
    }
    for (uint64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const uint64_t plain_off = i << h.chunk_size_log2;
      const size_t len =
          static_cast<size_t>(std::min<uint64_t>(h.chunk_size(), h.plaintext_size - plain_off));
      const uint64_t sealed_off = h.payload_offset() + plain_off + i * format::kTagBytes;
      uint8_t nonce[crypto::kGcmNonceBytes];
      format::ChunkNonce(h, i, nonce);
      uint8_t tag[format::kTagBytes];
      std::memcpy(tag, sealed.data() + sealed_off + len, sizeof(tag));
      uint8_t final_block[16];
      int n = 0;
      if (EVP_DecryptInit_ex2(ctx.get(), nullptr, nullptr, nonce, nullptr) != 1 ||
          EVP_DecryptUpdate(ctx.get(), nullptr, &n, h.header_hash.data(),
                            static_cast<int>(h.header_hash.size())) != 1 ||
          EVP_DecryptUpdate(ctx.get(), out.data() + plain_off, &n, sealed.data() + sealed_off,
                            static_cast<int>(len)) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, sizeof(tag), tag) != 1 ||
          EVP_DecryptFinal_ex(ctx.get(), final_block, &n) != 1) {
        Die("OpenSSL baseline: chunk " + std::to_string(i) + " did not decrypt/verify");
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

// How a diagnostic destination is prepared before decryption (all inside the timing).
enum class Prep {
  kFresh4K,   // plain anonymous mmap on small pages (MADV_NOHUGEPAGE): the kernel faults and
              // zeroes each 4 KiB page on first write, inside the decrypting threads
  kLocked4K,  // small pages, MADV_DONTDUMP, mlock (populating): how SecretBuffer was first built
  kSecretBuffer,  // SecretBuffer::Allocate itself: 2 MiB-aligned, MADV_HUGEPAGE, MADV_DONTDUMP,
                  // mlock2(MLOCK_ONFAULT), so pages fault 2 MiB at a time inside the threads
};

// A destination prepared as `prep` says; released (not timed) on destruction.
class Destination {
 public:
  Destination(size_t size, Prep prep) : size_(size) {
    if (prep == Prep::kSecretBuffer) {
      secret_ = Check(SecretBuffer::Allocate(size), "SecretBuffer::Allocate");
      data_ = secret_.data();
      return;
    }
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) Die("mmap failed");
    data_ = static_cast<uint8_t*>(m);
    madvise(data_, size_, MADV_NOHUGEPAGE);
    if (prep == Prep::kLocked4K) {
      madvise(data_, size_, MADV_DONTDUMP);
      locked_ = mlock(data_, size_) == 0;
    }
  }
  ~Destination() {
    if (secret_.data() != nullptr) return;  // SecretBuffer releases itself
    if (locked_) munlock(data_, size_);
    munmap(data_, size_);
  }
  Destination(const Destination&) = delete;
  Destination& operator=(const Destination&) = delete;
  MutableByteSpan span() { return {data_, size_}; }

 private:
  SecretBuffer secret_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool locked_ = false;
};

void PrintLine(const std::string& label, uint64_t bytes, double seconds) {
  std::printf("  %-62s %8.1f MB/s  (%6.1f ms)\n", label.c_str(), MBps(bytes, seconds),
              seconds * 1e3);
}

void PrintMs(const std::string& label, double seconds) {
  std::printf("  %-62s %8.3f ms\n", label.c_str(), seconds * 1e3);
}

struct Args {
  uint64_t size_mib = 256;
  int reps = 9;
  std::string dir;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  a.dir = DefaultScratchDir();
  Flags flags;
  flags.values["--size-mib"] = [&](const std::string& v) { a.size_mib = std::stoull(v); };
  flags.values["--reps"] = [&](const std::string& v) { a.reps = std::max(1, std::stoi(v)); };
  flags.values["--dir"] = [&](const std::string& v) { a.dir = v; };
  ParseFlags(argc, argv, flags, "custody_open_bench [--size-mib N] [--reps N] [--dir DIR]");
  return a;
}

int Main(int argc, char** argv) {
  InitBench("custody_open_bench");
  const Args args = ParseArgs(argc, argv);
  const uint64_t size = args.size_mib << 20;
  const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::string all_text = std::to_string(all);
  std::printf("custody_open_bench: %llu MiB model, 1 MiB chunks, best of %d, %d cores, %s\n",
              static_cast<unsigned long long>(args.size_mib), args.reps, all,
              OpenSSL_version(OPENSSL_VERSION));

  // ----- the model, sealed once --------------------------------------------------------------
  Bytes plain(size);
  uint64_t filler = 0x637573746f6479ull;
  FillPseudoRandom(plain, &filler);
  auto vendor = Check(crypto::Ed25519PrivateKey::Generate(), "vendor key");
  SecretBuffer dek = Check(format::GenerateDek(), "DEK");
  format::SealOptions seal_options;
  seal_options.info.name = "open-bench";
  seal_options.info.version = "1";
  seal_options.info.engine = "onnx";
  auto t_seal = Clock::now();
  const Bytes sealed = Check(format::SealBytes(plain, dek.span(), vendor, seal_options), "seal");
  const double seal_s = Seconds(t_seal, Clock::now());
  std::printf("  sealed once with SealBytes: %.1f ms (%.1f MB/s, 1 thread)\n", seal_s * 1e3,
              MBps(size, seal_s));
  const auto& pub = vendor.public_key();
  const format::SealedHeader header = Check(format::ParseHeader(sealed, &pub), "parse header");
  const format::DerivedKeys keys = Check(format::DeriveKeys(dek.span(), header.salt), "derive");
  const ByteSpan payload_key = keys.payload_key.span();

  // ----- (a) OpenSSL baseline ------------------------------------------------------------------
  Destination warm(size, Prep::kSecretBuffer);
  std::memset(warm.span().data(), 0, size);  // touched: the baseline measures the cipher alone
  const double t_openssl = Best(args.reps, [&] {
    auto t0 = Clock::now();
    OpenSslDecrypt(header, sealed, payload_key, warm.span(), 1);
    return Seconds(t0, Clock::now());
  });
  if (std::memcmp(warm.span().data(), plain.data(), size) != 0) {
    Die("OpenSSL baseline: wrong plaintext");
  }

  // ----- (b), (c) Open from memory -------------------------------------------------------------
  std::string protection;
  double t_destroy = 1e300;
  auto time_open = [&](int threads) {
    format::OpenOptions o;
    o.threads = threads;
    auto t0 = Clock::now();
    auto opened = format::Open(sealed, dek.span(), pub, o);
    auto t1 = Clock::now();
    if (!opened) Die("Open: " + opened.error().ToString());
    if (opened->plaintext.size() != size ||
        std::memcmp(opened->plaintext.data(), plain.data(), size) != 0) {
      Die("Open returned the wrong plaintext");
    }
    protection = opened->plaintext.protection().ToString();
    auto t2 = Clock::now();
    { format::OpenedModel drop = std::move(opened).value(); }
    t_destroy = std::min(t_destroy, Seconds(t2, Clock::now()));
    return Seconds(t0, t1);
  };
  const double t_single = Best(args.reps, [&] { return time_open(1); });
  const double t_all = Best(args.reps, [&] { return time_open(all); });

  // ----- (d) OpenFile from a warm page cache ---------------------------------------------------
  const std::string path = args.dir + "/custody_open_bench." + std::to_string(getpid()) + ".sealed";
  Check(WriteFileAtomic(path, sealed, WriteOptions{0600, Overwrite::kAllow}), "write sealed file");
  auto time_open_file = [&](int threads) {
    format::OpenOptions o;
    o.threads = threads;
    auto t0 = Clock::now();
    auto opened = format::OpenFile(path, dek.span(), pub, o);
    auto t1 = Clock::now();
    if (!opened) Die("OpenFile: " + opened.error().ToString());
    if (std::memcmp(opened->plaintext.data(), plain.data(), size) != 0) {
      Die("OpenFile returned the wrong plaintext");
    }
    return Seconds(t0, t1);
  };
  (void)time_open_file(all);  // warms the page cache (it was just written, but be sure)
  const double t_file_all = Best(args.reps, [&] { return time_open_file(all); });
  const double t_file_single = Best(args.reps, [&] { return time_open_file(1); });
  std::remove(path.c_str());

  // ----- diagnostics: an Open taken apart --------------------------------------------------------
  const double t_parse = Best(args.reps, [&] {
    auto t0 = Clock::now();
    auto h = format::ParseHeader(sealed, &pub);
    auto t1 = Clock::now();
    if (!h) Die("ParseHeader");
    return Seconds(t0, t1);
  });
  const double t_alloc = Best(args.reps, [&] {
    auto t0 = Clock::now();
    auto buf = SecretBuffer::Allocate(size);
    auto t1 = Clock::now();
    if (!buf) Die("Allocate");
    return Seconds(t0, t1);
  });
  SecretBuffer warm_secret = Check(SecretBuffer::Allocate(size), "allocate");
  std::memset(warm_secret.data(), 0, size);
  auto time_decrypt_into = [&](int threads) {
    format::OpenOptions o;
    o.threads = threads;
    auto t0 = Clock::now();
    Status s = format::DecryptBytesInto(header, sealed, dek.span(), o, warm_secret);
    auto t1 = Clock::now();
    Check(s, "DecryptBytesInto");
    return Seconds(t0, t1);
  };
  const double t_decrypt_single = Best(args.reps, [&] { return time_decrypt_into(1); });
  const double t_decrypt_all = Best(args.reps, [&] { return time_decrypt_into(all); });
  warm_secret = SecretBuffer();

  // ----- diagnostics: the same cipher work into differently prepared memory --------------------
  auto time_openssl_into = [&](Prep prep, int threads) {
    return Best(args.reps, [&] {
      auto t0 = Clock::now();
      Destination dst(size, prep);
      OpenSslDecrypt(header, sealed, payload_key, dst.span(), threads);
      return Seconds(t0, Clock::now());  // before ~Destination: unmapping is not timed
    });
  };
  const double t_openssl_all_warm = Best(args.reps, [&] {
    auto t0 = Clock::now();
    OpenSslDecrypt(header, sealed, payload_key, warm.span(), all);
    return Seconds(t0, Clock::now());
  });
  const double t_fresh_1 = time_openssl_into(Prep::kFresh4K, 1);
  const double t_fresh_all = time_openssl_into(Prep::kFresh4K, all);
  const double t_locked_1 = time_openssl_into(Prep::kLocked4K, 1);
  const double t_locked_all = time_openssl_into(Prep::kLocked4K, all);
  const double t_secret_1 = time_openssl_into(Prep::kSecretBuffer, 1);
  const double t_secret_all = time_openssl_into(Prep::kSecretBuffer, all);

  // ----- report ---------------------------------------------------------------------------------
  const double r_single = t_openssl / t_single;
  const double r_all = t_single / t_all;
  const double r_single_fresh = t_secret_1 / t_single;
  std::printf("\nthroughput (plaintext MB/s, best of %d; destination never prefaulted for Open):\n",
              args.reps);
  PrintLine("(a) OpenSSL EVP AES-256-GCM decrypt, 1 thread [baseline]", size, t_openssl);
  PrintLine("(b) format::Open from memory, threads=1", size, t_single);
  PrintLine("(c) format::Open from memory, threads=" + all_text + " (all)", size, t_all);
  PrintLine("(d) format::OpenFile, warm page cache, threads=" + all_text + " (all)", size,
            t_file_all);
  std::printf("\nratios:\n");
  std::printf("  single/OpenSSL = %.2f   target >= %.2f   %s\n", r_single, kTargetSingleVsOpenSsl,
              Verdict(r_single >= kTargetSingleVsOpenSsl));
  std::printf("  all/single     = %.2f   target >= %.2f   %s   (%d threads)\n", r_all,
              kTargetAllVsSingle, Verdict(r_all >= kTargetAllVsSingle), all);
  std::printf(
      "  (context: single/OpenSSL-into-a-fresh-SecretBuffer = %.2f; decryption alone, into "
      "touched\n"
      "   memory: Open's loop/OpenSSL = %.2f at 1 thread, scaling %.2fx on %d threads)\n",
      r_single_fresh, t_openssl / t_decrypt_single, t_decrypt_single / t_decrypt_all, all);

  std::printf("\ndiagnostics, 1: one Open taken apart (best of %d each)\n", args.reps);
  std::printf("  destination memory: %s\n", protection.c_str());
  PrintMs("ParseHeader (SHA-256 of header, Ed25519 verify)", t_parse);
  PrintMs("SecretBuffer::Allocate (mmap, madvise, mlock2 on fault)", t_alloc);
  PrintLine("decrypt loop into an already-touched SecretBuffer, threads=1", size, t_decrypt_single);
  PrintLine("decrypt loop into an already-touched SecretBuffer, threads=" + all_text, size,
            t_decrypt_all);
  std::printf("  %-62s %8.1f ms\n", "parse + allocate + decrypt loop (sum)",
              (t_parse + t_alloc + t_decrypt_single) * 1e3);
  std::printf("  %-62s %8.1f ms\n", "format::Open threads=1 (measured)", t_single * 1e3);
  PrintMs("destroying the OpenedModel (wipe, munlock, munmap; not in (b))", t_destroy);
  PrintLine("format::OpenFile, warm page cache, threads=1", size, t_file_single);

  std::printf("\ndiagnostics, 2: OpenSSL decrypt (a) into destinations prepared differently\n");
  std::printf("  (mapping and preparing the destination inside the timing, unmapping outside)\n");
  PrintLine("already touched, threads=1  [= (a)]", size, t_openssl);
  PrintLine("already touched, threads=" + all_text, size, t_openssl_all_warm);
  PrintLine("fresh mmap, 4 KiB pages, first-touch faults, threads=1", size, t_fresh_1);
  PrintLine("fresh mmap, 4 KiB pages, first-touch faults, threads=" + all_text, size, t_fresh_all);
  PrintLine("4 KiB pages, DONTDUMP, mlock (populating), threads=1", size, t_locked_1);
  PrintLine("4 KiB pages, DONTDUMP, mlock (populating), threads=" + all_text, size, t_locked_all);
  PrintLine("a fresh SecretBuffer (what Open uses), threads=1", size, t_secret_1);
  PrintLine("a fresh SecretBuffer (what Open uses), threads=" + all_text, size, t_secret_all);

  std::printf("\nRESULT openssl_mbps=%.1f\n", MBps(size, t_openssl));
  std::printf("RESULT open_single_mbps=%.1f\n", MBps(size, t_single));
  std::printf("RESULT open_all_mbps=%.1f\n", MBps(size, t_all));
  std::printf("RESULT openfile_all_mbps=%.1f\n", MBps(size, t_file_all));
  std::printf("RESULT ratio_single_openssl=%.2f %s\n", r_single,
              Verdict(r_single >= kTargetSingleVsOpenSsl));
  std::printf("RESULT ratio_all_single=%.2f %s\n", r_all, Verdict(r_all >= kTargetAllVsSingle));
  std::printf("RESULT ratio_single_openssl_fresh=%.2f\n", r_single_fresh);
  std::printf("RESULT alloc_ms=%.1f\n", t_alloc * 1e3);
  std::printf("RESULT ratio_loop_openssl=%.2f\n", t_openssl / t_decrypt_single);
  std::printf("RESULT threads=%d\n", all);
  std::printf("RESULT reps=%d\n", args.reps);
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
