"""The cuBLAS backend of fp8_gemm: torch._scaled_mm with blockwise (1x128 by 128x128) scales.

A selectable fallback (``backend="cublas"``) and the speed baseline of the bench. It is what every
PyTorch user already has on Hopper; deepergemm's own kernel must beat it.

cuBLASLt's blockwise recipe wants the activation scales M-major with an M stride of exactly M and
the weight scales K-group-major, so this module adapts our layouts (tiny copies of the scales
only, never of the operands, except that A is padded to 4 rows when M is not a multiple of 4).
N must be a multiple of 16: torch._scaled_mm rejects other N, and padding B gave wrong columns with
blockwise scales on the H100 (N = 136 -> 144 or 256, 2056 -> 2064 or 2176; 2026-11-25), so such shapes get
a clear error here and run on the "ptx" or "reference" backend instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layouts import round_up

_ROW_ALIGN = 4  # cuBLASLt's blockwise scales want 16-byte aligned M columns
_N_ALIGN = 16   # torch._scaled_mm's rule for N


def supports_n(n: int) -> bool:
    """Whether torch._scaled_mm takes this N (rows of b)."""
    return n % _N_ALIGN == 0


def fp8_gemm_cublas(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                    out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    m = a.shape[0]
    m_pad = round_up(m, _ROW_ALIGN)
    if m_pad != m:
        a = F.pad(a.view(torch.uint8), (0, 0, 0, m_pad - m)).view(a.dtype)
        a_scales = F.pad(a_scales, (0, 0, 0, m_pad - m), value=1.0)
    n = b.shape[0]
    if not supports_n(n):
        raise ValueError(f"backend='cublas' needs N (rows of b) to be a multiple of {_N_ALIGN}, got N={n}; "
                         f"use backend='ptx' (any N % 8 == 0) or backend='reference'")
    scale_a = a_scales.t().contiguous().t()  # (M, K/128), strides (1, M)
    scale_b = b_scales.contiguous().t()       # (K/128, ceil(N/128))
    # bias is added in fp32 and rounded once, the same arithmetic as the PTX kernel's epilogue
    acc_dtype = torch.float32 if bias is not None else out_dtype
    out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=acc_dtype)
    if bias is not None:
        out = (out + bias.float()).to(out_dtype)
    return out[:m] if m_pad != m else out
