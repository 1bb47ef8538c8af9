#include "agent/hardening.h"

#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace custody::agent {
namespace {

// The memlock limit and the process's size, for the report: an operator needs both to choose a
// LimitMEMLOCK= value.
std::string MemlockNumbers() {
  std::string out;
  struct rlimit rl {};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0) {
    out = "RLIMIT_MEMLOCK unknown";
  } else if (rl.rlim_cur == RLIM_INFINITY) {
    out = "RLIMIT_MEMLOCK unlimited";
  } else {
    out = "RLIMIT_MEMLOCK " + std::to_string(rl.rlim_cur) + " bytes";
  }
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmSize:", 0) == 0) {
      size_t start = line.find_first_not_of(" \t", 7);
      if (start != std::string::npos) out += ", the process maps " + line.substr(start);
      break;
    }
  }
  return out;
}

void Append(std::string& detail, const std::string& more) {
  if (!detail.empty()) detail += "; ";
  detail += more;
}

}  // namespace

std::string HardeningReport::ToString() const {
  std::string out = non_dumpable ? "non-dumpable" : "DUMPABLE";
  out += core_limit_zero ? ", core dumps off" : ", core dumps NOT off";
  if (memory_locked) {
    out += ", memory locked";
  } else if (lock_policy == MemoryLock::kOff) {
    out += ", memory not locked (off by policy)";
  } else {
    out += ", memory NOT locked";
  }
  out += no_new_privs ? ", no new privileges" : ", new privileges NOT blocked";
  if (!detail.empty()) out += " (" + detail + ")";
  return out;
}

Result<HardeningReport> HardenProcess(const HardeningPolicy& policy) {
  HardeningReport report;
  report.lock_policy = policy.lock;

  // The kernel refuses none of these to an ordinary process; a failure means a broken sandbox or
  // kernel, and the agent must not go on to decrypt anything.
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return ErrnoStatus(errno, "prctl(PR_SET_DUMPABLE)");
  report.non_dumpable = true;

  struct rlimit no_core {};  // soft and hard 0: the process cannot raise it again
  if (setrlimit(RLIMIT_CORE, &no_core) != 0) return ErrnoStatus(errno, "setrlimit(RLIMIT_CORE)");
  report.core_limit_zero = true;

  if (policy.lock != MemoryLock::kOff) {
    if (mlockall(MCL_CURRENT | MCL_FUTURE) == 0) {
      report.memory_locked = true;
    } else {
      int err = errno;
      // Never leave MCL_FUTURE half-applied: under a limit it would make later allocations fail.
      munlockall();
      std::string why = ErrnoStatus(err, "mlockall").message() + " (" + MemlockNumbers() +
                        "); set LimitMEMLOCK=infinity in custody-agent.service or give the agent "
                        "CAP_IPC_LOCK";
      if (policy.lock == MemoryLock::kRequired) {
        std::string message = "memory lock required by policy: " + why;
        return err == EPERM ? PermissionDenied(std::move(message))
                            : ResourceExhausted(std::move(message));
      }
      Append(report.detail, why);
    }
  }

  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return ErrnoStatus(errno, "prctl(PR_SET_NO_NEW_PRIVS)");
  }
  report.no_new_privs = true;
  return report;
}

// ----- seccomp ------------------------------------------------------------------------------
//
// Why a deny-list and not an allow-list: the agent hosts engines it does not control (libtorch,
// OpenCV, vendor plug-ins through the C ABI) whose thread pools, allocators and CPU probes make
// calls that change with each release; an allow-list that misses one kills or breaks inference
// on a device in the field. The deny-list instead names what a model server never needs and an
// attacker who has code in the process wants: reading or steering other processes (ptrace,
// process_vm_*), running programs (execve*), the kernel's attack surface and its configuration
// (modules, kexec, bpf, perf, userfaultfd, keyrings, mounts, namespaces, swap, reboot, clock).
// The systemd unit adds its own filters on top (RestrictNamespaces=, SystemCallArchitectures=).
//
// Why raw BPF and not libseccomp: the program is a fixed list compared against one register, two
// architectures wide; libseccomp would be a new build and runtime dependency for ~40 lines, and
// its value (resolving names across many architectures) is what we deliberately refuse: other
// architectures get kUnimplemented, not an untested filter.

#if defined(__x86_64__) && !defined(__ILP32__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
constexpr bool kArchSupported = true;
#elif defined(__aarch64__) && !defined(__ILP32__) && !defined(__AARCH64EB__)  // little-endian
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
constexpr bool kArchSupported = true;
#else
constexpr uint32_t kAuditArch = 0;
constexpr bool kArchSupported = false;
#endif

namespace {

struct DeniedSyscall {
  std::string_view name;
  long nr;
};

// Entries exist only where the architecture has the call (aarch64 lacks the legacy ones).
#define CUSTODY_DENY_(name) \
  DeniedSyscall { #name, __NR_##name }
constexpr auto kDenied = std::to_array<DeniedSyscall>({
  // other processes' memory and control
  CUSTODY_DENY_(ptrace), CUSTODY_DENY_(process_vm_readv), CUSTODY_DENY_(process_vm_writev),
      CUSTODY_DENY_(process_madvise), CUSTODY_DENY_(pidfd_getfd), CUSTODY_DENY_(kcmp),
      // running programs: the agent never does
      CUSTODY_DENY_(execve), CUSTODY_DENY_(execveat),
      // the kernel itself
      CUSTODY_DENY_(kexec_load), CUSTODY_DENY_(kexec_file_load), CUSTODY_DENY_(init_module),
      CUSTODY_DENY_(finit_module), CUSTODY_DENY_(delete_module), CUSTODY_DENY_(bpf),
      CUSTODY_DENY_(perf_event_open), CUSTODY_DENY_(userfaultfd), CUSTODY_DENY_(reboot),
      CUSTODY_DENY_(swapon), CUSTODY_DENY_(swapoff), CUSTODY_DENY_(syslog), CUSTODY_DENY_(acct),
      CUSTODY_DENY_(quotactl), CUSTODY_DENY_(personality),
      // keyrings
      CUSTODY_DENY_(keyctl), CUSTODY_DENY_(add_key), CUSTODY_DENY_(request_key),
      // file systems, mounts and namespaces
      CUSTODY_DENY_(mount), CUSTODY_DENY_(umount2), CUSTODY_DENY_(pivot_root),
      CUSTODY_DENY_(chroot), CUSTODY_DENY_(open_by_handle_at), CUSTODY_DENY_(name_to_handle_at),
      CUSTODY_DENY_(fsopen), CUSTODY_DENY_(fsconfig), CUSTODY_DENY_(fsmount), CUSTODY_DENY_(fspick),
      CUSTODY_DENY_(move_mount), CUSTODY_DENY_(open_tree), CUSTODY_DENY_(mount_setattr),
      CUSTODY_DENY_(setns), CUSTODY_DENY_(unshare),
      // the clock
      CUSTODY_DENY_(settimeofday), CUSTODY_DENY_(clock_settime), CUSTODY_DENY_(clock_adjtime),
      CUSTODY_DENY_(adjtimex),
#if defined(__x86_64__)
      // x86_64 only
      CUSTODY_DENY_(iopl), CUSTODY_DENY_(ioperm), CUSTODY_DENY_(uselib),
#endif
});
#undef CUSTODY_DENY_

constexpr auto kDeniedNames = [] {
  std::array<std::string_view, kDenied.size()> names{};
  for (size_t i = 0; i < kDenied.size(); ++i) names[i] = kDenied[i].name;
  return names;
}();

// clone() flags that create namespaces; clone3 passes its flags in memory the filter cannot read.
constexpr uint32_t kNamespaceCloneFlags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                                          CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET |
                                          CLONE_NEWCGROUP;

sock_filter Stmt(uint16_t code, uint32_t k) { return BPF_STMT(code, k); }
sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) {
  return BPF_JUMP(code, k, jt, jf);
}

// The program (offsets are filled in once its length is known):
//   A = arch;   if A != native goto deny
//   A = nr;     [x86_64: if A >= X32 bit goto deny]
//   if A == clone3 return ERRNO(ENOSYS)
//   if A == clone { A = flags (low word); if A & namespace flags goto deny; return ALLOW }
//   for each denied nr: if A == nr goto deny
//   return ALLOW
//   deny: return action
std::vector<sock_filter> BuildProgram(uint32_t deny_action) {
  std::vector<sock_filter> p;
  std::vector<size_t> to_deny;  // indices of jumps whose true branch goes to `deny`
  auto jump_to_deny_if_eq = [&](uint32_t k) {
    to_deny.push_back(p.size());
    p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, k, 0, 0));
  };

  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  // Foreign ABIs have their own numbers, which the list below does not cover: deny them whole.
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0));
  to_deny.push_back(p.size());
  p.push_back(Jump(BPF_JMP | BPF_JA, 0, 0, 0));  // k is the offset for JA
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)));
#if defined(__x86_64__)
  to_deny.push_back(p.size());
  p.push_back(Jump(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u /* __X32_SYSCALL_BIT */, 0, 0));
#endif
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 1));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS));
  p.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3));
  // clone's flags are its first argument on both architectures; namespace flags are in the low
  // word.
  p.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])));
  to_deny.push_back(p.size());
  p.push_back(Jump(BPF_JMP | BPF_JSET | BPF_K, kNamespaceCloneFlags, 0, 0));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  for (const DeniedSyscall& d : kDenied) jump_to_deny_if_eq(static_cast<uint32_t>(d.nr));
  p.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
  size_t deny = p.size();
  p.push_back(Stmt(BPF_RET | BPF_K, deny_action));

  for (size_t i : to_deny) {
    size_t offset = deny - i - 1;
    if (BPF_OP(p[i].code) == BPF_JA) {
      p[i].k = static_cast<uint32_t>(offset);
    } else {
      if (offset > 255) Panic("seccomp program too long for a conditional jump");
      p[i].jt = static_cast<uint8_t>(offset);
    }
  }
  return p;
}

}  // namespace

std::span<const std::string_view> DeniedSyscallNames() { return kDeniedNames; }

Status InstallSeccompFilter(const SeccompPolicy& policy) {
  if (!kArchSupported) {
    return Unimplemented(
        "seccomp filter: this build is for an architecture other than x86_64 "
        "and aarch64, whose system call numbers the filter does not know");
  }
  int nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  if (nnp < 0) return ErrnoStatus(errno, "prctl(PR_GET_NO_NEW_PRIVS)");
  if (nnp != 1) {
    return FailedPrecondition(
        "seccomp filter: no_new_privs is not set; call HardenProcess before InstallSeccompFilter");
  }
  uint32_t deny_action = policy.action == SeccompAction::kKill ? SECCOMP_RET_KILL_PROCESS
                                                               : (SECCOMP_RET_ERRNO | EPERM);
  std::vector<sock_filter> program = BuildProgram(deny_action);
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(program.size());
  prog.filter = program.data();
  // TSYNC: engine thread pools already run; a filter on this thread only would leave them free.
  long rc = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog);
  if (rc < 0) return ErrnoStatus(errno, "seccomp(SECCOMP_SET_MODE_FILTER)");
  if (rc > 0) {
    return Internal("seccomp filter: thread " + std::to_string(rc) +
                    " could not be synchronised to the filter; nothing was installed");
  }
  return OkStatus();
}

}  // namespace custody::agent
