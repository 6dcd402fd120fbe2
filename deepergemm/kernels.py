"""Thin launch code of the inline-PTX GEMM: choose a variant (configs), load it (extension), call it.

Inputs arrive validated by deepergemm/layouts.py (ops.py calls check_gemm_inputs first) with the A scales
already in the kernel's M-major layout.
"""
from __future__ import annotations

import functools

import torch

from . import configs, extension

_BIAS_KIND = {None: 0, torch.float32: 1, torch.bfloat16: 2}


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _device_ok(index: int) -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.get_device_capability(index) == (9, 0) and CUDA_HOME is not None


def available(device: torch.device) -> bool:
    """Hopper (sm_90) and a CUDA toolkit to build the kernel with."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return _device_ok(device.index if device.index is not None else torch.cuda.current_device())


def fp8_gemm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]
    num_sms = _sm_count(a.device.index)
    choice = configs.select(m, n, k, num_sms)
    choice.variant.check_k(k)
    module = extension.load(choice.variant)
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if bias is not None and bias.dtype not in (torch.float32, torch.bfloat16):
        bias = bias.float()  # fp16 bias: the kernel reads fp32 or bf16
    bias_arg = bias.contiguous() if bias is not None else out  # unused when bias_kind == 0
    module.fp8_gemm(a, a_scales, b, b_scales, out, bias_arg, _BIAS_KIND[None if bias is None else bias.dtype],
                    num_sms, choice.group_n, choice.l2_hints, torch.cuda.current_stream(a.device).cuda_stream)
    return out
