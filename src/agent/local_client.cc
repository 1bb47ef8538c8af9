#include "agent/local_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

// Beast's HTTP parser only (the sockets are plain POSIX); asio.h sets the configuration every
// Beast user must agree on.
#include "core/base/bytes.h"
#include "http/asio.h"

namespace custody::agent {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

namespace {

using Clock = std::chrono::steady_clock;

// The answer's status line and header fields; the agent sends a handful.
constexpr size_t kMaxAnswerHeaderBytes = 16 << 10;
// The read buffer: headers, chunked bodies and bodies read to the end of the connection pass
// through it; a Content-Length body is read straight into the answer.
constexpr size_t kReadBufferBytes = 64 << 10;
// A Content-Length body gets its whole length at once up to this size; beyond, it grows as the
// data arrives (doubling), so a length announced but not sent costs no more than what came.
constexpr size_t kEagerBodyBytes = 1 << 20;
constexpr std::string_view kHint =
    " (is custody-agent running? is your user allowed on the socket?)";

bool IsTokenChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), IsTokenChar);
}

// A field value or a target: no control characters (CR, LF and NUL above all) and no DEL.
bool IsClean(std::string_view s, bool allow_space) {
  return std::none_of(s.begin(), s.end(), [allow_space](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 ? !(allow_space && c == '\t') : u == 0x7f || (c == ' ' && !allow_space);
  });
}

std::string DurationText(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

// What is left until `deadline` for poll(): at least 1 ms while time remains, 0 once it passed.
int PollMs(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  if (left.count() <= 0) return 0;
  return static_cast<int>(std::min<int64_t>(left.count(), INT32_MAX));
}

// Beast's response parser, writing straight into a LocalAnswer: no intermediate header container
// and no body type, so that parsing adds no allocation of its own.
class AnswerParser : public bhttp::basic_parser<false> {
 public:
  explicit AnswerParser(LocalAnswer& answer) : answer_(answer) {}

 private:
  void on_request_impl(bhttp::verb, beast::string_view, beast::string_view, int,
                       beast::error_code&) override {}
  void on_response_impl(int code, beast::string_view, int, beast::error_code&) override {
    answer_.status = code;
  }
  void on_field_impl(bhttp::field, beast::string_view name, beast::string_view value,
                     beast::error_code&) override {
    answer_.headers.emplace_back(std::string(name), std::string(value));
  }
  void on_header_impl(beast::error_code&) override {}
  void on_body_init_impl(const boost::optional<uint64_t>&, beast::error_code&) override {}
  size_t on_body_impl(beast::string_view data, beast::error_code&) override {
    answer_.body.append(data);
    return data.size();
  }
  void on_chunk_header_impl(uint64_t, beast::string_view, beast::error_code&) override {}
  size_t on_chunk_body_impl(uint64_t, beast::string_view data, beast::error_code&) override {
    answer_.body.append(data);
    return data.size();
  }
  void on_finish_impl(beast::error_code&) override {}

  LocalAnswer& answer_;
};

}  // namespace

std::optional<std::string_view> LocalAnswer::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (EqualsIgnoreCase(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

struct LocalClient::Impl {
  LocalClientOptions options;
  std::string peer;  // "the agent at ..."
  int fd = -1;
  std::string request;  // the request header being sent; its capacity is kept between calls
  std::vector<char> in = std::vector<char>(kReadBufferBytes);
  size_t in_begin = 0;  // unread bytes are in[in_begin, in_end)
  size_t in_end = 0;
  bool received = false;  // a byte of the current answer arrived

  ~Impl() { Close(); }

  void Close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
    in_begin = in_end = 0;
  }

  Status ConnectError(int err) const {
    std::string message = "cannot connect to " + peer + ": ";
    if (err == EAGAIN || err == EINPROGRESS || err == ETIMEDOUT) {
      message += "it did not accept the connection within " + DurationText(options.timeout);
    } else {
      message += std::strerror(err);
    }
    message += kHint;
    if (err == EACCES || err == EPERM) return PermissionDenied(std::move(message));
    return Unavailable(std::move(message));
  }

  // A new connection (nothing is left open on failure). The connect itself is blocking, bounded
  // by SO_SNDTIMEO (a Unix socket waits there while the listen queue is full, TCP during the
  // handshake); then the socket is made non-blocking and every wait is a poll().
  Status Open(Clock::time_point deadline) {
    Close();
    Status opened = Connect(deadline);
    if (!opened.ok()) Close();
    return opened;
  }

  Status Connect(Clock::time_point deadline) {
    const int left_ms = PollMs(deadline);
    if (left_ms == 0) return DeadlineExceeded("cannot connect to " + peer + ": out of time");
    fd = ::socket(options.tcp_port ? AF_INET : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return ErrnoStatus(errno, "socket");
    timeval tv{};
    tv.tv_sec = left_ms / 1000;
    tv.tv_usec = (left_ms % 1000) * 1000;
    if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
      return ErrnoStatus(errno, "setsockopt SO_SNDTIMEO");
    }
    int rc;
    if (options.tcp_port) {
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(*options.tcp_port);
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    } else {
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, options.socket_path.data(), options.socket_path.size());
      rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    }
    if (rc != 0) return ConnectError(errno);
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
      return ErrnoStatus(errno, "fcntl O_NONBLOCK");
    }
    if (options.tcp_port) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return OkStatus();
  }

  // Whether the idle connection can no longer carry a request: the server closed it (it reads as
  // end of file), reset it, or sent something unasked (an error before closing). Any of these
  // ends it; nothing of the next request has been written yet.
  bool Stale() const {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) != 0;
  }

  Status BuildRequest(std::string_view method, std::string_view target, std::string_view body,
                      const std::vector<std::pair<std::string, std::string>>& headers) {
    if (!IsToken(method)) {
      return InvalidArgument("HTTP method '" + std::string(method.substr(0, 32)) +
                             "' is not a token");
    }
    if (target.empty() || target.front() != '/' || !IsClean(target, /*allow_space=*/false)) {
      return InvalidArgument("request target '" + std::string(target.substr(0, 200)) +
                             "' must be a path starting with '/', without spaces or controls");
    }
    request.clear();
    request.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: localhost\r\n");
    if (options.bearer_token) {
      request.append("Authorization: Bearer ").append(*options.bearer_token).append("\r\n");
    }
    for (const auto& [name, value] : headers) {
      const bool ours =
          EqualsIgnoreCase(name, "Host") || EqualsIgnoreCase(name, "Content-Length") ||
          EqualsIgnoreCase(name, "Transfer-Encoding") || EqualsIgnoreCase(name, "Connection") ||
          (options.bearer_token && EqualsIgnoreCase(name, "Authorization"));
      if (!IsToken(name) || ours || !IsClean(value, /*allow_space=*/true)) {
        return InvalidArgument("header field '" + std::string(name.substr(0, 64)) +
                               (ours ? "' is set by the client itself"
                                     : "' is not a token name with a value free of controls"));
      }
      request.append(name).append(": ").append(value).append("\r\n");
    }
    if (!body.empty() || method == "POST" || method == "PUT") {
      request.append("Content-Length: ").append(std::to_string(body.size())).append("\r\n");
    }
    request.append("\r\n");
    return OkStatus();
  }

  // Writes the request header and body, in one gathered write when the socket takes it all. Stops
  // early, with *complete false, when the server answers or closes before it has everything (it
  // refused the request after its header, or dropped the connection): its answer, if any, is
  // read next. *written counts the bytes that went out.
  Status Write(std::string_view body, Clock::time_point deadline, size_t* written, bool* complete) {
    const size_t total = request.size() + body.size();
    *written = 0;
    *complete = false;
    while (*written < total) {
      iovec iov[2];
      size_t count = 0;
      if (*written < request.size()) {
        iov[count++] = {request.data() + *written, request.size() - *written};
      }
      const size_t body_done = *written > request.size() ? *written - request.size() : 0;
      if (body_done < body.size()) {
        // sendmsg only reads the buffers.
        iov[count++] = {const_cast<char*>(body.data()) + body_done, body.size() - body_done};
      }
      msghdr msg{};
      msg.msg_iov = iov;
      msg.msg_iovlen = count;
      const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
      if (n > 0) {
        *written += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        if (errno == EPIPE || errno == ECONNRESET) return OkStatus();  // the answer may be there
        return ErrnoStatus(errno, "send to " + peer);
      }
      pollfd p{fd, POLLOUT | POLLIN, 0};
      const int ready = ::poll(&p, 1, PollMs(deadline));
      if (ready < 0 && errno != EINTR) return ErrnoStatus(errno, "poll");
      if (ready == 0) {
        return DeadlineExceeded(peer + " did not take the request within " +
                                DurationText(options.timeout));
      }
      if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) return OkStatus();
    }
    *complete = true;
    return OkStatus();
  }

  // Reads what the socket has into `dst` (waiting until `deadline`): the byte count, 0 at the end
  // of the connection.
  Result<size_t> Receive(char* dst, size_t capacity, Clock::time_point deadline) {
    for (;;) {
      const ssize_t n = ::recv(fd, dst, capacity, 0);
      if (n > 0) {
        received = true;
        return static_cast<size_t>(n);
      }
      if (n == 0 || errno == ECONNRESET) return size_t{0};
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return ErrnoStatus(errno, "read from " + peer);
      pollfd p{fd, POLLIN, 0};
      const int ready = ::poll(&p, 1, PollMs(deadline));
      if (ready < 0 && errno != EINTR) return ErrnoStatus(errno, "poll");
      if (ready == 0) {
        return DeadlineExceeded("no answer from " + peer + " within " +
                                DurationText(options.timeout));
      }
    }
  }

  // More bytes into the read buffer (moving the unread ones to its front if needed); false at the
  // end of the connection.
  Result<bool> Fill(Clock::time_point deadline) {
    if (in_end == in.size()) {
      std::memmove(in.data(), in.data() + in_begin, in_end - in_begin);
      in_end -= in_begin;
      in_begin = 0;
    }
    CUSTODY_ASSIGN_OR_RETURN(const size_t n,
                             Receive(in.data() + in_end, in.size() - in_end, deadline));
    in_end += n;
    return n > 0;
  }

  Status Closed() const {
    return Unavailable(peer + (received ? " closed the connection in the middle of its answer"
                                        : " closed the connection before answering"));
  }

  Status ParseError(const beast::error_code& ec) const {
    if (ec == bhttp::error::header_limit) {
      return ResourceExhausted("the answer of " + peer + " has a header larger than " +
                               std::to_string(kMaxAnswerHeaderBytes) + " bytes");
    }
    if (ec == bhttp::error::body_limit) {
      return ResourceExhausted("the answer of " + peer + " is larger than the " +
                               std::to_string(options.max_response_bytes) + " bytes allowed");
    }
    return Internal("the answer of " + peer + " is not valid HTTP/1.1: " + ec.message());
  }

  // Feeds the buffered bytes to the parser until it is done or needs more (then reads more).
  // With `header_only` it stops once the header is complete.
  Status Parse(AnswerParser& parser, bool header_only, Clock::time_point deadline) {
    while (!parser.is_done() && !(header_only && parser.is_header_done())) {
      beast::error_code ec;
      const size_t used =
          parser.put(boost::asio::buffer(in.data() + in_begin, in_end - in_begin), ec);
      in_begin += used;
      if (ec && ec != bhttp::error::need_more) return ParseError(ec);
      if (used > 0 && !ec) continue;
      CUSTODY_ASSIGN_OR_RETURN(const bool more, Fill(deadline));
      if (more) continue;
      // The end of the connection: the end of an answer that runs until it, or a cut one.
      if (!parser.got_some()) return Closed();
      parser.put_eof(ec);
      if (ec) return ec == bhttp::error::partial_message ? Closed() : ParseError(ec);
    }
    return OkStatus();
  }

  // Reads a Content-Length body straight into the answer: no pass through the read buffer.
  Status ReadBody(uint64_t length, std::string& body, Clock::time_point deadline) {
    size_t have = std::min<size_t>(in_end - in_begin, length);
    body.resize(std::min<uint64_t>(length, std::max(kEagerBodyBytes, have)));
    std::memcpy(body.data(), in.data() + in_begin, have);
    in_begin += have;
    while (have < length) {
      if (have == body.size()) body.resize(std::min<uint64_t>(length, 2 * body.size()));
      CUSTODY_ASSIGN_OR_RETURN(const size_t n,
                               Receive(body.data() + have, body.size() - have, deadline));
      if (n == 0) return Closed();
      have += n;
    }
    return OkStatus();
  }

  // Reads one answer (skipping interim 1xx ones). *keep_alive: the connection may carry another.
  Status Read(bool head, Clock::time_point deadline, LocalAnswer& answer, bool* keep_alive) {
    for (;;) {
      answer = LocalAnswer();
      AnswerParser parser(answer);
      parser.header_limit(kMaxAnswerHeaderBytes);
      parser.body_limit(options.max_response_bytes);
      parser.skip(head);
      CUSTODY_RETURN_IF_ERROR(Parse(parser, /*header_only=*/true, deadline));
      if (answer.status / 100 == 1) {
        if (answer.status == 101) return Internal(peer + " switched protocols (101)");
        continue;
      }
      *keep_alive = parser.keep_alive();
      if (parser.is_done()) return OkStatus();
      if (!parser.chunked() && parser.content_length()) {
        return ReadBody(*parser.content_length(), answer.body, deadline);
      }
      return Parse(parser, /*header_only=*/false, deadline);
    }
  }

  // One request and its answer on the open connection. *written: request bytes sent.
  Result<LocalAnswer> Exchange(std::string_view method, std::string_view body,
                               Clock::time_point deadline, size_t* written) {
    received = false;
    bool complete = false;
    CUSTODY_RETURN_IF_ERROR(Write(body, deadline, written, &complete));
    LocalAnswer answer;
    bool keep_alive = false;
    CUSTODY_RETURN_IF_ERROR(Read(method == "HEAD", deadline, answer, &keep_alive));
    // A connection whose request was not sent entirely, or with bytes nobody asked for, is done.
    if (!keep_alive || !complete || in_begin != in_end) Close();
    return answer;
  }
};

LocalClient::LocalClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LocalClient::~LocalClient() = default;

const std::string& LocalClient::peer() const { return impl_->peer; }

Result<std::unique_ptr<LocalClient>> LocalClient::Connect(LocalClientOptions options) {
  if (options.timeout.count() <= 0) return InvalidArgument("the timeout must be positive");
  if (options.max_response_bytes == 0) {
    return InvalidArgument("max_response_bytes must be positive");
  }
  if (options.bearer_token &&
      (options.bearer_token->empty() || !IsClean(*options.bearer_token, /*allow_space=*/false))) {
    return InvalidArgument("the application token is empty or holds spaces or control characters");
  }
  auto impl = std::make_unique<Impl>();
  if (options.tcp_port) {
    impl->peer = "the agent at 127.0.0.1:" + std::to_string(*options.tcp_port);
  } else {
    if (options.socket_path.empty()) return InvalidArgument("no agent socket given");
    if (options.socket_path.size() >= sizeof(sockaddr_un::sun_path) ||
        options.socket_path.find('\0') != std::string::npos) {
      return InvalidArgument("the socket path " + options.socket_path + " is longer than " +
                             std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                             " bytes or holds a NUL");
    }
    impl->peer = "the agent at " + options.socket_path;
  }
  impl->options = std::move(options);
  CUSTODY_RETURN_IF_ERROR(impl->Open(Clock::now() + impl->options.timeout));
  return std::unique_ptr<LocalClient>(new LocalClient(std::move(impl)));
}

Result<LocalAnswer> LocalClient::Send(
    std::string_view method, std::string_view target, std::string_view body,
    const std::vector<std::pair<std::string, std::string>>& headers) {
  CUSTODY_RETURN_IF_ERROR(impl_->BuildRequest(method, target, body, headers));
  const Clock::time_point deadline = Clock::now() + impl_->options.timeout;
  const bool idempotent = method == "GET" || method == "HEAD";
  for (int attempt = 0;; ++attempt) {
    if (impl_->fd >= 0 && impl_->Stale()) impl_->Close();
    // A connection opened earlier may be closed by the server at any moment; a new one is not.
    const bool reused = impl_->fd >= 0;
    if (!reused) CUSTODY_RETURN_IF_ERROR(impl_->Open(deadline));
    size_t written = 0;
    Result<LocalAnswer> answer = impl_->Exchange(method, body, deadline, &written);
    if (answer) return answer;
    impl_->Close();
    // Sent again only when it cannot be done twice: nothing of it went out, or it is a GET.
    const bool retry = attempt == 0 && reused && !impl_->received &&
                       answer.error().code() == StatusCode::kUnavailable &&
                       (written == 0 || idempotent);
    if (!retry) return answer.error();
  }
}

}  // namespace custody::agent
