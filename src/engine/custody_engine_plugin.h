/* custody_engine_plugin.h: the C ABI between Custody and a third-party inference engine.
 *
 * A plugin is a shared library named libcustody-engine-<kind>.so (kind matches
 * [a-z0-9_-]{1,32}) placed in one of the agent's plugin directories. It exports exactly one
 * symbol:
 *
 *     const custody_engine_plugin_v1* custody_engine_plugin_v1_get(void);
 *
 * which returns a pointer to a static table of functions. The host loads the library with
 * dlopen(RTLD_NOW | RTLD_LOCAL), checks abi_version == CUSTODY_ENGINE_PLUGIN_ABI_VERSION,
 * struct_size >= sizeof(custody_engine_plugin_v1) and that `kind` equals the file's kind, and
 * then drives one or more instances: create -> describe -> run/free_outputs ... -> destroy.
 *
 * Rules a plugin must follow (docs/ENGINES.md explains them with an example):
 *  - Pure C at the boundary: no C++ exception may escape any function in the table.
 *  - The model bytes passed to create() are decrypted vendor weights. They are valid only during
 *    the call. Keep what you need in memory from host->alloc_protected (locked, excluded from
 *    core dumps, wiped on free) where your engine allows it; never write them to disk.
 *  - Report errors by returning a CUSTODY_PLUGIN_* code and writing a NUL-terminated message of
 *    at most err_len bytes into err. Messages must not contain model bytes.
 *  - Tensors are dense, C-order (row-major), little-endian host layout.
 *  - Unless `flags` has CUSTODY_PLUGIN_FLAG_THREAD_SAFE_RUN, the host never calls run() on one
 *    instance from two threads at once. Different instances may be used concurrently.
 *
 * Versioning: this is version 1. A later, incompatible ABI exports custody_engine_plugin_v2_get
 * with its own struct; compatible additions append fields to the end of the struct and are
 * detected by struct_size. Codes and enum values below never change meaning.
 */
#ifndef CUSTODY_ENGINE_PLUGIN_H_
#define CUSTODY_ENGINE_PLUGIN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CUSTODY_ENGINE_PLUGIN_ABI_VERSION 1u

#if defined(__GNUC__)
#define CUSTODY_ENGINE_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define CUSTODY_ENGINE_PLUGIN_EXPORT
#endif

/* Status codes returned by create() and run(). */
#define CUSTODY_PLUGIN_OK 0
#define CUSTODY_PLUGIN_INVALID_ARGUMENT 1   /* the model or the inputs are malformed */
#define CUSTODY_PLUGIN_RESOURCE_EXHAUSTED 2 /* out of memory or another limit */
#define CUSTODY_PLUGIN_UNIMPLEMENTED 3      /* a feature, dtype or operator not supported */
#define CUSTODY_PLUGIN_INTERNAL 4           /* anything else */

/* Element types (int32_t values in the structs below). */
#define CUSTODY_DTYPE_UNKNOWN 0 /* only in custody_tensor_spec */
#define CUSTODY_DTYPE_FLOAT32 1
#define CUSTODY_DTYPE_FLOAT64 2
#define CUSTODY_DTYPE_FLOAT16 3
#define CUSTODY_DTYPE_INT64 4
#define CUSTODY_DTYPE_INT32 5
#define CUSTODY_DTYPE_INT8 6
#define CUSTODY_DTYPE_UINT8 7
#define CUSTODY_DTYPE_BOOL 8

/* The largest rank the host accepts from a plugin. */
#define CUSTODY_MAX_RANK 32

/* Bits of custody_engine_plugin_v1.flags. */
#define CUSTODY_PLUGIN_FLAG_THREAD_SAFE_RUN 1u /* run() may be called concurrently */

/* A tensor passed to or returned from run(). */
typedef struct custody_tensor {
  const char* name;     /* NUL-terminated; may be NULL or "" for outputs (host names them) */
  int32_t dtype;        /* CUSTODY_DTYPE_* (never UNKNOWN) */
  uint32_t rank;        /* number of dimensions, <= CUSTODY_MAX_RANK; 0 = scalar */
  const int64_t* shape; /* rank entries, each >= 0 (may be NULL when rank == 0) */
  const void* data;     /* byte_size bytes (may be NULL when byte_size == 0) */
  uint64_t byte_size;   /* must equal product(shape) * element size */
} custody_tensor;

/* What an instance knows about one input or output. */
typedef struct custody_tensor_spec {
  const char* name;     /* NUL-terminated, may be "" */
  int32_t dtype;        /* CUSTODY_DTYPE_*, or CUSTODY_DTYPE_UNKNOWN */
  int32_t rank;         /* -1 = unknown */
  const int64_t* shape; /* rank entries; -1 = dynamic dimension */
} custody_tensor_spec;

/* Services the host offers to an instance. Valid until destroy(). */
typedef struct custody_engine_host_v1 {
  uint32_t struct_size; /* sizeof(custody_engine_host_v1) as the host compiled it */
  int32_t threads;      /* intra-op threads the operator asked for; 0 = plugin default */
  /* Zeroed, 64-byte-aligned memory that is mlocked and excluded from core dumps where the OS
   * allows (the host reports when it could not), and wiped on free. Returns NULL on failure.
   * Thread-safe. */
  void* (*alloc_protected)(void* host_ctx, size_t size);
  /* Wipes and frees memory from alloc_protected. NULL is a no-op. Thread-safe. */
  void (*free_protected)(void* host_ctx, void* ptr);
  void* host_ctx;
} custody_engine_host_v1;

/* An engine instance; opaque to the host. */
typedef struct custody_engine_instance custody_engine_instance;

typedef struct custody_engine_plugin_v1 {
  uint32_t abi_version; /* CUSTODY_ENGINE_PLUGIN_ABI_VERSION */
  uint32_t struct_size; /* sizeof(custody_engine_plugin_v1) as the plugin compiled it */
  const char* kind;     /* must equal <kind> in the file name */
  const char* version;  /* the plugin's own version, for logs */
  uint32_t flags;       /* CUSTODY_PLUGIN_FLAG_* */

  /* Parses `model` (model_len bytes, valid only during the call) and returns an instance in
   * *out. On failure returns a code != OK, leaves *out NULL and writes a message into err. */
  int32_t (*create)(const custody_engine_host_v1* host, const uint8_t* model, size_t model_len,
                    custody_engine_instance** out, char* err, size_t err_len);

  /* Points *inputs and *outputs at arrays of specs owned by the instance, valid until destroy().
   * Counts may be 0 when unknown. Returns CUSTODY_PLUGIN_OK or an error code. */
  int32_t (*describe)(const custody_engine_instance* instance, const custody_tensor_spec** inputs,
                      size_t* n_inputs, const custody_tensor_spec** outputs, size_t* n_outputs);

  /* Runs one inference. The host has already checked the inputs against describe(). On success
   * sets *outputs to an array of *n_outputs tensors owned by the plugin, valid until the host
   * passes them to free_outputs(). On failure returns a code != OK and writes a message. */
  int32_t (*run)(custody_engine_instance* instance, const custody_tensor* inputs, size_t n_inputs,
                 custody_tensor** outputs, size_t* n_outputs, char* err, size_t err_len);

  /* Releases what run() returned. */
  void (*free_outputs)(custody_engine_instance* instance, custody_tensor* outputs,
                       size_t n_outputs);

  /* Destroys the instance, wiping any weights it holds. */
  void (*destroy)(custody_engine_instance* instance);

  /* Optional (may be NULL): a short, NUL-terminated description of where the instance keeps
   * its weights, valid until destroy(). Sets *weights_protected to 1 only if every copy of the
   * weights the plugin holds is in memory from alloc_protected. */
  const char* (*describe_protection)(const custody_engine_instance* instance,
                                     int32_t* weights_protected);
} custody_engine_plugin_v1;

/* The one exported entry point. Returns a pointer to a table with static storage duration. */
typedef const custody_engine_plugin_v1* (*custody_engine_plugin_v1_get_fn)(void);
#define CUSTODY_ENGINE_PLUGIN_V1_SYMBOL "custody_engine_plugin_v1_get"

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CUSTODY_ENGINE_PLUGIN_H_ */
