// Per-device launch rules pushed from the dispatch tables in Python, one immutable table
// per device swapped atomically (launches never take a lock). Rules are tried in order;
// the first whose max_tokens holds (-1: unbounded) is used.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace fuseinfer {

template <typename Rule>
struct RuleTable {
  std::vector<Rule> rules;
  bool enable_pdl = false;

  const Rule* pick(int64_t tokens) const {
    for (const Rule& rule : rules) {
      if (rule.max_tokens < 0 || tokens <= rule.max_tokens) return &rule;
    }
    return nullptr;
  }
};

template <typename Rule>
class DeviceTables {
 public:
  static constexpr int kMaxDevices = 64;

  std::shared_ptr<const RuleTable<Rule>> get(int device) const {
    if (device < 0 || device >= kMaxDevices) return nullptr;
    return std::atomic_load(&slots_[device]);
  }
  void set(int device, std::shared_ptr<const RuleTable<Rule>> table) {
    std::atomic_store(&slots_[device], std::move(table));
  }

 private:
  std::shared_ptr<const RuleTable<Rule>> slots_[kMaxDevices];
};

}  // namespace fuseinfer
