// custody keygen | seal | inspect | verify: the vendor's sealing workflow.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "core/base/file.h"
#include "core/format/sealed.h"

namespace custody::cli {
namespace {

std::string PublicKeyPathFor(const std::string& key_path) {
  const std::string suffix = ".key";
  if (key_path.size() > suffix.size() &&
      key_path.compare(key_path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    return key_path.substr(0, key_path.size() - suffix.size()) + ".pub";
  }
  return key_path + ".pub";
}

// ----- keygen --------------------------------------------------------------------------------

struct KeygenArgs {
  std::string out;
  bool force = false;
};

Status Keygen(const KeygenArgs& a) {
  const std::string pub_path = PublicKeyPathFor(a.out);
  Overwrite ow = a.force ? Overwrite::kAllow : Overwrite::kRefuse;
  if (!a.force) {
    for (const auto& p : {a.out, pub_path}) {
      if (PathExists(p)) return AlreadyExists(p + " already exists; refusing to overwrite it");
    }
  }
  CUSTODY_ASSIGN_OR_RETURN(auto key, crypto::Ed25519PrivateKey::Generate());
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer pem, key.ToPem());
  CUSTODY_RETURN_IF_ERROR(WriteFileAtomic(a.out, pem.span(), WriteOptions{0600, ow}));
  CUSTODY_RETURN_IF_ERROR(
      WriteFileAtomic(pub_path, AsBytes(key.public_key().ToPem()), WriteOptions{0644, ow}));
  std::printf("vendor sealing key: %s (private, mode 0600; keep it offline)\n", a.out.c_str());
  std::printf("vendor public key:  %s\n", pub_path.c_str());
  std::printf("fingerprint:        %s\n", key.public_key().Fingerprint().c_str());
  return OkStatus();
}

// ----- seal ----------------------------------------------------------------------------------

struct SealArgs {
  std::string model;
  std::string engine;
  std::string name;
  std::string version;
  std::string not_after;
  std::vector<std::string> meta;
  std::string signing_key;
  std::string dek_out;
  std::string out;
  uint64_t chunk_size = uint64_t{1} << format::kDefaultChunkSizeLog2;
  bool force = false;
};

// Catches the common mistake of sealing a model under the wrong engine before it reaches a
// device: TorchScript files are zip archives; ONNX files are protobufs starting with field 1.
Status CheckModelLooksLikeEngine(const std::string& path, const std::string& engine) {
  if (engine != "torchscript" && engine != "onnx") return OkStatus();
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return ErrnoStatus(errno, "open model " + path);
  unsigned char head[4] = {};
  size_t n = std::fread(head, 1, sizeof(head), f);
  std::fclose(f);
  if (engine == "torchscript" && (n < 4 || head[0] != 'P' || head[1] != 'K')) {
    return InvalidArgument(path +
                           " is not a TorchScript archive (no zip signature); export it with "
                           "torch.jit.trace/script and torch.jit.save, or pick --engine onnx");
  }
  if (engine == "onnx" && (n < 1 || head[0] != 0x08)) {
    return InvalidArgument(path +
                           " does not look like an ONNX model (expected a protobuf "
                           "starting with ir_version); pick the right --engine");
  }
  return OkStatus();
}

Status Seal(const SealArgs& a) {
  format::SealOptions options;
  options.info.name = a.name;
  options.info.version = a.version;
  options.info.engine = a.engine;
  if (!a.not_after.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(std::string na, format::NormaliseTimestamp(a.not_after));
    options.info.not_after = na;
  }
  for (const std::string& kv : a.meta) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument("--meta expects key=value, got '" + kv + "'");
    }
    options.info.meta[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  int log2 = 0;
  while ((uint64_t{1} << log2) < a.chunk_size && log2 < 63) ++log2;
  if ((uint64_t{1} << log2) != a.chunk_size || log2 < format::kMinChunkSizeLog2 ||
      log2 > format::kMaxChunkSizeLog2) {
    return InvalidArgument("--chunk-size must be a power of two from 16 bytes to 16 MiB");
  }
  options.chunk_size_log2 = static_cast<uint8_t>(log2);
  // Fill in id and time now so the metadata can be validated before any file is written.
  CUSTODY_ASSIGN_OR_RETURN(Bytes id, crypto::RandomBytes(16));
  options.info.model_id = HexEncode(id);
  options.info.created = format::FormatTimestamp(
      std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
  CUSTODY_RETURN_IF_ERROR(format::ValidateModelInfo(options.info));
  CUSTODY_RETURN_IF_ERROR(CheckModelLooksLikeEngine(a.model, a.engine));
  if (a.dek_out == a.out) return InvalidArgument("--dek-out and --out must be different files");

  Overwrite ow = a.force ? Overwrite::kAllow : Overwrite::kRefuse;
  if (!a.force) {
    for (const auto& p : {a.out, a.dek_out}) {
      if (PathExists(p)) {
        return AlreadyExists(p + " already exists; refusing to overwrite it (use --force)");
      }
    }
  }
  CUSTODY_ASSIGN_OR_RETURN(auto vendor, LoadSigningKey(a.signing_key));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, format::GenerateDek());

  // The key goes to disk first: a sealed file whose key was lost would be useless.
  CUSTODY_RETURN_IF_ERROR(format::WriteDekFile(a.dek_out, dek.span(), ow));
  ProgressBar bar("sealing");
  options.progress = [&](uint64_t done, uint64_t total) { bar.Update(done, total); };
  Status sealed = format::SealFile(a.model, a.out, dek.span(), vendor, options, ow);
  if (!sealed.ok()) {
    std::remove(a.dek_out.c_str());  // the key of a file that was never written
    return sealed;
  }
  CUSTODY_ASSIGN_OR_RETURN(format::SealedHeader h,
                           format::ReadHeaderFromFile(a.out, &vendor.public_key()));
  std::fprintf(stderr, "%s", "");  // keep the progress line separate from the summary
  std::printf("sealed %s %s (%s) -> %s\n", h.info.name.c_str(), h.info.version.c_str(),
              h.info.engine.c_str(), a.out.c_str());
  std::printf("model id:    %s\n", h.info.model_id.c_str());
  std::printf("size:        %s plaintext, %s sealed, %llu chunks\n",
              HumanBytes(h.plaintext_size).c_str(), HumanBytes(h.sealed_size()).c_str(),
              static_cast<unsigned long long>(h.chunk_count()));
  std::printf("signed by:   %s\n", h.vendor_fingerprint().c_str());
  std::printf("model key:   %s (mode 0600; give it only to the custodian)\n", a.dek_out.c_str());
  return OkStatus();
}

// ----- inspect -------------------------------------------------------------------------------

struct InspectArgs {
  std::string file;
  std::string vendor_pub;
  bool json = false;
};

Status Inspect(const InspectArgs& a) {
  std::optional<crypto::Ed25519PublicKey> trusted;
  if (!a.vendor_pub.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(trusted, LoadVendorPublicKey(a.vendor_pub));
  }
  CUSTODY_ASSIGN_OR_RETURN(format::SealedHeader h,
                           format::ReadHeaderFromFile(a.file, trusted ? &*trusted : nullptr));
  const std::string signature_state =
      trusted ? "valid, signed by the trusted vendor key"
              : "valid for the key named in the header (pass --vendor-pub to check who signed)";
  if (a.json) {
    nlohmann::json j;
    j["format_version"] = h.version;
    j["suite"] = "aes-256-gcm/hkdf-sha256/ed25519";
    j["model_id"] = h.info.model_id;
    j["name"] = h.info.name;
    j["version"] = h.info.version;
    j["engine"] = h.info.engine;
    j["created"] = h.info.created;
    j["not_after"] = h.info.not_after ? nlohmann::json(*h.info.not_after) : nlohmann::json();
    j["meta"] = h.info.meta;
    j["plaintext_bytes"] = h.plaintext_size;
    j["sealed_bytes"] = h.sealed_size();
    j["chunk_bytes"] = h.chunk_size();
    j["chunks"] = h.chunk_count();
    j["signer"] = h.vendor_fingerprint();
    j["signer_trusted"] = trusted.has_value();
    j["header_sha256"] = HexEncode(h.header_hash);
    std::printf("%s\n", j.dump(2).c_str());
    return OkStatus();
  }
  std::printf("file:        %s\n", a.file.c_str());
  std::printf("format:      Custody sealed model v%u (AES-256-GCM, HKDF-SHA256, Ed25519)\n",
              h.version);
  std::printf("model:       %s %s\n", h.info.name.c_str(), h.info.version.c_str());
  std::printf("model id:    %s\n", h.info.model_id.c_str());
  std::printf("engine:      %s\n", h.info.engine.c_str());
  std::printf("created:     %s\n", h.info.created.c_str());
  std::printf("not after:   %s\n", h.info.not_after ? h.info.not_after->c_str() : "(no expiry)");
  std::printf("size:        %llu bytes plaintext (%s), %llu bytes sealed\n",
              static_cast<unsigned long long>(h.plaintext_size),
              HumanBytes(h.plaintext_size).c_str(),
              static_cast<unsigned long long>(h.sealed_size()));
  std::printf("chunks:      %llu of %s\n", static_cast<unsigned long long>(h.chunk_count()),
              HumanBytes(h.chunk_size()).c_str());
  std::printf("signer:      %s\n", h.vendor_fingerprint().c_str());
  std::printf("signature:   %s\n", signature_state.c_str());
  for (const auto& [k, v] : h.info.meta) std::printf("meta:        %s=%s\n", k.c_str(), v.c_str());
  return OkStatus();
}

// ----- verify --------------------------------------------------------------------------------

struct VerifyArgs {
  std::string file;
  std::string key;
  std::string vendor_pub;
  int threads = 0;
};

Status Verify(const VerifyArgs& a) {
  CUSTODY_ASSIGN_OR_RETURN(auto vendor, LoadVendorPublicKey(a.vendor_pub));
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, format::ReadDekFile(a.key));
  format::OpenOptions options;
  options.threads = a.threads;
  auto start = std::chrono::steady_clock::now();
  CUSTODY_ASSIGN_OR_RETURN(format::OpenedModel opened,
                           format::OpenFile(a.file, dek.span(), vendor, options));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto& h = opened.header;
  std::printf("verified: %s %s (%s), %llu bytes in %llu chunks, signed by %s\n",
              h.info.name.c_str(), h.info.version.c_str(), h.info.engine.c_str(),
              static_cast<unsigned long long>(h.plaintext_size),
              static_cast<unsigned long long>(h.chunk_count()), h.vendor_fingerprint().c_str());
  std::printf("decrypted in %.3f s into memory that is %s\n", secs,
              opened.plaintext.protection().ToString().c_str());
  return OkStatus();
}

}  // namespace

void RegisterModelCommands(CLI::App& app, int& exit_code) {
  auto* keygen = app.add_subcommand("keygen", "Create the vendor's Ed25519 sealing key pair");
  auto keygen_args = std::make_shared<KeygenArgs>();
  keygen
      ->add_option("--out", keygen_args->out,
                   "Private key file to write (mode 0600); the public "
                   "key goes beside it as .pub")
      ->required();
  keygen->add_flag("--force", keygen_args->force, "Overwrite existing key files");
  keygen->callback([&exit_code, keygen_args] {
    Status s = Keygen(*keygen_args);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });

  auto* seal = app.add_subcommand("seal", "Seal a model file for shipping (encrypt and sign)");
  auto sa = std::make_shared<SealArgs>();
  seal->add_option("model", sa->model, "Plain model file (TorchScript .pt or ONNX .onnx)")
      ->required()
      ->check(CLI::ExistingFile);
  seal->add_option("--engine", sa->engine,
                   "Engine that runs it: torchscript, onnx, or an engine plugin's name")
      ->required();
  seal->add_option("--name", sa->name, "Model name")->required();
  seal->add_option("--version", sa->version, "Model version")->required();
  seal->add_option("--not-after", sa->not_after,
                   "Last date the model may be opened: YYYY-MM-DD (end of day, UTC) or "
                   "YYYY-MM-DDTHH:MM:SSZ");
  seal->add_option("--meta", sa->meta, "Signed metadata key=value (repeatable)");
  seal->add_option("--signing-key", sa->signing_key, "Vendor sealing key (from custody keygen)")
      ->required();
  seal->add_option("--dek-out", sa->dek_out, "Where to write the new model key (mode 0600)")
      ->required();
  seal->add_option("--out", sa->out, "Sealed model to write")->required();
  seal->add_option("--chunk-size", sa->chunk_size, "Chunk size in bytes (power of two)")
      ->capture_default_str();
  seal->add_flag("--force", sa->force, "Overwrite existing output files");
  seal->callback([&exit_code, sa] {
    Status s = Seal(*sa);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });

  auto* inspect =
      app.add_subcommand("inspect", "Show a sealed model's signed header (no key needed)");
  auto ia = std::make_shared<InspectArgs>();
  inspect->add_option("file", ia->file, "Sealed model")->required();
  inspect->add_option("--vendor-pub", ia->vendor_pub,
                      "Also check it was signed by this vendor key");
  inspect->add_flag("--json", ia->json, "Print JSON");
  inspect->callback([&exit_code, ia] {
    Status s = Inspect(*ia);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });

  auto* verify = app.add_subcommand(
      "verify", "Decrypt and authenticate a whole sealed model in memory (writes nothing)");
  auto va = std::make_shared<VerifyArgs>();
  verify->add_option("file", va->file, "Sealed model")->required();
  verify->add_option("--key", va->key, "Model key file (from seal --dek-out)")->required();
  verify->add_option("--vendor-pub", va->vendor_pub, "Vendor public key (from custody keygen)")
      ->required();
  verify->add_option("--threads", va->threads, "Decryption threads (0 = all cores)");
  verify->callback([&exit_code, va] {
    Status s = Verify(*va);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });
}

}  // namespace custody::cli
