// The grouped GEMM configurations this module was built with (each registers itself when
// loaded).
#include "config_registry.h"
#include "fp8_grouped_args.h"

namespace fuseinfer::moe {

using Registry = ConfigRegistry<Fp8GroupedConfig>;

void register_fp8_grouped_config(Fp8GroupedConfig config) { Registry::add(std::move(config)); }
const Fp8GroupedConfig* find_fp8_grouped_config(const std::string& name) {
  return Registry::find(name);
}
std::vector<std::string> fp8_grouped_config_names() { return Registry::names(); }

}  // namespace fuseinfer::moe
