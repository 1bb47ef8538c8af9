// Per-client request rate limiting for the custodian's HTTP server: one token bucket per key
// (device id for mutual-TLS clients, token id for bearer clients, else the peer address).
//
// A bucket holds at most `burst` tokens and refills at `per_second`; each request takes one.
// An empty bucket refuses the request and says how long until a token is back (Retry-After).
// Buckets of keys that have been quiet long enough to be full again are forgotten, so memory is
// bounded by the clients active in the last burst/per_second seconds, not by every client ever
// seen.
//
// Threading: Take() is safe from any thread (the keys are spread over independently locked
// shards). Time is passed in, so tests control it.
#pragma once

#include <array>
#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace custody::http {

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // `per_second` <= 0 disables limiting (every Take is allowed). `burst` < 1 counts as 1.
  RateLimiter(double per_second, double burst);

  struct Decision {
    bool allowed = true;
    std::chrono::milliseconds retry_after{0};  // when refused: time until one token is back
  };
  Decision Take(std::string_view key, Clock::time_point now);

  // Keys currently tracked (for tests and metrics).
  size_t tracked_keys() const;

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point updated{};
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, Bucket> buckets;
    Clock::time_point last_prune{};
  };
  static constexpr size_t kShards = 16;
  static constexpr size_t kPruneAboveKeys = 1024;  // per shard

  void Prune(Shard& shard, Clock::time_point now);

  const double per_second_;
  const double burst_;
  std::array<Shard, kShards> shards_;
};

}  // namespace custody::http
