"""deepergemm: exact FP8 block-scaled GEMM for NVIDIA Hopper, from PyTorch.

    import deepergemm as dg
    w8, w_s = dg.quantize_weight(w)            # (N, K) fp8, (ceil(N/128), K/128) fp32: 128x128 blocks
    y = dg.linear(x, w8, w_s, bias=None)       # quantize x per 1x128 group, multiply: (..., N) in x's dtype
    a, a_s = dg.quantize_act(x2d)              # (M, K) fp8, (M, K/128) fp32 (M-major, TMA aligned)
    y = dg.fp8_gemm(a, a_s, w8, w_s)           # bf16 (M, N) = dequant(a) @ dequant(w8).T

All four are torch.library custom ops (torch.ops.deepergemm.*): they run inside
torch.compile(fullgraph=True) and CUDA graphs, on CPU through the pure-torch reference.
"""
from __future__ import annotations

import torch

from ._checkout import register_checkout_subpackages as _register

_register(__name__)  # before anything imports deepergemm.triton_kernels or deepergemm._ptx

from . import ops as _ops  # registers torch.ops.deepergemm.*
from .layouts import require_tensors as _require_tensors
from .reference import calc_diff, dequantize_act, dequantize_weight

__version__ = "0.1.0"

__all__ = ["quantize_act", "quantize_weight", "fp8_gemm", "linear", "calc_diff",
           "dequantize_act", "dequantize_weight", "BACKENDS"]

BACKENDS = _ops.BACKENDS


def quantize_act(x: torch.Tensor, ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations (M, K) per 1x128 group: (fp8 (M, K), fp32 scales (M, K/128), M-major).

    ue8m0=True rounds every scale up to a power of two (stored as fp32)."""
    _require_tensors(x=x)
    return torch.ops.deepergemm.quantize_act(x, ue8m0)


def quantize_weight(w: torch.Tensor, ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize weights (N, K) per 128x128 block: (fp8 (N, K), fp32 scales (ceil(N/128), K/128))."""
    _require_tensors(w=w)
    return torch.ops.deepergemm.quantize_weight(w, ue8m0)


def fp8_gemm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None,
             backend: str = "auto") -> torch.Tensor:
    """out (M, N) = dequant(a) @ dequant(b).T (+ bias), rounded once to out_dtype (bf16 or fp32).

    a (M, K) fp8 e4m3 with a_scales (M, K/128) fp32; b (N, K) fp8 e4m3 with b_scales
    (ceil(N/128), K/128) fp32; K a multiple of 128, N a multiple of 8. backend: "auto", "ptx",
    "cublas" or "reference" (see deepergemm.ops)."""
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales, bias=bias)
    return torch.ops.deepergemm.fp8_gemm(a, a_scales, b, b_scales, out_dtype, bias, backend)


def linear(x: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None = None,
           backend: str = "auto") -> torch.Tensor:
    """y = x @ dequant(w).T + bias with x quantized per 1x128 group on the fly; y has x's dtype.

    x (..., K) bf16 or fp32; w (N, K) fp8 e4m3 with w_scales (ceil(N/128), K/128) fp32."""
    _require_tensors(x=x, w=w, w_scales=w_scales, bias=bias)
    return torch.ops.deepergemm.linear(x, w, w_scales, bias, backend)
