// custody_fuzz_seeds OUT_DIR: writes the fuzzers' seed corpora, deterministically.
//
//   OUT_DIR/sealed/*.sealed  small sealed models under the fixed keys of fuzz_fixtures.h (salt,
//                            nonce prefix, model_id and created fixed too), covering: the spec's
//                            worked example, an empty model, a model of exactly whole chunks, an
//                            expired one and a larger chunk size with more metadata;
//   OUT_DIR/tpm/*.bin        TPM verifier inputs: attestations signed by the fixed AK of
//                            tpm_fixtures.h, public areas, a signature (first byte: the mode);
//   OUT_DIR/npy/*.npy        small .npy files from SerializeNpy (when built with the engine).
//
// fuzz/corpus/ holds its output (regenerate with `custody_fuzz_seeds fuzz/corpus`);
// scripts/fuzz.sh also runs it into each run's scratch corpus so seeds follow format changes.
#include <sys/stat.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/base/file.h"
#include "core/format/sealed.h"
#include "fuzz_fixtures.h"
#include "tpm_fixtures.h"
#ifdef CUSTODY_FUZZ_WITH_NPY
#include "engine/npy.h"
#endif

namespace {

using namespace custody;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "custody_fuzz_seeds: %s\n", what.c_str());
  std::exit(1);
}

void Write(const std::string& path, ByteSpan bytes) {
  Status s = WriteFileAtomic(path, bytes, WriteOptions{0644, Overwrite::kAllow});
  if (!s.ok()) Die(s.ToString());
}

format::ModelInfo Info(std::string name, std::string engine) {
  format::ModelInfo info;
  info.model_id = "000102030405060708090a0b0c0d0e0f";
  info.name = std::move(name);
  info.version = "1";
  info.engine = std::move(engine);
  info.created = "2026-01-01T00:00:00Z";
  return info;
}

void Seal(const std::string& path, std::string_view plaintext, format::ModelInfo info,
          uint8_t chunk_size_log2) {
  format::SealOptions o;
  o.info = std::move(info);
  o.chunk_size_log2 = chunk_size_log2;
  std::array<uint8_t, format::kSaltBytes> salt{};
  for (size_t i = 0; i < salt.size(); ++i) salt[i] = static_cast<uint8_t>(0xa0 + i);
  o.determinism.salt = salt;
  o.determinism.nonce_prefix = {0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6};
  const auto dek = fuzz::FixedDek();
  auto sealed = format::SealBytes(AsBytes(plaintext), dek, fuzz::FixedVendor(), o);
  if (!sealed) Die("seal " + path + ": " + sealed.error().ToString());
  Write(path, *sealed);
}

void SealedSeeds(const std::string& dir) {
  // docs/FORMAT.md §6, byte for byte.
  format::ModelInfo example = Info("example", "onnx");
  example.meta["task"] = "demo";
  Seal(dir + "/spec_example.sealed", "Custody sealed model v1 worked example.\n", example, 4);

  Seal(dir + "/empty.sealed", "", Info("empty", "onnx"), 4);

  format::ModelInfo whole = Info("whole-chunks", "torchscript");
  whole.not_after = "2099-12-31T23:59:59Z";
  Seal(dir + "/whole_chunks.sealed", std::string(64, 'w'), whole, 4);

  format::ModelInfo expired = Info("expired", "onnx");
  expired.not_after = "2026-01-31T23:59:59Z";  // before fuzz::FixedNow()
  Seal(dir + "/expired.sealed", "expired model bytes.", expired, 4);

  format::ModelInfo meta = Info("meta-rich", "example-plugin_1");
  meta.version = "2.0.1-rc1";
  meta.meta["labels"] = "cat,dog,bird";
  meta.meta["input"] = "float32[1,3,224,224]";
  meta.meta["note"] = "unicode \xc3\xa9\xe2\x82\xac ok";
  std::string body;
  for (int i = 0; i < 100; ++i) body.push_back(static_cast<char>(i * 7));
  Seal(dir + "/chunk32_meta.sealed", body, meta, 5);
}

// The first byte selects the fuzzer's mode (tpm_verifier_fuzzer.cc).
void TpmSeeds(const std::string& dir) {
  auto put = [&](const std::string& name, uint8_t mode, ByteSpan body) {
    Bytes b = {mode};
    b.insert(b.end(), body.begin(), body.end());
    Write(dir + "/" + name, b);
  };
  put("quote.bin", 0, fuzz::BuildAttest(TPM2_ST_ATTEST_QUOTE));
  put("certify.bin", 0, fuzz::BuildAttest(TPM2_ST_ATTEST_CERTIFY));
  put("nv_certify.bin", 0, fuzz::BuildAttest(TPM2_ST_ATTEST_NV));
  put("ak_public.bin", 1, fuzz::FixedAkPublic());
  TPMT_PUBLIC binding = tpm::BindingKeyTemplate(crypto::Sha256Digest{});
  binding.unique = tpm::UnmarshalPublic2B(fuzz::FixedAkPublic()).value().unique;
  put("binding_public.bin", 1, tpm::MarshalPublic2B(binding).value());
  put("signature.bin", 2, fuzz::SignWithFixedAk(AsBytes("fixed message")).signature);
  put("forged.bin", 3, fuzz::BuildAttest(TPM2_ST_ATTEST_CERTIFY));
}

#ifdef CUSTODY_FUZZ_WITH_NPY
void NpySeeds(const std::string& dir) {
  auto put = [&](const std::string& name, engine::DType dtype, std::vector<int64_t> shape) {
    engine::Tensor t;
    t.dtype = dtype;
    t.shape = std::move(shape);
    auto n = t.ExpectedByteSize();
    if (!n) Die("npy seed " + name + ": " + n.error().ToString());
    t.data.resize(*n);
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<uint8_t>(i * 13 + 1);
    if (dtype == engine::DType::kBool) {
      for (auto& b : t.data) b &= 1;
    }
    Write(dir + "/" + name + ".npy", engine::SerializeNpy(t));
  };
  put("f32_2x3", engine::DType::kFloat32, {2, 3});
  put("i64_scalar", engine::DType::kInt64, {});
  put("u8_empty", engine::DType::kUInt8, {0, 4});
  put("bool_3", engine::DType::kBool, {3});
  put("f16_2x2x1", engine::DType::kFloat16, {2, 2, 1});
}
#endif

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: custody_fuzz_seeds OUT_DIR\n");
    return 2;
  }
  const std::string out = argv[1];
  mkdir(out.c_str(), 0755);
  mkdir((out + "/sealed").c_str(), 0755);
  SealedSeeds(out + "/sealed");
  mkdir((out + "/tpm").c_str(), 0755);
  TpmSeeds(out + "/tpm");
#ifdef CUSTODY_FUZZ_WITH_NPY
  mkdir((out + "/npy").c_str(), 0755);
  NpySeeds(out + "/npy");
#endif
  return 0;
}
