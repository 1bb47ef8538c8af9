#include "agent/config.h"

#include <gtest/gtest.h>

#include "tests/support/must.h"

namespace custody::agent {
namespace {

constexpr std::string_view kMinimal = R"(
state_dir = "/var/lib/custody-agent"
models_dir = "/var/lib/custody-agent/models"
vendor_public_key = "/etc/custody/vendor.pub"
[custodian]
url = "https://custodian.example.com:8443"
)";

void ExpectKeyError(std::string_view text, std::string_view part) {
  Result<AgentConfig> c = ParseAgentConfig(text, "agent.toml");
  ASSERT_FALSE(c.ok()) << text;
  EXPECT_EQ(c.error().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.error().message().find(part), std::string::npos)
      << "'" << part << "' not in: " << c.error().message();
}

TEST(AgentConfigTest, MinimalFileGetsSafeDefaults) {
  const AgentConfig c = MUST(ParseAgentConfig(kMinimal, "agent.toml"));
  EXPECT_EQ(c.custodian.host, "custodian.example.com");
  EXPECT_EQ(c.custodian.port, 8443);
  EXPECT_EQ(c.tcti, "device:/dev/tpmrm0");
  EXPECT_EQ(c.serve.socket, "/run/custody-agent/agent.sock");
  EXPECT_EQ(c.serve.socket_mode, 0660u);
  EXPECT_FALSE(c.serve.tcp_port.has_value());
  EXPECT_TRUE(c.serve.allow_uids.empty());
  EXPECT_EQ(c.metering.unit, 16u);
  EXPECT_EQ(c.metering.extension_threshold, 0u);
  EXPECT_EQ(c.renew_interval_ms, 3'600'000u);
  EXPECT_EQ(c.memory_lock, MemoryLock::kBestEffort);
  EXPECT_EQ(c.seccomp, SeccompMode::kErrno);
}

TEST(AgentConfigTest, EverySettingIsRead) {
  const std::string text = std::string(kMinimal) + R"(
[serve]
socket = "/run/a.sock"
socket_mode = "0600"
socket_group = "0"
allow_uids = [1000, 1001]
allow_gids = [50]
tokens_file = "/etc/custody/tokens"
require_token = true
tcp_port = 8500
workers = 4
max_queue = 8
[metering]
unit = 4
extension_threshold = 100
extension_amount = 1000
report_interval = "30s"
[lease]
renew_interval = "15m"
[engine]
threads = 2
plugin_dirs = ["/opt/vendor/engines"]
[hardening]
memory_lock = "required"
seccomp = "kill"
[log]
level = "debug"
)";
  const AgentConfig c = MUST(ParseAgentConfig(text, "agent.toml"));
  EXPECT_EQ(c.serve.socket_mode, 0600u);
  EXPECT_EQ(c.serve.socket_group, gid_t{0});
  EXPECT_EQ(c.serve.allow_uids, (std::vector<uid_t>{1000, 1001}));
  EXPECT_EQ(c.serve.allow_gids, (std::vector<gid_t>{50}));
  EXPECT_TRUE(c.serve.require_token);
  EXPECT_EQ(c.serve.tcp_port, uint16_t{8500});
  EXPECT_EQ(c.serve.workers, 4u);
  EXPECT_EQ(c.metering.unit, 4u);
  EXPECT_EQ(c.metering.report_interval_ms, 30'000u);
  EXPECT_EQ(c.renew_interval_ms, 900'000u);
  EXPECT_EQ(c.engine.plugin_dirs, std::vector<std::string>{"/opt/vendor/engines"});
  EXPECT_EQ(c.memory_lock, MemoryLock::kRequired);
  EXPECT_EQ(c.seccomp, SeccompMode::kKill);
  EXPECT_EQ(c.log_level, LogLevel::kDebug);
}

TEST(AgentConfigTest, MistakesAreRefusedNamingTheKey) {
  const std::string base(kMinimal);
  ExpectKeyError(
      "models_dir = \"/m\"\nvendor_public_key = \"/v\"\n[custodian]\nurl = \"https://c\"",
      "'state_dir': required");
  ExpectKeyError(base + "tcp = 1\n", "'custodian.tcp' is not known");
  ExpectKeyError(base + "[serve]\nsocket = \"relative.sock\"\n",
                 "'serve.socket': must be an "
                 "absolute path");
  ExpectKeyError(base + "[serve]\nsocket_mode = \"0666\"\n", "must not give other users access");
  ExpectKeyError(base + "[serve]\ntcp_port = 8500\n", "a TCP listener has no peer credentials");
  ExpectKeyError(base + "[serve]\nrequire_token = true\n", "needs serve.tokens_file");
  ExpectKeyError(base + "[serve]\nsocket_group = \"no-such-group-here\"\n", "no group named");
  ExpectKeyError(base + "[metering]\nunit = 0\n", "'metering.unit': must be from 1 to 65536");
  ExpectKeyError(base + "[metering]\nextension_threshold = 5\n", "set both");
  ExpectKeyError(base + "[metering]\nreport_interval = \"soon\"\n", "expected a positive duration");
  ExpectKeyError(base + "[hardening]\nseccomp = \"maybe\"\n", "'hardening.seccomp'");
  ExpectKeyError(base + "[engine]\nplugin_dirs = [\"plugins\"]\n", "absolute path");
  ExpectKeyError(
      "state_dir = \"/s\"\nmodels_dir = \"/m\"\nvendor_public_key = \"/v\"\n"
      "[custodian]\nurl = \"http://c:80\"\n",
      "expected https://HOST[:PORT]");
  ExpectKeyError(base + "# caf\xc3\xa9\n", "non-ASCII");
  ExpectKeyError("state_dir = ", "agent.toml:1");
}

TEST(AgentConfigTest, CustodianUrlsParse) {
  std::string host;
  uint16_t port = 0;
  ASSERT_OK(ParseHttpsUrl("https://c.example:9443/", "k", host, port));
  EXPECT_EQ(host, "c.example");
  EXPECT_EQ(port, 9443);
  ASSERT_OK(ParseHttpsUrl("https://[::1]:8443", "k", host, port));
  EXPECT_EQ(host, "::1");
  ASSERT_OK(ParseHttpsUrl("https://10.0.0.5", "k", host, port));
  EXPECT_EQ(port, 443);
  EXPECT_FALSE(ParseHttpsUrl("https://c:0", "k", host, port).ok());
  EXPECT_FALSE(ParseHttpsUrl("https://c/path", "k", host, port).ok());
  EXPECT_FALSE(ParseHttpsUrl("https://", "k", host, port).ok());
}

TEST(AgentConfigTest, CustodianFlagMustNameTheConfiguredCustodian) {
  AgentConfig c = MUST(ParseAgentConfig(kMinimal, "agent.toml"));
  ASSERT_OK(CheckCustodianUrl(c, "https://custodian.example.com:8443"));
  ASSERT_OK(CheckCustodianUrl(c, "https://Custodian.Example.COM:8443/"));
  const Status other_port = CheckCustodianUrl(c, "https://custodian.example.com");
  ASSERT_FALSE(other_port.ok());
  EXPECT_NE(other_port.message().find("set custodian.url"), std::string::npos)
      << other_port.message();
  EXPECT_FALSE(CheckCustodianUrl(c, "https://evil.example:8443").ok());
  const Status malformed = CheckCustodianUrl(c, "http://custodian.example.com:8443");
  ASSERT_FALSE(malformed.ok());
  EXPECT_NE(malformed.message().find("--custodian"), std::string::npos) << malformed.message();
}

}  // namespace
}  // namespace custody::agent
