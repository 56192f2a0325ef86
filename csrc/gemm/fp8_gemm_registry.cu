// The configurations this module was built with (each registers itself when loaded).
#include "config_registry.h"
#include "fp8_gemm_args.h"

namespace fuseinfer::gemm {

using Registry = ConfigRegistry<Fp8GemmConfig>;

void register_fp8_gemm_config(Fp8GemmConfig config) { Registry::add(std::move(config)); }
const Fp8GemmConfig* find_fp8_gemm_config(const std::string& name) { return Registry::find(name); }
std::vector<std::string> fp8_gemm_config_names() { return Registry::names(); }

}  // namespace fuseinfer::gemm
