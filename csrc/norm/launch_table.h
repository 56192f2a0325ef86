// Launch shapes for the norm kernels, pushed from the dispatch table in Python
// (fuseinfer.ops.norm) once per device when the module loads. Rules are tried in order;
// the first whose bounds hold is used. Nothing here knows which GPU it runs on.
#pragma once

#include <cstdint>

#include "launch_rules.h"

namespace fuseinfer::norm {

enum class NormKind : int { kRmsnorm = 0, kFusedAdd = 1 };

struct LaunchRule {
  NormKind kind;       // rules apply to one kind of op: they move different bytes per row
  int64_t max_hidden;  // -1: unbounded
  int64_t max_tokens;  // -1: unbounded
  int threads_per_row;
  int rows_per_block;
};

using LaunchTable = RuleTable<LaunchRule>;

inline DeviceTables<LaunchRule>& tables() {
  static DeviceTables<LaunchRule> instance;
  return instance;
}

}  // namespace fuseinfer::norm
