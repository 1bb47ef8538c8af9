#include "agent/local_server.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <future>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

// After asio.h, which sets the configuration every Asio user must agree on.
#include "http/asio.h"
#include "http/header_rules.h"
// clang-format off
#include <boost/asio/local/stream_protocol.hpp>
// clang-format on
#include "http/router.h"
#include "http/run_blocking.h"

namespace custody::agent {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;

namespace {

using tcp = asio::ip::tcp;
using UnixStream = asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;
using ErrorCode = boost::system::error_code;
using Parser = bhttp::request_parser<bhttp::string_body>;
using http::IsHeaderName;
using http::IsHeaderValue;

// How long Stop waits for the I/O threads to close the listeners, and for connections to end
// once they were closed by force.
constexpr std::chrono::milliseconds kCloseTimeout{1000};
// After answering a request whose body (or rest) we did not read, we stop sending and read and
// discard what the client still sends, for at most this long and this much, before closing. Closing
// with unread data would reset the connection (TCP) or report a reset to the client after the
// answer (Unix); the client could lose the answer it has not read yet.
constexpr std::chrono::milliseconds kLingerTimeout{1000};
constexpr size_t kLingerMaxBytes = 1 << 20;
// After accept() fails for lack of descriptors or memory, wait before retrying instead of spinning.
constexpr std::chrono::milliseconds kAcceptRetryDelay{100};
// One read from the socket (headers and chunked bodies go through the connection's buffer).
constexpr size_t kReadChunkBytes = 64 << 10;
// A Content-Length body is read straight into the request's string. Up to this size the string
// gets its whole length at once; beyond it, it grows as the data arrives (doubling), so a client
// announcing 64 MiB and sending slowly holds at most twice what it sent, at the price of about one
// extra copy of a large body.
constexpr size_t kEagerBodyBytes = 1 << 20;
// Retry-After of a 503 answer.
constexpr std::string_view kRetryAfterSeconds = "1";
// Bounds on handler-supplied header fields.
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

auto Redirect(ErrorCode& ec) { return asio::redirect_error(asio::use_awaitable, ec); }

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_;
};

// Errors that mean the peer went away or we closed the connection: no answer is possible.
bool IsDisconnect(const ErrorCode& ec) {
  return ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::operation_aborted || ec == asio::error::broken_pipe ||
         ec == asio::error::bad_descriptor || ec == bhttp::error::end_of_stream ||
         ec == bhttp::error::partial_message;
}

std::string Duration(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  return std::to_string(d.count()) + " ms";
}

// The KServe error body. Messages may carry bytes from the request (or the authorizer); invalid
// UTF-8 is replaced rather than refused, so the error itself cannot fail.
LocalResponse ErrorResponse(int status, std::string_view message) {
  LocalResponse r;
  r.status = status;
  r.body = nlohmann::json{{"error", std::string(message)}}.dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace);
  return r;
}

LocalResponse BusyResponse(std::string_view message) {
  LocalResponse r = ErrorResponse(503, message);
  r.headers.emplace_back("Retry-After", std::string(kRetryAfterSeconds));
  return r;
}

LocalResponse StoppingResponse() {
  return BusyResponse("the agent is stopping; retry on a new connection");
}

void AppendNumber(std::string& out, uint64_t v) {
  std::array<char, 24> digits;
  const auto [end, ec] = std::to_chars(digits.data(), digits.data() + digits.size(), v);
  (void)ec;  // 24 digits hold any uint64_t
  out.append(digits.data(), end);
}

// ---- the socket file -------------------------------------------------------------------------

struct SocketFileId {
  dev_t dev = 0;
  ino_t ino = 0;
};

Result<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path) ||
      path.find('\0') != std::string::npos) {
    return InvalidArgument("socket_path must be 1.." + std::to_string(sizeof(addr.sun_path) - 1) +
                           " bytes without NUL; got " + std::to_string(path.size()) + " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

std::string FileKind(mode_t mode) {
  if (S_ISREG(mode)) return "regular file";
  if (S_ISDIR(mode)) return "directory";
  if (S_ISLNK(mode)) return "symbolic link";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "device";
  return "non-socket file";
}

// Whether a server accepts connections on the socket at `path`.
Result<bool> SomeoneListens(const sockaddr_un& addr, const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return true;
  switch (errno) {
    case EAGAIN:  // its backlog is full: it is alive
    case EINPROGRESS:
      return true;
    case ECONNREFUSED:  // a socket file nobody listens on: left behind by a crash
    case ENOENT:        // removed in the meantime
      return false;
    case EACCES:
    case EPERM:
      return PermissionDenied("cannot tell whether a server listens on " + path +
                              ": no permission to connect to it; remove it if it is stale");
    default:
      return ErrnoStatus(errno, "connect to the existing socket " + path);
  }
}

// Creates the listening Unix socket at options.socket_path (see the header for the rules).
Result<UniqueFd> CreateUnixListener(const LocalServerOptions& o, SocketFileId* id) {
  const std::string& path = o.socket_path;
  CUSTODY_ASSIGN_OR_RETURN(const sockaddr_un addr, UnixAddress(path));
  const size_t slash = path.rfind('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return FailedPrecondition("the socket directory " + dir + " does not exist; create it (" +
                                path + " is to be created in it)");
    }
    return ErrnoStatus(errno, "stat " + dir);
  }
  if (!S_ISDIR(st.st_mode)) {
    return FailedPrecondition("the socket directory " + dir + " is not a directory");
  }

  // Never follow a link at the path, never remove anything but a dead socket. bind() below does
  // not follow a link either: it fails if anything appeared at the path in the meantime.
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return FailedPrecondition(path + " exists and is a " + FileKind(st.st_mode) +
                                ", not a socket; refusing to replace it (remove it or choose "
                                "another socket_path)");
    }
    CUSTODY_ASSIGN_OR_RETURN(const bool live, SomeoneListens(addr, path));
    if (live) return Unavailable("another agent is serving on " + path + "; stop it first");
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, "remove the stale socket " + path);
    }
  } else if (errno != ENOENT) {
    return ErrnoStatus(errno, "lstat " + path);
  }

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  // Linux creates the socket file with the mode of the socket's inode (less the umask): restrict
  // it before bind so the file is never more open than socket_mode, not even for a moment.
  if (::fchmod(fd.get(), static_cast<mode_t>(o.socket_mode)) != 0) {
    return ErrnoStatus(errno, "fchmod the new socket");
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    if (err == EADDRINUSE) {
      return Unavailable("something was created at " + path +
                         " while the agent was starting (another agent starting?)");
    }
    if (err == EACCES || err == EPERM) {
      return PermissionDenied("cannot create the socket " + path + ": " + std::strerror(err));
    }
    return ErrnoStatus(err, "bind " + path);
  }
  // From here on the file is ours: remove it again on any failure.
  auto fail = [&path](Status status) {
    ::unlink(path.c_str());
    return status;
  };
  if (::lstat(path.c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) {
    return fail(Internal("the socket " + path + " vanished or changed right after bind"));
  }
  id->dev = st.st_dev;
  id->ino = st.st_ino;
  // The umask may have taken bits away: set the mode exactly, without following a link.
  if (::fchmodat(AT_FDCWD, path.c_str(), static_cast<mode_t>(o.socket_mode), AT_SYMLINK_NOFOLLOW) !=
      0) {
    // Without /proc, glibc cannot do NOFOLLOW; the lstat above saw our socket.
    if (errno != EOPNOTSUPP && errno != ENOSYS) return fail(ErrnoStatus(errno, "chmod " + path));
    if (::chmod(path.c_str(), static_cast<mode_t>(o.socket_mode)) != 0) {
      return fail(ErrnoStatus(errno, "chmod " + path));
    }
  }
  if (o.socket_group && ::fchownat(AT_FDCWD, path.c_str(), static_cast<uid_t>(-1), *o.socket_group,
                                   AT_SYMLINK_NOFOLLOW) != 0) {
    const int err = errno;
    if (err == EPERM) {
      return fail(PermissionDenied("cannot give " + path + " the group " +
                                   std::to_string(*o.socket_group) +
                                   ": the agent must run as root or be a member of that group"));
    }
    return fail(ErrnoStatus(err, "chown " + path));
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return fail(ErrnoStatus(errno, "listen on " + path));
  return fd;
}

Status ValidateOptions(const LocalServerOptions& o) {
  CUSTODY_RETURN_IF_ERROR(UnixAddress(o.socket_path).status());
  if ((o.socket_mode & ~0777u) != 0) {
    return InvalidArgument("socket_mode may hold permission bits (0777) only");
  }
  if (o.io_threads == 0 || o.io_threads > 64 || o.worker_threads == 0 || o.worker_threads > 1024) {
    return InvalidArgument("io_threads must be 1..64 and worker_threads 1..1024");
  }
  if (o.max_body_bytes == 0 || o.max_header_bytes < 256 || o.max_header_bytes > (1u << 20) ||
      o.max_connections == 0) {
    return InvalidArgument(
        "limits must be positive (max_header_bytes 256 B .. 1 MiB, max_body_bytes > 0, "
        "max_connections > 0)");
  }
  using std::chrono::milliseconds;
  for (milliseconds t : {o.header_timeout, o.body_timeout, o.write_timeout, o.idle_timeout}) {
    if (t <= milliseconds(0)) return InvalidArgument("every timeout must be positive");
  }
  return OkStatus();
}

class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Any thread. Graceful: close the connection if it is waiting for a request or lingering.
  // Force: close it now.
  virtual void Interrupt(bool force) = 0;
};

}  // namespace

struct LocalServer::Core {
  LocalServerOptions options;
  LocalAuthorizer authorizer;
  LocalHandler handler;
  size_t max_pending = 0;  // worker_threads + max_queue

  std::atomic<bool> draining{false};    // Stop has begun
  std::atomic<bool> abandoning{false};  // Stop's grace is over: queued handlers are not run
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> rejected_busy{0};
  std::atomic<uint64_t> rejected_auth{0};
  std::atomic<uint64_t> handler_failures{0};
  std::atomic<size_t> pending{0};  // handed to the workers, handler not returned
  std::atomic<size_t> running{0};  // handler running
  std::atomic<size_t> open{0};

  std::mutex sessions_mu;
  std::condition_variable sessions_cv;  // signalled when a session ends
  std::unordered_map<uint64_t, std::weak_ptr<SessionBase>> sessions;
  uint64_t next_session_id = 0;

  std::mutex stop_mu;
  bool stopped = false;
  std::optional<SocketFileId> socket_file;  // ours, until removed
  std::optional<uint16_t> tcp_port;

  // Destroyed explicitly, in this order, by ~Core: see there.
  std::unique_ptr<asio::io_context> io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<UnixStream::acceptor> unix_acceptor;
  std::unique_ptr<tcp::acceptor> tcp_acceptor;
  std::unique_ptr<asio::thread_pool> workers;
  std::vector<std::thread> io_threads;

  ~Core() {
    // Queued worker jobs hold suspended connection coroutines whose sockets belong to `io`:
    // destroy them while `io` exists, then `io` (which destroys the coroutines still suspended on
    // I/O; their sessions unregister from the members above, still alive).
    work.reset();
    unix_acceptor.reset();
    tcp_acceptor.reset();
    workers.reset();
    io.reset();
    RemoveSocketFile();
  }

  // One connection's operations never run concurrently: with one I/O thread that holds by
  // itself, and a strand would only cost; with more, each connection gets a strand.
  asio::any_io_executor ConnectionExecutor() {
    if (options.io_threads == 1) return io->get_executor();
    return asio::make_strand(*io);
  }

  // Removes the socket file if it is still the one we created.
  void RemoveSocketFile() {
    if (!socket_file) return;
    struct stat st {};
    if (::lstat(options.socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_dev == socket_file->dev && st.st_ino == socket_file->ino) {
      ::unlink(options.socket_path.c_str());
    }
    socket_file.reset();
  }

  void CloseAcceptors() {
    ErrorCode ignored;
    if (unix_acceptor) unix_acceptor->close(ignored);
    if (tcp_acceptor) tcp_acceptor->close(ignored);
  }

  void InterruptSessions(bool force) {
    std::vector<std::shared_ptr<SessionBase>> live;
    {
      std::lock_guard lock(sessions_mu);
      live.reserve(sessions.size());
      for (auto& [id, weak] : sessions) {
        if (auto s = weak.lock()) live.push_back(std::move(s));
      }
    }
    for (const auto& s : live) s->Interrupt(force);
  }

  // Waits until no session is left or `deadline` passed; returns whether none is left.
  bool WaitForSessions(Clock::time_point deadline) {
    std::unique_lock lock(sessions_mu);
    return sessions_cv.wait_until(lock, deadline, [this] { return sessions.empty(); });
  }

  // On a worker thread. Never throws.
  LocalResponse RunHandler(LocalRequest& request) {
    running.fetch_add(1, std::memory_order_relaxed);
    LocalResponse response;
    if (abandoning.load(std::memory_order_relaxed)) {
      response = StoppingResponse();
    } else {
      try {
        response = handler(request);
      } catch (...) {
        // The handler's exception text may say things about the model or the engine the caller
        // should not learn; the caller gets a fixed message.
        handler_failures.fetch_add(1, std::memory_order_relaxed);
        response = ErrorResponse(500, "internal error while handling the request");
      }
    }
    running.fetch_sub(1, std::memory_order_relaxed);
    // Released before the answer is written, so a client that sends its next request as soon as
    // it has the answer finds the slot free.
    pending.fetch_sub(1, std::memory_order_acq_rel);
    return response;
  }

  // Takes a place in the worker queue; false if it is full.
  bool ReserveWorker() {
    size_t current = pending.load(std::memory_order_relaxed);
    do {
      if (current >= max_pending) return false;
    } while (!pending.compare_exchange_weak(current, current + 1, std::memory_order_acq_rel));
    return true;
  }
};

namespace {

enum class After { kKeepAlive, kClose, kLinger };

// What decides the framing of one answer.
struct Exchange {
  unsigned version = 11;
  bool client_keep_alive = false;
  bool head = false;
  bool body_consumed = false;  // nothing of this request is left unread on the connection
};

bool ReadPeer(UnixStream::socket& socket, PeerCredentials* peer) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
      len != sizeof(cred)) {
    return false;
  }
  peer->unix_socket = true;
  peer->pid = cred.pid;
  peer->uid = cred.uid;
  peer->gid = cred.gid;
  return true;
}

bool ReadPeer(tcp::socket& socket, PeerCredentials* peer) {
  ErrorCode ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  *peer = PeerCredentials{};
  peer->unix_socket = false;
  return true;
}

template <typename Protocol>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Protocol>> {
 public:
  using Socket = typename Protocol::socket;

  Session(LocalServer::Core& core, uint64_t id, Socket socket, PeerCredentials peer)
      : core_(core),
        id_(id),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        peer_(std::move(peer)),
        buffer_(core.options.max_header_bytes + kReadChunkBytes) {
    head_.reserve(256);
  }

  ~Session() override {
    {
      std::lock_guard lock(core_.sessions_mu);
      core_.sessions.erase(id_);
      core_.open.fetch_sub(1, std::memory_order_relaxed);
    }
    core_.sessions_cv.notify_all();
  }

  asio::any_io_executor executor() { return socket_.get_executor(); }

  void Interrupt(bool force) override {
    asio::post(socket_.get_executor(), [weak = this->weak_from_this(), force] {
      auto self = weak.lock();
      if (!self) return;
      ErrorCode ignored;
      if (force) {
        self->socket_.close(ignored);
      } else if (self->state_ == State::kIdle || self->state_ == State::kClosing) {
        self->socket_.cancel(ignored);
      }
    });
  }

  asio::awaitable<void> Run() {
    // A new connection's first header is due within header_timeout of the connect.
    SetDeadline(core_.options.header_timeout);
    After after = After::kClose;
    for (bool first = true; !core_.draining.load(std::memory_order_relaxed); first = false) {
      after = co_await ServeOne(first);
      if (after != After::kKeepAlive) break;
    }
    co_await Close(after == After::kLinger);
  }

 private:
  enum class State { kIdle, kBusy, kClosing };

  // ---- deadlines ----
  // One timer per connection. Moving a deadline later costs nothing: the timer fires at the
  // earlier time, sees the new deadline and waits again. Only a move earlier re-arms it, so in
  // the steady state of a keep-alive connection no timer operation happens per request.
  void SetDeadline(std::chrono::milliseconds d) {
    timed_out_ = false;
    deadline_ = Clock::now() + d;
    if (timer_armed_ && timer_expiry_ <= deadline_) return;
    ArmTimer(deadline_);
  }
  void ClearDeadline() { deadline_ = Clock::time_point::max(); }
  void ArmTimer(Clock::time_point at) {
    timer_expiry_ = at;
    timer_armed_ = true;
    const uint64_t generation = ++timer_generation_;
    timer_.expires_at(at);  // a pending wait ends with operation_aborted
    timer_.async_wait([weak = this->weak_from_this(), generation](const ErrorCode& ec) {
      if (auto self = weak.lock()) self->OnTimer(ec, generation);
    });
  }
  void OnTimer(const ErrorCode& ec, uint64_t generation) {
    if (generation != timer_generation_) return;  // a later ArmTimer superseded this wait
    timer_armed_ = false;
    if (ec || deadline_ == Clock::time_point::max()) return;
    if (Clock::now() < deadline_) {
      ArmTimer(deadline_);
      return;
    }
    // Cancel, not close: a 408 can still be written.
    timed_out_ = true;
    ErrorCode ignored;
    socket_.cancel(ignored);
  }
  void StopTimer() {
    ++timer_generation_;
    timer_armed_ = false;
    timer_.cancel();
  }

  // ---- one exchange ----
  asio::awaitable<After> ServeOne(bool first) {
    const LocalServerOptions& o = core_.options;
    ErrorCode ec;
    if (buffer_.size() == 0) {
      // Wait for the first byte: until then Stop may close the connection as idle.
      state_ = State::kIdle;
      if (!first) SetDeadline(o.idle_timeout);
      const size_t n =
          co_await socket_.async_read_some(buffer_.prepare(kReadChunkBytes), Redirect(ec));
      if (ec) co_return After::kClose;  // idle timeout, the client left, or Stop
      buffer_.commit(n);
    }
    // The header is due within header_timeout of its first byte.
    if (!first) SetDeadline(o.header_timeout);
    state_ = State::kBusy;

    // The header, parsed in place from the connection's buffer.
    Exchange ex;
    parser_.emplace();
    Parser& parser = *parser_;
    parser.header_limit(static_cast<std::uint32_t>(o.max_header_bytes));
    // Beast would refuse a large Content-Length while parsing the header, before the authorizer
    // ran; the limit is applied after it (an unauthorised peer learns nothing about limits). Not
    // boost::none: Boost 1.74 compares Content-Length with the optional, and every value is
    // greater than none.
    parser.body_limit(std::numeric_limits<std::uint64_t>::max());
    for (;;) {
      ErrorCode parse_ec;
      const size_t used = parser.put(buffer_.data(), parse_ec);
      buffer_.consume(used);
      if (parse_ec && parse_ec != bhttp::error::need_more) {
        if (parse_ec == bhttp::error::header_limit)
          co_return co_await Respond(ex, HeaderTooLarge());
        co_return co_await Respond(
            ex, ErrorResponse(400, "malformed HTTP request (" + parse_ec.message() + ")"));
      }
      if (parser.is_header_done()) break;
      const size_t room = buffer_.max_size() - buffer_.size();
      if (room == 0) co_return co_await Respond(ex, HeaderTooLarge());
      const size_t n = co_await socket_.async_read_some(
          buffer_.prepare(std::min(room, kReadChunkBytes)), Redirect(ec));
      if (ec) {
        if (timed_out_) {
          co_return co_await Respond(ex, ErrorResponse(408,
                                                       "the request header did not arrive "
                                                       "within " +
                                                           Duration(o.header_timeout)));
        }
        co_return After::kClose;  // the client left mid-header
      }
      buffer_.commit(n);
    }
    core_.requests.fetch_add(1, std::memory_order_relaxed);
    co_return co_await Process(ex, parser);
  }

  LocalResponse HeaderTooLarge() const {
    return ErrorResponse(431, "request header exceeds the limit of " +
                                  std::to_string(core_.options.max_header_bytes) + " bytes");
  }

  asio::awaitable<After> Process(Exchange& ex, Parser& parser) {
    const LocalServerOptions& o = core_.options;
    const auto& header = parser.get();
    ex.client_keep_alive = header.keep_alive();
    ex.head = header.method() == bhttp::verb::head;
    ex.body_consumed = parser.is_done();
    if (header.version() != 10 && header.version() != 11) {
      co_return co_await Respond(ex, ErrorResponse(505, "only HTTP/1.1 and HTTP/1.0 are served"),
                                 false);
    }
    ex.version = header.version();

    // Request smuggling defence: a body is framed by exactly one of Content-Length and chunked.
    if (header.count(bhttp::field::transfer_encoding) > 0) {
      if (header.count(bhttp::field::content_length) > 0) {
        co_return co_await Respond(ex,
                                   ErrorResponse(400,
                                                 "a request may not carry both Content-Length and "
                                                 "Transfer-Encoding"),
                                   false);
      }
      if (header.count(bhttp::field::transfer_encoding) > 1 || !parser.chunked() ||
          !beast::iequals(header[bhttp::field::transfer_encoding], "chunked")) {
        co_return co_await Respond(
            ex, ErrorResponse(501, "the only supported Transfer-Encoding is chunked"), false);
      }
    }
    bool expect_continue = false;
    if (header.count(bhttp::field::expect) > 0) {
      if (header.count(bhttp::field::expect) > 1 ||
          !beast::iequals(header[bhttp::field::expect], "100-continue")) {
        co_return co_await Respond(
            ex, ErrorResponse(417, "the only supported Expect value is 100-continue"), false);
      }
      expect_continue = true;
    }

    LocalRequest request;
    request.method = header.method_string();
    request.target = header.target();
    for (const auto& field : header)
      request.headers.emplace_back(field.name_string(), field.value());
    request.peer = peer_;

    Result<std::string> client = Authorize(request);
    if (!client) {
      core_.rejected_auth.fetch_add(1, std::memory_order_relaxed);
      co_return co_await Respond(
          ex, ErrorResponse(http::HttpStatusFor(client.error().code()), client.error().message()));
    }
    request.client = std::move(*client);

    const boost::optional<std::uint64_t> content_length = parser.content_length();
    if (content_length && *content_length > o.max_body_bytes)
      co_return co_await Respond(ex, BodyTooLarge());
    if (core_.draining.load(std::memory_order_relaxed)) {
      co_return co_await Respond(ex, StoppingResponse());
    }
    // Busy now: answer at once rather than read a body that would only wait.
    if (core_.pending.load(std::memory_order_relaxed) >= core_.max_pending) {
      co_return co_await Respond(ex, Busy());
    }

    ErrorCode ec;
    if (!parser.is_done()) {
      if (expect_continue && ex.version == 11) {
        SetDeadline(o.write_timeout);
        co_await asio::async_write(socket_, asio::buffer(kContinue), Redirect(ec));
        if (ec) co_return After::kClose;
      }
      SetDeadline(o.body_timeout);
      if (content_length) {
        ec = co_await ReadBody(static_cast<size_t>(*content_length), request.body);
      } else {
        parser.body_limit(o.max_body_bytes);
        parser.eager(true);
        co_await bhttp::async_read(socket_, buffer_, parser, Redirect(ec));
        if (!ec) request.body = std::move(parser.get().body());
      }
      if (ec) {
        if (timed_out_) {
          co_return co_await Respond(
              ex, ErrorResponse(
                      408, "the request body did not arrive within " + Duration(o.body_timeout)));
        }
        if (ec == bhttp::error::body_limit) co_return co_await Respond(ex, BodyTooLarge());
        if (IsDisconnect(ec)) co_return After::kClose;
        co_return co_await Respond(
            ex, ErrorResponse(400, "malformed request body (" + ec.message() + ")"), false);
      }
      ex.body_consumed = true;
    }

    if (!core_.ReserveWorker()) co_return co_await Respond(ex, Busy());
    if (core_.draining.load(std::memory_order_relaxed)) {
      core_.pending.fetch_sub(1, std::memory_order_acq_rel);
      co_return co_await Respond(ex, StoppingResponse());
    }
    ClearDeadline();  // the handler takes what it takes
    LocalServer::Core& core = core_;
    LocalResponse response = co_await http::RunBlocking(
        *core_.workers, [&core, &request] { return core.RunHandler(request); });
    co_return co_await Respond(ex, std::move(response));
  }

  // Reads a Content-Length body straight into `body` (what the buffer already holds first).
  asio::awaitable<ErrorCode> ReadBody(size_t length, std::string& body) {
    size_t have = std::min(buffer_.size(), length);
    body.resize(std::min(length, std::max(have, kEagerBodyBytes)));
    asio::buffer_copy(asio::buffer(body.data(), have), buffer_.data());
    buffer_.consume(have);
    ErrorCode ec;
    while (have < length) {
      if (have == body.size()) body.resize(std::min(length, body.size() * 2));
      have += co_await socket_.async_read_some(asio::buffer(body.data() + have, body.size() - have),
                                               Redirect(ec));
      if (ec) break;
    }
    co_return ec;
  }

  Result<std::string> Authorize(const LocalRequest& request) {
    try {
      return core_.authorizer(request.peer, request);
    } catch (...) {
      return Internal("the request could not be authorised (internal error)");
    }
  }

  LocalResponse BodyTooLarge() const {
    return ErrorResponse(413, "request body exceeds the limit of " +
                                  std::to_string(core_.options.max_body_bytes) + " bytes");
  }

  LocalResponse Busy() {
    core_.rejected_busy.fetch_add(1, std::memory_order_relaxed);
    return BusyResponse("the agent is busy (" + std::to_string(core_.max_pending) +
                        " requests in progress or waiting); retry shortly");
  }

  // Writes the answer. `may_keep_alive` false: close afterwards whatever the client wants.
  asio::awaitable<After> Respond(Exchange& ex, LocalResponse response, bool may_keep_alive = true) {
    // A bad answer from the handler is a bug there, not the client's: it becomes a 500.
    bool valid =
        response.status >= 200 && response.status <= 599 && IsHeaderValue(response.content_type);
    for (const auto& [name, value] : response.headers) {
      valid = valid && IsHeaderName(name) && IsHeaderValue(value);
    }
    if (!valid) {
      core_.handler_failures.fetch_add(1, std::memory_order_relaxed);
      response = ErrorResponse(500, "internal error: the handler returned an invalid response");
    }
    const bool keep_alive = may_keep_alive && ex.client_keep_alive && ex.body_consumed &&
                            !core_.draining.load(std::memory_order_relaxed);
    const bool no_body = response.status == 204 || response.status == 304;

    std::string& h = head_;
    h.clear();
    h.append(ex.version == 10 ? "HTTP/1.0 " : "HTTP/1.1 ");
    AppendNumber(h, static_cast<uint64_t>(response.status));
    h.push_back(' ');
    const std::string_view reason =
        bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(response.status)));
    if (reason.empty() || reason.front() != '<') h.append(reason);  // not "<unknown-status>"
    h.append("\r\n");
    if (!no_body) {
      h.append("Content-Type: ");
      h.append(response.content_type.empty() ? std::string_view("application/octet-stream")
                                             : std::string_view(response.content_type));
      h.append("\r\nContent-Length: ");
      AppendNumber(h, response.body.size());
      h.append("\r\n");
    }
    bool cache_control = false;
    for (const auto& [name, value] : response.headers) {
      if (beast::iequals(name, "Content-Length") || beast::iequals(name, "Content-Type") ||
          beast::iequals(name, "Transfer-Encoding") || beast::iequals(name, "Connection") ||
          beast::iequals(name, "Keep-Alive")) {
        continue;
      }
      cache_control = cache_control || beast::iequals(name, "Cache-Control");
      h.append(name).append(": ").append(value).append("\r\n");
    }
    if (!cache_control) h.append("Cache-Control: no-store\r\n");
    if (!keep_alive) {
      h.append("Connection: close\r\n");
    } else if (ex.version == 10) {
      h.append("Connection: keep-alive\r\n");
    }
    h.append("\r\n");

    const std::array<asio::const_buffer, 2> buffers = {
        asio::buffer(h), ex.head || no_body ? asio::const_buffer() : asio::buffer(response.body)};
    ErrorCode ec;
    SetDeadline(core_.options.write_timeout);
    co_await asio::async_write(socket_, buffers, Redirect(ec));
    if (ec) co_return After::kClose;
    if (keep_alive) co_return After::kKeepAlive;
    co_return ex.body_consumed ? After::kClose : After::kLinger;
  }

  asio::awaitable<void> Close(bool linger) {
    state_ = State::kClosing;
    ErrorCode ec;
    if (linger && socket_.is_open()) {
      socket_.shutdown(Socket::shutdown_send, ec);
      SetDeadline(kLingerTimeout);
      size_t discarded = 0;
      while (!ec && discarded < kLingerMaxBytes) {
        buffer_.clear();
        discarded +=
            co_await socket_.async_read_some(buffer_.prepare(kReadChunkBytes), Redirect(ec));
      }
    }
    StopTimer();
    socket_.shutdown(Socket::shutdown_both, ec);
    socket_.close(ec);
  }

  LocalServer::Core& core_;
  const uint64_t id_;
  Socket socket_;
  asio::steady_timer timer_;
  const PeerCredentials peer_;
  beast::flat_buffer buffer_;
  std::optional<Parser> parser_;
  std::string head_;  // the answer's header, reused
  State state_ = State::kIdle;
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point timer_expiry_;
  uint64_t timer_generation_ = 0;
  bool timer_armed_ = false;
  bool timed_out_ = false;
};

template <typename Protocol>
asio::awaitable<void> AcceptLoop(LocalServer::Core& core, typename Protocol::acceptor& acceptor) {
  for (;;) {
    typename Protocol::socket socket(core.ConnectionExecutor());
    ErrorCode ec;
    co_await acceptor.async_accept(socket, Redirect(ec));
    if (core.draining.load() || !acceptor.is_open()) co_return;
    if (ec) {
      asio::steady_timer pause(acceptor.get_executor(), kAcceptRetryDelay);
      co_await pause.async_wait(Redirect(ec));
      continue;
    }
    PeerCredentials peer;
    if (!ReadPeer(socket, &peer)) continue;  // cannot tell who it is: not served
    uint64_t id = 0;
    {
      std::lock_guard lock(core.sessions_mu);
      if (core.open.load(std::memory_order_relaxed) >= core.options.max_connections) continue;
      core.open.fetch_add(1, std::memory_order_relaxed);
      id = core.next_session_id++;
    }
    // From here the session owns the count: its destructor gives it back.
    auto session =
        std::make_shared<Session<Protocol>>(core, id, std::move(socket), std::move(peer));
    {
      std::lock_guard lock(core.sessions_mu);
      core.sessions.emplace(id, session);
    }
    asio::co_spawn(
        session->executor(), [session]() { return session->Run(); },
        [](std::exception_ptr) {
          // Only allocation failure can end a connection by exception; the connection is gone
          // and the server goes on.
        });
  }
}

}  // namespace

std::optional<std::string_view> LocalRequest::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (beast::iequals(n, name)) return std::string_view(v);
  }
  return std::nullopt;
}

LocalServer::LocalServer(std::unique_ptr<Core> core) : core_(std::move(core)) {}

Result<std::unique_ptr<LocalServer>> LocalServer::Start(LocalServerOptions options,
                                                        LocalAuthorizer authorizer,
                                                        LocalHandler handler) {
  CUSTODY_RETURN_IF_ERROR(ValidateOptions(options));
  if (!authorizer || !handler) return InvalidArgument("an authorizer and a handler are required");

  auto core = std::make_unique<Core>();
  core->max_pending = static_cast<size_t>(options.worker_threads) + options.max_queue;
  core->authorizer = std::move(authorizer);
  core->handler = std::move(handler);
  core->io = std::make_unique<asio::io_context>(static_cast<int>(options.io_threads));

  SocketFileId file;
  CUSTODY_ASSIGN_OR_RETURN(UniqueFd fd, CreateUnixListener(options, &file));
  core->options = std::move(options);
  core->socket_file = file;  // ~Core removes it if anything below fails
  const LocalServerOptions& o = core->options;
  ErrorCode ec;
  core->unix_acceptor = std::make_unique<UnixStream::acceptor>(*core->io);
  core->unix_acceptor->assign(UnixStream(), fd.get(), ec);
  if (ec) return Internal("cannot use the socket " + o.socket_path + ": " + ec.message());
  fd.release();

  if (o.tcp_port) {
    const tcp::endpoint endpoint(asio::ip::address_v4::loopback(), *o.tcp_port);
    core->tcp_acceptor = std::make_unique<tcp::acceptor>(*core->io);
    core->tcp_acceptor->open(endpoint.protocol(), ec);
    if (!ec) core->tcp_acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) core->tcp_acceptor->bind(endpoint, ec);
    if (!ec) core->tcp_acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) core->tcp_port = core->tcp_acceptor->local_endpoint(ec).port();
    if (ec) {
      return Unavailable("cannot listen on 127.0.0.1 port " + std::to_string(*o.tcp_port) + ": " +
                         ec.message());
    }
  }

  core->workers = std::make_unique<asio::thread_pool>(o.worker_threads);
  core->work.emplace(core->io->get_executor());
  Core* raw = core.get();
  asio::co_spawn(
      *core->io, [raw]() { return AcceptLoop<UnixStream>(*raw, *raw->unix_acceptor); },
      asio::detached);
  if (core->tcp_acceptor) {
    asio::co_spawn(
        *core->io, [raw]() { return AcceptLoop<tcp>(*raw, *raw->tcp_acceptor); }, asio::detached);
  }
  for (unsigned i = 0; i < o.io_threads; ++i) {
    core->io_threads.emplace_back([raw] {
      // Every coroutine catches what it can; keep serving if anything ever escapes.
      for (;;) {
        try {
          raw->io->run();
          return;
        } catch (...) {
        }
      }
    });
  }
  return std::unique_ptr<LocalServer>(new LocalServer(std::move(core)));
}

LocalServer::~LocalServer() { Stop(std::chrono::milliseconds(0)); }

std::optional<uint16_t> LocalServer::tcp_port() const { return core_->tcp_port; }

void LocalServer::Stop(std::chrono::milliseconds grace) {
  Core& core = *core_;
  std::lock_guard stop_lock(core.stop_mu);
  if (core.stopped) return;
  if (core.io->get_executor().running_in_this_thread() ||
      core.workers->get_executor().running_in_this_thread()) {
    Panic("LocalServer::Stop called from one of the server's own threads (it would join itself)");
  }
  const Clock::time_point grace_end = Clock::now() + grace;
  core.draining.store(true);
  // The listeners belong to the I/O threads: close them there, so that nothing is accepted once
  // Stop has begun (bounded, in case the I/O threads are wedged).
  auto closed = std::make_shared<std::promise<void>>();
  asio::post(*core.io, [&core, closed] {
    core.CloseAcceptors();
    closed->set_value();
  });
  const bool acceptors_closed =
      closed->get_future().wait_for(kCloseTimeout) == std::future_status::ready;
  // A new agent may bind the path from now on.
  core.RemoveSocketFile();
  core.InterruptSessions(false);
  if (!core.WaitForSessions(grace_end)) {
    core.abandoning.store(true);
    core.InterruptSessions(true);
    // Closed sockets end their coroutines at once, except those waiting for a handler.
    (void)core.WaitForSessions(Clock::now() + kCloseTimeout);
  }
  core.work.reset();
  core.io->stop();
  for (std::thread& t : core.io_threads) t.join();
  core.io_threads.clear();
  if (!acceptors_closed) core.CloseAcceptors();
  core.abandoning.store(true);
  core.workers->stop();
  core.workers->join();
  core.stopped = true;
}

LocalServer::Stats LocalServer::stats() const {
  const Core& core = *core_;
  Stats s;
  s.requests = core.requests.load(std::memory_order_relaxed);
  s.rejected_busy = core.rejected_busy.load(std::memory_order_relaxed);
  s.rejected_auth = core.rejected_auth.load(std::memory_order_relaxed);
  s.handler_failures = core.handler_failures.load(std::memory_order_relaxed);
  const size_t pending = core.pending.load(std::memory_order_relaxed);
  s.in_flight = core.running.load(std::memory_order_relaxed);
  s.queued = pending > s.in_flight ? pending - s.in_flight : 0;
  s.connections = core.open.load(std::memory_order_relaxed);
  return s;
}

}  // namespace custody::agent
