// DerivedCache: values the custodian derives from stored bytes at a cost (a model key opened
// from its sealed form, a device's binding key parsed and checked), kept by id for the next
// request. An entry is used only while the stored bytes it came from are unchanged, so a model
// re-registered with another key or a device enrolled again is derived afresh. Bounded: past
// `max_entries` it starts over rather than grows. Thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/base/bytes.h"

namespace custody::custodian {

template <typename T>
class DerivedCache {
 public:
  explicit DerivedCache(size_t max_entries) : max_entries_(max_entries) {}

  // The value derived from `source` for `id`, or null.
  std::shared_ptr<const T> Find(const std::string& id, ByteSpan source) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it == entries_.end() || !std::equal(it->second.source.begin(), it->second.source.end(),
                                            source.begin(), source.end())) {
      return nullptr;
    }
    return it->second.value;
  }

  void Put(const std::string& id, ByteSpan source, std::shared_ptr<const T> value) {
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.size() >= max_entries_) entries_.clear();
    entries_[id] = Entry{Bytes(source.begin(), source.end()), std::move(value)};
  }

 private:
  struct Entry {
    Bytes source;
    std::shared_ptr<const T> value;
  };
  const size_t max_entries_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace custody::custodian
