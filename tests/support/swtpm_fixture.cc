#include "tests/support/swtpm_fixture.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "core/base/bytes.h"
#include "core/tpm/device.h"
#include "core/tpm/objects.h"

extern char** environ;

namespace custody::testing {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string Join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + a;
  return out;
}

// Waits for `pid` until `deadline`; kills it when the deadline passes. Returns the wait status.
int WaitFor(pid_t pid, Clock::time_point deadline) {
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1;
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void WriteText(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

}  // namespace

Result<std::string> RunProgram(const std::vector<std::string>& argv,
                               const std::vector<std::string>& env, int timeout_s) {
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) {
    return ErrnoStatus(errno, "pipe");
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.insert(env_strings.end(), env.begin(), env.end());
  std::vector<char*> c_env;
  for (auto& e : env_strings) c_env.push_back(e.data());
  c_env.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> c_argv;
  for (auto& a : args) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, c_argv[0], &actions, nullptr, c_argv.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return ErrnoStatus(rc, "run " + argv[0]);
  }
  std::string out, err;
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  while (open_fds > 0 && Clock::now() < deadline) {
    if (poll(fds, 2, 100) < 0 && errno != EINTR) break;
    for (auto& f : fds) {
      if (f.fd < 0 || (f.revents & (POLLIN | POLLHUP)) == 0) continue;
      char buf[4096];
      ssize_t n = read(f.fd, buf, sizeof(buf));
      if (n > 0) {
        (f.fd == out_pipe[0] ? out : err).append(buf, static_cast<size_t>(n));
      } else {
        close(f.fd);
        f.fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = WaitFor(pid, deadline);
  if (status < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Internal(
        Join(argv) + " failed (" +
        (status < 0 ? std::string("timed out") : "exit " + std::to_string(WEXITSTATUS(status))) +
        "): " + err);
  }
  return out;
}

Result<Bytes> Swtpm::BusBytes() const {
  if (!log_bus_) return FailedPrecondition("this swtpm was not started with log_bus");
  std::ifstream log(dir_ + "/swtpm.log");
  if (!log) return NotFound("no log at " + dir_ + "/swtpm.log");
  // The hex dump lines follow "SWTPM_IO_Read: length N" / "SWTPM_IO_Write: length N": a space,
  // then two-digit hex bytes separated by spaces.
  Bytes out;
  for (std::string line; std::getline(log, line);) {
    std::istringstream words(line);
    Bytes bytes;
    bool dump = !line.empty() && line[0] == ' ';
    for (std::string w; dump && words >> w;) {
      Result<Bytes> b = HexDecode(w);
      if (w.size() == 2 && b) {
        bytes.push_back((*b)[0]);
      } else {
        dump = false;
      }
    }
    if (dump) out.insert(out.end(), bytes.begin(), bytes.end());
  }
  return out;
}

Result<std::unique_ptr<Swtpm>> Swtpm::Start(Options options) {
  std::unique_ptr<Swtpm> tpm(new Swtpm());
  char tmpl[] = "/tmp/custody-swtpm.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return ErrnoStatus(errno, "mkdtemp");
  tpm->dir_ = tmpl;
  tpm->log_bus_ = options.log_bus;
  const std::string state = tpm->state_dir();
  fs::create_directories(state);
  if (!options.copy_state_from.empty()) {
    std::error_code ec;
    fs::copy(options.copy_state_from, state, fs::copy_options::recursive, ec);
    if (ec) return Internal("copy TPM state from " + options.copy_state_from + ": " + ec.message());
  }
  if (options.ek_certificates) {
    const std::string& d = tpm->dir_;
    fs::create_directories(d + "/ca");
    WriteText(d + "/swtpm_setup.conf",
              "create_certs_tool= /usr/bin/swtpm_localca\n"
              "create_certs_tool_config = " +
                  d +
                  "/swtpm-localca.conf\n"
                  "create_certs_tool_options = " +
                  d +
                  "/swtpm-localca.options\n"
                  "active_pcr_banks = sha256\n");
    WriteText(d + "/swtpm-localca.conf",
              "statedir = " + d + "/ca\nsigningkey = " + d + "/ca/signkey.pem\nissuercert = " + d +
                  "/ca/issuercert.pem\ncertserial = " + d + "/ca/certserial\n");
    WriteText(d + "/swtpm-localca.options",
              "--platform-manufacturer Custody\n--platform-version 2.1\n--platform-model test\n");
    CUSTODY_RETURN_IF_ERROR(
        RunProgram({"swtpm_setup", "--tpm2", "--tpmstate", state, "--create-ek-cert", "--config",
                    d + "/swtpm_setup.conf", "--overwrite"})
            .status());
    fs::create_directories(tpm->trusted_ca_dir());
    for (const char* f : {"issuercert.pem", "swtpm-localca-rootca-cert.pem"}) {
      fs::copy_file(d + "/ca/" + f, tpm->trusted_ca_dir() + "/" + f);
    }
  }
  CUSTODY_RETURN_IF_ERROR(tpm->Launch());
  if (options.ek_certificates) CUSTODY_RETURN_IF_ERROR(tpm->MakeEccEkCertificate());
  return tpm;
}

Swtpm::~Swtpm() {
  Stop().IgnoreError();
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

namespace {

bool AcceptsConnections(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return false;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

Status Swtpm::Launch() {
  const std::string sock = dir_ + "/sock";
  unlink(sock.c_str());
  std::vector<std::string> args = {"swtpm",
                                   "socket",
                                   "--tpm2",
                                   "--tpmstate",
                                   "dir=" + state_dir(),
                                   "--server",
                                   "type=unixio,path=" + sock,
                                   "--ctrl",
                                   "type=unixio,path=" + sock + ".ctrl",
                                   "--flags",
                                   "not-need-init,startup-clear",
                                   "--log",
                                   "file=" + dir_ + "/swtpm.log" + (log_bus_ ? ",level=20" : "")};
  std::vector<char*> c_argv;
  for (auto& a : args) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  // The test's own descriptors (sockets to other servers, pipes) must not live on in swtpm.
  posix_spawn_file_actions_addclosefrom_np(&actions, STDERR_FILENO + 1);
  int rc = posix_spawnp(&pid_, "swtpm", &actions, nullptr, c_argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return ErrnoStatus(rc, "start swtpm (is the swtpm package installed?)");
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < deadline) {
    // The socket file appears at bind(), before swtpm listens: ready means a connect succeeds.
    // swtpm serves one connection at a time and goes back to accepting when this one closes.
    if (AcceptsConnections(sock)) return OkStatus();
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return Internal("swtpm exited at start-up; see " + dir_ + "/swtpm.log");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return DeadlineExceeded("swtpm did not open " + sock + " within 10 s");
}

Status Swtpm::Stop() {
  if (pid_ <= 0) return OkStatus();
  kill(pid_, SIGTERM);
  int status = WaitFor(pid_, Clock::now() + std::chrono::seconds(10));
  pid_ = -1;
  if (status < 0) return Internal("swtpm did not stop on SIGTERM (killed)");
  return OkStatus();
}

Status Swtpm::Restart(Shutdown how) {
  if (how == Shutdown::kOrderly) {
    CUSTODY_RETURN_IF_ERROR(Tool({"tpm2_shutdown", "-c"}).status());
  }
  CUSTODY_RETURN_IF_ERROR(Stop());
  return Launch();
}

Result<std::string> Swtpm::Tool(const std::vector<std::string>& argv) const {
  return RunProgram(argv, {"TPM2TOOLS_TCTI=" + tcti()});
}

Status Swtpm::MakeEccEkCertificate() {
  std::string x_hex, y_hex;
  {
    CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> dev, tpm::Tpm::Open(tcti()));
    CUSTODY_ASSIGN_OR_RETURN(tpm::Endorsement ek, dev->ReadEndorsement(tpm::EkType::kEcc));
    CUSTODY_ASSIGN_OR_RETURN(TPMT_PUBLIC pub, tpm::UnmarshalPublic2B(ek.public_area));
    CUSTODY_ASSIGN_OR_RETURN(crypto::P256PublicKey key, tpm::EccPublicKey(pub));
    const auto& point = key.uncompressed();
    x_hex = HexEncode(ByteSpan(point.data() + 1, 32));
    y_hex = HexEncode(ByteSpan(point.data() + 33, 32));
  }
  const std::string out = dir_ + "/ecc-ek";
  fs::create_directories(out);
  CUSTODY_RETURN_IF_ERROR(RunProgram({"swtpm_localca",
                                      "--type",
                                      "ek",
                                      "--ek",
                                      "x=" + x_hex + ",y=" + y_hex + ",id=secp256r1",
                                      "--dir",
                                      out,
                                      "--tpm-spec-family",
                                      "2.0",
                                      "--tpm-spec-level",
                                      "0",
                                      "--tpm-spec-revision",
                                      "164",
                                      "--tpm-manufacturer",
                                      "id:00001014",
                                      "--tpm-model",
                                      "swtpm",
                                      "--tpm-version",
                                      "id:20191023",
                                      "--tpm2",
                                      "--configfile",
                                      dir_ + "/swtpm-localca.conf",
                                      "--optsfile",
                                      dir_ + "/swtpm-localca.options"})
                              .status());
  const std::string cert = out + "/ek.cert";
  const std::string size = std::to_string(fs::file_size(cert));
  CUSTODY_RETURN_IF_ERROR(Tool({"tpm2_nvdefine", "0x01C0000A", "-C", "o", "-s", size, "-a",
                                "ownerread|authread|ownerwrite|authwrite|no_da"})
                              .status());
  CUSTODY_RETURN_IF_ERROR(Tool({"tpm2_nvwrite", "0x01C0000A", "-C", "o", "-i", cert}).status());
  return OkStatus();
}

}  // namespace custody::testing
