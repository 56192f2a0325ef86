// The configurations this module was built with (each registers itself when loaded).
#include <map>
#include <mutex>

#include "fp8_gemm_args.h"

namespace fuseinfer::gemm {
namespace {

std::map<std::string, Fp8GemmConfig>& configs() {
  static std::map<std::string, Fp8GemmConfig> table;
  return table;
}

std::mutex& configs_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace

void register_fp8_gemm_config(Fp8GemmConfig config) {
  std::lock_guard<std::mutex> lock(configs_mutex());
  std::string name = config.name;
  configs()[name] = std::move(config);
}

const Fp8GemmConfig* find_fp8_gemm_config(const std::string& name) {
  std::lock_guard<std::mutex> lock(configs_mutex());
  auto it = configs().find(name);
  return it == configs().end() ? nullptr : &it->second;
}

std::vector<std::string> fp8_gemm_config_names() {
  std::lock_guard<std::mutex> lock(configs_mutex());
  std::vector<std::string> names;
  for (const auto& entry : configs()) names.push_back(entry.first);
  return names;
}

}  // namespace fuseinfer::gemm
