#include "http/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/base/status.h"

namespace custody::http {
namespace {

enum Type { kCounter = 0, kGauge = 1, kHistogram = 2 };

constexpr std::string_view kTypeNames[] = {"counter", "gauge", "histogram"};

constexpr double kDefaultLatencyBuckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,      2.5,   5,    10,    30,   60};

bool IsNameChar(char c, bool first, bool allow_colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (c == ':') return allow_colon;
  return !first && c >= '0' && c <= '9';
}

bool IsValidName(std::string_view name, bool allow_colon) {
  if (name.empty()) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (!IsNameChar(name[i], i == 0, allow_colon)) return false;
  }
  return true;
}

// Prometheus parses Go float syntax; shortest round-trip digits keep "0.005" readable.
void AppendDouble(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    if (ec == std::errc()) out.append(buf, end);
  }
}

// Label values escape backslash, double quote and newline; HELP text escapes backslash and
// newline (format 0.0.4).
void AppendEscaped(std::string& out, std::string_view s, bool escape_quote) {
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '"' && escape_quote) {
      out += "\\\"";
    } else {
      out.push_back(c);
    }
  }
}

// The canonical form of a label set: sorted by name, rendered as `a="x",b="y"`.
std::string CanonicalLabels(std::string_view metric, MetricLabels labels, bool histogram) {
  std::sort(labels.begin(), labels.end());
  std::string out;
  for (size_t i = 0; i < labels.size(); ++i) {
    const std::string& name = labels[i].first;
    if (!IsValidName(name, false) || name.starts_with("__") || (histogram && name == "le")) {
      Panic("metric " + std::string(metric) + ": invalid label name '" + name + "'");
    }
    if (i > 0 && labels[i - 1].first == name) {
      Panic("metric " + std::string(metric) + ": label '" + name + "' given twice");
    }
    if (i > 0) out.push_back(',');
    out += name;
    out += "=\"";
    AppendEscaped(out, labels[i].second, true);
    out.push_back('"');
  }
  return out;
}

std::string DoubleText(double v) {
  std::string out;
  AppendDouble(out, v);
  return out;
}

// Counts print as integers: a double would lose precision beyond 2^53.
std::string CountText(uint64_t v) { return std::to_string(v); }

void AppendSample(std::string& out, std::string_view name, std::string_view suffix,
                  std::string_view labels, std::string_view extra_label, std::string_view value) {
  out += name;
  out += suffix;
  if (!labels.empty() || !extra_label.empty()) {
    out.push_back('{');
    out += labels;
    if (!labels.empty() && !extra_label.empty()) out.push_back(',');
    out += extra_label;
    out.push_back('}');
  }
  out.push_back(' ');
  out += value;
  out.push_back('\n');
}

}  // namespace

struct Metrics::Family {
  int type = kCounter;
  std::string help;
  std::vector<double> upper_bounds;
  // Keyed by canonical label string; unique_ptr keeps references stable.
  std::map<std::string, std::unique_ptr<Counter>> counters;
  std::map<std::string, std::unique_ptr<Gauge>> gauges;
  std::map<std::string, std::unique_ptr<Histogram>> histograms;
};

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      buckets_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i < upper_bounds_.size(); ++i) {
    if (!std::isfinite(upper_bounds_[i]) || (i > 0 && upper_bounds_[i] <= upper_bounds_[i - 1])) {
      Panic("histogram bucket bounds must be finite and strictly increasing");
    }
  }
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) buckets_[i].store(0);
}

void Histogram::Observe(double value) {
  // Buckets are inclusive upper bounds ("le"): the first bound >= value.
  const auto it = std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value);
  buckets_[static_cast<size_t>(it - upper_bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.upper_bounds = upper_bounds_;
  s.cumulative.resize(upper_bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::span<const double> DefaultLatencyBucketsSeconds() { return kDefaultLatencyBuckets; }

Metrics::Metrics() = default;
Metrics::~Metrics() = default;

Metrics::Family& Metrics::GetFamily(std::string_view name, std::string_view help, int type,
                                    std::span<const double> upper_bounds) {
  if (!IsValidName(name, true)) Panic("invalid metric name '" + std::string(name) + "'");
  if (help.find('\n') != std::string_view::npos) {
    Panic("metric " + std::string(name) + ": help text must be one line");
  }
  auto it = families_.find(name);
  if (it == families_.end()) {
    auto family = std::make_unique<Family>();
    family->type = type;
    family->help = std::string(help);
    family->upper_bounds.assign(upper_bounds.begin(), upper_bounds.end());
    it = families_.emplace(std::string(name), std::move(family)).first;
  }
  Family& family = *it->second;
  if (family.type != type || family.help != help ||
      !std::equal(family.upper_bounds.begin(), family.upper_bounds.end(), upper_bounds.begin(),
                  upper_bounds.end())) {
    Panic("metric " + std::string(name) +
          " registered twice with a different type, help text or buckets");
  }
  return family;
}

Counter& Metrics::GetCounter(std::string_view name, std::string_view help,
                             const MetricLabels& labels) {
  std::lock_guard lock(mu_);
  Family& family = GetFamily(name, help, kCounter, {});
  auto& slot = family.counters[CanonicalLabels(name, labels, false)];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Metrics::GetGauge(std::string_view name, std::string_view help, const MetricLabels& labels) {
  std::lock_guard lock(mu_);
  Family& family = GetFamily(name, help, kGauge, {});
  auto& slot = family.gauges[CanonicalLabels(name, labels, false)];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Metrics::GetHistogram(std::string_view name, std::string_view help,
                                 std::span<const double> upper_bounds, const MetricLabels& labels) {
  std::lock_guard lock(mu_);
  Family& family = GetFamily(name, help, kHistogram, upper_bounds);
  auto& slot = family.histograms[CanonicalLabels(name, labels, true)];
  if (!slot) {
    slot =
        std::make_unique<Histogram>(std::vector<double>(upper_bounds.begin(), upper_bounds.end()));
  }
  return *slot;
}

std::string Metrics::Render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    out += "# HELP ";
    out += name;
    out.push_back(' ');
    AppendEscaped(out, family->help, false);
    out += "\n# TYPE ";
    out += name;
    out.push_back(' ');
    out += kTypeNames[family->type];
    out.push_back('\n');
    for (const auto& [labels, counter] : family->counters) {
      AppendSample(out, name, "", labels, "", CountText(counter->value()));
    }
    for (const auto& [labels, gauge] : family->gauges) {
      AppendSample(out, name, "", labels, "", DoubleText(gauge->value()));
    }
    for (const auto& [labels, histogram] : family->histograms) {
      const Histogram::Snapshot s = histogram->Read();
      for (size_t i = 0; i < s.cumulative.size(); ++i) {
        std::string le = "le=\"";
        if (i < s.upper_bounds.size()) {
          AppendDouble(le, s.upper_bounds[i]);
        } else {
          le += "+Inf";
        }
        le.push_back('"');
        AppendSample(out, name, "_bucket", labels, le, CountText(s.cumulative[i]));
      }
      AppendSample(out, name, "_sum", labels, "", DoubleText(s.sum));
      AppendSample(out, name, "_count", labels, "", CountText(s.count));
    }
  }
  return out;
}

}  // namespace custody::http
