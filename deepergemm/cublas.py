"""The cuBLAS backend of fp8_gemm: torch._scaled_mm with blockwise (1x128 by 128x128) scales.

A selectable fallback (``backend="cublas"``) and the speed baseline of the bench. It is what every
PyTorch user already has on Hopper; deepergemm's own kernel must beat it.

cuBLASLt's blockwise recipe wants the activation scales M-major with an M stride of exactly M and
the weight scales K-group-major, so this module adapts our layouts (tiny copies of the scales
only, never of the operands, except that A is padded to 4 rows when M is not a multiple of 4).
N must be a multiple of 16: torch._scaled_mm rejects other N. And with N > 128, K must be at least 512:
below that cuBLASLt's blockwise kernels return wrong results without an error (calc_diff 1e-2 to 1.0 at
N = 256 and 512, K = 128, 256 and 384, every M tried) or refuse with CUBLAS_STATUS_NOT_SUPPORTED
(bench/cublas_shapes.py on the H100 with torch 2.11.0+cu130; bench/RESULTS.md). (Padding B's N, tried
earlier, gave wrong columns for the same reason.) Such shapes get a clear error here and run on the "ptx" or
"reference" backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layouts import round_up

_ROW_ALIGN = 4  # cuBLASLt's blockwise scales want 16-byte aligned M columns
_N_ALIGN = 16   # torch._scaled_mm's rule for N
_MIN_K_WIDE = 512  # with N > 128, the smallest K cuBLASLt's blockwise recipe gets right


def supports_n(n: int) -> bool:
    """Whether torch._scaled_mm takes this N (rows of b)."""
    return n % _N_ALIGN == 0


def supports(n: int, k: int) -> bool:
    """Whether the cuBLAS backend computes an N x K weight's GEMM correctly (see the module's docstring)."""
    return supports_n(n) and (n <= 128 or k >= _MIN_K_WIDE)


def fp8_gemm_cublas(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                    out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    n, k = b.shape
    if not supports_n(n):
        raise ValueError(f"backend='cublas' needs N (rows of b) to be a multiple of {_N_ALIGN}, got N={n}; "
                         f"use backend='ptx' (any N % 8 == 0) or backend='reference'")
    if not supports(n, k):
        raise ValueError(f"backend='cublas' needs K >= {_MIN_K_WIDE} when N (rows of b) > 128 (below that cuBLASLt's "
                         f"blockwise GEMM returns wrong results), got N={n}, K={k}; use backend='ptx' or 'reference'")
    return scaled_mm_blockwise(a, a_scales, b, b_scales, out_dtype, bias)


def scaled_mm_blockwise(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                        out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    """torch._scaled_mm on our layouts without the shape rules (bench/cublas_shapes.py probes cuBLAS with it)."""
    m = a.shape[0]
    m_pad = round_up(m, _ROW_ALIGN)
    if m_pad != m:
        a = F.pad(a.view(torch.uint8), (0, 0, 0, m_pad - m)).view(a.dtype)
        a_scales = F.pad(a_scales, (0, 0, 0, m_pad - m), value=1.0)
    scale_a = a_scales.t().contiguous().t()  # (M, K/128), strides (1, M)
    scale_b = b_scales.contiguous().t()       # (K/128, ceil(N/128))
    # bias is added in fp32 and rounded once, the same arithmetic as the PTX kernel's epilogue
    acc_dtype = torch.float32 if bias is not None else out_dtype
    out = torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b, out_dtype=acc_dtype)
    if bias is not None:
        out = (out + bias.float()).to(out_dtype)
    return out[:m] if m_pad != m else out
