#include "http/long_poll.h"

#include <algorithm>
#include <functional>

namespace custody::http {
namespace {

// Notes older than this are forgotten once a shard holds many; a wait whose `since` predates a
// forgotten note returns true (a spurious but harmless wake-up). Callers take `since` moments
// before they wait, so this is far longer than needed.
constexpr auto kNoteRetention = std::chrono::minutes(2);
constexpr size_t kPruneAboveNotes = 4096;  // per shard

}  // namespace

// Touched only under its shard's lock once registered (the timer's async_wait and cancel are
// never concurrent: both happen under that lock), and by its own coroutine before registering.
struct LongPollHub::Waiter {
  explicit Waiter(asio::any_io_executor ex) : timer(std::move(ex)) {}
  asio::steady_timer timer;
  bool notified = false;
};

LongPollHub::LongPollHub() = default;
LongPollHub::~LongPollHub() = default;

LongPollHub::Shard& LongPollHub::ShardFor(const std::string& key) {
  return shards_[std::hash<std::string>()(key) % kShards];
}

bool LongPollHub::NotifiedSince(const Shard& shard, const std::string& key, Sequence since) {
  if (shard.pruned_through > since) return true;
  const auto it = shard.notes.find(key);
  return it != shard.notes.end() && it->second.sequence > since;
}

void LongPollHub::PruneNotes(Shard& shard, std::chrono::steady_clock::time_point now) {
  if (shard.notes.size() < kPruneAboveNotes || now - shard.last_prune < kNoteRetention / 2) return;
  shard.last_prune = now;
  std::erase_if(shard.notes, [&](const auto& entry) {
    if (now - entry.second.when < kNoteRetention) return false;
    shard.pruned_through = std::max(shard.pruned_through, entry.second.sequence);
    return true;
  });
}

void LongPollHub::Notify(const std::string& key) {
  const auto now = std::chrono::steady_clock::now();
  Shard& shard = ShardFor(key);
  std::lock_guard lock(shard.mu);
  // Taken under the shard lock so that a note's sequence and its visibility to NotifiedSince
  // cannot be reordered against a concurrent Wait on the same key.
  const Sequence sequence = sequence_.fetch_add(1, std::memory_order_acq_rel) + 1;
  PruneNotes(shard, now);
  shard.notes[key] = Note{sequence, now};
  const auto it = shard.waiters.find(key);
  if (it == shard.waiters.end()) return;
  for (const std::shared_ptr<Waiter>& waiter : it->second) {
    waiter->notified = true;
    waiter->timer.cancel();  // completes the wait promptly on the waiter's own executor
  }
  shard.waiters.erase(it);
}

asio::awaitable<bool> LongPollHub::Wait(std::string key, std::chrono::milliseconds timeout,
                                        std::optional<Sequence> since) {
  auto waiter = std::make_shared<Waiter>(co_await asio::this_coro::executor);
  waiter->timer.expires_after(timeout);
  Shard& shard = ShardFor(key);
  boost::system::error_code ec;
  auto token = asio::redirect_error(asio::use_awaitable, ec);
  // Registering and starting the timer happen under the shard lock, so a Notify either finds the
  // waiter with its wait started (and cancels it) or comes before and is seen via `since`.
  co_await asio::async_initiate<decltype(token), void(boost::system::error_code)>(
      [&](auto handler) {
        std::lock_guard lock(shard.mu);
        bool finished = shutdown_.load(std::memory_order_acquire);
        if (!finished && since && NotifiedSince(shard, key, *since)) {
          waiter->notified = true;
          finished = true;
        }
        if (finished) {
          // A completion handler must not run inside its initiation: post it.
          const auto ex = asio::get_associated_executor(handler, waiter->timer.get_executor());
          asio::post(ex, [h = std::move(handler)]() mutable { h(boost::system::error_code()); });
          return;
        }
        shard.waiters[key].push_back(waiter);
        waiter->timer.async_wait(std::move(handler));
      },
      token);
  bool notified = false;
  {
    std::lock_guard lock(shard.mu);
    notified = waiter->notified;
    const auto it = shard.waiters.find(key);
    if (it != shard.waiters.end()) {
      std::erase(it->second, waiter);
      if (it->second.empty()) shard.waiters.erase(it);
    }
  }
  co_return notified;
}

void LongPollHub::Shutdown() {
  shutdown_.store(true, std::memory_order_release);
  for (Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (auto& [key, waiters] : shard.waiters) {
      for (const std::shared_ptr<Waiter>& waiter : waiters) waiter->timer.cancel();
    }
    shard.waiters.clear();
  }
}

size_t LongPollHub::waiters() const {
  size_t n = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    for (const auto& [key, waiters] : shard.waiters) n += waiters.size();
  }
  return n;
}

}  // namespace custody::http
