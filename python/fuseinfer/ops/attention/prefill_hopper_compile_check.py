"""Compile the sm_90a prefill kernel (Gluon) for sm_90a with the installed Triton, no GPU
needed:

    python -m fuseinfer.ops.attention.prefill_hopper_compile_check [--jobs N] [-v]

The CPU suite cannot run this kernel (the interpreter does not take Gluon), and Gluon's
API moves between Triton releases, so this is where a release that no longer compiles
it shows up before a GPU does. Each configuration the dispatch table can pick is
compiled once: both head dims, both query tiles each runs (128 rows; 192 at head_dim
64), both key blocks, every stage count that fits, page-piece sizes below and at the key
block, pingpong off and on, and the feature flags (window, sinks, lse, soft-cap).
Exit status 1 when one fails, with its constexprs and Triton's message.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Any

from ...jit.triton_compile_check import compile_all, error_line
from .prefill_hopper import BLOCK_MS, HEAD_DIMS, SMEM_BYTES, block_m_problem, smem_bytes

# (HAS_WINDOW, HAS_SINKS, HAS_CAP, HAS_LSE)
FEATURES = ((False, False, False, False), (True, True, False, True), (False, False, True, True))


def configurations() -> list[dict[str, Any]]:
    """The prefill kernel's constexprs for each configuration checked."""
    out = []
    for head_dim, block_m, block_n, stages in itertools.product(HEAD_DIMS, BLOCK_MS, (64, 128),
                                                                (2, 3, 4)):
        if block_m_problem(block_m, head_dim) is not None \
                or smem_bytes(head_dim, block_n, stages, block_m) > SMEM_BYTES:
            continue
        for page_tile, pingpong in itertools.product(sorted({16, block_n}), (False, True)):
            window, sinks, cap, lse = FEATURES[len(out) % len(FEATURES)]
            # pages of 16 (a tile of several pieces) or of 128 (one piece)
            page_size = page_tile if page_tile < block_n else 128
            out.append(dict(GROUP=4, PAGE_SIZE=page_size, HEAD_DIM=head_dim,
                            BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                            HAS_WINDOW=window, HAS_SINKS=sinks, HAS_CAP=cap, HAS_LSE=lse,
                            PINGPONG=pingpong, PAGE_TILE=page_tile))
    return out


def _signature(kernel: Any, constexprs: dict[str, Any], tile: int) -> dict[str, str]:
    """Argument types: K and V descriptors over `tile` rows (a page piece), bf16."""
    from triton.experimental.gluon import language as gl

    d = constexprs["HEAD_DIM"]

    def desc(rows: int) -> str:
        layout = gl.NVMMASharedLayout.get_default_for([rows, d], gl.bfloat16)
        return f"tensordesc<bf16[{rows}, {d}],{layout!r}>"

    types = {"q_desc": desc(64), "k_desc": desc(tile), "v_desc": desc(tile),
             "Out": "*bf16", "Lse": "*fp32", "Sinks": "*fp32", "PageTable": "*i32",
             "QIndptr": "*i32", "KvLens": "*i32", "Work": "*i32", "Schedule": "*i32",
             "sm_scale": "fp32", "logit_cap": "fp32"}
    return {name: "constexpr" if name in constexprs else types.get(name, "i32")
            for name in kernel.arg_names}


def compile_configuration(constexprs: dict[str, Any]) -> None:
    """Compile one configuration for sm_90a; raises what Triton raises."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from ...triton.attention_prefill_hopper import prefill_hopper_kernel as kernel

    values = {k: v for k, v in constexprs.items() if k != "PAGE_TILE"}
    source = GluonASTSource(fn=kernel, constexprs=values,
                            signature=_signature(kernel, values, constexprs["PAGE_TILE"]))
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))


def _compile_one(constexprs: dict[str, Any]) -> str | None:
    """None when the configuration compiled, else its error_line."""
    try:
        compile_configuration(constexprs)
    except Exception as e:  # every failure is reported, not only the first
        return error_line(e)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="compiling processes (default: one per core)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per configuration")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("prefill_hopper_compile_check: unset TRITON_INTERPRET (it compiles)")
    import triton

    configs = configurations()
    start = time.perf_counter()
    failed = compile_all(_compile_one, configs, args.jobs, str, args.verbose)
    for config, error in failed:
        print(f"FAILED prefill_hopper_kernel {config}:\n  {error}", file=sys.stderr)
    print(f"gluon compile check (9.0a, Triton {triton.__version__}): "
          f"{len(configs) - len(failed)} of {len(configs)} configurations of the sm_90a "
          f"prefill kernel compiled in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
