"""A trimmed build of FlashInfer's Hopper fused-MoE module (cutlass_fused_moe on sm_90a).

FlashInfer's own `fused_moe_90` compiles 248 translation units (45-60 min on the lent GPU
machine's 16 cores). The bench compares only bf16 x bf16 and bf16 x fp8 (DeepSeek 128 x 128
block scales), so this module builds its own JitSpec with only:
  - the generated CUTLASS files holding a bf16 x bf16 instantiation (Sm90 TMA grouped, not
    the mixed-input ones; and the Sm80 fallback launchers),
  - moe_gemm_kernels_bf16_bf16.cu, moe_gemm_kernels_bf16_fp8.cu, fp8_blockscale_gemm.cu,
    deepgemm_jit_setup.cu and the common sources,
  - edited copies of the instantiation file (only CutlassMoeFCRunner<bf16, bf16> and
    <bf16, fp8, bf16>) and of the binding (its constructor's other type branches removed),
written into FlashInfer's generated-source folder at run time. The edits are string
replacements that assert their anchor text, so another FlashInfer version fails loudly
rather than building something else. Nothing here imports flashinfer at module level:
microbench/flashinfer_bundle.py loads this file by path to list the module's sources.
"""

from __future__ import annotations

import re
from pathlib import Path

MODULE_NAME = "fused_moe_90_fuseinfer_bf16_fp8block"
ARCH = "90"
# Under FlashInfer's csrc/ (the stock list minus the other weight types' runners)
SOURCES = (
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/"
    "moe_gemm_tma_warp_specialized_input.cu",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_gemm_kernels_bf16_bf16.cu",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_gemm_kernels_bf16_fp8.cu",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/fp8_blockscale_gemm/fp8_blockscale_gemm.cu",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_gemm_mixed_utils.cu",
    "fused_moe/cutlass_backend/deepgemm_jit_setup.cu",
    "nv_internal/cpp/common/envUtils.cpp",
    "nv_internal/cpp/common/logger.cpp",
    "nv_internal/cpp/common/stringUtils.cpp",
    "nv_internal/cpp/common/tllmException.cpp",
    "nv_internal/cpp/common/memoryUtils.cu",
    "nv_internal/tensorrt_llm/kernels/preQuantScaleKernel.cu",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/cutlass_heuristic.cpp",
    "nv_internal/tensorrt_llm/kernels/lora/lora.cpp",
)
BACKEND_DIR = "fused_moe/cutlass_backend"
INSTANTIATION = f"{BACKEND_DIR}/cutlass_fused_moe_instantiation.cu"
BINDING = f"{BACKEND_DIR}/flashinfer_cutlass_fused_moe_binding.cu"
INCLUDE_DIRS = (
    "nv_internal", "nv_internal/include", "nv_internal/tensorrt_llm/cutlass_extensions/include",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels/include",
    "nv_internal/tensorrt_llm/kernels/cutlass_kernels",
    BACKEND_DIR,  # the edited copies include "cutlass_fused_moe_kernels.cuh" from here
)
# the flags of FlashInfer's gen_cutlass_fused_moe_sm90_module (CUDA >= 12.8)
NVCC_FLAGS = (
    "-DCOMPILE_HOPPER_TMA_GEMMS", "-DCOMPILE_HOPPER_TMA_GROUPED_GEMMS", "-DENABLE_BF16",
    "-DENABLE_FP8", "-DENABLE_FP8_BLOCK_SCALE", "-DENABLE_FP4", "-DUSING_OSS_CUTLASS_MOE_GEMM",
    "-DCUTLASS_ENABLE_GDC_FOR_SM90=1", "-DCUTLASS_MIXED_GEMM_FP4_FP8_PREPROCESSED_SIGNS=1",
)

KEPT_RUNNERS = (
    "template class CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>;",
    "template class CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3, __nv_bfloat16>;",
)
INSTANTIATION_NAMESPACE = "namespace tensorrt_llm::kernels::cutlass_kernels {"

BINDING_BEGIN = "    // keep consistent with cpp/tensorrt_llm/plugins/mixtureOfExperts/"
BINDING_END = "    if (!mKernelRunner) {"
BINDING_BF16 = ("mKernelRunner = std::make_shared<kernels::CutlassMoeFCRunner<__nv_bfloat16, "
                "__nv_bfloat16>>();")
BINDING_FP8 = ("mKernelRunner = std::make_unique<kernels::CutlassMoeFCRunner<__nv_bfloat16, "
               "__nv_fp8_e4m3>>();")
BINDING_TRIMMED = f"""    // fuseinfer: trimmed to the bf16 x bf16 and bf16 x fp8 (block) runners
    if (mActivationDtype == dl_bfloat16 && mWeightDtype == dl_bfloat16) {{
      {BINDING_BF16}
    }} else if (mActivationDtype == dl_bfloat16 && mWeightDtype == dl_float8_e4m3fn) {{
      {BINDING_FP8}
    }}
"""

# a generated file is kept when it instantiates a bf16 x bf16 kernel: the Sm90 TMA grouped
# GEMM (non-mixed) or the Sm80 fused-MoE launcher
_SM90_BF16 = re.compile(r"INSTANTIATE_TMA_WARP_SPECIALIZED_MOE_GEMM\(\s*Sm90,\s*__nv_bfloat16,"
                        r"\s*__nv_bfloat16,")
_SM80_BF16 = re.compile(r"sm80_generic_fused_moe_gemm_kernelLauncher<\s*cutlass::bfloat16_t,"
                        r"\s*cutlass::bfloat16_t,")


def _require(text: str, anchor: str, what: str) -> None:
    if anchor not in text:
        raise RuntimeError(f"flashinfer MoE trim: the {what} lacks {anchor!r}; this "
                           "FlashInfer version differs from 0.7.2.post1, update "
                           "bench/flashinfer_moe_build.py")


def patch_instantiation(text: str) -> str:
    """Keep only the bf16 x bf16 and bf16 x fp8 -> bf16 CutlassMoeFCRunner instantiations."""
    _require(text, INSTANTIATION_NAMESPACE, "instantiation file")
    for runner in KEPT_RUNNERS:
        _require(text, runner, "instantiation file")
    head = text[: text.index(INSTANTIATION_NAMESPACE)]
    body = "\n".join(("#ifdef ENABLE_BF16", *KEPT_RUNNERS, "#endif"))
    return (f"{head}{INSTANTIATION_NAMESPACE}\n// fuseinfer: trimmed to the bf16 runners\n"
            f"{body}\n}}  // namespace tensorrt_llm::kernels::cutlass_kernels\n")


def patch_binding(text: str) -> str:
    """FusedMoeRunner's constructor builds only the kept runners (the others are not
    instantiated); any other type combination ends in its 'Could not construct' check."""
    for anchor in (BINDING_BEGIN, BINDING_END, BINDING_BF16, BINDING_FP8):
        _require(text, anchor, "binding")
    if text.count(BINDING_BEGIN) != 1:
        raise RuntimeError("flashinfer MoE trim: the binding's constructor anchor is not unique")
    start = text.index(BINDING_BEGIN)
    end = text.index(BINDING_END, start)
    return text[:start] + BINDING_TRIMMED + text[end:]


def keep_generated(text: str) -> bool:
    return bool(_SM90_BF16.search(text) or _SM80_BF16.search(text))


def generated_sources(folder: Path) -> list[Path]:
    """The kept generated CUTLASS files under `folder`, sorted."""
    return sorted(p for p in folder.rglob("*.generated.cu")
                  if "Mixed" not in p.name and keep_generated(p.read_text()))


def trimmed_spec():
    """FlashInfer's JitSpec of the trimmed module: generates the CUTLASS instantiation
    files (as FlashInfer does, into its generated-source folder), writes the edited
    instantiation and binding beside them, and lists only the kept sources."""
    from flashinfer.jit import env as jit_env
    from flashinfer.jit.core import gen_jit_spec, sm90a_nvcc_flags
    from flashinfer.jit.gemm.cutlass.generate_kernels import generate_gemm_operations

    csrc = Path(jit_env.FLASHINFER_CSRC_DIR)
    gen = Path(jit_env.FLASHINFER_GEN_SRC_DIR) / f"cutlass_instantiations/{ARCH}"
    gen.mkdir(parents=True, exist_ok=True)
    generate_gemm_operations(gen, f"{ARCH};{ARCH}-real")
    edited = Path(jit_env.FLASHINFER_GEN_SRC_DIR) / MODULE_NAME
    edited.mkdir(parents=True, exist_ok=True)
    patched = []
    for rel, patch in ((INSTANTIATION, patch_instantiation), (BINDING, patch_binding)):
        target = edited / Path(rel).name
        text = patch((csrc / rel).read_text())
        if not target.is_file() or target.read_text() != text:  # keep mtimes for ninja
            target.write_text(text)
        patched.append(target)
    sources = [csrc / s for s in SOURCES] + patched + generated_sources(gen)
    return gen_jit_spec(
        MODULE_NAME, sources,
        extra_cuda_cflags=list(sm90a_nvcc_flags) + list(NVCC_FLAGS),
        extra_ldflags=["-lnvrtc"],
        extra_include_paths=[csrc / d for d in INCLUDE_DIRS] + [gen])


def install() -> None:
    """Make flashinfer.fused_moe.cutlass_fused_moe load the trimmed module on SM90
    (instead of building the stock 248-unit fused_moe_90)."""
    from flashinfer.fused_moe import core

    if getattr(core, "_fuseinfer_trimmed", False):
        return
    if not hasattr(core, "gen_cutlass_fused_moe_sm90_module"):
        raise RuntimeError("flashinfer.fused_moe.core has no gen_cutlass_fused_moe_sm90_module "
                           "(FlashInfer version differs from 0.7.2.post1)")
    core.gen_cutlass_fused_moe_sm90_module = lambda use_fast_build=False: trimmed_spec()
    core.get_cutlass_fused_moe_module.cache_clear()
    core._fuseinfer_trimmed = True
