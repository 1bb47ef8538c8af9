// Shared by the benchmark programs: fatal errors, flag parsing, statistics and filler data.
// Benchmarks are tools, not product code: they exit on the first error with a message.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/base/bytes.h"
#include "core/base/status.h"

namespace custody::bench {

using Clock = std::chrono::steady_clock;

// Names the program in Die's messages; `cleanup`, if given, runs before Die exits.
void InitBench(const char* program, void (*cleanup)() = nullptr);

// Prints "<program>: <what>" to stderr, runs the cleanup and exits with status 2.
[[noreturn]] void Die(const std::string& what);

template <typename T>
T Check(Result<T> r, const std::string& what) {
  if (!r) Die(what + ": " + r.error().ToString());
  return std::move(r).value();
}
void Check(const Status& s, const std::string& what);

// Flags of the form `--name value` (handlers) and `--name` (switches). Anything else, or a
// missing value, is Die(usage).
struct Flags {
  std::map<std::string, std::function<void(const std::string&)>> values;
  std::map<std::string, std::function<void()>> switches;
};
void ParseFlags(int argc, char** argv, const Flags& flags, const std::string& usage);

// $TMPDIR, or /tmp.
std::string DefaultScratchDir();

double Seconds(Clock::time_point from, Clock::time_point to);
double Median(std::vector<double> v);
// The value below which a fraction `p` (0..1) of `v` lies (nearest rank); 0 for an empty `v`.
double Percentile(std::vector<double> v, double p);
const char* Verdict(bool pass);  // "PASS" / "MISS"

// Deterministic, incompressible-looking bytes (splitmix64 from `*state`, which advances), so
// repeated calls continue one stream. The content does not matter to AES-GCM, but zeros would
// look contrived and could be sparse on disk.
void FillPseudoRandom(MutableByteSpan out, uint64_t* state);

}  // namespace custody::bench
