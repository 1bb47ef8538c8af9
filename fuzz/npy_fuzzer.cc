// libFuzzer target for the .npy reader (src/engine/npy.h), which parses untrusted input files.
//
// Beyond "no crash, no sanitizer report": whatever ParseNpy accepts must be a valid tensor that
// SerializeNpy can write (it aborts otherwise), and writing then reading it again must give the
// same dtype, shape and data.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "engine/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace custody;
  auto tensor = engine::ParseNpy(ByteSpan(data, size));
  if (!tensor) return 0;
  Bytes again = engine::SerializeNpy(*tensor);
  auto round_trip = engine::ParseNpy(again);
  if (!round_trip || round_trip->dtype != tensor->dtype || round_trip->shape != tensor->shape ||
      round_trip->data != tensor->data) {
    std::abort();
  }
  return 0;
}
