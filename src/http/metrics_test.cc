#include "http/metrics.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sstream>
#include <thread>

namespace custody::http {
namespace {

using ::testing::HasSubstr;

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(Metrics, RendersHelpTypeAndSamples) {
  Metrics m;
  m.GetCounter("custody_test_requests_total", "Requests", {{"route", "/v1/x"}}).Increment(3);
  m.GetGauge("custody_test_open", "Open things").Set(2.5);
  const std::string text = m.Render();
  EXPECT_EQ(text,
            "# HELP custody_test_open Open things\n"
            "# TYPE custody_test_open gauge\n"
            "custody_test_open 2.5\n"
            "# HELP custody_test_requests_total Requests\n"
            "# TYPE custody_test_requests_total counter\n"
            "custody_test_requests_total{route=\"/v1/x\"} 3\n");
}

TEST(Metrics, SameSeriesIsSharedAndLabelOrderDoesNotMatter) {
  Metrics m;
  Counter& a = m.GetCounter("c_total", "h", {{"a", "1"}, {"b", "2"}});
  Counter& b = m.GetCounter("c_total", "h", {{"b", "2"}, {"a", "1"}});
  EXPECT_EQ(&a, &b);
  a.Increment();
  b.Increment();
  EXPECT_THAT(m.Render(), HasSubstr("c_total{a=\"1\",b=\"2\"} 2\n"));
}

TEST(Metrics, EscapesLabelValuesAndHelp) {
  Metrics m;
  m.GetCounter("c_total", "back\\slash", {{"v", "q\"uote\\back\nline"}}).Increment();
  const std::string text = m.Render();
  EXPECT_THAT(text, HasSubstr("# HELP c_total back\\\\slash\n"));
  EXPECT_THAT(text, HasSubstr("c_total{v=\"q\\\"uote\\\\back\\nline\"} 1\n"));
}

TEST(Metrics, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  Metrics m;
  const double bounds[] = {0.1, 1};
  Histogram& h = m.GetHistogram("latency_seconds", "Latency", bounds, {{"route", "r"}});
  h.Observe(0.05);
  h.Observe(0.1);  // inclusive upper bound
  h.Observe(0.5);
  h.Observe(7);
  const std::string text = m.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE latency_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_bucket{route=\"r\",le=\"0.1\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_bucket{route=\"r\",le=\"1\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_bucket{route=\"r\",le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_sum{route=\"r\"} 7.65\n"));
  EXPECT_THAT(text, HasSubstr("latency_seconds_count{route=\"r\"} 4\n"));
}

TEST(Metrics, EveryFamilyHasOneHelpAndOneTypeLineBeforeItsSamples) {
  Metrics m;
  m.GetCounter("a_total", "A", {{"x", "1"}}).Increment();
  m.GetCounter("a_total", "A", {{"x", "2"}}).Increment();
  m.GetHistogram("b_seconds", "B", DefaultLatencyBucketsSeconds()).Observe(0.2);
  std::string family;
  int help = 0, type = 0;
  for (const std::string& line : Lines(m.Render())) {
    if (line.starts_with("# HELP ")) {
      family = line.substr(7, line.find(' ', 7) - 7);
      ++help;
    } else if (line.starts_with("# TYPE ")) {
      EXPECT_EQ(line.substr(7, family.size()), family);
      ++type;
    } else {
      EXPECT_TRUE(line.starts_with(family)) << line;
      EXPECT_NE(line.rfind(' '), std::string::npos);
    }
  }
  EXPECT_EQ(help, 2);
  EXPECT_EQ(type, 2);
}

TEST(Metrics, ConcurrentIncrementsAreNotLost) {
  Metrics m;
  Counter& c = m.GetCounter("c_total", "h");
  Histogram& h = m.GetHistogram("h_seconds", "h", DefaultLatencyBucketsSeconds());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.Increment();
        h.Observe(0.001);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.value(), 40000u);
  EXPECT_EQ(h.Read().count, 40000u);
}

TEST(MetricsDeathTest, MisuseIsAProgrammingError) {
  Metrics m;
  (void)m.GetCounter("c_total", "h");
  EXPECT_DEATH((void)m.GetGauge("c_total", "h"), "registered twice");
  EXPECT_DEATH((void)m.GetCounter("bad-name", "h"), "invalid metric name");
  EXPECT_DEATH((void)m.GetCounter("x_total", "h", {{"__reserved", "v"}}), "invalid label name");
  const double bounds[] = {1};
  EXPECT_DEATH((void)m.GetHistogram("h", "h", bounds, {{"le", "1"}}), "invalid label name");
}

}  // namespace
}  // namespace custody::http
