// Runs a libFuzzer target over files, without libFuzzer: the committed seed corpora (which hold
// every input a fuzzer ever found a bug with) become regression tests of `make test`, built by
// the ordinary compiler. Each argument is a file or a directory of files. A bug shows as an
// abort or sanitizer report, as under the fuzzer; an unreadable path is exit code 2.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool RunFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    return false;
  }
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 0;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    std::filesystem::path arg(argv[i]);
    if (std::filesystem::is_directory(arg, ec)) {
      for (const auto& entry : std::filesystem::directory_iterator(arg, ec)) {
        if (!entry.is_regular_file()) continue;
        if (!RunFile(entry.path())) return 2;
        ++files;
      }
    } else if (RunFile(arg)) {
      ++files;
    } else {
      return 2;
    }
    if (ec) {
      std::fprintf(stderr, "replay: cannot list %s: %s\n", argv[i], ec.message().c_str());
      return 2;
    }
  }
  if (files == 0) {
    std::fprintf(stderr, "replay: no inputs (usage: replay FILE_OR_DIR...)\n");
    return 2;
  }
  std::printf("replay: %d inputs, no failure\n", files);
  return 0;
}
