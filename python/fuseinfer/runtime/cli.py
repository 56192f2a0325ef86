"""`fuseinfer generate`: generate text from a prompt with the reference runtime. The engine
options come from EngineArgs (add_engine_args); the sampling options are this command's.

Also the pieces `generate` and `serve` share: UsageExit (a user's mistake is one line on
stderr and exit status 2, never a traceback), the engine seed (random unless --seed is
given, so unseeded sampling differs across runs) and the checks of a model folder and a
device that would otherwise fail deep inside the engine."""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

from .engine_args import EngineArgs, add_engine_args, engine_args_from


class UsageExit(SystemExit):
    """A mistake in the command line or its environment: exit status 2; `fuseinfer`'s main
    prints the message as one line on stderr."""

    def __init__(self, command: str, message: str) -> None:
        super().__init__(2)
        self.message = f"fuseinfer {command}: {message}"

    def __str__(self) -> str:
        return self.message


def random_engine_seed() -> int:
    """A fresh seed per run, from the OS (the process's own RNG may be seeded by a caller)."""
    return random.SystemRandom().randrange(1 << 31)


def check_device(command: str, device: str) -> None:
    """`--device cuda[:N]` on a machine without that GPU fails here, not in the engine."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if count == 0:
        raise UsageExit(command, f"--device {device}: no CUDA GPU is visible (--device cpu "
                        "runs on the CPU)")
    if index >= count:
        raise UsageExit(command, f"--device {device}: only {count} CUDA GPU(s) visible")


def resolve_engine_args(command: str, args: argparse.Namespace, seed: int) -> tuple[Path,
                                                                                  EngineArgs]:
    """The model folder and EngineArgs of a parsed command line, every user mistake in
    them (no such folder, no weights, a bad option, a missing GPU) as a UsageExit."""
    from ..models.bundled import require_weights, resolve_model

    try:
        folder = resolve_model(args.model)
        engine_args = engine_args_from(args, model=str(folder), seed=seed)
        require_weights(folder, engine_args.load_format)
    except (ValueError, FileNotFoundError) as err:
        raise UsageExit(command, str(err)) from err
    check_device(command, engine_args.device)
    return folder, engine_args


def add_generate_parser(sub: Any) -> None:
    gen = sub.add_parser("generate", help="generate text for a prompt (reference runtime; "
                         "the bundled tiny model when --model is not given)")
    gen.add_argument("--model", help="a local Hugging Face model folder or a bundled name "
                     "(default: the bundled tiny model)")
    gen.add_argument("--prompt", action="append", required=True,
                     help="prompt text (repeat for a batch)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--seed", dest="sampling_seed", metavar="SEED", type=int,
                     help="sampling seed, also the engine's (and of --load-format dummy "
                     "weights); without it both are random per run")
    gen.add_argument("--ignore-eos", action="store_true")
    add_engine_args(gen, exclude=("model", "seed"))  # --seed above sets both
    gen.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .sampling import SamplingParams
    from .step_output import FinishReason
    from .tokenizer import TextTokenizer

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.sampling_seed,
                            ignore_eos=args.ignore_eos)
    try:
        params.validate()
    except ValueError as err:
        raise UsageExit("generate", str(err)) from err
    if any(not p for p in args.prompt):
        raise UsageExit("generate", "--prompt is empty")
    seed = args.sampling_seed if args.sampling_seed is not None else random_engine_seed()
    folder, engine_args = resolve_engine_args("generate", args, seed)
    if not (folder / "tokenizer.json").exists():
        raise UsageExit("generate", f"{folder} has no tokenizer.json (text prompts need one)")
    tokenizer = TextTokenizer(folder)
    prompts = [tokenizer.encode(p) for p in args.prompt]
    with Engine(engine_args) as engine:
        for ids in prompts:
            if len(ids) + params.max_new_tokens > engine.max_context:
                raise UsageExit("generate", f"the prompt ({len(ids)} tokens) + --max-new-tokens "
                                f"({params.max_new_tokens}) exceeds the context limit "
                                f"{engine.max_context}")
        outs = engine.generate(prompts, params)
    for out in outs:  # whatever else the engine refuses (e.g. a KV pool too small)
        if out.finish_reason == FinishReason.REJECTED:
            raise UsageExit("generate", f"the engine refused the prompt: {out.finish_detail}")
    for prompt, out in zip(args.prompt, outs, strict=True):
        print(f"{prompt}{tokenizer.decode(out.output)}")
        detail = f" ({out.finish_detail})" if out.finish_detail else ""
        print(f"[{len(out.output)} tokens, finish: {out.finish_reason}{detail}]")
    return 0
