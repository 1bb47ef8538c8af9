// Process hardening for custody-agent (DESIGN.md §9): what the daemon does to itself so that the
// decrypted model it holds is hard to read out of it, and what it does to make itself a poor tool
// for an attacker who gets code running inside it.
//
// Two steps, both irreversible for the life of the process:
//
//  1. HardenProcess, first thing in main (before keys or weights are in memory):
//       prctl(PR_SET_DUMPABLE, 0)  /proc/PID/mem, ptrace and process_vm_readv are refused to any
//                                  process without CAP_SYS_PTRACE, even of the same uid; /proc/PID
//                                  files become root-owned; no core dump is written;
//       setrlimit(RLIMIT_CORE, 0)  soft and hard: no core dump even if something made the process
//                                  dumpable again (a credential change does);
//       mlockall(MCL_CURRENT|MCL_FUTURE), per MemoryLock: nothing the process maps is swapped;
//       prctl(PR_SET_NO_NEW_PRIVS, 1)  nothing it executes gains privileges (setuid bits, file
//                                  capabilities); also what an unprivileged seccomp filter needs.
//     Only the memory lock may degrade: a non-root process may lock RLIMIT_MEMLOCK bytes (8 MiB on
//     many systems), far less than a process with a model in it maps. The report then says so,
//     with the limit and what to change (LimitMEMLOCK= in packaging/custody-agent.service), and
//     MemoryLock::kRequired turns it into an error. Secret buffers still lock their own pages
//     (core/base/secret_buffer.h) within the limit, so keys stay locked either way.
//
//  2. InstallSeccompFilter, once start-up is done (sockets open, engine loaded, its thread pools
//     running): a deny-list of system calls the agent never needs and an attacker wants (see
//     DeniedSyscallNames and the reasoning in hardening.cc). It applies to every thread
//     (SECCOMP_FILTER_FLAG_TSYNC), and to children, for good.
//
// What this does not stop (docs/THREATS.md, "Agent process hardening"): root, or anything holding
// CAP_SYS_PTRACE, can still read the process's memory; a kernel module can read anything.
//
// Threading: call HardenProcess while the process is single-threaded (mlockall and the dumpable
// flag are process-wide either way; the rlimit and no_new_privs are per thread and inherited, so a
// thread started earlier would miss no_new_privs). InstallSeccompFilter may be called with threads
// running; it synchronises the filter onto all of them or fails.
//
// Errors: HardenProcess returns an ErrnoStatus if a step every kernel allows fails (the sandbox
// or kernel is broken; do not go on), and kResourceExhausted (over the limit) or kPermissionDenied
// (no limit at all) when MemoryLock::kRequired could not be met; the steps before the memory lock
// stay applied. InstallSeccompFilter returns kFailedPrecondition without no_new_privs,
// kUnimplemented on an architecture other than x86_64 and little-endian aarch64, kInternal if a
// thread could not be synchronised, and ErrnoStatus for other kernel refusals.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "core/base/status.h"

namespace custody::agent {

enum class MemoryLock {
  kRequired,    // mlockall must succeed, else HardenProcess fails and the agent must not serve
  kBestEffort,  // try; report the failure (and its remedy) if it fails
  kOff,         // do not try (e.g. a device without swap whose operator chose so)
};

// The seccomp filter is not a field here: it is a separate call, made later (after start-up), and
// the caller's configuration decides whether to make it.
struct HardeningPolicy {
  MemoryLock lock = MemoryLock::kBestEffort;
};

// What HardenProcess applied, for the log, the status endpoint and the audit. In a returned report
// non_dumpable, core_limit_zero and no_new_privs are true (their failure is an error);
// memory_locked is false when the policy is kOff or locking failed, and `detail` then says why in
// words an operator can act on. The fields exist so that the status endpoint need not re-derive
// them.
struct HardeningReport {
  MemoryLock lock_policy = MemoryLock::kBestEffort;
  bool non_dumpable = false;     // PR_SET_DUMPABLE 0
  bool core_limit_zero = false;  // RLIMIT_CORE 0 (soft and hard)
  bool memory_locked = false;    // mlockall(MCL_CURRENT|MCL_FUTURE)
  bool no_new_privs = false;     // PR_SET_NO_NEW_PRIVS 1
  std::string detail;            // "" when everything the policy asked for was applied

  bool full() const { return non_dumpable && core_limit_zero && memory_locked && no_new_privs; }
  // "non-dumpable, core dumps off, memory NOT locked, no new privileges (mlockall: ...)".
  std::string ToString() const;
};

Result<HardeningReport> HardenProcess(const HardeningPolicy& policy);

enum class SeccompAction {
  kErrno,  // a denied call fails with EPERM: the agent logs it and carries on
  kKill,   // a denied call kills the whole process (SECCOMP_RET_KILL_PROCESS, SIGSYS)
};

struct SeccompPolicy {
  SeccompAction action = SeccompAction::kErrno;
};

// Installs the deny-list filter on every thread of the process. Requires no_new_privs (call
// HardenProcess first): the agent never relies on CAP_SYS_ADMIN to do it.
Status InstallSeccompFilter(const SeccompPolicy& policy);

// The system calls the filter denies on this architecture, for logs and docs. Besides these, the
// filter denies every call made through another ABI (i386 int 0x80 or x32 on x86_64, AArch32 on
// aarch64), clone() with namespace flags, and answers clone3() with ENOSYS so that the C library
// falls back to clone(), whose flags the filter can see.
std::span<const std::string_view> DeniedSyscallNames();

}  // namespace custody::agent
