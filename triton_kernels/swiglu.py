"""Triton SwiGLU of a gate/up GEMM's bf16 output: the unfused path of ``fp8_gemm_swiglu``.

Input ``gate_up`` (M, 2I) bf16 in the interleaved layout (layouts.interleave_gate_up): 128-column group j of gate at
columns [256j, 256j + 128), the matching up group at [256j + 128, 256j + 256). Output h (M, I) bf16,
h[:, 128j + c] = SwiGLU(gate group j, up group j)[:, c].

The formula, in fp32 on the bf16 values (exact in fp32), each step rounded as written:

    t = g * -log2(e)          mul.rn.f32, -log2(e) the fp32 constant 0xBFB8AA3B
    e = 2^t                   ex2.approx.ftz.f32
    d = e + 1                 add.rn.f32
    r = 1 / d                 rcp.approx.ftz.f32
    s = g * r                 mul.rn.f32                 (silu(g))
    h = s * u                 mul.rn.f32, then rounded to bf16 (cvt.rn.bf16.f32)

It runs as one inline-assembly block whose text is ptx/ptx.cuh's dg::swiglu_f32 (a CPU test compares the two), so
the GEMM epilogue's SwiGLU (ptx/epilogue.cuh) gives the same bits: no compiler may reorder, contract or replace an
instruction of it. deepergemm.reference.swiglu computes the same steps with torch ops; its exp2 and reciprocal are
not the approximate instructions', so it may differ in h's last bit.

The inline assembly needs a GPU (Triton's interpreter cannot run it). Launchers return fresh outputs, never
synchronize and allocate only through torch (torch.compile, CUDA graphs).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepergemm import layouts
from deepergemm.triton_kernels.launch import FastLaunch
from deepergemm.triton_kernels.quantize import _on_device

GROUP = 128

# The instructions of dg::swiglu_f32 (ptx/ptx.cuh), operands $1 = g, $2 = u, $0 = h.
SWIGLU_ASM = """{
 .reg .f32 t, e;
 mul.rn.f32 t, $1, 0fBFB8AA3B;
 ex2.approx.ftz.f32 e, t;
 add.rn.f32 e, e, 0f3F800000;
 rcp.approx.ftz.f32 e, e;
 mul.rn.f32 t, $1, e;
 mul.rn.f32 $0, t, $2;
}"""
_ASM = tl.constexpr(SWIGLU_ASM)

__all__ = ["swiglu", "SWIGLU_ASM"]


@triton.jit
def _swiglu_f32(g, u):
    return tl.inline_asm_elementwise(_ASM, "=f,f,f", [g, u], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _swiglu_kernel(x_ptr, h_ptr, M, GROUPS, stride_xm, stride_hm, BLOCK_M: tl.constexpr, GROUP_SIZE: tl.constexpr):
    """One program: BLOCK_M rows x one 128-column h group (its gate and up groups, 2 x 128 columns of x)."""
    pid = tl.program_id(0)
    pid_m = pid // GROUPS
    group = pid % GROUPS
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, GROUP_SIZE)
    rows64 = rows.to(tl.int64)
    mask = (rows < M)[:, None]
    gate_at = x_ptr + rows64[:, None] * stride_xm + group * 2 * GROUP_SIZE + cols[None, :]
    g = tl.load(gate_at, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gate_at + GROUP_SIZE, mask=mask, other=0.0).to(tl.float32)
    h = _swiglu_f32(g, u)
    tl.store(h_ptr + rows64[:, None] * stride_hm + group * GROUP_SIZE + cols[None, :], h.to(tl.bfloat16), mask=mask)


_launch_swiglu = FastLaunch(_swiglu_kernel)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU of an interleaved (M, 2I) bf16 gate/up output on CUDA -> h (M, I) bf16 (see the module's docstring)."""
    layouts.check_swiglu_input(gate_up)
    if gate_up.device.type != "cuda":
        raise ValueError(f"gate_up must be a CUDA tensor for the Triton SwiGLU, got a tensor on {gate_up.device}; use "
                         f"torch.ops.deepergemm.swiglu (or deepergemm.reference) for CPU tensors")
    if gate_up.stride(1) != 1:
        gate_up = gate_up.contiguous()
    m, n = gate_up.shape
    h = torch.empty((m, n // 2), dtype=torch.bfloat16, device=gate_up.device)
    groups = n // (2 * GROUP)
    if m == 0:
        return h
    block_m = min(32, triton.next_power_of_2(m))
    with _on_device(gate_up.device):
        _launch_swiglu((triton.cdiv(m, block_m) * groups,), gate_up, h, m, groups, gate_up.stride(0), h.stride(0),
                       BLOCK_M=block_m, GROUP_SIZE=GROUP, num_warps=max(1, min(4, block_m * GROUP // 1024)),
                       enable_fp_fusion=False)
    return h
