// Host-side decisions every launcher makes the same way: whether to launch with PDL, and
// whether a pointer allows 16-byte vector access.
#pragma once

#include <cstdint>
#include <optional>

#include "device_info.h"
#include "torch_checks.h"

namespace fuseinfer {

// enable_pdl=None: on for compute capability 9.0+ unless the dispatch table turns it off;
// True on an older GPU is an error naming the argument.
inline bool resolve_pdl(std::optional<bool> enable_pdl, bool table_allows, int device,
                        const char* op) {
  const int cc = compute_capability(device);
  const bool supported = cc >= 90;
  if (enable_pdl.has_value()) {
    FUSEINFER_CHECK_ARG(!*enable_pdl || supported, op, "enable_pdl",
                        "must be False or None on this GPU: PDL needs compute capability 9.0 "
                        "or newer, this GPU is ", cc / 10, ".", cc % 10);
    return *enable_pdl;
  }
  return supported && table_allows;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace fuseinfer
