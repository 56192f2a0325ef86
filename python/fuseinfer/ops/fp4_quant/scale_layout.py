"""Scale layouts of the FP4/MX quantizers.

Linear: [M, K / block], row-major. Swizzled: the 128x4 tiles Blackwell block-scaled GEMMs
read, a [R, S] buffer (R: rows rounded up to 128, S: K / block rounded up to 4) whose flat
memory holds scale (m, k) at

    offset = (m // 128) * (S // 4) * 512 + (k // 4) * 512 + (m % 32) * 16
             + ((m % 128) // 32) * 4 + k % 4

with every padding row and column zero. Expert-grouped rows (expert_offsets [E + 1]):
expert e's rows start a fresh 128-row tile at scale row (offsets[e] + 127 e) // 128 * 128
(a grouped GEMM finds each expert's scales from the offsets alone; no prefix sum), so
R = (M + 127 E) // 128 * 128; without experts E = 1 and R is M rounded up to 128.
"""

from __future__ import annotations

import torch

ROW_TILE = 128
COL_TILE = 4


def swizzled_shape(rows: int, cols: int, experts: int = 1) -> tuple[int, int]:
    """[R, S] of the swizzled scales of `rows` rows (in `experts` groups) and `cols` scales
    per row."""
    return ((rows + (ROW_TILE - 1) * experts) // ROW_TILE * ROW_TILE,
            -(-cols // COL_TILE) * COL_TILE)


def expert_scale_starts(expert_offsets: torch.Tensor) -> torch.Tensor:
    """The first swizzled scale row of each expert (and the end, [E + 1])."""
    e = torch.arange(expert_offsets.numel(), device=expert_offsets.device)
    return (expert_offsets.long() + (ROW_TILE - 1) * e) // ROW_TILE * ROW_TILE


def swizzle(padded: torch.Tensor) -> torch.Tensor:
    """[R, S] scales in row order (R % 128 == 0, S % 4 == 0) to the swizzled layout (same
    shape, the flat memory reordered)."""
    r, s = padded.shape
    tiles = padded.reshape(r // ROW_TILE, 4, 32, s // COL_TILE, COL_TILE)
    return tiles.permute(0, 3, 2, 1, 4).reshape(r, s)


def unswizzle(swizzled: torch.Tensor) -> torch.Tensor:
    """The inverse of `swizzle`: back to row order."""
    r, s = swizzled.shape
    tiles = swizzled.reshape(r // ROW_TILE, s // COL_TILE, 32, 4, COL_TILE)
    return tiles.permute(0, 3, 2, 1, 4).reshape(r, s)


def to_layout(linear: torch.Tensor, swizzled: bool,
              expert_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Linear scales [M, C] in the op's layout: unchanged, or placed in the padded rows
    (expert blocks on 128-row tiles) with zeros elsewhere and swizzled."""
    if not swizzled:
        return linear
    m, c = linear.shape
    offsets = (torch.tensor([0, m]) if expert_offsets is None
               else expert_offsets.cpu().long())
    starts = expert_scale_starts(offsets).tolist()
    bounds = offsets.tolist()
    rows, cols = swizzled_shape(m, c, offsets.numel() - 1)
    padded = torch.zeros(rows, cols, dtype=linear.dtype, device=linear.device)
    for e in range(offsets.numel() - 1):
        count = bounds[e + 1] - bounds[e]
        padded[starts[e]:starts[e] + count, :c] = linear[bounds[e]:bounds[e + 1]]
    return swizzle(padded)


def from_layout(scales: torch.Tensor, rows: int, cols: int, swizzled: bool,
                expert_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """The linear [rows, cols] scales back from the op's layout (for dequantizing)."""
    if not swizzled:
        return scales
    offsets = (torch.tensor([0, rows]) if expert_offsets is None
               else expert_offsets.cpu().long())
    starts = expert_scale_starts(offsets).tolist()
    bounds = offsets.tolist()
    padded = unswizzle(scales)
    return torch.cat([padded[starts[e]:starts[e] + bounds[e + 1] - bounds[e], :cols]
                      for e in range(offsets.numel() - 1)])



def write_scales(scales: torch.Tensor, linear: torch.Tensor, swizzled: bool,
                 expert_offsets: torch.Tensor | None = None) -> None:
    """Store linear scales [M, C] into the op's output `scales` in its layout (bits copied
    through uint8 views, so E4M3 and E8M0 scales travel alike)."""
    bits = to_layout(linear.view(torch.uint8), swizzled, expert_offsets)
    scales.view(torch.uint8).copy_(bits)


__all__: list[str] = []
