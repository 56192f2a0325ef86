"""greedy_sample: the greedy token of each logits row, also stored into a token buffer.

    tokens[b] = argmax_v logits[b, v]             (the first maximum, as torch.argmax)
    future[future_offset + b] = tokens[b]         (when future is given)

logits [B, V] bf16, fp16 or fp32 with a contiguous last dim (any row stride); tokens int64
[B] contiguous (mutated); future int64 1-D contiguous with room for B tokens at
future_offset (mutated). NaN ranks above every number and -0 equals +0, as in
torch.argmax. The runner's greedy step writes the tokens straight into its buffer of
tokens in flight (overlap scheduling), so the step's argmax and the copy after it are one
kernel. CUDA: one Triton kernel, each row's vocabulary split over several programs at
small batch, the last to finish picking the row's token (programmatic dependent launch on
sm_90+ unless enable_pdl=False); CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..arrival_counters import ArrivalCounters
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl

_SCHEMA = ("greedy_sample(Tensor(a!) tokens, Tensor logits, Tensor(b!)? future=None, "
           "int future_offset=0, bool? enable_pdl=None) -> ()")
# vocabulary elements per tile (4 warps: 16 per thread, two 16-byte bf16 loads) and tiles
# in flight per program
_BLOCK = 2048
_STAGES = 3
_WARPS = 4
# programs per batch the vocabulary chunks aim at (a small batch splits each row more)
_TARGET_PROGRAMS = 256
# rows whose chunks meet in a counter (more rows: one program per row, no counter)
_MAX_COUNTED_ROWS = 1 << 14
_COUNTERS = ArrivalCounters("greedy_sample", _MAX_COUNTED_ROWS)


def chunking(rows: int, vocab: int, block: int = _BLOCK) -> tuple[int, int]:
    """(chunks per row, chunk length, a multiple of block): about _TARGET_PROGRAMS
    programs in all, each at least one tile; one chunk per row past _MAX_COUNTED_ROWS."""
    tiles = -(-vocab // block)
    want = max(1, _TARGET_PROGRAMS // max(rows, 1)) if rows <= _MAX_COUNTED_ROWS else 1
    per_chunk = -(-tiles // min(want, tiles))
    return -(-tiles // per_chunk), per_chunk * block


def reference_greedy_sample(logits: torch.Tensor) -> torch.Tensor:
    """int64 [B]: the CPU kernel and the test oracle."""
    return logits.float().argmax(dim=-1)


def _check(tokens: torch.Tensor, logits: torch.Tensor, future: torch.Tensor | None = None,
           future_offset: int = 0, enable_pdl: bool | None = None) -> None:
    op = "greedy_sample"
    if logits.dim() != 2 or logits.size(1) < 1:
        fail(op, "logits", f"must be [B, V] with V >= 1, got {list(logits.shape)}")
    if logits.dtype not in FLOAT_DTYPES:
        fail(op, "logits", f"must be bf16, fp16 or fp32, got {logits.dtype}")
    if logits.size(1) > 1 and logits.stride(1) != 1:
        fail(op, "logits", "must have a contiguous last dim")
    b = logits.size(0)
    if tokens.dtype != torch.int64 or list(tokens.shape) != [b] or \
            (b > 1 and tokens.stride(0) != 1):
        fail(op, "tokens", f"must be a contiguous int64 [{b}], got {list(tokens.shape)} "
             f"{tokens.dtype}")
    if tokens.device != logits.device:
        fail(op, "tokens", f"must be on {logits.device}, got {tokens.device}")
    if future is None:
        return
    if future.dtype != torch.int64 or future.dim() != 1 or \
            (future.numel() > 1 and future.stride(0) != 1) or future.device != logits.device:
        fail(op, "future", f"must be a contiguous 1-D int64 tensor on {logits.device}, got "
             f"{list(future.shape)} {future.dtype} on {future.device}")
    if not 0 <= future_offset <= future.numel() - b:
        fail(op, "future_offset", f"must leave room for {b} tokens in future of "
             f"{future.numel()}, got {future_offset}")


def _cpu(tokens: torch.Tensor, logits: torch.Tensor, future: torch.Tensor | None = None,
         future_offset: int = 0, enable_pdl: bool | None = None) -> None:
    _check(tokens, logits, future, future_offset)
    tokens.copy_(reference_greedy_sample(logits))
    if future is not None:
        future[future_offset:future_offset + tokens.numel()].copy_(tokens)


def launch_greedy_sample(tokens: torch.Tensor, logits: torch.Tensor,
                         future: torch.Tensor | None, future_offset: int, pdl: bool,
                         block: int = _BLOCK, counters: torch.Tensor | None = None) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU, with a
    smaller block and their own zeroed counters)."""
    from ...triton.greedy_sample import greedy_sample_kernel

    rows, vocab = logits.shape
    if rows == 0:
        return
    chunks, chunk_len = chunking(rows, vocab, block)
    partial = tokens
    if chunks > 1:
        partial = torch.empty(rows * chunks, dtype=torch.int64, device=logits.device)
        if counters is None:
            counters = _COUNTERS.row(logits.device)
    extra = {"launch_pdl": True} if pdl else {}
    greedy_sample_kernel[(rows, chunks)](
        logits, tokens, future if future is not None else tokens, partial,
        counters if counters is not None else tokens, vocab, logits.stride(0),
        future_offset, chunks, chunk_len, BLOCK=block, CHUNKS_PAD=next_pow2(chunks),
        STAGES=_STAGES, HAS_FUTURE=future is not None, USE_PDL=pdl, num_warps=_WARPS,
        **extra)


def reserve_counters(device: torch.device) -> None:
    """Allocate this GPU's counters now (outside capture): for a caller whose first call
    would be inside a CUDA-graph capture (the op raises there otherwise)."""
    _COUNTERS.reserve(device)


def _cuda(tokens: torch.Tensor, logits: torch.Tensor, future: torch.Tensor | None = None,
          future_offset: int = 0, enable_pdl: bool | None = None) -> None:
    _check(tokens, logits, future, future_offset)
    launch_greedy_sample(tokens, logits, future, future_offset,
                         use_pdl(enable_pdl, logits.device))


def greedy_sample(logits: torch.Tensor, future: torch.Tensor | None = None,
                  future_offset: int = 0, enable_pdl: bool | None = None) -> torch.Tensor:
    """The first-maximum token of each row of logits [B, V] (int64 [B]), also stored to
    future[future_offset:future_offset + B] when future is given."""
    tokens = torch.empty(logits.size(0), dtype=torch.int64, device=logits.device)
    torch.ops.fuseinfer.greedy_sample(tokens, logits, future, future_offset,
                                      enable_pdl=enable_pdl)
    return tokens


define(_SCHEMA)
impl_cpu("greedy_sample", _cpu)
impl_fake("greedy_sample", _check)
LIB.impl("greedy_sample", _cuda, "CUDA")


__all__ = ["greedy_sample"]
