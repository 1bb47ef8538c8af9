// What an HTTP/1.1 header field may hold, for every server in Custody (the custodian's HTTPS
// server and the agent's local server): RFC 9110 token characters in names, no CR, LF or NUL in
// values, and sizes bounded so one field cannot take a server's memory.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

namespace custody::http {

inline constexpr size_t kMaxHeaderNameBytes = 256;
inline constexpr size_t kMaxHeaderValueBytes = 8192;

inline bool IsTokenChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

inline bool IsHeaderName(std::string_view s) {
  return !s.empty() && s.size() <= kMaxHeaderNameBytes &&
         std::all_of(s.begin(), s.end(), IsTokenChar);
}

inline bool IsHeaderValue(std::string_view s) {
  return s.size() <= kMaxHeaderValueBytes &&
         std::none_of(s.begin(), s.end(), [](char c) { return c == '\r' || c == '\n' || c == 0; });
}

}  // namespace custody::http
