#include "custodian/config.h"

#include <gtest/gtest.h>

namespace custody::custodian {
namespace {

TEST(ParseConfig, AcceptsWhatInitWrites) {
  Result<Config> c = ParseConfig(DefaultConfigText("/var/lib/custody", "0.0.0.0:8443"), "t");
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->store_path, "/var/lib/custody/custodian.db");
  EXPECT_EQ(c->server.port, 8443);
}

TEST(ParseConfig, InitEscapesTheDataDirectory) {
  for (const std::string dir : {"/srv/a\"b\\c",
                                "/srv/\xf0\x9f\x98\x80"
                                "dy",
                                "/srv/caf\xc3\xa9", "/srv/tab\there"}) {
    Result<Config> c = ParseConfig(DefaultConfigText(dir, "127.0.0.1:8443"), "init");
    ASSERT_TRUE(c.ok()) << dir << ": " << c.error().ToString();
    EXPECT_EQ(c->data_dir, dir);
  }
}

// toml++ 3.3 reaches __builtin_unreachable on these (its non-ASCII whitespace and bare-key
// tables): they must be refused before it sees them, naming the line.
TEST(ParseConfig, RefusesNonAsciiTextBeforeTheTomlParserSeesIt) {
  for (const char* text : {"data_dir = \"/d\" \xc3\xa9\n", "data_dir = \"/d\"\n\xef\xbb\x9f = 1\n",
                           "data_dir = \"/d\"\n[server]\nio_threads = 2\xe3\x80\x80\n",
                           "durabIlitydadura\xef\xbb\x9f%ity/d'\n",
                           "data_dir = \"/d\"\npath =-0.0.0o\"uinfrabI'ita\xef\xbb\x9f%ity/d\n",
                           "data_dir = \"\"\"/d\\\n \xc3\xa9\"\"\"\n",
                           "data_dir = \"/srv/cust\xc3\xb3\x64y\"\n", "# J\xc3\xbcrgen\n"}) {
    Result<Config> c = ParseConfig(text, "custodian.toml");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.error().message().find("non-ASCII"), std::string::npos) << c.error().message();
    EXPECT_EQ(c.error().message().rfind("custodian.toml:", 0), 0u) << c.error().message();
  }
  Result<Config> c = ParseConfig("data_dir = \"/d\"\n\n[log]\nlevel = \"info\" # \xc2\xa0\n", "x");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().message().rfind("x:4:", 0), 0u) << c.error().message();
}

}  // namespace
}  // namespace custody::custodian
