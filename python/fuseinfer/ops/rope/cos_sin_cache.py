"""RoPE cos/sin cache: turns a Hugging Face config into the table the RoPE kernels read.

    cos_sin_cache  float32 [max_position, rotary_dim]
    row p          [cos(p * inv_freq) * m, sin(p * inv_freq) * m]

inv_freq has rotary_dim // 2 entries; m is the attention scaling (1 except for YaRN, where
transformers and vLLM fold it into cos and sin). The first half of a row is cos, the second
half sin, whatever pairing (NeoX halves or interleaved) the kernel rotates. Scalings:
"default", "llama3" (Llama 3.1 wavelength bands) and "yarn" (including DeepSeek-V3's
mscale/mscale_all_dim and GPT-OSS's untruncated correction range), with the semantics of
transformers' modeling_rope_utils. Everything is computed in float64 and rounded once to
float32, so every entry is the float32 rounding of the exact value, at any position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

_SUPPORTED = ("default", "llama3", "yarn")


def _real(value: Any, field: str) -> float:
    # bool is an int subclass; a config saying `factor: true` is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} must be a number, got {value!r}")
    return float(value)


def _positive(value: Any, field: str) -> float:
    number = _real(value, field)
    if not number > 0:  # also rejects NaN
        raise ValueError(f"{field} must be > 0, got {value!r}")
    return number


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class DefaultScaling:
    """Plain RoPE: inv_freq[i] = base ** (-2i / rotary_dim)."""

    kind: ClassVar[str] = "default"


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1: wavelengths above original/low_freq_factor are divided by `factor`, those
    below original/high_freq_factor kept, the band between blended smoothly."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    kind: ClassVar[str] = "llama3"

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            object.__setattr__(self, name, _positive(getattr(self, name), name))
        _positive_int(self.original_max_position_embeddings, "original_max_position_embeddings")
        if self.high_freq_factor <= self.low_freq_factor:
            # The blend divides by their difference; equal or inverted bands have no meaning.
            raise ValueError(f"high_freq_factor ({self.high_freq_factor}) must be greater than "
                             f"low_freq_factor ({self.low_freq_factor})")


@dataclass(frozen=True)
class YarnScaling:
    """YaRN: dimensions that turn more than beta_fast times over the original context are kept,
    fewer than beta_slow times divided by `factor`, with a linear ramp (over the dimension
    index) between. attention_factor, when None, is derived from factor, mscale and
    mscale_all_dim; None/0 for mscale or mscale_all_dim means "absent", as in transformers.
    truncate=True rounds the ramp ends outward to whole dimensions; GPT-OSS sets False."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    kind: ClassVar[str] = "yarn"

    def __post_init__(self) -> None:
        for name in ("factor", "beta_fast", "beta_slow"):
            object.__setattr__(self, name, _positive(getattr(self, name), name))
        _positive_int(self.original_max_position_embeddings, "original_max_position_embeddings")
        if self.beta_fast < self.beta_slow:
            raise ValueError(f"beta_fast ({self.beta_fast}) must be >= beta_slow "
                             f"({self.beta_slow})")
        for name in ("mscale", "mscale_all_dim"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _real(getattr(self, name), name))
        if self.attention_factor is not None:
            object.__setattr__(self, "attention_factor",
                               _positive(self.attention_factor, "attention_factor"))


RopeScaling = DefaultScaling | Llama3Scaling | YarnScaling


@dataclass(frozen=True)
class RopeSpec:
    """What the cache depends on. head_dim is the width RoPE works within (for MLA models the
    rope part, qk_rope_head_dim); rotary_dim <= head_dim is the rotated prefix; base is
    rope_theta; max_position the number of cache rows."""

    head_dim: int
    rotary_dim: int
    base: float
    max_position: int
    scaling: RopeScaling = DefaultScaling()

    def __post_init__(self) -> None:
        _positive_int(self.head_dim, "head_dim")
        _positive_int(self.rotary_dim, "rotary_dim")
        if self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even, got {self.rotary_dim}")
        if self.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim ({self.rotary_dim}) must be <= head_dim "
                             f"({self.head_dim})")
        # YaRN divides by log(base); a base <= 1 is no rotary embedding at all.
        object.__setattr__(self, "base", _real(self.base, "base"))
        if not self.base > 1.0:
            raise ValueError(f"base (rope_theta) must be > 1, got {self.base!r}")
        _positive_int(self.max_position, "max_position")
        if not isinstance(self.scaling, (DefaultScaling, Llama3Scaling, YarnScaling)):
            raise ValueError(f"scaling must be DefaultScaling, Llama3Scaling or YarnScaling, "
                             f"got {type(self.scaling).__name__}")


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def attention_scaling(spec: RopeSpec) -> float:
    """The factor cos and sin are multiplied by: 1.0 unless YaRN."""
    s = spec.scaling
    if not isinstance(s, YarnScaling):
        return 1.0
    if s.attention_factor is not None:
        return float(s.attention_factor)
    if s.mscale and s.mscale_all_dim:
        # DeepSeek: the model also multiplies its softmax scale by mscale(mscale_all_dim)**2.
        return _yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim)
    return _yarn_mscale(s.factor)


def _yarn_inv_freq(freqs: torch.Tensor, s: YarnScaling, dim: int, base: float) -> torch.Tensor:
    def dim_for(rotations: float) -> float:
        # Dimension index whose wavelength fits `rotations` times in the original context.
        ratio = s.original_max_position_embeddings / (rotations * 2 * math.pi)
        return dim * math.log(ratio) / (2 * math.log(base))

    low, high = dim_for(s.beta_fast), dim_for(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    index = torch.arange(dim // 2, dtype=torch.float64)
    ramp = ((index - low) / (high - low)).clamp(0, 1)  # 0: keep, 1: divide by factor
    return freqs * (1 - ramp) + (freqs / s.factor) * ramp


def _llama3_inv_freq(freqs: torch.Tensor, s: Llama3Scaling) -> torch.Tensor:
    original = s.original_max_position_embeddings
    wavelen = 2 * math.pi / freqs
    long_wave = wavelen > original / s.low_freq_factor
    short_wave = wavelen < original / s.high_freq_factor
    smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * freqs / s.factor + smooth * freqs
    return torch.where(long_wave, freqs / s.factor, torch.where(short_wave, freqs, blended))


def inv_freq(spec: RopeSpec) -> torch.Tensor:
    """float64 [rotary_dim // 2] on the CPU: the per-pair angular frequencies, scaling applied."""
    dim = spec.rotary_dim
    freqs = 1.0 / spec.base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    if isinstance(spec.scaling, Llama3Scaling):
        return _llama3_inv_freq(freqs, spec.scaling)
    if isinstance(spec.scaling, YarnScaling):
        return _yarn_inv_freq(freqs, spec.scaling, dim, spec.base)
    return freqs


def build_cos_sin_cache(spec: RopeSpec, device: torch.device | str | None = None
                        ) -> torch.Tensor:
    """float32 [max_position, rotary_dim]: cos in the first half of each row, sin in the second,
    both times attention_scaling(spec). Built on the CPU in float64, then moved to `device`."""
    freqs = inv_freq(spec)
    half = freqs.numel()
    angles = torch.outer(torch.arange(spec.max_position, dtype=torch.float64), freqs)
    table = torch.empty(spec.max_position, 2 * half, dtype=torch.float64)
    torch.cos(angles, out=table[:, :half])
    torch.sin(angles, out=table[:, half:])
    scale = attention_scaling(spec)
    if scale != 1.0:
        table.mul_(scale)
    cache = table.to(torch.float32)
    return cache if device is None else cache.to(device)


def _rope_dict(config: Mapping, layer_type: str | None) -> tuple[Mapping, str]:
    # transformers takes rope_scaling over rope_parameters when both are set.
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if params:
            break
    else:
        return {}, "rope_parameters"
    if not isinstance(params, Mapping):
        raise ValueError(f"{key} must be a dict, got {params!r}")
    if all(isinstance(v, Mapping) for v in params.values()):
        # One dict per layer type (e.g. sliding vs full attention).
        if layer_type not in params:
            raise ValueError(f"{key} is given per layer type {sorted(params)}; pass layer_type= "
                             f"one of them (got {layer_type!r})")
        return params[layer_type], f"{key}[{layer_type!r}]"
    return params, key


def _head_dim(config: Mapping) -> int:
    # MLA (DeepSeek) rotates only the qk_rope_head_dim part; transformers sets head_dim to it.
    for key in ("qk_rope_head_dim", "head_dim"):
        if config.get(key) is not None:
            return _positive_int(config[key], key)
    if config.get("hidden_size") is None or config.get("num_attention_heads") is None:
        raise ValueError("head_dim: config has no qk_rope_head_dim, head_dim, or hidden_size "
                         "with num_attention_heads")
    hidden = _positive_int(config["hidden_size"], "hidden_size")
    return hidden // _positive_int(config["num_attention_heads"], "num_attention_heads")


def _required(params: Mapping, key: str, kind: str) -> Any:
    if params.get(key) is None:
        raise ValueError(f"{key} is required for rope_type {kind!r} and is missing")
    return params[key]


def rope_scaling_from_config(config: Mapping, *, layer_type: str | None = None,
                             default_theta: float | None = None) -> RopeSpec:
    """The RopeSpec of a Hugging Face config dict (config.json as loaded by json).

    Reads rope_scaling or rope_parameters (rope_type, or the older `type`), rope_theta (in the
    rope dict or at top level; `default_theta` if neither, else an error, since transformers'
    default is per model class), partial_rotary_factor (top level or rope dict),
    qk_rope_head_dim / head_dim / hidden_size // num_attention_heads, and
    max_position_embeddings. layer_type picks one entry of a per-layer-type rope dict.
    """
    params, where = _rope_dict(config, layer_type)
    kind_key = "rope_type" if params.get("rope_type") is not None else "type"
    kind = params.get(kind_key) or "default"
    if kind not in _SUPPORTED:
        raise ValueError(f"{where}[{kind_key!r}] = {kind!r} is not supported "
                         f"(supported: {', '.join(_SUPPORTED)})")

    if params.get("rope_theta") is not None:
        base = _real(params["rope_theta"], f"{where}['rope_theta']")
    elif config.get("rope_theta") is not None:
        base = _real(config["rope_theta"], "rope_theta")
    elif default_theta is not None:
        base = _real(default_theta, "default_theta")
    else:
        raise ValueError("rope_theta is missing (pass default_theta= for configs that rely on "
                         "their model class's default)")

    top, inner = config.get("partial_rotary_factor"), params.get("partial_rotary_factor")
    if top is not None and inner is not None and top != inner:
        raise ValueError(f"partial_rotary_factor ({top}) and {where}['partial_rotary_factor'] "
                         f"({inner}) disagree")
    fraction = 1.0
    if top is not None or inner is not None:
        fraction = _positive(top if top is not None else inner, "partial_rotary_factor")
    head_dim = _head_dim(config)
    rotary_dim = int(head_dim * fraction)  # truncates, as transformers does
    if rotary_dim % 2 or rotary_dim == 0 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim = int(head_dim {head_dim} * partial_rotary_factor "
                         f"{fraction}) = {rotary_dim} must be even, > 0 and <= head_dim")
    if config.get("max_position_embeddings") is None:
        raise ValueError("max_position_embeddings is required and is missing")
    max_position = _positive_int(config["max_position_embeddings"], "max_position_embeddings")

    scaling: RopeScaling = DefaultScaling()
    if kind != "default":
        # Phi-3 style configs keep it at top level, and then it wins, as in transformers.
        original = config.get("original_max_position_embeddings")
        if original is None:
            original = params.get("original_max_position_embeddings") or max_position
        try:
            scaling = _scaling(kind, params, original, max_position)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return RopeSpec(head_dim, rotary_dim, base, max_position, scaling)


def _scaling(kind: str, params: Mapping, original: Any, max_position: int) -> RopeScaling:
    if kind == "llama3":
        return Llama3Scaling(factor=_required(params, "factor", kind),
                             low_freq_factor=_required(params, "low_freq_factor", kind),
                             high_freq_factor=_required(params, "high_freq_factor", kind),
                             original_max_position_embeddings=original)
    if "factor" not in params:  # present but null is allowed: see below
        raise ValueError("factor is required for rope_type 'yarn' and is missing")
    factor = params["factor"]
    if factor is None:  # transformers: the ratio of the extended to the original context
        factor = max_position / _positive_int(original, "original_max_position_embeddings")
    return YarnScaling(factor=factor, original_max_position_embeddings=original,
                       # `or`: transformers treats 0/None as "use the default" here.
                       beta_fast=params.get("beta_fast") or 32.0,
                       beta_slow=params.get("beta_slow") or 1.0,
                       mscale=params.get("mscale"), mscale_all_dim=params.get("mscale_all_dim"),
                       attention_factor=params.get("attention_factor"),
                       truncate=bool(params.get("truncate", True)))


# The builder's API, also exported from fuseinfer.ops; inv_freq and attention_scaling stay
# here (fuseinfer.ops.rope.cos_sin_cache).
__all__ = ["DefaultScaling", "Llama3Scaling", "RopeScaling", "RopeSpec", "YarnScaling",
           "build_cos_sin_cache", "rope_scaling_from_config"]
