// custody_tpm_bench: what attestation costs, on the custodian and on the device.
//
//   custody_tpm_bench [--seconds S] [--ops N]
//
// 1. Verifier throughput (custodian side, pure code, one thread): quote verifications per second
//    of a real swtpm quote over 8 PCRs (tpm::VerifyQuote: parse, ECDSA-P256 verify, nonce, PCR
//    digest, one golden set), printed beside OpenSSL's raw ECDSA-P256 verifications per second
//    on the same machine: the signature is the floor of what a verification costs.
// 2. Device-side latency against swtpm (a software TPM: a hardware TPM is typically slower, tens
//    to hundreds of ms per signing or ECDH operation): TPM2_Quote (+ PCR read), TPM2_ECDH_ZGen
//    with its policy session (LoadExternal + VerifySignature + PolicyPCR + PolicyAuthorize +
//    load + ZGen), TPM2_NV_Increment. Median and p99 of N operations each.
//
// Prints `RESULT key=value` lines for scripts/bench.sh.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.h"
#include "core/crypto/crypto.h"
#include "core/tpm/device.h"
#include "core/tpm/objects.h"
#include "core/tpm/policy.h"
#include "core/tpm/verifier.h"
#include "tests/support/swtpm_fixture.h"

namespace custody::bench {
namespace {

struct Args {
  double seconds = 2.0;
  int ops = 50;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  Flags flags;
  flags.values["--seconds"] = [&](const std::string& v) { a.seconds = std::stod(v); };
  flags.values["--ops"] = [&](const std::string& v) { a.ops = std::max(5, std::stoi(v)); };
  ParseFlags(argc, argv, flags, "custody_tpm_bench [--seconds S] [--ops N]");
  return a;
}

// Calls `fn` repeatedly for about `seconds`; returns calls per second.
template <typename Fn>
double Rate(double seconds, Fn&& fn) {
  const auto start = Clock::now();
  uint64_t n = 0;
  while (Seconds(start, Clock::now()) < seconds) {
    for (int i = 0; i < 64; ++i) fn();
    n += 64;
  }
  return static_cast<double>(n) / Seconds(start, Clock::now());
}

struct Latency {
  double median_ms = 0;
  double p99_ms = 0;
};

template <typename Fn>
Latency Measure(int ops, Fn&& fn) {
  std::vector<double> ms;
  for (int i = 0; i < ops; ++i) {
    auto t0 = Clock::now();
    fn();
    ms.push_back(Seconds(t0, Clock::now()) * 1e3);
  }
  std::sort(ms.begin(), ms.end());
  size_t p99 = std::min(ms.size() - 1, static_cast<size_t>(static_cast<double>(ms.size()) * 0.99));
  return {Median(ms), ms[p99]};
}

int Main(int argc, char** argv) {
  InitBench("custody_tpm_bench");
  const Args args = ParseArgs(argc, argv);
  auto swtpm = Check(testing::Swtpm::Start(), "start swtpm");
  auto tpm = Check(tpm::Tpm::Open(swtpm->tcti()), "open the TPM");
  const auto policy_key = Check(crypto::P256PrivateKey::Generate(), "policy key");
  const tpm::KeyBlob ak = Check(tpm->CreateAttestationKey(), "AK");
  const tpm::KeyBlob binding = Check(
      tpm->CreateBindingKey(Check(tpm::BindingKeyAuthPolicy(policy_key.public_key()), "policy")),
      "binding key");
  const auto selection = Check(tpm::PcrSelection::Of({0, 1, 2, 3, 4, 5, 6, 7}), "selection");
  const tpm::PcrValues values = Check(tpm->ReadPcrs(selection), "read PCRs");
  const Bytes nonce = Check(crypto::RandomBytes(32), "nonce");
  std::printf("custody_tpm_bench: swtpm on a Unix socket, quotes over PCRs %s\n",
              selection.ToString().c_str());

  // ----- 1. verifier throughput ----------------------------------------------------------------
  const tpm::Quote quote = Check(tpm->QuotePcrs(ak, selection, nonce), "quote");
  const tpm::QuoteExpectation expect{ak.public_area, nonce, selection, {{"golden", values}}};
  Check(tpm::VerifyQuote(quote, expect), "verify the quote");
  const double verify_rate = Rate(args.seconds, [&] {
    if (!tpm::VerifyQuote(quote, expect).has_value()) Die("quote verification failed");
  });
  const crypto::Sha256Digest digest = crypto::Sha256(quote.attestation.attest);
  const auto sig = Check(policy_key.SignDigest(digest), "sign");
  const crypto::P256PublicKey& pub = policy_key.public_key();
  const double ecdsa_rate = Rate(args.seconds, [&] {
    if (!pub.VerifyDigest(digest, sig).ok()) Die("ECDSA verification failed");
  });

  // ----- 2. device-side latency ----------------------------------------------------------------
  const Latency quote_lat =
      Measure(args.ops, [&] { Check(tpm->QuotePcrs(ak, selection, nonce), "quote"); });
  const tpm::ApprovedPolicy approval =
      Check(tpm::ApprovePcrPolicy(policy_key, selection, values, {}), "approve");
  const auto peer = Check(crypto::P256PrivateKey::Generate(), "peer").public_key();
  const Latency zgen_lat = Measure(args.ops, [&] {
    Check(tpm->EcdhZGen(binding, approval, policy_key.public_key(), peer), "ECDH_ZGen");
  });
  const Bytes auth = Check(crypto::RandomBytes(32), "auth");
  Check(tpm->DefineCounter(tpm::kDefaultCounterIndex, auth), "define counter");
  const Latency nv_lat = Measure(args.ops, [&] {
    Check(tpm->IncrementCounter(tpm::kDefaultCounterIndex, auth), "increment");
  });

  std::printf("\nverifier (custodian side, 1 thread):\n");
  std::printf("  quote verifications            %10.0f /s\n", verify_rate);
  std::printf("  OpenSSL ECDSA-P256 verify      %10.0f /s  [baseline: the signature alone]\n",
              ecdsa_rate);
  std::printf("  ratio                          %10.2f\n", verify_rate / ecdsa_rate);
  std::printf("\ndevice side against swtpm, %d operations each (median / p99):\n", args.ops);
  std::printf("  TPM2_Quote + PCR read          %7.2f / %7.2f ms\n", quote_lat.median_ms,
              quote_lat.p99_ms);
  std::printf("  TPM2_ECDH_ZGen under policy    %7.2f / %7.2f ms\n", zgen_lat.median_ms,
              zgen_lat.p99_ms);
  std::printf("  TPM2_NV_Increment (+ read)     %7.2f / %7.2f ms\n", nv_lat.median_ms,
              nv_lat.p99_ms);
  std::printf("\nRESULT quote_verify_per_s=%.0f\n", verify_rate);
  std::printf("RESULT ecdsa_verify_per_s=%.0f\n", ecdsa_rate);
  std::printf("RESULT verify_vs_ecdsa=%.2f\n", verify_rate / ecdsa_rate);
  std::printf("RESULT quote_ms=%.2f/%.2f\n", quote_lat.median_ms, quote_lat.p99_ms);
  std::printf("RESULT zgen_ms=%.2f/%.2f\n", zgen_lat.median_ms, zgen_lat.p99_ms);
  std::printf("RESULT nv_increment_ms=%.2f/%.2f\n", nv_lat.median_ms, nv_lat.p99_ms);
  return 0;
}

}  // namespace
}  // namespace custody::bench

int main(int argc, char** argv) { return custody::bench::Main(argc, argv); }
