"""The FP4 formats shared by the FP4 quantizers and the MXFP4 expert weights.

E2M1 (OCP FP4): a sign bit, 2 exponent bits (bias 1), 1 mantissa bit; the 16 codes are
    0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives (code | 8).
Packed: two codes per byte, the even element in the low nibble (what the GPT-OSS
checkpoints and the Blackwell GEMMs read).
E8M0 (the MX scale): a biased exponent byte, 2^(s - 127); 255 is NaN.

Rounding to E2M1 is to the nearest value, ties to the even code (the hardware `cvt.rn`
rounding), saturating at +-6; these helpers are the bit-exact reference of the kernels.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0
E8M0_BIAS = 127
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
               -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# |x| above a bound rounds up past the code below it; ">=" where the tie goes up (to an even
# code), ">" where it stays down
_BOUNDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False),
           (3.5, True), (5.0, False))


def e2m1_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 16 code values, float32."""
    return torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)


def e2m1_round(x: torch.Tensor) -> torch.Tensor:
    """The E2M1 code (uint8 0..15) nearest each float32 value, ties to even, +-6 saturated."""
    mag = x.float().abs()
    code = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for bound, tie_up in _BOUNDS:
        code += (mag >= bound if tie_up else mag > bound).to(torch.uint8)
    return code | (torch.signbit(x.float()).to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    """Codes (uint8, 0..15) to their float32 values."""
    return e2m1_table(codes.device)[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., K] codes to [..., K/2] bytes, the even element in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles: the last dim must be even, got {codes.shape[-1]}")
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[..., K/2] bytes to [..., K] codes (uint8)."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def e8m0_to_float(scales: torch.Tensor) -> torch.Tensor:
    """E8M0 bytes to float32 powers of two (255: NaN)."""
    s = scales.to(torch.int32)
    out = torch.ldexp(torch.ones_like(s, dtype=torch.float32), s - E8M0_BIAS)
    return torch.where(s == 255, torch.full_like(out, float("nan")), out)


def e8m0_ceil(s: torch.Tensor) -> torch.Tensor:
    """The E8M0 byte (uint8) of the smallest power of two >= each float32 s >= 0, read off
    the float's bits (exact for subnormals too); saturates at 254, inf/NaN give 255. The
    MX quantizers' scale rule (no element of a block saturates)."""
    bits = s.float().contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    normal = (exponent + (mantissa != 0).to(torch.int32)).clamp(max=254)
    subnormal = (mantissa > 0x400000).to(torch.int32)  # 2^-127 or 2^-126
    byte = torch.where(exponent == 0, subnormal, normal)
    return torch.where(exponent == 255, torch.full_like(byte, 255), byte).to(torch.uint8)


def dequantize_mxfp4(packed: torch.Tensor, scales: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """MXFP4 to floats: packed uint8 [..., K/2] (two E2M1 codes per byte) with one E8M0
    scale per 32 elements, scales uint8 [..., K/32] -> [..., K] in `dtype` (exact in
    bf16 and float32: every product is a power of two times an E2M1 value)."""
    k = packed.shape[-1] * 2
    if scales.shape[-1] * 32 != k or packed.shape[:-1] != scales.shape[:-1]:
        raise ValueError(f"dequantize_mxfp4: scales {list(scales.shape)} must be "
                         f"[..., {k // 32}] for packed {list(packed.shape)} (32-element "
                         "blocks)")
    values = e2m1_decode(unpack_nibbles(packed))
    s = e8m0_to_float(scales).repeat_interleave(32, dim=-1)
    return (values * s).to(dtype)


__all__: list[str] = []
