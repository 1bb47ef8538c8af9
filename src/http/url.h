// Request-target parsing for the custodian's HTTP server: splitting path and query, and strict
// percent-decoding (RFC 3986 §2.1).
//
// Everything here reads untrusted input and returns kInvalidArgument with a message naming the
// offending part, which the server sends back as a 400 answer. Decoded text must be clean UTF-8
// (protocol::IsCleanText: no control characters, no NUL), so a path parameter or query value
// can be logged, stored and compared without surprises.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace custody::http {

// Decodes %XX escapes. With `plus_is_space`, '+' decodes to ' ' (query strings, as browsers and
// curl's --data-urlencode write them). A '%' not followed by two hex digits, or a result that is
// not clean text, is kInvalidArgument; `what` names the part in the message ("query parameter
// 'limit'").
Result<std::string> PercentDecode(std::string_view in, bool plus_is_space, std::string_view what);

struct Target {
  std::string path;   // as sent, without the query; always starts with '/'
  std::string query;  // as sent, without the '?'; empty if none
};

// Splits an origin-form request target ("/v1/x?a=b"). Anything else (absolute-form, '*', a
// fragment, a space or control character) is kInvalidArgument.
Result<Target> SplitTarget(std::string_view target);

// Parses "a=1&b=x%20y" into decoded pairs. Empty pieces ("a=1&&b=2") are skipped; a key without
// '=' has the empty value; a key given twice is kInvalidArgument (a second value would be
// silently ignored otherwise).
Result<std::map<std::string, std::string>> ParseQuery(std::string_view query);

}  // namespace custody::http
