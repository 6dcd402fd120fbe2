"""Launch code of the inline-PTX GEMM (the "ptx" backend): thin, validated inputs in, output out.

The kernel itself lives in ptx/ and is built by deepergemm/extension.py.
"""
from __future__ import annotations

import torch


def available(device: torch.device) -> bool:
    """The PTX backend is not built yet in this version; "auto" falls back to cuBLAS."""
    return False


def fp8_gemm(a, a_scales, b, b_scales, out_dtype, bias):  # pragma: no cover - not reachable while unavailable
    raise RuntimeError("the inline-PTX fp8_gemm kernel is not available in this build")
