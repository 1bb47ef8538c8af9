#include "bench_util.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace custody::bench {
namespace {

const char* g_program = "bench";
void (*g_cleanup)() = nullptr;

}  // namespace

void InitBench(const char* program, void (*cleanup)()) {
  g_program = program;
  g_cleanup = cleanup;
}

void Die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", g_program, what.c_str());
  if (g_cleanup != nullptr) g_cleanup();
  std::exit(2);
}

void Check(const Status& s, const std::string& what) {
  if (!s.ok()) Die(what + ": " + s.ToString());
}

void ParseFlags(int argc, char** argv, const Flags& flags, const std::string& usage) {
  for (int i = 1; i < argc; ++i) {
    const std::string name = argv[i];
    if (auto sw = flags.switches.find(name); sw != flags.switches.end()) {
      sw->second();
      continue;
    }
    auto handler = flags.values.find(name);
    if (handler == flags.values.end()) Die("unknown argument '" + name + "'; usage: " + usage);
    if (i + 1 >= argc) Die(name + " needs a value; usage: " + usage);
    try {
      handler->second(argv[++i]);
    } catch (const std::exception&) {  // std::stoi and friends
      Die("bad value '" + std::string(argv[i]) + "' for " + name + "; usage: " + usage);
    }
  }
}

std::string DefaultScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

const char* Verdict(bool pass) { return pass ? "PASS" : "MISS"; }

void FillPseudoRandom(MutableByteSpan out, uint64_t* state) {
  size_t i = 0;
  for (; i < out.size(); i += 8) {
    *state += 0x9e3779b97f4a7c15ull;
    uint64_t z = *state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(out.data() + i, &z, std::min<size_t>(8, out.size() - i));
  }
}

}  // namespace custody::bench
