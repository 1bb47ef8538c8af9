// Owning pointers for tpm2-tss objects. One header, one deleter per kind (STYLE.md), so nothing
// from tss2 is ever freed by hand.
#pragma once

#include <tss2/tss2_esys.h>
#include <tss2/tss2_tctildr.h>

#include <memory>

namespace custody::tpm {

struct TctiDeleter {
  void operator()(TSS2_TCTI_CONTEXT* tcti) const { Tss2_TctiLdr_Finalize(&tcti); }
};
using TctiPtr = std::unique_ptr<TSS2_TCTI_CONTEXT, TctiDeleter>;

struct EsysDeleter {
  void operator()(ESYS_CONTEXT* esys) const { Esys_Finalize(&esys); }
};
using EsysPtr = std::unique_ptr<ESYS_CONTEXT, EsysDeleter>;

// Memory that ESAPI allocated for an output parameter (freed with Esys_Free).
struct EsysFreeDeleter {
  void operator()(void* p) const { Esys_Free(p); }
};
template <typename T>
using EsysOut = std::unique_ptr<T, EsysFreeDeleter>;

}  // namespace custody::tpm
