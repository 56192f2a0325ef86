"""`fuseinfer generate`: generate text from a prompt with the reference runtime. The engine
options come from EngineArgs (add_engine_args); the sampling options are this command's."""

from __future__ import annotations

import argparse
from typing import Any

from .engine_args import add_engine_args, engine_args_from


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
                     help="sampling seed")
    gen.add_argument("--ignore-eos", action="store_true")
    # --seed above is the sampling seed; the engine's (dummy weights) keeps its default
    add_engine_args(gen, exclude=("model", "seed"))
    gen.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from ..models.bundled import resolve_model
    from .engine import Engine
    from .sampling import SamplingParams
    from .tokenizer import TextTokenizer

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.sampling_seed,
                            ignore_eos=args.ignore_eos)
    try:
        params.validate()
        folder = resolve_model(args.model)
        engine_args = engine_args_from(args, model=str(folder))
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"fuseinfer generate: {err}") from err
    if not (folder / "tokenizer.json").exists():
        raise SystemExit(f"fuseinfer generate: {folder} has no tokenizer.json (text prompts "
                         "need one)")
    tokenizer = TextTokenizer(folder)
    with Engine(engine_args) as engine:
        outs = engine.generate([tokenizer.encode(p) for p in args.prompt], params)
    for prompt, out in zip(args.prompt, outs, strict=True):
        print(f"{prompt}{tokenizer.decode(out.output)}")
        detail = f" ({out.finish_detail})" if out.finish_detail else ""
        print(f"[{len(out.output)} tokens, finish: {out.finish_reason}{detail}]")
    return 0
