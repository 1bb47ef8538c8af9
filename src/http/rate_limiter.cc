#include "http/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <functional>

namespace custody::http {

RateLimiter::RateLimiter(double per_second, double burst)
    : per_second_(per_second), burst_(std::max(burst, 1.0)) {}

RateLimiter::Decision RateLimiter::Take(std::string_view key, Clock::time_point now) {
  if (per_second_ <= 0) return {};
  Shard& shard = shards_[std::hash<std::string_view>()(key) % kShards];
  std::lock_guard lock(shard.mu);
  auto it = shard.buckets.find(std::string(key));
  if (it == shard.buckets.end()) {
    if (shard.buckets.size() >= kPruneAboveKeys) Prune(shard, now);
    it = shard.buckets.emplace(std::string(key), Bucket{burst_, now}).first;
  }
  Bucket& b = it->second;
  const double elapsed = std::chrono::duration<double>(now - b.updated).count();
  if (elapsed > 0) {
    b.tokens = std::min(burst_, b.tokens + elapsed * per_second_);
    b.updated = now;
  }
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return {};
  }
  const double wait_s = (1 - b.tokens) / per_second_;
  const auto wait = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(wait_s * 1000)));
  return {false, std::max(wait, std::chrono::milliseconds(1))};
}

void RateLimiter::Prune(Shard& shard, Clock::time_point now) {
  // Sweeping costs O(keys); doing it at most once per refill period keeps it amortised even
  // when a flood of new keys (spoofed-looking peers, many devices at once) keeps the shard full.
  const auto refill = std::chrono::duration<double>(burst_ / per_second_);
  if (now - shard.last_prune < refill) return;
  shard.last_prune = now;
  std::erase_if(shard.buckets, [&](const auto& entry) {
    const Bucket& b = entry.second;
    return b.tokens + std::chrono::duration<double>(now - b.updated).count() * per_second_ >=
           burst_;
  });
}

size_t RateLimiter::tracked_keys() const {
  size_t n = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    n += shard.buckets.size();
  }
  return n;
}

}  // namespace custody::http
