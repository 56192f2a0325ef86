"""`fuseinfer generate`: generate text from a prompt with the reference runtime."""

from __future__ import annotations

import argparse
from typing import Any


def add_generate_parser(sub: Any) -> None:
    gen = sub.add_parser("generate", help="generate text for a prompt (reference runtime; "
                         "the bundled tiny model when --model is not given)")
    gen.add_argument("--model", help="a local Hugging Face model folder (default: the "
                     "bundled tiny model)")
    gen.add_argument("--prompt", action="append", required=True,
                     help="prompt text (repeat for a batch)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=-1)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--ignore-eos", action="store_true")
    gen.add_argument("--device", default="auto")
    gen.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    gen.add_argument("--page-size", type=int, default=64)
    gen.add_argument("--disable-radix-cache", action="store_true")
    gen.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from ..llm import LLM
    from .sampling import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            ignore_eos=args.ignore_eos)
    try:
        params.validate()
    except ValueError as err:
        raise SystemExit(f"fuseinfer generate: {err}") from err
    llm = LLM(args.model, device=args.device, load_format=args.load_format,
              page_size=args.page_size, disable_radix_cache=args.disable_radix_cache)
    for prompt, out in zip(args.prompt, llm.generate(args.prompt, params), strict=True):
        text = out.text if out.text is not None else " ".join(map(str, out.token_ids))
        print(f"{prompt}{text}")
        print(f"[{len(out.token_ids)} tokens, finish: {out.finish_reason}]")
    return 0
