// Sealed models on the device and the models loaded from them (DESIGN.md §5, §8, §9).
//
// Sealed files live in the configured models directory, in the clear: each is useless without
// its model key, which only arrives wrapped to this device's TPM inside a lease. The catalog finds
// a lease's model by the id in the files' signed headers (checked against the pinned vendor key),
// so file names do not matter and a file that is not the vendor's is never opened.
//
// Loading: the model key, unwrapped by the TPM under an approved platform state
// (device_protocol.h UnwrapLeaseKey), opens the sealed file into protected memory (locked, not
// dumpable, wiped on release); the engine loads from that memory; the decrypted copy is wiped as
// soon as the engine holds its own, and the key right after opening. Nothing is written to disk.
//
// Threading: ModelCatalog is thread-safe. A LoadedModel is immutable once loaded and its engine
// runs concurrent requests; it is shared (shared_ptr) by the requests in progress, so a revoked
// model is unloaded, and its memory wiped, when the last of them finishes.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "agent/kserve.h"
#include "core/base/secret_buffer.h"
#include "core/base/status.h"
#include "core/crypto/crypto.h"
#include "core/format/sealed.h"
#include "engine/engine.h"

namespace custody::agent {

class ModelCatalog {
 public:
  ModelCatalog(std::string dir, crypto::Ed25519PublicKey vendor);

  // The sealed file holding `model_id`. Reads the directory's headers again when the id is not
  // known yet (a file copied in later). kNotFound names the directory and what to do.
  Result<std::string> Find(const std::string& model_id);
  const crypto::Ed25519PublicKey& vendor() const { return vendor_; }
  const std::string& dir() const { return dir_; }

 private:
  Status ScanLocked();

  const std::string dir_;
  const crypto::Ed25519PublicKey vendor_;
  std::mutex mu_;
  std::map<std::string, std::string> paths_;  // model id -> file
  std::string skipped_;                       // files that are not the vendor's sealed models
};

struct LoadedModel {
  format::ModelInfo info;  // from the signed header
  std::string path;
  std::unique_ptr<engine::Engine> engine;
  kserve::ModelMetadata metadata;
  engine::EngineProtection protection;  // at load
};

// Opens `path` with `dek` and loads it into its engine. The DEK and the decrypted bytes are wiped
// before this returns.
Result<std::shared_ptr<const LoadedModel>> LoadSealedModel(const std::string& path,
                                                           const SecretBuffer& dek,
                                                           const crypto::Ed25519PublicKey& vendor,
                                                           const engine::LoadOptions& options);

}  // namespace custody::agent
