#include "core/config/toml_reader.h"

#include <algorithm>
#include <charconv>
#include <cstdio>

#include "core/protocol/json.h"

namespace custody::config {
namespace {

std::string Full(std::string_view section, std::string_view key) {
  return section.empty() ? std::string(key) : std::string(section) + "." + std::string(key);
}

// toml++ 3.3 reaches __builtin_unreachable in its non-ASCII whitespace and bare-key tables for
// many code points (e.g. U+00E9 or U+FEDF where whitespace may follow a value), and where it looks
// them up depends on how it recovers from malformed text, so no scan of ours can tell the safe
// places apart. Configuration is therefore ASCII only (every key and value Custody defines is).
// Returns the 1-based line of the first non-ASCII byte, or 0.
size_t FirstNonAsciiLine(std::string_view text) {
  size_t line = 1;
  for (char c : text) {
    if (c == '\n') ++line;
    if (static_cast<unsigned char>(c) >= 0x80) return line;
  }
  return 0;
}

const toml::node* Get(const toml::table* t, std::string_view key) {
  return t == nullptr ? nullptr : t->get(key);
}

}  // namespace

Result<toml::table> Parse(std::string_view text, std::string_view source) {
  if (const size_t line = FirstNonAsciiLine(text); line != 0) {
    return InvalidArgument(std::string(source) + ":" + std::to_string(line) +
                           ": non-ASCII character (the configuration must be ASCII text)");
  }
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return InvalidArgument(std::string(source) + ":" + std::to_string(where.line) + ":" +
                           std::to_string(where.column) + ": " + std::string(e.description()));
  }
}

Status KeyError(std::string_view key, std::string_view what) {
  return InvalidArgument("config key '" + std::string(key) + "': " + std::string(what));
}

Status RejectUnknownKeys(const toml::table& table, std::string_view section,
                         std::initializer_list<std::string_view> known) {
  for (const auto& [key, value] : table) {
    const std::string k(key.str());
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      return InvalidArgument("config key '" + Full(section, k) + "' is not known (misspelt?)");
    }
  }
  return OkStatus();
}

Result<const toml::table*> Section(const toml::table& root, std::string_view name) {
  const toml::node* node = root.get(name);
  if (node == nullptr) return static_cast<const toml::table*>(nullptr);
  if (!node->is_table()) return KeyError(name, "expected a section ([" + std::string(name) + "])");
  return node->as_table();
}

Result<std::string> GetString(const toml::table* t, std::string_view section, std::string_view key,
                              std::string fallback) {
  const toml::node* n = Get(t, key);
  if (n == nullptr) return fallback;
  if (!n->is_string()) return KeyError(Full(section, key), "expected a string");
  return n->as_string()->get();
}

Result<int64_t> GetInt(const toml::table* t, std::string_view section, std::string_view key,
                       int64_t fallback, int64_t min, int64_t max) {
  const toml::node* n = Get(t, key);
  if (n == nullptr) return fallback;
  if (!n->is_integer()) return KeyError(Full(section, key), "expected an integer");
  const int64_t v = n->as_integer()->get();
  if (v < min || v > max) {
    return KeyError(Full(section, key),
                    "must be from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return v;
}

Result<double> GetNumber(const toml::table* t, std::string_view section, std::string_view key,
                         double fallback, double min, double max) {
  const toml::node* n = Get(t, key);
  if (n == nullptr) return fallback;
  double v = 0;
  if (n->is_integer()) {
    v = static_cast<double>(n->as_integer()->get());
  } else if (n->is_floating_point()) {
    v = n->as_floating_point()->get();
  } else {
    return KeyError(Full(section, key), "expected a number");
  }
  if (!(v >= min && v <= max)) {
    return KeyError(Full(section, key),
                    "must be from " + std::to_string(min) + " to " + std::to_string(max));
  }
  return v;
}

Result<bool> GetBool(const toml::table* t, std::string_view section, std::string_view key,
                     bool fallback) {
  const toml::node* n = Get(t, key);
  if (n == nullptr) return fallback;
  if (!n->is_boolean()) return KeyError(Full(section, key), "expected true or false");
  return n->as_boolean()->get();
}

Result<std::vector<int64_t>> GetIntArray(const toml::table* t, std::string_view section,
                                         std::string_view key, int64_t min, int64_t max) {
  std::vector<int64_t> out;
  const toml::node* n = Get(t, key);
  if (n == nullptr) return out;
  if (!n->is_array()) return KeyError(Full(section, key), "expected an array of integers");
  for (const toml::node& item : *n->as_array()) {
    if (!item.is_integer()) return KeyError(Full(section, key), "expected an array of integers");
    const int64_t v = item.as_integer()->get();
    if (v < min || v > max) {
      return KeyError(Full(section, key), "every element must be from " + std::to_string(min) +
                                              " to " + std::to_string(max));
    }
    out.push_back(v);
  }
  return out;
}

Result<std::vector<std::string>> GetStringArray(const toml::table* t, std::string_view section,
                                                std::string_view key) {
  std::vector<std::string> out;
  const toml::node* n = Get(t, key);
  if (n == nullptr) return out;
  if (!n->is_array()) return KeyError(Full(section, key), "expected an array of strings");
  for (const toml::node& item : *n->as_array()) {
    if (!item.is_string()) return KeyError(Full(section, key), "expected an array of strings");
    out.push_back(item.as_string()->get());
  }
  return out;
}

Result<std::optional<uint64_t>> GetDurationMs(const toml::table* t, std::string_view section,
                                              std::string_view key) {
  const toml::node* n = Get(t, key);
  if (n == nullptr) return std::optional<uint64_t>();
  if (!n->is_string()) {
    return KeyError(Full(section, key), "expected a duration string such as \"90s\" or \"72h\"");
  }
  Result<uint64_t> ms = ParseDurationMs(n->as_string()->get());
  if (!ms) return KeyError(Full(section, key), ms.error().message());
  return std::optional<uint64_t>(*ms);
}

Result<uint64_t> ParseDurationMs(std::string_view text) {
  uint64_t n = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [stop, ec] = std::from_chars(begin, end, n);
  const std::string_view unit(stop, static_cast<size_t>(end - stop));
  uint64_t scale = 0;
  if (unit == "ms") {
    scale = 1;
  } else if (unit == "s") {
    scale = 1000;
  } else if (unit == "m") {
    scale = 60'000;
  } else if (unit == "h") {
    scale = 3'600'000;
  } else if (unit == "d") {
    scale = 86'400'000;
  }
  if (ec != std::errc() || stop == begin || scale == 0 || n == 0 || n > UINT64_MAX / scale) {
    return InvalidArgument(
        "expected a positive duration such as 250ms, 90s, 15m, 72h or 7d; got '" +
        std::string(text) + "'");
  }
  return n * scale;
}

std::string TomlEscape(std::string_view s) {
  std::string out;
  char buf[16];
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      std::snprintf(buf, sizeof(buf), "\\u%04X", c);
      out += buf;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      const size_t n = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
      if (n == 0 || i + n > s.size() || !protocol::IsCleanText(s.substr(i, n))) {
        out += static_cast<char>(c);
        continue;
      }
      uint32_t cp = c & (0xff >> (n + 1));
      for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
      std::snprintf(buf, sizeof(buf), "\\U%08X", static_cast<unsigned>(cp));
      out += buf;
      i += n - 1;
    }
  }
  return out;
}

}  // namespace custody::config
