// custody run: development-only path that opens a sealed model, loads it and runs it once.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli_common.h"
#include "core/base/file.h"
#include "core/format/sealed.h"
#include "engine/engine.h"
#include "engine/npy.h"

namespace custody::cli {
namespace {

struct RunArgs {
  std::string file;
  std::string key;
  std::string vendor_pub;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::vector<std::string> engine_dirs;
  int threads = 0;
  bool plain = false;        // the file is an unsealed model (comparison runs)
  std::string plain_engine;  // its engine kind, with --plain
};

// The model bytes and engine kind to run: from a sealed file (opened with its key) or, with
// --plain, from an unsealed model file read into protected memory the same way.
struct ModelToRun {
  SecretBuffer bytes;
  std::string kind;
};

Result<ModelToRun> OpenModel(const RunArgs& a) {
  if (a.plain) {
    if (a.plain_engine.empty()) return InvalidArgument("--plain needs --engine KIND");
    CUSTODY_ASSIGN_OR_RETURN(SecretBuffer bytes, ReadSecretFile(a.file, uint64_t{64} << 30));
    return ModelToRun{std::move(bytes), a.plain_engine};
  }
  if (a.key.empty()) return InvalidArgument("--key is required for a sealed model");

  std::optional<crypto::Ed25519PublicKey> vendor;
  if (!a.vendor_pub.empty()) {
    CUSTODY_ASSIGN_OR_RETURN(vendor, LoadVendorPublicKey(a.vendor_pub));
  } else {
    // Development convenience: trust the key the header names, and say so.
    CUSTODY_ASSIGN_OR_RETURN(format::SealedHeader h, format::ReadHeaderFromFile(a.file, nullptr));
    CUSTODY_ASSIGN_OR_RETURN(vendor, crypto::Ed25519PublicKey::FromRaw(h.vendor_key));
    std::fprintf(stderr,
                 "custody: warning: no --vendor-pub given; the signer (%s) was not checked\n",
                 vendor->Fingerprint().c_str());
  }
  CUSTODY_ASSIGN_OR_RETURN(SecretBuffer dek, format::ReadDekFile(a.key));
  CUSTODY_ASSIGN_OR_RETURN(format::OpenedModel opened,
                           format::OpenFile(a.file, dek.span(), *vendor));
  return ModelToRun{std::move(opened.plaintext), opened.header.info.engine};
}

Status Run(const RunArgs& a) {
  if (a.outputs.empty()) return InvalidArgument("give at least one --output file");
  CUSTODY_ASSIGN_OR_RETURN(ModelToRun model, OpenModel(a));

  std::vector<engine::Tensor> inputs;
  for (const std::string& path : a.inputs) {
    CUSTODY_ASSIGN_OR_RETURN(Bytes npy, ReadFile(path, uint64_t{4} << 30));
    auto tensor = engine::ParseNpy(npy);
    if (!tensor) return tensor.error().WithContext("input " + path);
    inputs.push_back(std::move(tensor).value());
  }

  engine::LoadOptions options;
  options.threads = a.threads;
  options.plugin_dirs = a.engine_dirs;
  if (const char* env = std::getenv("CUSTODY_ENGINE_PATH"); env != nullptr && *env != '\0') {
    std::string dirs(env);
    for (size_t start = 0; start <= dirs.size();) {
      size_t colon = dirs.find(':', start);
      if (colon == std::string::npos) colon = dirs.size();
      if (colon > start) options.plugin_dirs.push_back(dirs.substr(start, colon - start));
      start = colon + 1;
    }
  }
  auto loaded = engine::LoadEngine(model.kind, model.bytes.span(), options);
  if (!loaded) return loaded.error().WithContext("load " + model.kind + " engine");
  std::unique_ptr<engine::Engine> eng = std::move(loaded).value();
  // The engine holds its own copy now; the decrypted file is no longer needed.
  model.bytes = SecretBuffer();

  CUSTODY_ASSIGN_OR_RETURN(std::vector<engine::Tensor> outputs, eng->Run(inputs));
  if (outputs.size() < a.outputs.size()) {
    return InvalidArgument("the model produced " + std::to_string(outputs.size()) +
                           " outputs but " + std::to_string(a.outputs.size()) +
                           " --output files were given");
  }
  for (size_t i = 0; i < a.outputs.size(); ++i) {
    Bytes npy = engine::SerializeNpy(outputs[i]);
    CUSTODY_RETURN_IF_ERROR(
        WriteFileAtomic(a.outputs[i], npy, WriteOptions{0644, Overwrite::kAllow}));
    std::string shape;
    for (int64_t d : outputs[i].shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    std::printf("output %zu: %s %s[%s] -> %s\n", i, outputs[i].name.c_str(),
                std::string(engine::DTypeName(outputs[i].dtype)).c_str(), shape.c_str(),
                a.outputs[i].c_str());
  }
  std::printf("engine memory: %s\n", eng->Protection().report.c_str());
  return OkStatus();
}

}  // namespace

void RegisterRunCommand(CLI::App& app, int& exit_code) {
  auto* run = app.add_subcommand(
      "run",
      "DEVELOPMENT ONLY: open a sealed model with its key, run it once on .npy inputs and write "
      ".npy outputs. Production devices never hold a model key; custody-agent serves models "
      "under a lease instead.");
  auto ra = std::make_shared<RunArgs>();
  run->add_option("file", ra->file, "Sealed model")->required();
  run->add_option("--key", ra->key, "Model key file (from seal --dek-out)");
  run->add_option("--vendor-pub", ra->vendor_pub,
                  "Vendor public key; without it the signer is not checked (warning)");
  run->add_option("--input", ra->inputs, "Input tensor as .npy (repeat for several inputs)")
      ->required();
  run->add_option("--output", ra->outputs, "Where to write output tensors as .npy (repeatable)")
      ->required();
  run->add_option("--engine-dir", ra->engine_dirs,
                  "Absolute directory holding engine plugins (also CUSTODY_ENGINE_PATH)");
  run->add_option("--threads", ra->threads, "Engine threads (0 = library default)");
  run->add_flag("--plain", ra->plain,
                "FILE is an unsealed model (to compare a sealed run with the plain model)");
  run->add_option("--engine", ra->plain_engine, "Engine kind of an unsealed model (with --plain)");
  run->callback([&exit_code, ra] {
    Status s = Run(*ra);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });
}

}  // namespace custody::cli
