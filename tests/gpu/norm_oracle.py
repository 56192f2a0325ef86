"""float64 oracle and comparison helpers for the norm GPU tests."""

from __future__ import annotations

import torch

TOL = {torch.bfloat16: 2e-2, torch.float16: 4e-3, torch.float32: 1e-5}
REL = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float32: 1e-6}


def oracle(x: torch.Tensor, w: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    xd = x.double()
    return xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * (w.double() + offset)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    got64 = got.double()
    assert not torch.isnan(got64).any(), "NaN in output (unwritten or poisoned element)"
    rel = ((got64 - want).norm() / want.norm()).item()
    assert rel < REL[dtype], f"relative error {rel:.2e} >= {REL[dtype]:.0e}"
    torch.testing.assert_close(got64, want, atol=TOL[dtype], rtol=TOL[dtype])
