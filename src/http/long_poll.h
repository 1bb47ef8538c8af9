// Wake-ups for long-polling clients (DESIGN.md §6, heartbeat/events): a device holds a request
// open; when something for it happens (a revocation, an approved budget, a new lease) the code
// that changed the state calls Notify(device_id) and the waiting request answers at once. The
// stop switch's "under a second for online devices" rests on this.
//
// Race-free use (a notification between the database check and the wait is not lost):
//
//   const auto since = hub.Now();                      // 1. before looking
//   if (auto events = store.EventsFor(device)) ...      // 2. look
//   co_await hub.Wait(device, 30s, since);              // 3. returns at once if Notify(device)
//   ... look again                                      //    ran after step 1
//
// Wait may also return true without new events (a notification for the same key that the caller
// had already seen, or a bookkeeping entry that was pruned): callers always look again.
//
// Cost: a waiter is one heap object with a timer; no thread is held. Notify touches only the
// waiters of its key. Keys are spread over independently locked shards.
//
// Threading: Notify, Now, Shutdown and waiters() are safe from any thread. Wait is a coroutine
// for any executor (strand or not). The hub must outlive every Wait in progress: call Shutdown()
// and let the waits finish (the server does, see ServerOptions::long_poll_hubs) before
// destroying it.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "http/asio.h"

namespace custody::http {

class LongPollHub {
 public:
  // A position in the order of notifications (see the example above).
  using Sequence = uint64_t;

  LongPollHub();
  ~LongPollHub();
  LongPollHub(const LongPollHub&) = delete;
  LongPollHub& operator=(const LongPollHub&) = delete;

  // Wakes every current waiter of `key` (they return true) and records the notification for
  // waits that pass an earlier `since`.
  void Notify(const std::string& key);

  // The current position; pass it to Wait to also catch notifications that happen between
  // this call and the wait.
  Sequence Now() const { return sequence_.load(std::memory_order_acquire); }

  // Waits until Notify(key) is called (true), `timeout` passes (false) or Shutdown() is called
  // (false). With `since`, returns true at once if Notify(key) was called after Now() returned
  // `since`.
  // `key` is taken by value: the coroutine may outlive the caller's string.
  asio::awaitable<bool> Wait(std::string key, std::chrono::milliseconds timeout,
                             std::optional<Sequence> since = std::nullopt);

  // Ends every wait in progress (they return false) and makes later waits return false at once.
  // Idempotent.
  void Shutdown();

  // Waits in progress (for tests and metrics).
  size_t waiters() const;

 private:
  struct Waiter;
  struct Note {
    Sequence sequence = 0;
    std::chrono::steady_clock::time_point when{};
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, std::vector<std::shared_ptr<Waiter>>> waiters;
    std::unordered_map<std::string, Note> notes;  // last notification per key
    Sequence pruned_through = 0;                  // highest sequence of a forgotten note
    std::chrono::steady_clock::time_point last_prune{};
  };
  static constexpr size_t kShards = 16;

  Shard& ShardFor(const std::string& key);
  static bool NotifiedSince(const Shard& shard, const std::string& key, Sequence since);
  static void PruneNotes(Shard& shard, std::chrono::steady_clock::time_point now);

  std::atomic<Sequence> sequence_{0};
  std::atomic<bool> shutdown_{false};
  std::array<Shard, kShards> shards_;
};

}  // namespace custody::http
