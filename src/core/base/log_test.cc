#include "core/base/log.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <regex>
#include <thread>
#include <vector>

namespace custody {
namespace {

std::string Escaped(std::string_view s) {
  std::string out;
  AppendJsonString(out, s);
  return out;
}

TEST(Logger, EscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(Escaped("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(Escaped("\n\r\t\b\f"), "\"\\n\\r\\t\\b\\f\"");
  EXPECT_EQ(Escaped(std::string("\x00\x01\x1f\x7f", 4)), "\"\\u0000\\u0001\\u001f\\u007f\"");
}

TEST(Logger, KeepsValidUtf8AndReplacesInvalidBytes) {
  EXPECT_EQ(Escaped("caf\xc3\xa9 \xf0\x9f\x94\x92"), "\"caf\xc3\xa9 \xf0\x9f\x94\x92\"");
  EXPECT_EQ(Escaped("a\xff"
                    "b"),
            "\"a\\ufffdb\"");
  EXPECT_EQ(Escaped("\xc0\xaf"), "\"\\ufffd\\ufffd\"");             // overlong '/'
  EXPECT_EQ(Escaped("\xed\xa0\x80"), "\"\\ufffd\\ufffd\\ufffd\"");  // surrogate
  EXPECT_EQ(Escaped("\xe2\x82"), "\"\\ufffd\\ufffd\"");             // truncated
}

TEST(Logger, LineIsOneJsonObjectWithTimestampLevelMessageAndFields) {
  const auto time = std::chrono::sys_days{std::chrono::year{2024} / 5 / 1} +
                    std::chrono::hours(12) + std::chrono::minutes(34) + std::chrono::seconds(56) +
                    std::chrono::milliseconds(7);
  const std::string line = Logger::FormatLine(time, LogLevel::kWarn, "request \"x\"\n",
                                              {{"status", 404},
                                               {"route", "/v1/a"},
                                               {"ok", false},
                                               {"ms", 1.5},
                                               {"big", uint64_t{18446744073709551615u}},
                                               {"neg", -3}});
  EXPECT_EQ(line,
            "{\"ts\":\"2024-05-01T12:34:56.007Z\",\"level\":\"warn\",\"msg\":\"request "
            "\\\"x\\\"\\n\",\"status\":404,\"route\":\"/v1/a\",\"ok\":false,\"ms\":1.5,"
            "\"big\":18446744073709551615,\"neg\":-3}\n");
  const nlohmann::json parsed = nlohmann::json::parse(line);
  EXPECT_EQ(parsed["msg"], "request \"x\"\n");
}

TEST(Logger, DropsLinesBelowTheMinimumLevel) {
  std::vector<std::string> lines;
  Logger logger([&](std::string_view line) { lines.emplace_back(line); }, LogLevel::kInfo);
  logger.Debug("hidden");
  logger.Info("shown", {{"k", "v"}});
  logger.set_min_level(LogLevel::kError);
  logger.Warn("hidden too");
  logger.Error("shown too");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_NE(lines[0].find("\"msg\":\"shown\",\"k\":\"v\""), std::string::npos);
  EXPECT_TRUE(std::regex_search(
      lines[1], std::regex(R"(^\{"ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","level":"error")")));
}

TEST(Logger, LinesFromManyThreadsNeverInterleave) {
  std::vector<std::string> lines;
  Logger logger([&](std::string_view line) { lines.emplace_back(line); }, LogLevel::kDebug);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&logger, t] {
      for (int i = 0; i < 500; ++i) logger.Info("m", {{"thread", t}, {"i", i}});
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(lines.size(), 2000u);
  for (const std::string& line : lines) {
    EXPECT_FALSE(nlohmann::json::parse(line, nullptr, false).is_discarded()) << line;
  }
}

TEST(Logger, ParsesLevelNames) {
  EXPECT_EQ(*ParseLogLevel("debug"), LogLevel::kDebug);
  EXPECT_EQ(*ParseLogLevel("error"), LogLevel::kError);
  EXPECT_FALSE(ParseLogLevel("verbose").ok());
}

TEST(Logger, FileLoggerAppendsAndReopens) {
  const std::string path = ::testing::TempDir() + "/custody_log_test.log";
  std::remove(path.c_str());
  auto logger = Logger::File(path, LogLevel::kInfo);
  ASSERT_TRUE(logger.ok()) << logger.error().ToString();
  (*logger)->Info("first");
  ASSERT_EQ(std::rename(path.c_str(), (path + ".1").c_str()), 0);
  ASSERT_TRUE((*logger)->Reopen().ok());
  (*logger)->Info("second");
  auto read = [](const std::string& p) {
    std::FILE* f = std::fopen(p.c_str(), "r");
    std::string out(4096, '\0');
    out.resize(f != nullptr ? std::fread(out.data(), 1, out.size(), f) : 0);
    if (f != nullptr) std::fclose(f);
    return out;
  };
  EXPECT_NE(read(path + ".1").find("\"first\""), std::string::npos);
  EXPECT_NE(read(path).find("\"second\""), std::string::npos);
  std::remove(path.c_str());
  std::remove((path + ".1").c_str());
}

}  // namespace
}  // namespace custody
