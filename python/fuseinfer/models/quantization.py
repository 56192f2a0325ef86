"""How a model's linear weights are quantized, read from config.json's `quantization_config`
(or asked for with `--quantization fp8`).

The one scheme supported is FP8 e4m3 with one float32 scale per 128 x 128 weight block
(`weight_scale_inv`) and dynamic per-token 1 x 128 activation scales: the layout of
DeepSeek-V3 and the Qwen3 FP8 checkpoints, and what `fp8_blockwise_mm` computes. Anything
else is refused here, once, with the field that is wrong in the message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BLOCK = 128  # the weight block edge and the activation group size fp8_blockwise_mm takes


@dataclass(frozen=True)
class Fp8BlockConfig:
    """FP8 block quantization: 128 x 128 weight blocks, dynamic 1 x 128 activation groups.
    Linear layers whose module name contains an entry of `modules_to_not_convert` stay in
    the model dtype (embeddings, norms and lm_head always do)."""

    modules_to_not_convert: tuple[str, ...] = ()

    def converts(self, module: str) -> bool:
        """Whether the linear layer `module` (e.g. model.layers.0.mlp.down_proj) is FP8."""
        return not any(skip and skip in module for skip in self.modules_to_not_convert)


def _fail(field: str, message: str) -> None:
    raise ValueError(f"quantization_config.{field}: {message}")


def fp8_config_from_dict(cfg: Mapping[str, Any]) -> Fp8BlockConfig:
    """Validate a Hugging Face `quantization_config`; ValueError naming the bad field."""
    method = cfg.get("quant_method")
    if method != "fp8":
        _fail("quant_method", f"{method!r} is not supported; supported: 'fp8' (128 x 128 "
              "block-quantized e4m3 weights)")
    block = cfg.get("weight_block_size")
    if block is None or list(block) != [BLOCK, BLOCK]:
        _fail("weight_block_size", f"{block!r} is not supported; fp8 checkpoints need "
              f"[{BLOCK}, {BLOCK}] (per-tensor FP8 is not built)")
    scheme = cfg.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        _fail("activation_scheme", f"{scheme!r} is not supported; only 'dynamic' "
              "(per-token 1 x 128 scales computed at run time)")
    fmt = cfg.get("fmt", "e4m3")
    if fmt != "e4m3":
        _fail("fmt", f"{fmt!r} is not supported; only 'e4m3'")
    skip = cfg.get("modules_to_not_convert") or ()
    if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
        _fail("modules_to_not_convert", f"must be a list of module names, got {skip!r}")
    return Fp8BlockConfig(modules_to_not_convert=tuple(skip))


def quantization_from_dict(cfg: Mapping[str, Any]) -> Fp8BlockConfig | None:
    """The checkpoint's quantization (None: unquantized)."""
    qcfg = cfg.get("quantization_config")
    if qcfg is None:
        return None
    if not isinstance(qcfg, Mapping):
        raise ValueError(f"quantization_config: must be an object, got {qcfg!r}")
    return fp8_config_from_dict(qcfg)
