"""Train a small Qwen3-architecture checkpoint on the machine's own text (developer tool, for
measurements that need trained weights where no real checkpoint can be reached, such as
`fuseinfer bench kv-accuracy`'s FP8 drift on the GPU machine).

    python microbench/train_proxy_checkpoint.py OUT_DIR [--seconds 150] [--corpus DIR ...]
        [--hidden 768] [--layers 8] [--heads 8] [--kv-heads 2] [--head-dim 128]

Bytes are the tokens (vocabulary 256). The corpus is every .py, .md, .txt and .rst file
under the --corpus folders (default: the Python installation's library folders), up to
--max-bytes; training samples random windows of it for --seconds of wall time (AdamW, a
short warm-up, cosine decay over the time budget), printing the loss as it goes, and the
checkpoint is saved in bf16 as safetensors with its config.json. A proxy: a model this
small, trained this briefly, has none of a large model's outlier channels, so what is
measured on it says how the cache behaves on trained weights, not on any released model.
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import torch

SUFFIXES = (".py", ".md", ".txt", ".rst")


def corpus_bytes(roots: list[Path], max_bytes: int) -> torch.Tensor:
    """The files' bytes end to end (sorted paths, so the same machine gives the same
    corpus), as uint8, up to max_bytes."""
    chunks: list[bytes] = []
    total = 0
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            chunks.append(data)
            total += len(data)
            if total >= max_bytes:
                break
        if total >= max_bytes:
            break
    if total < 1 << 20:
        raise SystemExit(f"corpus under {[str(r) for r in roots]}: only {total} bytes of "
                         f"{'/'.join(SUFFIXES)} files, need at least 1 MiB")
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8)


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=256, hidden_size=args.hidden,
        intermediate_size=max(64, args.hidden * 8 // 3 // 64 * 64),  # about 8/3 x, as Llama's
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return transformers.Qwen3ForCausalLM(config)


def train(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    roots = [Path(p) for p in args.corpus] or sorted(
        {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib")})
    data = corpus_bytes(roots, args.max_bytes).to(device)
    print(f"corpus: {data.numel() / 1e6:.1f} MB from {[str(r) for r in roots]}", flush=True)
    torch.manual_seed(args.seed)
    model = build_model(args).to(device)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {params / 1e6:.1f} M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=0.1)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    start = time.monotonic()
    step = 0
    while (elapsed := time.monotonic() - start) < args.seconds:
        frac = elapsed / args.seconds
        warm = min(1.0, (step + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * frac))
        offsets = torch.randint(0, data.numel() - args.seq, (args.batch, 1),
                                device=device, generator=gen)
        window = data[offsets + torch.arange(args.seq, device=device)].long()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            # labels are the inputs: the model shifts them by one
            loss = model(input_ids=window, labels=window).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0:
            print(f"step {step} t={elapsed:.0f}s loss {loss.item():.3f} "
                  f"(bits/byte {loss.item() / math.log(2):.2f})", flush=True)
        step += 1
    print(f"trained {step} steps, {step * args.batch * args.seq / 1e6:.0f} M tokens in "
          f"{time.monotonic() - start:.0f} s", flush=True)
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    print(f"saved {args.out}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="checkpoint folder to write")
    ap.add_argument("--seconds", type=float, default=150.0, help="training wall time")
    ap.add_argument("--corpus", nargs="+", default=[],
                    help="folders of text (default: the Python installation's)")
    ap.add_argument("--max-bytes", type=int, default=256 << 20)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.seconds <= 0 or args.hidden < 1 or args.layers < 1 or args.heads < 1 \
            or args.kv_heads < 1 or args.heads % args.kv_heads:
        raise SystemExit("--seconds, --hidden, --layers, --heads must be positive and "
                         "--heads a multiple of --kv-heads")
    train(args)


if __name__ == "__main__":
    main()
