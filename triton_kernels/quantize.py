"""Triton fp8 quantizers: per 1x128 group (activations) and per 128x128 block (weights), or per 1x256 and
128x256 (the 256-K recipe).

Both are bit-exact with deepergemm.reference computed on the CPU, which defines the contract:

* ``amax`` is an integer max over the bits of ``|x|``, which orders like the floats and puts
  every NaN above +Inf, so it propagates NaN like ``torch.amax``; the clamp is a NaN-keeping max
  (PTX ``max.NaN.f32``), like ``torch.clamp``. Max is exact, so the reduction order does not matter.
* ``scale = amax / 448`` is one correctly rounded division (``div.rn.f32``; Triton's ``/`` on fp32
  is ``div.full.f32``, which is not correctly rounded).
* The multiplier is ``(1 / amax) * 448`` (the reference's rule): ``div.rn.f32`` of 1 by amax, then
  one fp32 multiply. A single correctly rounded ``448 / amax`` differs from it for about a quarter of
  all amax values, and a one-ulp different multiplier changes fp8 roundings.
* UE8M0: the scale is rounded up to a power of two on its bits, like ``ue8m0_round_up``; its
  reciprocal is exact.
* ``q = fp8(x * multiplier)``: one fp32 multiply, then ``cvt.rn.satfinite.e4m3x2.f32`` (round to
  nearest even, saturating), which is torch's cast on every value the rules produce.

The reference divides tensor by tensor, so it gives the same bits on the CPU and on CUDA.

Launchers return freshly allocated outputs, never synchronize and allocate only through torch, so
the custom ops that call them trace under torch.compile and replay in CUDA graphs.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from deepergemm import layouts, reference
from deepergemm.triton_kernels.launch import FastLaunch

GROUP = reference.GROUP_K
_FP8_MAX = tl.constexpr(reference.FP8_MAX)
_AMAX_EPS = tl.constexpr(reference.AMAX_EPS)

__all__ = ["quantize_act", "quantize_weight"]


# ----------------------------------------------------------------------------------------------
# shared device code
# ----------------------------------------------------------------------------------------------
@triton.jit
def _abs_bits(x):
    """|x| (fp32) as int32 bits. For non-negative floats the integer order is the float order and
    every NaN is above +Inf, so an integer max is a NaN-propagating amax (tl.max on floats is
    maxnum, which drops NaN) and stays a builtin reduction (fast, also in the interpreter)."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _scale_and_multiplier(amax, UE8M0: tl.constexpr):
    """amax (fp32) -> (scale stored for dequantization, multiplier applied before the fp8 cast).
    Mirrors reference._scales_and_multipliers operation by operation."""
    amax = tl.maximum(amax, _AMAX_EPS, propagate_nan=tl.PropagateNan.ALL)  # torch.clamp keeps NaN
    scale = tl.math.div_rn(amax, _FP8_MAX)
    if UE8M0:
        # ue8m0_round_up: exponent + 1 when the mantissa is non-zero; NaN/Inf pass through
        bits = scale.to(tl.int32, bitcast=True)
        exponent = (bits >> 23) & 0xFF
        rounded = ((exponent + ((bits & 0x7FFFFF) != 0).to(tl.int32)) << 23).to(tl.float32, bitcast=True)
        scale = tl.where(exponent != 0xFF, rounded, scale)
        multiplier = tl.math.div_rn(1.0, scale)
    else:
        # the reference's (1 / amax) * 448: two roundings, both kept
        multiplier = tl.math.div_rn(1.0, amax) * _FP8_MAX
    return scale, multiplier


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _quantize_act_kernel(x_ptr, q_ptr, s_ptr, M, GROUPS, stride_xm, stride_qm, stride_sg,
                         UE8M0: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr,
                         GROUP_SIZE: tl.constexpr):
    """One program: BLOCK_M rows x BLOCK_G groups of GROUP_SIZE columns, as a 3-D tile.

    The group index varies fastest across programs, so neighbouring programs read neighbouring
    memory; scales are stored M-major, so each group's BLOCK_M scales are one contiguous store."""
    pid = tl.program_id(0)
    g_blocks = tl.cdiv(GROUPS, BLOCK_G)
    pid_m = pid // g_blocks
    pid_g = pid % g_blocks

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    groups = pid_g * BLOCK_G + tl.arange(0, BLOCK_G)
    cols = tl.arange(0, GROUP_SIZE)
    rows64 = rows.to(tl.int64)  # M * K can pass 2**31
    col_off = groups[None, :, None] * GROUP_SIZE + cols[None, None, :]
    mask = (rows < M)[:, None, None] & (groups < GROUPS)[None, :, None]

    x = tl.load(x_ptr + rows64[:, None, None] * stride_xm + col_off, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(_abs_bits(x), axis=2).to(tl.float32, bitcast=True)
    scale, multiplier = _scale_and_multiplier(amax, UE8M0)
    q = (x * multiplier[:, :, None]).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + rows64[:, None, None] * stride_qm + col_off, q, mask=mask)

    s_mask = (rows < M)[:, None] & (groups < GROUPS)[None, :]
    tl.store(s_ptr + groups[None, :].to(tl.int64) * stride_sg + rows[:, None], scale, mask=s_mask)


@triton.jit
def _quantize_weight_kernel(w_ptr, q_ptr, s_ptr, N, GROUPS, stride_wn, stride_qn,
                            UE8M0: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One program: one BLOCK_N x BLOCK_K block. Rows past N load as 0, which is the reference's
    zero padding (it never raises amax, and an all-zero block is clamped either way)."""
    pid = tl.program_id(0)
    pid_n = pid // GROUPS
    pid_k = pid % GROUPS

    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rows64 = rows.to(tl.int64)
    mask = (rows < N)[:, None]

    w = tl.load(w_ptr + rows64[:, None] * stride_wn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.max(_abs_bits(w), axis=1), axis=0).to(tl.float32, bitcast=True)
    scale, multiplier = _scale_and_multiplier(amax, UE8M0)
    q = (w * multiplier).to(q_ptr.dtype.element_ty)
    tl.store(q_ptr + rows64[:, None] * stride_qn + cols[None, :], q, mask=mask)
    tl.store(s_ptr + pid, scale)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def _interpreting() -> bool:
    """Triton's CPU interpreter (tests only) runs kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def _check_input(name: str, t: torch.Tensor, group_k: int = GROUP) -> torch.Tensor:
    """Validate; return t with unit column stride (the kernels take any row stride)."""
    layouts.check_quantize_input(name, t, group_k)
    if t.device.type != "cuda" and not (_interpreting() and t.device.type == "cpu"):
        raise ValueError(f"{name} must be a CUDA tensor for the Triton quantizer, got a tensor on {t.device}; "
                         f"use torch.ops.deepergemm.quantize_* (or deepergemm.reference) for CPU tensors")
    if t.stride(1) != 1 and t.shape[1] > 1:
        t = t.contiguous()
    return t


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device for the launch."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def act_config(m: int, group_k: int = GROUP) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_G, num_warps) for quantize_act: up to 32 rows x 1 group (8 KiB of bf16 at 128) per
    program, at most 32 elements per thread (four 16-byte loads in flight for bf16)."""
    return _act_config(min(max(m, 1), 32), group_k)


@functools.lru_cache(maxsize=None)
def _act_config(m: int, group_k: int) -> tuple[int, int, int]:
    block_m = triton.next_power_of_2(m)
    block_g = 1
    num_warps = max(1, min(4 * group_k // GROUP, block_m * block_g * group_k // 1024))
    return block_m, block_g, num_warps


# Every launch: no mul+add contraction (there is no add today; this keeps it that way, and silences
# Triton 3.9's warning about the changing default).
_LAUNCH_OPTIONS = {"enable_fp_fusion": False}

_launch_act = FastLaunch(_quantize_act_kernel)
_launch_weight = FastLaunch(_quantize_weight_kernel)


def launch_act(x: torch.Tensor, ue8m0: bool, config: tuple[int, int, int] | None = None,
               q_dtype: torch.dtype = reference.FP8_DTYPE, group_k: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_act with an optional (BLOCK_M, BLOCK_G, num_warps) (the benchmark sweeps these).
    q_dtype=torch.float32 stores the scaled values before the fp8 cast (a test hook)."""
    x = _check_input("x", x, group_k)
    m, k = x.shape
    block_m, block_g, num_warps = config or act_config(m, group_k)
    q = torch.empty((m, k), dtype=q_dtype, device=x.device)
    scales = layouts.empty_act_scales(m, k, x.device, group_k)
    groups = k // group_k
    if m == 0 or groups == 0:
        return q, scales
    grid = (triton.cdiv(m, block_m) * triton.cdiv(groups, block_g),)
    with _on_device(x.device):
        _launch_act(grid, x, q, scales, m, groups, x.stride(0), q.stride(0), scales.stride(1),
                    UE8M0=ue8m0, BLOCK_M=block_m, BLOCK_G=block_g, GROUP_SIZE=group_k, num_warps=num_warps,
                    **_LAUNCH_OPTIONS)
    return q, scales


def launch_weight(w: torch.Tensor, ue8m0: bool, q_dtype: torch.dtype = reference.FP8_DTYPE,
                  block_k: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_weight; q_dtype=torch.float32 stores the scaled values before the fp8 cast (a test hook)."""
    w = _check_input("w", w, block_k)
    n, k = w.shape
    n_blocks, groups = layouts.ceil_div(n, GROUP), k // block_k
    q = torch.empty((n, k), dtype=q_dtype, device=w.device)
    scales = torch.empty((n_blocks, groups), dtype=torch.float32, device=w.device)
    if n == 0 or groups == 0:
        return q, scales
    # 128x128 values over 256 threads: 64 fp32 registers each, the whole block's loads in flight (128x256: 512
    # threads, as many each)
    with _on_device(w.device):
        _launch_weight((n_blocks * groups,), w, q, scales, n, groups, w.stride(0), q.stride(0),
                       UE8M0=ue8m0, BLOCK_N=GROUP, BLOCK_K=block_k, num_warps=8 * block_k // GROUP, **_LAUNCH_OPTIONS)
    return q, scales


def quantize_act(x: torch.Tensor, ue8m0: bool = False, group_k: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(1 x group_k)-group fp8 quantization of x (M, K) bf16/fp16/fp32 on CUDA (group_k 128, or 256 for the
    256-K recipe).

    Returns (q (M, K) float8_e4m3fn contiguous, scales (M, K/group_k) fp32 in the GEMM's M-major
    layout, see layouts.empty_act_scales), bit-exact with reference.quantize_act on the CPU."""
    return launch_act(x, ue8m0, group_k=group_k)


def quantize_weight(w: torch.Tensor, ue8m0: bool = False, block_k: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(128 x block_k)-block fp8 quantization of w (N, K) bf16/fp16/fp32 on CUDA, N any size (block_k 128, or 256
    for the 256-K recipe).

    Returns (q (N, K) float8_e4m3fn contiguous, scales (ceil(N/128), K/block_k) fp32 contiguous),
    bit-exact with reference.quantize_weight on the CPU."""
    return launch_weight(w, ue8m0, block_k=block_k)
