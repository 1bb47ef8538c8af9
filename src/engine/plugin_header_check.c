/* Compiles custody_engine_plugin.h as C99 with -Wpedantic -Werror, so the plugin ABI header
 * stays usable from C. Nothing here runs. */
#include "engine/custody_engine_plugin.h"

typedef char custody_check_tensor_is_plain_data[sizeof(custody_tensor) >= 32 ? 1 : -1];

const custody_engine_plugin_v1* custody_engine_plugin_header_check(void);
const custody_engine_plugin_v1* custody_engine_plugin_header_check(void) {
  static const custody_engine_plugin_v1 table = {CUSTODY_ENGINE_PLUGIN_ABI_VERSION,
                                                 sizeof(custody_engine_plugin_v1),
                                                 "check",
                                                 "0",
                                                 0u,
                                                 NULL,
                                                 NULL,
                                                 NULL,
                                                 NULL,
                                                 NULL,
                                                 NULL};
  return &table;
}
