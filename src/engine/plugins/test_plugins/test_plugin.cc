// Deliberately broken or misbehaving plugins for the plugin host's tests (engine_test.cc).
// One source, compiled once per mode:
//   CUSTODY_TEST_PLUGIN_BADABI    libcustody-engine-badabi.so: declares ABI version 99
//   CUSTODY_TEST_PLUGIN_FUTURE    libcustody-engine-future.so: exports only a v2 entry point
//   CUSTODY_TEST_PLUGIN_WRONGKIND libcustody-engine-wrongkind.so: declares kind "other"
//   CUSTODY_TEST_PLUGIN_CHAOS     libcustody-engine-chaos.so: the model text picks a misbehaviour
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "engine/custody_engine_plugin.h"

struct custody_engine_instance {
  char mode[32];
  int64_t shape[1];
  float value[4];
  custody_tensor out;
};

namespace {

void SetError(char* err, size_t err_len, const char* message) {
  if (err != nullptr && err_len > 0) std::snprintf(err, err_len, "%s", message);
}

int32_t Create(const custody_engine_host_v1*, const uint8_t* model, size_t model_len,
               custody_engine_instance** out, char* err, size_t err_len) {
  std::string_view mode(reinterpret_cast<const char*>(model), model_len);
  if (mode == "create-error") {
    SetError(err, err_len, "chaos: this model is refused on purpose");
    return CUSTODY_PLUGIN_INVALID_ARGUMENT;
  }
  if (mode == "create-null") return CUSTODY_PLUGIN_OK;  // success without an instance
  if (mode.size() >= sizeof(custody_engine_instance::mode)) return CUSTODY_PLUGIN_INTERNAL;
  auto* inst =
      static_cast<custody_engine_instance*>(std::calloc(1, sizeof(custody_engine_instance)));
  if (inst == nullptr) return CUSTODY_PLUGIN_RESOURCE_EXHAUSTED;
  std::memcpy(inst->mode, mode.data(), mode.size());
  *out = inst;
  return CUSTODY_PLUGIN_OK;
}

int32_t Describe(const custody_engine_instance*, const custody_tensor_spec** inputs,
                 size_t* n_inputs, const custody_tensor_spec** outputs, size_t* n_outputs) {
  *inputs = nullptr;  // unknown: accept anything
  *n_inputs = 0;
  *outputs = nullptr;
  *n_outputs = 0;
  return CUSTODY_PLUGIN_OK;
}

int32_t Run(custody_engine_instance* inst, const custody_tensor*, size_t, custody_tensor** outputs,
            size_t* n_outputs, char* err, size_t err_len) {
  std::string_view mode(inst->mode);
  if (mode == "run-error") {
    SetError(err, err_len, "chaos: run refused on purpose");
    return CUSTODY_PLUGIN_UNIMPLEMENTED;
  }
  if (mode == "run-weird-code") return 77;
  inst->shape[0] = 4;
  inst->out = {"out", CUSTODY_DTYPE_FLOAT32, 1, inst->shape, inst->value, sizeof(inst->value)};
  if (mode == "bad-output-size") inst->out.byte_size = 3;
  if (mode == "bad-output-dtype") inst->out.dtype = 42;
  if (mode == "bad-output-rank") inst->out.rank = 1000;
  if (mode == "null-output-data") inst->out.data = nullptr;
  *outputs = &inst->out;
  *n_outputs = 1;
  return CUSTODY_PLUGIN_OK;
}

void FreeOutputs(custody_engine_instance*, custody_tensor*, size_t) {}

void Destroy(custody_engine_instance* inst) { std::free(inst); }

#if defined(CUSTODY_TEST_PLUGIN_BADABI)
constexpr uint32_t kAbi = 99;
constexpr const char* kKind = "badabi";
#elif defined(CUSTODY_TEST_PLUGIN_WRONGKIND)
constexpr uint32_t kAbi = CUSTODY_ENGINE_PLUGIN_ABI_VERSION;
constexpr const char* kKind = "other";
#elif defined(CUSTODY_TEST_PLUGIN_FUTURE)
constexpr uint32_t kAbi = 2;
constexpr const char* kKind = "future";
#else
constexpr uint32_t kAbi = CUSTODY_ENGINE_PLUGIN_ABI_VERSION;
constexpr const char* kKind = "chaos";
#endif

const custody_engine_plugin_v1 kPlugin = {
    kAbi,
    sizeof(custody_engine_plugin_v1),
    kKind,
    "0-test",
    0,
    &Create,
    &Describe,
    &Run,
    &FreeOutputs,
    &Destroy,
    nullptr,
};

}  // namespace

#if defined(CUSTODY_TEST_PLUGIN_FUTURE)
extern "C" CUSTODY_ENGINE_PLUGIN_EXPORT const custody_engine_plugin_v1*
custody_engine_plugin_v2_get(void) {
  return &kPlugin;
}
#else
extern "C" CUSTODY_ENGINE_PLUGIN_EXPORT const custody_engine_plugin_v1*
custody_engine_plugin_v1_get(void) {
  return &kPlugin;
}
#endif
