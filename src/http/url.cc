#include "http/url.h"

#include "core/base/bytes.h"
#include "core/protocol/json.h"

namespace custody::http {

Result<std::string> PercentDecode(std::string_view in, bool plus_is_space, std::string_view what) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    const char c = in[i];
    if (c == '%') {
      Result<Bytes> byte = i + 2 < in.size() ? HexDecode(in.substr(i + 1, 2))
                                             : Result<Bytes>(InvalidArgument("truncated"));
      if (!byte) {
        return InvalidArgument(std::string(what) + ": malformed percent-escape at offset " +
                               std::to_string(i) + "; write '%' as %25 and escapes as %XX");
      }
      out.push_back(static_cast<char>((*byte)[0]));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  if (!protocol::IsCleanText(out)) {
    return InvalidArgument(std::string(what) +
                           ": decodes to text that is not UTF-8 or contains control characters");
  }
  return out;
}

Result<Target> SplitTarget(std::string_view target) {
  if (target.empty() || target.front() != '/') {
    return InvalidArgument("request target must be a path starting with '/' (origin-form)");
  }
  for (char c : target) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7F || c == '#') {
      return InvalidArgument(
          "request target contains a character that must be percent-encoded (space, control, "
          "non-ASCII or '#')");
    }
  }
  Target out;
  const size_t q = target.find('?');
  out.path = std::string(target.substr(0, q));
  if (q != std::string_view::npos) out.query = std::string(target.substr(q + 1));
  return out;
}

Result<std::map<std::string, std::string>> ParseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view piece = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (piece.empty()) continue;
    const size_t eq = piece.find('=');
    CUSTODY_ASSIGN_OR_RETURN(std::string key,
                             PercentDecode(piece.substr(0, eq), true, "query parameter name"));
    std::string value;
    if (eq != std::string_view::npos) {
      CUSTODY_ASSIGN_OR_RETURN(
          value, PercentDecode(piece.substr(eq + 1), true, "query parameter '" + key + "'"));
    }
    if (!out.emplace(key, std::move(value)).second) {
      return InvalidArgument("query parameter '" + key + "' is given more than once");
    }
  }
  return out;
}

}  // namespace custody::http
