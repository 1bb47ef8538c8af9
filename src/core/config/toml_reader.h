// Strict reading of Custody's TOML configuration files (custodian.toml, agent.toml), shared by
// the programs so that every one of them refuses the same mistakes with the same words:
//
//  - the text must be ASCII (see Parse) and at most a caller-given size;
//  - unknown keys are errors (a misspelt limit must not silently keep its default);
//  - every error names the key ("server.listen") and says what is expected.
//
// Nothing here throws: toml++'s parse error is caught at this boundary.
#pragma once

#include <toml++/toml.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/status.h"

namespace custody::config {

// Parses `text` read from `source` (a path, for messages). kInvalidArgument "source:line:col:
// what" for malformed TOML or a non-ASCII byte.
Result<toml::table> Parse(std::string_view text, std::string_view source);

// kInvalidArgument "config key 'KEY': WHAT".
Status KeyError(std::string_view key, std::string_view what);

// kInvalidArgument naming the first key of `table` (in [section]) not in `known`.
Status RejectUnknownKeys(const toml::table& table, std::string_view section,
                         std::initializer_list<std::string_view> known);

// The table [name] of `root`; nullptr when absent; kInvalidArgument when `name` is not a table.
Result<const toml::table*> Section(const toml::table& root, std::string_view name);

// Typed getters for `section.key` in the table `t` (which may be nullptr: an absent section);
// `fallback` when the key is absent. Numbers outside [min, max] are refused naming the range.
Result<std::string> GetString(const toml::table* t, std::string_view section, std::string_view key,
                              std::string fallback);
Result<int64_t> GetInt(const toml::table* t, std::string_view section, std::string_view key,
                       int64_t fallback, int64_t min, int64_t max);
Result<double> GetNumber(const toml::table* t, std::string_view section, std::string_view key,
                         double fallback, double min, double max);
Result<bool> GetBool(const toml::table* t, std::string_view section, std::string_view key,
                     bool fallback);
// An array of integers, each within [min, max]; empty when absent.
Result<std::vector<int64_t>> GetIntArray(const toml::table* t, std::string_view section,
                                         std::string_view key, int64_t min, int64_t max);
// An array of strings; empty when absent.
Result<std::vector<std::string>> GetStringArray(const toml::table* t, std::string_view section,
                                                std::string_view key);
// A duration written as "90s", "15m", "72h", "7d" or "250ms"; fallback when absent.
Result<std::optional<uint64_t>> GetDurationMs(const toml::table* t, std::string_view section,
                                              std::string_view key);

// `s` as the inside of a TOML basic string in ASCII: quotes, backslashes and control characters
// escaped, and non-ASCII code points as \UXXXXXXXX (Parse reads ASCII text only).
std::string TomlEscape(std::string_view s);

// Parses "250ms", "90s", "15m", "72h", "7d" into milliseconds (a positive integer and a unit).
Result<uint64_t> ParseDurationMs(std::string_view text);

}  // namespace custody::config
