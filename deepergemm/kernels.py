"""Thin launch code of the inline-PTX GEMM: choose a variant (configs), load it (extension), call it.

Inputs arrive validated by deepergemm/layouts.py (ops.py calls check_gemm_inputs first) with the A scales
already in the kernel's M-major layout.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

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


_NO_WORKSPACE = torch.empty(0, dtype=torch.int32)
_stream_k_workspaces: dict[tuple[int, int], torch.Tensor] = {}


def stream_k_workspace(variant: configs.Variant, device: torch.device, num_sms: int) -> torch.Tensor:
    """The stream-K tail's workspace (ptx/scheduler.cuh): a flag per CTA and math warpgroup, which every
    launch leaves at zero, then a slot of BLOCK_M x BLOCK_N fp32 partial sums per CTA (17 MB for 256x128
    tiles on 132 SMs). One per device and stream, grown on demand: launches on one stream run in order,
    two streams never share one. While a CUDA graph is captured, a fresh one (the graph owns it and
    replays the zeroing of its flags)."""
    flags = num_sms * variant.math_wgs
    size = flags + num_sms * variant.block_m * variant.block_n
    if torch.cuda.is_current_stream_capturing():
        workspace = torch.empty(size, dtype=torch.int32, device=device)
        workspace[:flags].zero_()
        return workspace
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    workspace = _stream_k_workspaces.get(key)
    if workspace is None or workspace.numel() < size:
        workspace = torch.zeros(size, dtype=torch.int32, device=device)
        _stream_k_workspaces[key] = workspace
    return workspace


_side_claims: dict[tuple[int, int], torch.Tensor] = {}


def side_claims(device: torch.device) -> torch.Tensor:
    """The L2-side slot counters (ptx/fp8_gemm.cuh's claim_side_slot): 3 int32 that every launch leaves at zero.
    One per device and stream, like the stream-K workspace; while a CUDA graph is captured, a fresh one."""
    if torch.cuda.is_current_stream_capturing():
        return torch.zeros(4, dtype=torch.int32, device=device)
    key = (device.index, torch.cuda.current_stream(device).cuda_stream)
    claims = _side_claims.get(key)
    if claims is None:
        claims = _side_claims[key] = torch.zeros(4, dtype=torch.int32, device=device)
    return claims


@functools.lru_cache(maxsize=None)
def sm_side_table(index: int) -> torch.Tensor:
    """(256,) uint8 on the device: the L2 side of each SM id, from the (cached) detection (deepergemm.l2_sides)."""
    from . import l2_sides

    from .l2_placement import sm_side_table as table_of

    sides = l2_sides.detect(torch.device("cuda", index))
    if not sides.decided:
        raise RuntimeError(f"L2 sides of cuda:{index} undecided: {sides.reason}")
    return table_of(sides, torch.device("cuda", index))


@dataclass(frozen=True)
class PlacedB:
    """B as an L2-placed pool (deepergemm/l2_placement.py): `b` is then the (slots * slab_rows, 128) pool."""
    slots: torch.Tensor  # (K/128, slabs) int32 slot of each slab
    slab_rows: int       # 16 or 32
    n: int               # rows of B


@dataclass(frozen=True)
class SideSchedule:
    """L2-side-aware scheduling: N-tiles [0, side0_n_tiles) on side 0 (configs.side0_n_tiles)."""
    sm_side: torch.Tensor  # (256,) uint8: the side of each SM id
    side0_n_tiles: int


def launch(module, variant: configs.Variant, a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
           b_scales: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None, num_sms: int, group_n: int,
           l2_hints: int, stream_k: bool, bias_kind: int | None = None, group_rows: torch.Tensor | None = None,
           group_stride: int = 0, placed: PlacedB | None = None, sides: SideSchedule | None = None) -> None:
    """One launch of a loaded variant on the current stream (inputs already in the kernel's layouts). The
    developer tools pass bias_kind 0 with a log buffer as `bias` (DG_TRACE / DG_LIFETRACE builds). Grouped
    variants take b (groups * N, K), b_scales (groups * ceil(N/128), K/128), the (groups,) int32 row counts
    and the group stride (the alignment, or masked max_m). `placed`: b is an L2-placed pool; `sides`: schedule
    the N-tiles by L2 side (plain variants)."""
    if bias_kind is None:
        bias_kind = _BIAS_KIND[None if bias is None else bias.dtype]
    workspace = stream_k_workspace(variant, a.device, num_sms) if stream_k else _NO_WORKSPACE
    groups = 0 if group_rows is None else group_rows.numel()
    module.fp8_gemm(a, a_scales, b, b_scales, out, bias if bias is not None else out, bias_kind, num_sms, group_n,
                    l2_hints, workspace, _NO_WORKSPACE if group_rows is None else group_rows, groups, group_stride,
                    placed.slots if placed else _NO_WORKSPACE, placed.slab_rows if placed else 0,
                    placed.n if placed else 0, sides.sm_side if sides else _NO_WORKSPACE,
                    side_claims(a.device) if sides else _NO_WORKSPACE, sides.side0_n_tiles if sides else 0,
                    int(configs.pdl_enabled()), torch.cuda.current_stream(a.device).cuda_stream)


def fp8_gemm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype, bias: torch.Tensor | None, placed: PlacedB | None = None,
             sides_for=None) -> torch.Tensor:
    """The selected variant into a new (M, N) output. placed: b is an L2-placed pool; sides_for(variant): the
    side-aware schedule for the chosen variant, or None."""
    m, k = a.shape
    n = placed.n if placed is not None else b.shape[0]
    num_sms = _sm_count(a.device.index)
    choice = configs.select(m, n, k, num_sms, swap_ok=placed is None)
    choice.variant.check_k(k)
    module = extension.load(choice.variant)
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if bias is not None and bias.dtype not in (torch.float32, torch.bfloat16):
        bias = bias.float()  # fp16 bias: the kernel reads fp32 or bf16
    launch(module, choice.variant, a, a_scales, b, b_scales, out, bias.contiguous() if bias is not None else None,
           num_sms, choice.group_n, choice.l2_hints, choice.stream_k, placed=placed,
           sides=sides_for(choice.variant) if sides_for is not None else None)
    return out


def m_grouped_fp8_gemm(grouping: int, a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                       b_scales: torch.Tensor, group_rows: torch.Tensor, group_stride: int, rows_per_group: int,
                       out: torch.Tensor) -> None:
    """Grouped GEMM into `out` (rows of A, N): a (rows, K) with its scales in the kernel's layout, b (groups, N, K)
    and b_scales (groups, ceil(N/128), K/128) contiguous, group_rows (groups,) int32 (contiguous: real rows per
    group; masked: masked_m), group_stride the segments' alignment or max_m, rows_per_group the tile choice's
    hint. Rows outside the groups' real rows are not written."""
    groups, n, k = b.shape
    num_sms = _sm_count(a.device.index)
    choice = configs.select_grouped(grouping, max(1, rows_per_group), groups, n, k, num_sms)
    launch(extension.load(choice.variant), choice.variant, a, a_scales, b.view(groups * n, k),
           b_scales.view(-1, b_scales.shape[-1]), out, None, num_sms, choice.group_n, choice.l2_hints, False,
           group_rows=group_rows, group_stride=group_stride)


def fp8_gemm_placed(a: torch.Tensor, a_scales: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor,
                    b_scales: torch.Tensor, n: int, slab_rows: int, split_rows: int, out_dtype: torch.dtype,
                    bias: torch.Tensor | None, sm_side: torch.Tensor | None, side_aware: bool) -> torch.Tensor:
    """fp8_gemm with B from an L2-placed pool (rows [0, split_rows) next to L2 side 0); side_aware: schedule each
    side's N-tiles on its own SMs where configs.side0_n_tiles finds the split even enough, else the usual order."""
    def sides_for(variant: configs.Variant) -> SideSchedule | None:
        side0 = configs.side0_n_tiles(variant, n, split_rows)
        if side0 is None:
            return None
        return SideSchedule(sm_side if sm_side is not None else sm_side_table(a.device.index), side0)

    return fp8_gemm(a, a_scales, pool, b_scales, out_dtype, bias, PlacedB(slots, slab_rows, n),
                    sides_for if side_aware else None)
