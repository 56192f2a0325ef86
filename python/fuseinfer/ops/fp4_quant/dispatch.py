"""Dispatch-table entry of the fp4_quant family: the launch shape of its one kernel by
token count, and PDL on/off.

    "fp4_quant": {"source": "...", "enable_pdl": true,
                  "rules": [{"max_tokens": null, "threads_per_block": 512,
                             "blocks_per_sm": 16}]}

The first rule whose max_tokens holds (null: no bound) gives the most threads per block
and the grid's cap in blocks per SM. The launcher (csrc/fp4_quant/fp4_quant_kernels.cu)
sizes a block to cover a row at 4 16-byte vectors per thread (a multiple of a warp, at most
threads_per_block), halves it while the real rows' units would leave SMs idle (a few tokens
still spread over the GPU), and launches one block per unit up to blocks_per_sm * SMs (at
most 4 per SM with more than 8 experts, whose blocks first copy the offsets); a grid-stride
loop covers the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, current_identity, lookup, register_op
from ..library import module_loader, table_bound

OP_FAMILY = "fp4_quant"


@dataclass(frozen=True)
class Fp4QuantLaunchRule:
    max_tokens: int | None
    threads_per_block: int
    blocks_per_sm: int

    def validate(self, where: str) -> None:
        t = self.threads_per_block
        if not (32 <= t <= 1024 and t & (t - 1) == 0):
            raise TableError(f"{where}.threads_per_block: must be a power of two in "
                             f"[32, 1024], got {t}")
        if not 1 <= self.blocks_per_sm <= 32:
            raise TableError(f"{where}.blocks_per_sm: must be in [1, 32], got "
                             f"{self.blocks_per_sm}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise TableError(f"{where}.max_tokens: must be >= 1 or null, got {self.max_tokens}")


@dataclass(frozen=True)
class Fp4QuantDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[Fp4QuantLaunchRule, ...]

    def validate(self, where: str) -> None:
        if not self.rules:
            raise TableError(f"{where}.rules: needs at least one rule")
        if self.rules[-1].max_tokens is not None:
            raise TableError(f"{where}.rules: the last rule must match everything "
                             "(max_tokens null)")


# Not yet measured on a GPU (the reworked kernel): blocks sized by the row (224 threads at
# hidden 7168) and a grid of up to 16 blocks per SM, i.e. about one block per unit up to
# ~2k tokens, so the hardware balances the blocks; the halving rule covers small batches.
BUILTIN = Fp4QuantDispatch(source="built-in default", enable_pdl=True,
                           rules=(Fp4QuantLaunchRule(None, 512, 16),))
register_op(OP_FAMILY, Fp4QuantDispatch, BUILTIN)


def effective(device: int | None = None) -> Fp4QuantDispatch:
    return lookup(OP_FAMILY, current_identity(device)).entry


def push_to_device(device: int, table: Fp4QuantDispatch) -> None:
    """Hand a table to the loaded CUDA module (it keeps one per device)."""
    import torch

    torch.ops.fuseinfer._fp4_quant_configure(
        device, [table_bound(r.max_tokens) for r in table.rules],
        [r.threads_per_block for r in table.rules], [r.blocks_per_sm for r in table.rules],
        table.enable_pdl)


# Loads csrc/fp4_quant (building it on first use) and pushes this table to every device;
# shared by the family's three ops.
load_cuda = module_loader("fp4_quant", OP_FAMILY, push_to_device)
