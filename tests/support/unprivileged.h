// Part of a test run as an unprivileged user. Root passes file, directory and socket permission
// checks and may give files to any group, so a test of what an ordinary user is refused would
// prove nothing as root, and CI runs as root. These helpers run that part in a forked child that
// dropped to nobody when the test runs as root, and in the test's own process otherwise: either
// way the check meets the kernel's permission rules.
#pragma once

#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "core/base/status.h"

namespace custody::testing {

inline constexpr uid_t kNobodyUid = 65534;  // nobody
inline constexpr gid_t kNobodyGid = 65534;  // nogroup

// In a child process about to take the unprivileged path: as root, becomes nobody (uid
// kNobodyUid, gid kNobodyGid, no supplementary groups); anyone else already is such a user and
// stays. False if root could not drop.
inline bool DropToUnprivilegedUser() {
  if (::geteuid() != 0) return true;
  return ::setgroups(0, nullptr) == 0 && ::setgid(kNobodyGid) == 0 && ::setuid(kNobodyUid) == 0;
}

// Runs `fn` as an unprivileged user and returns the text it returned: in a child process with
// uid kNobodyUid, gid kNobodyGid and no supplementary groups when this process is root, directly
// otherwise. The child must not report through gtest (its failures would be lost): `fn` says what
// happened in the text, for the test to check.
inline Result<std::string> AsUnprivilegedUser(const std::function<std::string()>& fn) {
  if (::geteuid() != 0) return fn();
  int fds[2];
  if (::pipe(fds) != 0) return Internal(std::string("pipe: ") + std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    return Internal(std::string("fork: ") + std::strerror(errno));
  }
  if (pid == 0) {
    ::close(fds[0]);
    const std::string out =
        DropToUnprivilegedUser() ? fn() : "could not drop to uid " + std::to_string(kNobodyUid);
    for (size_t done = 0; done < out.size();) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) ::_exit(2);
      done += static_cast<size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Internal("the unprivileged child ended abnormally (wait status " +
                    std::to_string(status) + "); it said: " + out);
  }
  return out;
}

// Lets the unprivileged user through `dir` (search permission for others), so that what a test
// refuses it is the file inside, not the path to it. A test's own temporary directory only.
inline void LetOthersThrough(const std::string& dir) {
  std::filesystem::permissions(dir, std::filesystem::perms::others_exec,
                               std::filesystem::perm_options::add);
}

}  // namespace custody::testing
