#include "agent/models.h"

#include <dirent.h>

#include <memory>
#include <vector>

namespace custody::agent {
namespace {

struct DirCloser {
  void operator()(DIR* d) const { closedir(d); }
};

}  // namespace

ModelCatalog::ModelCatalog(std::string dir, crypto::Ed25519PublicKey vendor)
    : dir_(std::move(dir)), vendor_(std::move(vendor)) {}

Status ModelCatalog::ScanLocked() {
  std::unique_ptr<DIR, DirCloser> d(opendir(dir_.c_str()));
  if (!d) return ErrnoStatus(errno, "read the models directory " + dir_);
  std::map<std::string, std::string> found;
  std::string skipped;
  while (const dirent* e = readdir(d.get())) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    const std::string path = dir_ + "/" + name;
    // Only the signed header is read, and only a header the vendor signed names a model.
    Result<format::SealedHeader> header = format::ReadHeaderFromFile(path, &vendor_);
    if (!header) {
      if (skipped.size() < 512)
        skipped += (skipped.empty() ? "" : "; ") + name + ": " + header.error().message();
      continue;
    }
    found[header->info.model_id] = path;
  }
  paths_ = std::move(found);
  skipped_ = std::move(skipped);
  return OkStatus();
}

Result<std::string> ModelCatalog::Find(const std::string& model_id) {
  std::lock_guard lock(mu_);
  auto it = paths_.find(model_id);
  if (it == paths_.end()) {
    CUSTODY_RETURN_IF_ERROR(ScanLocked());
    it = paths_.find(model_id);
  }
  if (it == paths_.end()) {
    return NotFound("no sealed model with id " + model_id + " signed by the vendor key is in " +
                    dir_ + ": copy the vendor's .sealed file there" +
                    (skipped_.empty() ? std::string() : " (skipped: " + skipped_ + ")"));
  }
  return it->second;
}

Result<std::shared_ptr<const LoadedModel>> LoadSealedModel(const std::string& path,
                                                           const SecretBuffer& dek,
                                                           const crypto::Ed25519PublicKey& vendor,
                                                           const engine::LoadOptions& options) {
  CUSTODY_ASSIGN_OR_RETURN(format::OpenedModel opened, format::OpenFile(path, dek.span(), vendor));
  auto model = std::make_shared<LoadedModel>();
  model->info = opened.header.info;
  model->path = path;
  Result<std::unique_ptr<engine::Engine>> engine =
      engine::LoadEngine(opened.header.info.engine, opened.plaintext.span(), options);
  opened.plaintext.Wipe();  // the engine holds its own copy; this one goes at once
  if (!engine) return engine.error().WithContext("load " + path + " into its engine");
  model->engine = std::move(engine).value();
  model->protection = model->engine->Protection();
  model->metadata.name = model->info.name;
  model->metadata.versions = {model->info.version};
  model->metadata.platform = model->info.engine;
  model->metadata.inputs = model->engine->inputs();
  model->metadata.outputs = model->engine->outputs();
  return std::shared_ptr<const LoadedModel>(std::move(model));
}

}  // namespace custody::agent
