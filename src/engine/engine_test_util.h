// Test helpers shared by the engine unit tests and the model integration tests. Not part of the
// library.
#pragma once

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace custody::engine::testing {

// Makes mlock fail the way it does for an ordinary service account: drops CAP_IPC_LOCK (which
// root has and which bypasses the limit) and lowers RLIMIT_MEMLOCK to `limit_bytes`. Irreversible
// for the process, so call it only in a child (a death test). Returns false if it could not.
inline bool SimulateMemlockLimit(uint64_t limit_bytes) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &header, data) != 0) return false;
  const uint32_t bit = 1u << (CAP_IPC_LOCK % 32);
  data[CAP_IPC_LOCK / 32].effective &= ~bit;
  data[CAP_IPC_LOCK / 32].permitted &= ~bit;
  data[CAP_IPC_LOCK / 32].inheritable &= ~bit;
  if (syscall(SYS_capset, &header, data) != 0) return false;
  struct rlimit rl {};
  rl.rlim_cur = limit_bytes;
  rl.rlim_max = limit_bytes;
  return setrlimit(RLIMIT_MEMLOCK, &rl) == 0;
}

// Where copies of `needle` are in this process's anonymous memory (heap, stack, anonymous
// mappings; not file-backed mappings such as the libraries' code). Reads through /proc/self/mem,
// so racing unmaps give EIO instead of a crash. The scanner's own buffer and `exclude` ranges are
// skipped.
struct MemoryHit {
  uintptr_t address;
  std::string mapping;  // the /proc/self/maps line
};

inline std::vector<MemoryHit> FindInAnonymousMemory(
    const std::vector<uint8_t>& needle_in,
    const std::vector<std::pair<uintptr_t, size_t>>& exclude = {}) {
  std::vector<MemoryHit> hits;
  if (needle_in.empty()) return hits;
  constexpr size_t kChunk = 1 << 20;
  // The needle and the read buffer live in a private mapping we skip, so they do not count.
  const size_t scratch_size = kChunk + needle_in.size() * 2;
  auto* scratch = static_cast<uint8_t*>(
      mmap(nullptr, scratch_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (scratch == MAP_FAILED) return hits;
  uint8_t* needle = scratch + kChunk + needle_in.size();
  std::memcpy(needle, needle_in.data(), needle_in.size());
  const size_t n = needle_in.size();
  auto scratch_begin = reinterpret_cast<uintptr_t>(scratch);

  int fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  std::ifstream maps("/proc/self/maps");
  std::vector<std::string> lines;
  for (std::string line; std::getline(maps, line);) lines.push_back(line);
  for (const std::string& line : lines) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    in >> range >> perms >> offset >> dev >> inode;
    std::getline(in, path);
    path.erase(0, path.find_first_not_of(' '));
    if (perms.empty() || perms[0] != 'r') continue;
    bool anonymous =
        path.empty() || path == "[heap]" || path == "[stack]" || path.rfind("[anon", 0) == 0;
    if (!anonymous) continue;
    uintptr_t begin = std::stoull(range.substr(0, range.find('-')), nullptr, 16);
    uintptr_t end = std::stoull(range.substr(range.find('-') + 1), nullptr, 16);
    if (begin == scratch_begin) continue;
    for (uintptr_t pos = begin; pos < end;) {
      size_t want = std::min<uintptr_t>(kChunk, end - pos);
      ssize_t got = pread(fd, scratch, want, static_cast<off_t>(pos));
      if (got <= 0) break;
      auto len = static_cast<size_t>(got);
      for (size_t i = 0; i + n <= len; ++i) {
        if (scratch[i] == needle[0] && std::memcmp(scratch + i, needle, n) == 0) {
          uintptr_t addr = pos + i;
          bool excluded = false;
          for (const auto& [b, size] : exclude) excluded |= addr >= b && addr < b + size;
          if (!excluded) hits.push_back({addr, line});
        }
      }
      // Overlap chunks by n-1 bytes so a needle across a boundary is found.
      pos += len > n ? len - (n - 1) : len;
    }
  }
  if (fd >= 0) close(fd);
  munmap(scratch, scratch_size);
  return hits;
}

}  // namespace custody::engine::testing
