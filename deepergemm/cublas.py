"""The cuBLAS backend of fp8_gemm: torch._scaled_mm with blockwise (1x128 by 128x128) scales.

A selectable fallback (``backend="cublas"``) and the speed baseline of the bench. It is what every
PyTorch user already has on Hopper; deepergemm's own kernel must beat it.

cuBLASLt's blockwise recipe wants the activation scales M-major with an M stride of exactly M and
the weight scales K-group-major, so this module adapts our layouts (tiny copies of the scales
only, never of the operands, except that A is padded to 4 rows when M is not a multiple of 4 and B to
16 rows when N is not a multiple of 16: torch._scaled_mm's own shape rules).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layouts import round_up

_ROW_ALIGN = 4  # cuBLASLt's blockwise scales want 16-byte aligned M columns
_N_ALIGN = 16   # torch._scaled_mm wants both dimensions of mat2 divisible by 16


def fp8_gemm_cublas(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                    out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    m = a.shape[0]
    m_pad = round_up(m, _ROW_ALIGN)
    if m_pad != m:
        a = F.pad(a.view(torch.uint8), (0, 0, 0, m_pad - m)).view(a.dtype)
        a_scales = F.pad(a_scales, (0, 0, 0, m_pad - m), value=1.0)
    n = b.shape[0]
    n_pad = round_up(n, _N_ALIGN)
    if n_pad != n:  # the padding rows stay inside the last 128-row scale block: b_scales already covers them
        b = F.pad(b.view(torch.uint8), (0, 0, 0, n_pad - n)).view(b.dtype)
        if bias is not None:
            bias = F.pad(bias, (0, n_pad - n))
    scale_a = a_scales.t().contiguous().t()  # (M, K/128), strides (1, M)
    scale_b = b_scales.contiguous().t()       # (K/128, ceil(N/128))
    # bias is added in fp32 and rounded once, the same arithmetic as the PTX kernel's epilogue
    acc_dtype = torch.float32 if bias is not None else out_dtype
    out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=acc_dtype)
    if bias is not None:
        out = (out + bias.float()).to(out_dtype)
    return out[:m, :n].contiguous() if (m_pad, n_pad) != (m, n) else out
