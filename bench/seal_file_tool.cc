// custody_bench_seal_file MODEL OUT: seals MODEL into OUT with format::SealFile under a fresh
// vendor key and DEK (both thrown away). It exists so custody_seal_rss can measure the library's
// sealing memory in a build without the CLI; with the CLI present the runner measures
// `custody seal` instead.
#include <cstdio>

#include "core/format/sealed.h"

int main(int argc, char** argv) {
  using namespace custody;
  if (argc != 3) {
    std::fprintf(stderr, "usage: custody_bench_seal_file MODEL OUT\n");
    return 2;
  }
  auto vendor = crypto::Ed25519PrivateKey::Generate();
  auto dek = format::GenerateDek();
  if (!vendor || !dek) {
    std::fprintf(stderr, "custody_bench_seal_file: key generation failed\n");
    return 1;
  }
  format::SealOptions options;
  options.info.name = "seal-rss-bench";
  options.info.version = "1";
  options.info.engine = "bench";
  Status s = format::SealFile(argv[1], argv[2], dek->span(), *vendor, options, Overwrite::kAllow);
  if (!s.ok()) {
    std::fprintf(stderr, "custody_bench_seal_file: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
