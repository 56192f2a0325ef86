"""Engine configuration: one frozen dataclass that validates itself, and the one place the
command-line options of `generate`, `serve`, `bench offline` and `bench latency` come from.

    args = EngineArgs(model="qwen3-0.6b", load_format="dummy")   # ValueError on bad values
    add_engine_args(parser, include=("device", "page_size"))     # --device, --page-size
    args = engine_args_from(namespace, model=folder)              # back to EngineArgs

Each field's help text lives in its metadata, so the CLI and the dataclass cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

DTYPES = ("auto", "bfloat16", "float16", "float32")
KV_CACHE_DTYPES = ("auto", "fp8_e4m3")
KV_CACHE_SCALES = ("calibrate", "one")
LOAD_FORMATS = ("auto", "dummy")
QUANTIZATIONS = ("auto", "fp8")
MOE_WEIGHT_DTYPES = ("auto", "bf16")
SCHEDULE_POLICIES = ("fcfs", "lpm")


# What `serve` and the benches run with: a frozen heap after warm-up and a warning on
# long collection pauses.
SERVING_GC = {"gc_freeze": True, "gc_warning_threshold_secs": 0.05}


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class EngineArgs:
    model: str = field(metadata={"help": "a local Hugging Face model folder or a bundled "
                                 "name (tiny, qwen3-0.6b, ...)"})
    device: str = _opt("auto", "auto (cuda if available, else cpu), cpu, cuda or cuda:N")
    dtype: str = _opt("auto", "model dtype; auto: bfloat16 on CUDA, float32 on the CPU",
                      DTYPES)
    kv_cache_dtype: str = _opt("auto", "KV-cache dtype; auto: the model dtype",
                               KV_CACHE_DTYPES)
    kv_cache_scales: str = _opt("calibrate", "FP8 KV cache: calibrate (a scale per layer and "
                                "KV head for K and V, from one prefill of a fixed prompt at "
                                "load) or one (every scale 1.0)", KV_CACHE_SCALES)
    load_format: str = _opt("auto", "auto: safetensors from the folder; dummy: random "
                            "weights from its config", LOAD_FORMATS)
    quantization: str = _opt("auto", "linear-layer weights; auto: as the checkpoint is "
                             "stored (FP8 if its config.json says so); fp8: quantize float "
                             "weights into 128x128 FP8 blocks at load", QUANTIZATIONS)
    moe_weight_dtype: str = _opt("auto", "MoE experts; auto: as stored (GPT-OSS's MXFP4 "
                                 "experts run the W4A16 kernel); bf16: MXFP4 experts "
                                 "dequantized to the model dtype at load (the baseline)",
                                 MOE_WEIGHT_DTYPES)
    page_size: int = _opt(64, "tokens per KV page (a 64-key attention block is one page)")
    mem_fraction_static: float = _opt(0.85, "fraction of GPU memory for weights and KV cache")
    max_total_tokens: int | None = _opt(None, "KV capacity in tokens (default: from memory)")
    max_running_requests: int = _opt(256, "requests decoded together at most")
    max_prefill_tokens: int = _opt(8192, "token budget of one prefill step")
    chunked_prefill_size: int = _opt(4096, "a request's prompt tokens per step; <= 0: no "
                                     "chunking")
    schedule_policy: str = _opt("fcfs", "fcfs, or lpm (longest cached prefix first)",
                                SCHEDULE_POLICIES)
    disable_radix_cache: bool = _opt(False, "no prefix reuse between requests")
    max_context_len: int | None = _opt(None, "tokens per request at most (default: the "
                                       "model's max_position_embeddings)")
    disable_fused_rope_kv: bool = _opt(False, "RoPE and the KV-cache write as two kernels")
    disable_fused_add_rmsnorm: bool = _opt(False, "residual add and RMSNorm as two kernels")
    disable_fused_qk_norm: bool = _opt(False, "Qwen3's q and k norms as two launches")
    disable_fused_qk_norm_rope: bool = _opt(False, "Qwen3's q/k norms, then RoPE + the KV "
                                            "write, as two kernels (not one)")
    disable_fused_silu_mul: bool = _opt(False, "SiLU(gate) * up in eager torch")
    fused_decode_merge: str = _opt("auto", "decode attention's split-KV pieces merged by "
                                   "the last piece to finish instead of a second kernel: "
                                   "on, off, or auto (where the GPU's dispatch table says: "
                                   "windowed layers of few pieces, measured faster there "
                                   "and slower elsewhere on the H200)", ("auto", "on", "off"))
    disable_hopper_prefill: bool = _opt(False, "prefill attention on the portable Triton "
                                        "kernel even where the GPU's dispatch table picks "
                                        "the warp-specialized sm_90a one")
    disable_fused_norm_quant: bool = _opt(False, "FP8 models: RMSNorm, then the activation "
                                          "quantization as a second kernel")
    disable_fused_silu_mul_quant: bool = _opt(False, "FP8 models: SiLU(gate) * up, then "
                                              "the activation quantization as a second "
                                              "kernel")
    disable_small_batch_gemv: bool = _opt(False, "1-token matmuls on cuBLAS")
    disable_gemv_silu_mul: bool = _opt(False, "1-token steps: SiLU(gate) * up as its own "
                                       "kernel before the down projection's gemv (not in "
                                       "the gemv's prologue)")
    disable_fused_greedy_sample: bool = _opt(False, "greedy steps: torch's argmax, then a "
                                             "copy into the buffer of tokens in flight "
                                             "(not one greedy_sample kernel)")
    small_m_matmul_tokens: int = _opt(64, "plain matmuls of 1..N tokens (N <= 64) through "
                                      "small_batch_linear, its `linear` table picking "
                                      "split_k, the gemv or cuBLAS per M (a GPU without a "
                                      "tuned entry: cuBLAS past one token); 0: off; CUDA "
                                      "only")
    small_m_prologue: bool = _opt(False, "with --small-m-matmul-tokens: the RMSNorm before "
                                  "a projection and SiLU * up before the down projection "
                                  "in split_k's prologue (off: their own kernels; the "
                                  "prologue kernel measured slower on the H200)")
    residual_epilogue: bool = _opt(False, "one rank, float weights: the residual added in "
                                   "the o and down projections' matmul epilogue (the norm "
                                   "after each then adds nothing); off: measured at 0.994-1.014x")
    disable_pdl: bool = _opt(False, "no programmatic dependent launch")
    disable_overlap_schedule: bool = _opt(False, "no overlap: schedule step N+1 only after "
                                          "step N's tokens are back")
    seed: int = _opt(0, "seed of dummy weights and of unseeded sampling")
    tp: int = _opt(1, "tensor-parallel ranks: one process per GPU (cuda:0..N-1), this one "
                   "rank 0; on the CPU, gloo processes")
    disable_custom_allreduce: bool = _opt(False, "tensor parallel: NCCL for every allreduce "
                                          "(no peer-mapped custom kernels)")
    disable_fused_allreduce_rmsnorm: bool = _opt(False, "tensor parallel: the allreduce, "
                                                 "then the residual add + RMSNorm kernel")
    disable_cuda_graph: bool = _opt(False, "eager decode steps")
    cuda_graph_max_bs: int = _opt(256, "decode batches up to this size replay CUDA graphs")
    # Off for library use (the caller's garbage collector is left alone); serve and the
    # benches turn both on (SERVING_GC).
    gc_freeze: bool = _opt(False, "gc.freeze() after the first step (warm-up)")
    gc_warning_threshold_secs: float = _opt(0.0, "warn on garbage-collection pauses "
                                            "longer than this many seconds; 0: off")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"EngineArgs.{f.name}: {value!r} is not one of "
                                 f"{', '.join(choices)}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"EngineArgs.device: {self.device!r} is not one of auto, cpu, "
                             "cuda, cuda:N")
        _at_least(self, "page_size", 1)
        _at_least(self, "tp", 1)
        if self.tp > 1 and re.fullmatch(r"cuda:\d+", self.device):
            raise ValueError("EngineArgs.device: with tp > 1 the ranks take cuda:0..tp-1; "
                             "give 'cuda' or 'auto'")
        _at_least(self, "max_running_requests", 1)
        _at_least(self, "max_prefill_tokens", 1)
        _at_least(self, "cuda_graph_max_bs", 1)
        _at_least(self, "max_total_tokens", 1)
        _at_least(self, "max_context_len", 1)
        _at_least(self, "gc_warning_threshold_secs", 0)
        if not 0 <= self.small_m_matmul_tokens <= 64:
            raise ValueError("EngineArgs.small_m_matmul_tokens: must be in [0, 64], got "
                             f"{self.small_m_matmul_tokens}")
        if not 0.0 < self.mem_fraction_static < 1.0:
            raise ValueError("EngineArgs.mem_fraction_static: must be in (0, 1), got "
                             f"{self.mem_fraction_static}")


def _at_least(args: EngineArgs, name: str, low: float) -> None:
    value = getattr(args, name)
    if value is not None and (isinstance(value, bool) or not value >= low):
        raise ValueError(f"EngineArgs.{name}: must be >= {low}, got {value!r}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_engine_args(parser: argparse.ArgumentParser, include: Iterable[str] | None = None,
                    exclude: Iterable[str] = ("model",),
                    defaults: dict[str, Any] | None = None) -> None:
    """Add one option per EngineArgs field (all but `exclude`, or only `include`), with the
    field's default (or `defaults`), type, choices and help text."""
    wanted = set(include) if include is not None else None
    skip = set(exclude)
    defaults = defaults or {}
    names = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = (wanted or set()) - names | set(defaults) - names
    if unknown:
        raise ValueError(f"not EngineArgs fields: {sorted(unknown)}")
    for f in dataclasses.fields(EngineArgs):
        if f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        default = defaults.get(f.name, f.default)
        help_text = f.metadata.get("help", "")
        if f.type in ("bool", bool):
            if default:  # an on-by-default switch gets a --no-... form
                parser.add_argument(_flag(f.name), dest=f.name,
                                    action=argparse.BooleanOptionalAction, default=True,
                                    help=help_text)
            else:
                parser.add_argument(_flag(f.name), dest=f.name, action="store_true",
                                    default=False, help=help_text)
            continue
        kind = {"int": int, "int | None": int, "float": float, "float | None": float,
                "str": str}[str(f.type)]
        suffix = "" if default is None else f" (default: {default})"
        parser.add_argument(_flag(f.name), dest=f.name, type=kind, default=default,
                            choices=f.metadata.get("choices"), help=help_text + suffix)


def engine_args_from(namespace: argparse.Namespace, **overrides: Any) -> EngineArgs:
    """EngineArgs from the options `add_engine_args` added (others keep their defaults),
    then `overrides`."""
    values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(EngineArgs)
              if hasattr(namespace, f.name)}
    values.update(overrides)
    return EngineArgs(**values)
