"""Device ceilings (copy bandwidth, bf16 and fp8 matmul rate), measured once and cached.

Benchmarks report "% of ceiling" against what this device actually reaches, not the
datasheet. The cache is keyed by GPU name and invalidated when driver or torch change.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fuseinfer import paths
from fuseinfer.bench.environment import collect_environment, utc_now
from fuseinfer.bench.registry import Suite, register_suite

KINDS = ("copy", "bf16", "fp8")
_MATMUL_SIZE = 8192


@dataclass
class Ceilings:
    """Measured limits of one device, with what they were measured under."""

    copy_gbps: float | None
    bf16_tflops: float | None
    fp8_tflops: float | None
    gpu: str
    driver: str
    torch: str
    date: str


def _median_event_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median ms of single calls between CUDA events, after warm-up."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in pairs)


def measure_copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device-to-device copy rate in GB/s (1e9), counting bytes read plus bytes written."""
    import torch

    # Random bytes, not zeros: zeros can be handled faster than real data.
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_event_ms(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure_matmul_tflops(dtype: str) -> float:
    """Dense 8192^3 matmul rate in TFLOP/s for "bf16" (torch.matmul) or "fp8" (_scaled_mm)."""
    import torch

    n = _MATMUL_SIZE
    if dtype == "bf16":
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
        ms = _median_event_ms(lambda: torch.matmul(a, b, out=out))
    elif dtype == "fp8":
        a = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn)
        # _scaled_mm wants the second operand column-major: the transpose of a row-major one.
        b = torch.randn(n, n, device="cuda").to(torch.float8_e4m3fn).t()
        one = torch.ones((), device="cuda", dtype=torch.float32)
        ms = _median_event_ms(
            lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        )
    else:
        raise ValueError(f"dtype must be 'bf16' or 'fp8', got {dtype!r}")
    return 2 * n**3 / (ms * 1e-3) / 1e12


def slug(name: str) -> str:
    """File-name form of a GPU name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def _present_identity() -> dict[str, Any]:
    env = collect_environment()
    return {"gpu": env["gpu"], "driver": env["driver"], "torch": env["torch"]}


def ceilings_path(gpu: str | None = None) -> Path:
    """Cache file for the present GPU (or the one named)."""
    if gpu is None:
        gpu = _present_identity()["gpu"]
        if gpu is None:
            raise RuntimeError("no CUDA GPU: device ceilings need one")
    return paths.cache_dir() / "ceilings" / f"{slug(str(gpu))}.json"


def load_ceilings() -> Ceilings | None:
    """Cached ceilings of the present GPU, or None if absent or taken under another
    GPU, driver or torch."""
    identity = _present_identity()
    if identity["gpu"] is None:
        return None
    path = ceilings_path(identity["gpu"])
    try:
        data = json.loads(path.read_text())
        cached = Ceilings(**{f.name: data[f.name] for f in fields(Ceilings)})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or unreadable cache: measure again
    if any(getattr(cached, key) != value for key, value in identity.items()):
        return None
    return cached


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # readers never see a half-written file


def measure_ceilings(which: Sequence[str] = KINDS) -> Ceilings:
    """Measure the named ceilings, merge them into the cache file and return the result."""
    unknown = [kind for kind in which if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown ceiling(s) {unknown}; choose from {list(KINDS)}")
    identity = _present_identity()
    if identity["gpu"] is None:
        raise RuntimeError("no CUDA GPU: device ceilings need one")
    previous = load_ceilings()
    result = Ceilings(
        copy_gbps=previous.copy_gbps if previous else None,
        bf16_tflops=previous.bf16_tflops if previous else None,
        fp8_tflops=previous.fp8_tflops if previous else None,
        gpu=str(identity["gpu"]),
        driver=str(identity["driver"]),
        torch=str(identity["torch"]),
        date=utc_now(),
    )
    if "copy" in which:
        result.copy_gbps = measure_copy_bandwidth()
    if "bf16" in which:
        result.bf16_tflops = measure_matmul_tflops("bf16")
    if "fp8" in which:
        result.fp8_tflops = measure_matmul_tflops("fp8")
    _write_atomic(ceilings_path(result.gpu), json.dumps(asdict(result), indent=1) + "\n")
    return result


def copy_bandwidth_gbps() -> float:
    """Copy bandwidth of the present GPU: the cached value, else measured and cached."""
    cached = load_ceilings()
    if cached is not None and cached.copy_gbps is not None:
        return cached.copy_gbps
    measured = measure_ceilings(("copy",)).copy_gbps
    if measured is None:
        raise RuntimeError("copy bandwidth measurement returned nothing")
    return measured


# ---- the command: `fuseinfer bench ceilings` --------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--which", nargs="+", default=list(KINDS), choices=list(KINDS))


def run_command(args: argparse.Namespace) -> int:
    print(json.dumps(measure_ceilings(args.which).__dict__, indent=1))
    return 0


register_suite(Suite(name="ceilings", help="measure and cache copy bandwidth and bf16/fp8 "
                     "matmul peaks of this GPU", run=run_command, add_arguments=add_arguments))
