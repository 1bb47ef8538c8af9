// NumPy .npy files <-> Tensor, for inputs and outputs of the CLI and tests.
//
// Format (numpy.lib.format, versions 1.0, 2.0 and 3.0):
//   "\x93NUMPY" major minor
//   header length: uint16 little-endian (v1) or uint32 little-endian (v2, v3)
//   header: a Python dict literal, ASCII (v1, v2) or UTF-8 (v3), e.g.
//           {'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 224, 224), }
//           padded with spaces and ending in '\n'
//   data:   the elements in C order, exactly product(shape) * itemsize bytes
//
// Supported dtypes: '<f4' float32, '<f8' float64, '<f2' float16, '<i8' int64, '<i4' int32,
// '|i1' int8, '|u1' uint8, '|b1' bool ('<' and '|' are accepted for one-byte types). Big-endian
// dtypes, Fortran order, structured or object dtypes are rejected with a clear error.
//
// ParseNpy reads untrusted files: every length is bounds-checked, the header is parsed by a small
// grammar (never evaluated), the header is at most kMaxNpyHeaderBytes, and the data size must
// match the shape exactly (trailing bytes are an error). It never crashes or over-reads.
#pragma once

#include "core/base/bytes.h"
#include "core/base/status.h"
#include "engine/engine.h"

namespace custody::engine {

inline constexpr size_t kMaxNpyHeaderBytes = 100000;

// kInvalidArgument for a malformed file, kUnimplemented for a valid .npy this does not support
// (big-endian, Fortran order, other dtypes). The tensor's name is empty.
Result<Tensor> ParseNpy(ByteSpan file);

// Writes version 1.0 (or 2.0 if the header needs it) with the header padded to a multiple of
// 64 bytes, as numpy.save does. The tensor must be valid (Tensor::Validate); an invalid tensor is
// a programming error and aborts.
Bytes SerializeNpy(const Tensor& tensor);

}  // namespace custody::engine
