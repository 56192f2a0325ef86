// Launch shapes for the norm kernels, pushed from the dispatch table in Python
// (fuseinfer.ops.norm) once per device when the module loads. Rules are tried in order;
// the first whose bounds hold is used. Nothing here knows which GPU it runs on.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace fuseinfer::norm {

enum class NormKind : int { kRmsnorm = 0, kFusedAdd = 1 };

struct LaunchRule {
  NormKind kind;       // rules apply to one kind of op: they move different bytes per row
  int64_t max_hidden;  // -1: unbounded
  int64_t max_tokens;  // -1: unbounded
  int threads_per_row;
  int rows_per_block;
};

struct LaunchTable {
  std::vector<LaunchRule> rules;
  bool enable_pdl = false;
};

constexpr int kMaxDevices = 64;

// One immutable table per device, swapped atomically so launches never take a lock.
inline std::shared_ptr<const LaunchTable>& table_slot(int device) {
  static std::shared_ptr<const LaunchTable> slots[kMaxDevices];
  return slots[device];
}

inline std::shared_ptr<const LaunchTable> get_table(int device) {
  if (device < 0 || device >= kMaxDevices) return nullptr;
  return std::atomic_load(&table_slot(device));
}

inline void set_table(int device, std::shared_ptr<const LaunchTable> table) {
  std::atomic_store(&table_slot(device), std::move(table));
}

}  // namespace fuseinfer::norm
