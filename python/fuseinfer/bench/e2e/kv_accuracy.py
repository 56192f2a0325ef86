"""`fuseinfer bench kv-accuracy`: how far the runtime's logits drift from transformers' with
each KV-cache setting, teacher-forced on transformers' own greedy continuations.

A Hugging Face checkpoint folder (with safetensors) is loaded twice: by transformers
(bf16 on the GPU, fp32 on the CPU) and by the runtime once per variant (`bf16`: the model
dtype's cache; `fp8`: FP8 with calibrated per-head scales; `fp8-one`: FP8 with every scale
1.0). For each of --prompts random prompts of --prompt-len tokens, transformers generates
--new-tokens greedy tokens; then both score the whole sequence in one forward, and at every
generated position the runtime's logits row is compared with transformers':

- `drift`: the largest |runtime - transformers| logit over the vocabulary;
- `pct_drift_over`: % of positions whose drift exceeds --threshold (default 0.5 logit);
- `pct_top_over`: % of positions where the logit of transformers' greedy token moved by
  more than --threshold;
- `flips`: positions whose argmax differs from transformers' token.

The runtime's forward is one prefill through its paged cache (runtime/direct_prefill.py):
keys and values are written to the cache and read back from it, so an FP8 cache's rounding
is in every attention read. The `bf16` variant is the floor the FP8 ones are read against.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..registry import Suite, register_suite

VARIANTS = {"bf16": ("auto", "calibrate"), "fp8": ("fp8_e4m3", "calibrate"),
            "fp8-one": ("fp8_e4m3", "one")}


def reference(model_path: str, device: str, prompts: list[list[int]], new_tokens: int
              ) -> tuple[list[list[int]], list[Any]]:
    """transformers' greedy continuations and its float32 logits at their positions."""
    import torch
    import transformers

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    hf = hf.to(device).eval()
    tokens, logits = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            out = hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False)
            seq = out[0].tolist()
            tokens.append(seq[len(p):])
            full = hf(torch.tensor([seq], device=device)).logits[0].float()
            logits.append(full[len(p) - 1:-1].cpu())
    del hf
    return tokens, logits


def runtime_logits(engine: Any, sequence: list[int], first: int) -> Any:
    """The runtime's logits rows at positions first-1 .. len(sequence)-2 (each predicts
    the next token), float32 on the CPU."""
    import torch

    from ...runtime.direct_prefill import direct_prefill

    model = engine.runner.model
    device = engine.runner.device
    rows = torch.arange(first - 1, len(sequence) - 1, device=device)
    with torch.no_grad():
        out = direct_prefill(model, torch.tensor(sequence, device=device), rows)
    return out.float().cpu()


def compare(ours: Any, theirs: Any, want: list[int], threshold: float) -> dict[str, float]:
    """Per-position drift statistics of one variant (rows: positions, columns: vocab)."""
    import torch

    diff = (ours - theirs).abs()
    drift = diff.max(dim=1).values
    token = torch.tensor(want)
    top = diff.gather(1, token[:, None])[:, 0]
    return {"positions": int(drift.numel()),
            "max_drift": float(drift.max()),
            "mean_drift": float(drift.mean()),
            "pct_drift_over": 100.0 * float((drift > threshold).float().mean()),
            "pct_top_over": 100.0 * float((top > threshold).float().mean()),
            "flips": int((ours.argmax(dim=1) != token).sum())}


def run(model_path: str, device: str, variants: list[str], prompts: int, prompt_len: int,
        new_tokens: int, threshold: float, seed: int = 0) -> list[dict[str, Any]]:
    import torch

    from ...runtime.engine import Engine, EngineArgs

    gen = torch.Generator().manual_seed(seed)
    with open(Path(model_path) / "config.json") as f:
        vocab = json.load(f)["vocab_size"]
    seqs = [torch.randint(0, vocab, (prompt_len,), generator=gen).tolist()
            for _ in range(prompts)]
    want, ref = reference(model_path, device, seqs, new_tokens)
    rows = []
    for name in variants:
        kv_dtype, scales = VARIANTS[name]
        engine = Engine(EngineArgs(model=model_path, device=device, kv_cache_dtype=kv_dtype,
                                   kv_cache_scales=scales, disable_cuda_graph=True,
                                   max_context_len=prompt_len + new_tokens + 8,
                                   max_running_requests=1))
        ours = torch.cat([runtime_logits(engine, p + w, len(p))
                          for p, w in zip(seqs, want, strict=True)])
        row = {"model": Path(model_path).name, "variant": name, "prompts": prompts,
               "prompt_len": prompt_len, "new_tokens": new_tokens, "threshold": threshold,
               **compare(ours, torch.cat(ref), [t for w in want for t in w], threshold)}
        rows.append(row)
        print(f"{name}: drift max {row['max_drift']:.3f} mean {row['mean_drift']:.4f}; "
              f"{row['pct_drift_over']:.2f}% of {row['positions']} positions over "
              f"{threshold} (top token {row['pct_top_over']:.2f}%), {row['flips']} flips",
              flush=True)
        engine.close()
        del engine
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a Hugging Face checkpoint folder (config.json, safetensors)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, "
                        "cuda or cuda:N")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(VARIANTS), help="KV settings to compare (default: all)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="logit drift that counts as drifting (default: 0.5)")
    parser.add_argument("--json", help="write the rows here")


def run_command(args: argparse.Namespace) -> int:
    import torch

    if min(args.prompts, args.prompt_len, args.new_tokens) < 1 or \
            not math.isfinite(args.threshold) or args.threshold < 0:
        raise SystemExit("--prompts, --prompt-len and --new-tokens must be >= 1 and "
                         "--threshold >= 0")
    if not any(Path(args.model).glob("*.safetensors")):
        raise SystemExit(f"{args.model}: needs a checkpoint folder with *.safetensors "
                         "(transformers loads the same weights)")
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    rows = run(args.model, device, args.variants, args.prompts, args.prompt_len,
               args.new_tokens, args.threshold)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))
    return 0


register_suite(Suite(
    name="kv-accuracy", help="logit drift from transformers per KV-cache setting (bf16, FP8 "
    "calibrated, FP8 unit scales), teacher-forced on its greedy tokens",
    run=run_command, add_arguments=add_arguments, needs_gpu=False))
