"""Compile, for a GPU architecture, every Triton kernel launch the CPU suite ran in Triton's
interpreter (no GPU needed).

The interpreter runs a kernel's Python line by line: it does not type-check, so a kernel
that passes every interpreted test can still fail to compile (a name rebound to another
type in one branch, a constexpr used as a tensor). With FUSEINFER_TRITON_LAUNCH_LOG=PATH the
test session records each distinct launch (the kernel, its argument types, constexpr values,
warps and stages; tests/conftest.py) and writes them to PATH; this module then compiles
each one for the target:

    FUSEINFER_TRITON_LAUNCH_LOG=/tmp/launches.pkl python -m pytest -q tests
    python -m fuseinfer.jit.triton_compile_check /tmp/launches.pkl [--arch 9.0a] [--jobs N] [-v]

It must run without TRITON_INTERPRET (it compiles; it never launches). Exit status 1 when a
launch fails to compile, with the kernel, its constexprs and Triton's message.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import inspect
import os
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# torch dtypes -> Triton pointer element types
_TENSOR_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64",
                 "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64", "uint8": "u8",
                 "bool": "i1", "float8_e4m3fn": "fp8e4nv", "float8_e5m2": "fp8e5"}
_OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class Launch:
    """One distinct launch: the kernel by module and name, each parameter's type or
    constexpr value, and the compile options."""

    module: str
    name: str
    signature: tuple[tuple[str, str], ...]  # (param, Triton type or "constexpr")
    constexprs: tuple[tuple[str, Any], ...]
    options: tuple[tuple[str, int], ...]
    # pointers 16-byte aligned and integers divisible by 16, which a GPU launch
    # specializes on (wider loads): compiled with the same hints
    divisible: tuple[str, ...] = ()


# Constexprs the launcher sets for the interpreter: compiled with the value a GPU gets.
GPU_CONSTEXPRS = {"DOT_F32": False}


def _is_constexpr(parameter: inspect.Parameter) -> bool:
    return "constexpr" in str(parameter.annotation)


def _arg_type(value: Any) -> str | None:
    """The Triton type of a runtime argument; None: passed as a constexpr (None values)."""
    import torch

    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        kind = _TENSOR_TYPES.get(str(value.dtype).removeprefix("torch."))
        if kind is None:
            raise TypeError(f"no Triton type for a {value.dtype} tensor")
        return "*" + kind
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(1 << 31) <= value < (1 << 31) else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def _divisible_by_16(value: Any) -> bool:
    import torch

    if isinstance(value, torch.Tensor):
        return value.data_ptr() % 16 == 0
    return isinstance(value, int) and not isinstance(value, bool) and value % 16 == 0


def describe(fn: Any, args: tuple, kwargs: dict[str, Any]) -> Launch | None:
    """The Launch of an interpreted call fn[grid](*args, **kwargs); None when an argument
    has no Triton type the check knows (that launch is not checked)."""
    params = inspect.signature(fn).parameters
    bound = dict(zip(params, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in params})
    signature, constexprs, divisible = [], [], []
    try:
        for name, parameter in params.items():
            value = bound.get(name, parameter.default)
            if value is inspect.Parameter.empty:
                return None
            kind = "constexpr" if _is_constexpr(parameter) else _arg_type(value)
            if kind is None or kind == "constexpr":
                pickle.dumps(value)  # the value travels to the compiling process
                signature.append((name, "constexpr"))
                constexprs.append((name, value))
            else:
                signature.append((name, kind))
                if _divisible_by_16(value):
                    divisible.append(name)
    except (TypeError, pickle.PicklingError, AttributeError):
        return None
    options = tuple((k, int(kwargs[k])) for k in _OPTIONS if k in kwargs)
    return Launch(fn.__module__, fn.__qualname__, tuple(signature), tuple(constexprs), options,
                  tuple(divisible))


def record_interpreted_launches(path: str) -> Any:
    """Wrap the interpreter's launch so each distinct Launch is kept; returns a callable
    that writes them to `path` (the test session calls it at its end)."""
    from triton.runtime.interpreter import InterpretedFunction

    seen: set[Launch] = set()
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        # the package's kernels (a test's own stand-in kernel is not importable later)
        if self.fn.__module__.startswith("fuseinfer."):
            launch = describe(self.fn, args, kwargs)
            if launch is not None:
                seen.add(launch)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run

    def write() -> None:
        with open(path, "wb") as f:
            pickle.dump(sorted(seen, key=repr), f)
    return write


def compile_launch(launch: Launch, arch: str) -> None:
    """Compile one launch for `arch` (e.g. "9.0a"); raises what Triton raises."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(launch.module), launch.name)
    capability = int(arch.rstrip("a").replace(".", ""))
    names = list(kernel.arg_names)
    constexprs = {k: GPU_CONSTEXPRS.get(k, v) for k, v in launch.constexprs}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in launch.divisible}
    source = ASTSource(fn=kernel, signature=dict(launch.signature), constexprs=constexprs,
                       attrs=attrs)
    triton.compile(source, target=GPUTarget("cuda", capability, 32),
                   options=dict(launch.options))


def error_line(err: BaseException) -> str:
    """An error's type and last line: how a failed compile is reported."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def compile_all(compile_one: Callable[[Any], str | None], jobs: list[Any], workers: int,
                label: Callable[[Any], str], verbose: bool, every: int = 0
                ) -> list[tuple[Any, str]]:
    """compile_one (module-level: it runs in worker processes; None or an error_line) over
    jobs, `workers` processes; a progress line per job when verbose, else every `every`
    jobs (0: never). Returns the (job, error) pairs that failed."""
    failed = []
    with concurrent.futures.ProcessPoolExecutor(max(1, workers)) as pool:
        for i, (job, error) in enumerate(zip(jobs, pool.map(compile_one, jobs), strict=True)):
            if error is not None:
                failed.append((job, error))
            if verbose or (every and (i + 1) % every == 0):
                print(f"  [{i + 1}/{len(jobs)}] {label(job)}{' FAILED' if error else ''}",
                      flush=True)
    return failed


def _compile_one(job: tuple[Launch, str]) -> str | None:
    """None when the launch compiled, else its error_line."""
    launch, arch = job
    try:
        compile_launch(launch, arch)
    except Exception as e:  # every failure is reported, not only the first
        return error_line(e)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="the launches a test session recorded")
    ap.add_argument("--arch", default="9.0a", help="compute capability, e.g. 9.0a, 8.0")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="compiling processes (default: one per core)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per launch")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("triton_compile_check: unset TRITON_INTERPRET (it compiles)")
    with open(args.log, "rb") as f:
        launches: list[Launch] = pickle.load(f)
    start = time.perf_counter()
    jobs = [(launch, args.arch) for launch in launches]
    failed = compile_all(_compile_one, jobs, args.jobs,
                         lambda job: f"{job[0].module}.{job[0].name}", args.verbose, every=50)
    for (launch, _), error in failed:
        print(f"FAILED {launch.module}.{launch.name} constexprs={dict(launch.constexprs)} "
              f"options={dict(launch.options)}:\n  {error}", file=sys.stderr)
    kernels = len({(la.module, la.name) for la in launches})
    print(f"triton compile check ({args.arch}): {len(launches) - len(failed)} of "
          f"{len(launches)} launches of {kernels} kernels compiled in "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
