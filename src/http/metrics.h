// A small Prometheus registry for the custodian (DESIGN.md §11, observability): counters, gauges
// and fixed-bucket histograms with labels, rendered in the text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Hot path: GetCounter/GetGauge/GetHistogram look a series up under a lock; the returned
// reference stays valid for the registry's lifetime, so callers look series up once (the server
// does so per route at start) and then only touch atomics.
//
// Names and label names come from code, not from peers: an invalid name, or one name used with
// two types, help texts or bucket layouts, is a programming error and aborts (Panic). Label
// VALUES may be anything (they are escaped when rendered).
//
// Threading: everything is safe from any thread. Render() reads each atomic once; a scrape that
// races with updates may see a histogram's sum from a slightly different instant than its
// buckets, which Prometheus tolerates. _count always equals the +Inf bucket.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace custody::http {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Increment(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double v) { value_.fetch_add(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  // `upper_bounds` strictly increasing and finite; +Inf is implicit.
  explicit Histogram(std::vector<double> upper_bounds);

  void Observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;  // without +Inf
    std::vector<uint64_t> cumulative;  // one per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bound, then +Inf (not cumulative)
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds, 1 ms .. 60 s: request handling, database calls.
std::span<const double> DefaultLatencyBucketsSeconds();

class Metrics {
 public:
  // The Content-Type of Render()'s output.
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The series `name{labels}`, created on first use. `help` documents the family (one line).
  Counter& GetCounter(std::string_view name, std::string_view help,
                      const MetricLabels& labels = {});
  Gauge& GetGauge(std::string_view name, std::string_view help, const MetricLabels& labels = {});
  Histogram& GetHistogram(std::string_view name, std::string_view help,
                          std::span<const double> upper_bounds, const MetricLabels& labels = {});

  // Every family, sorted by name, each with its # HELP and # TYPE lines and its series sorted
  // by labels.
  std::string Render() const;

 private:
  struct Family;
  Family& GetFamily(std::string_view name, std::string_view help, int type,
                    std::span<const double> upper_bounds);

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_;
};

}  // namespace custody::http
