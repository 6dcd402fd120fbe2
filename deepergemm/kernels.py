"""The Python half of the inline-PTX GEMM's launch path: plans and developers' launches.

The GEMM ops' CUDA kernels are C++ (ptx/binding.cpp): they check the inputs, look up a cached plan and launch.
On a problem's first call the binding asks Python for its plan through the op deepergemm::_plan (ops.py),
which lands in plan() here: configs.select picks the variant, extension.load builds (if needed) and loads
its unit. Tests and developer tools launch a given variant directly with launch().
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import configs, extension

# deepergemm::_plan's kinds (ptx/binding.cpp's PlanKind)
PLAN_PLAIN, PLAN_PLACED, PLAN_CONTIGUOUS, PLAN_MASKED, PLAN_FP8_OUT, PLAN_SWIGLU, PLAN_RECIPE_256 = 0, 1, 2, 3, 4, 5, 6
PLAN_GROUPED_SWIGLU, PLAN_MASKED_SWIGLU = 7, 8
_BIAS_KIND = {None: 0, torch.float32: 1, torch.bfloat16: 2}


@functools.lru_cache(maxsize=None)
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _is_hopper(index: int) -> bool:
    return torch.cuda.get_device_capability(index) == (9, 0)


def available(device: torch.device) -> bool:
    """The inline-PTX kernel can run on this device: Hopper (sm_90), and the host binding loaded or buildable
    (kernel units come prebuilt or are built with nvcc)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _is_hopper(index) and (extension.binding_loaded() or extension.binding_problem() is None)


def plan(kind: int, device: int, m: int, n: int, k: int, groups: int, rows: int, split_rows: int,
         side_aware: bool) -> list[int]:
    """A problem's plan for the binding: [variant id, group_n, l2_hints, stream_k, side 0's N-tiles, pdl, unfused]
    (unfused: an fp8-output or SwiGLU problem runs as the bf16 GEMM of this plan, then the Triton steps).
    kind: PLAN_* (PLAN_FP8_OUT: the fp8-output variants, configs.select_fp8_out; PLAN_SWIGLU: configs.select_swiglu,
    n = B's rows; PLAN_RECIPE_256: configs.select_recipe_256, a pairs variant or a 128 one; PLAN_GROUPED_SWIGLU /
    PLAN_MASKED_SWIGLU: configs.select_grouped_swiglu, or the grouped bf16 GEMM's plan where
    configs.grouped_swiglu_fused says no); grouped plans take the groups and the rows per group the tile choice plans
    for; placed plans the placement's split row and whether to schedule the N-tiles by L2 side."""
    sms = sm_count(device)
    sw = configs.switches()
    side0 = None
    unfused = False
    if kind == PLAN_PLAIN:
        choice = configs.select(m, n, k, sms, sw=sw)
    elif kind in (PLAN_FP8_OUT, PLAN_SWIGLU):
        choice = (configs.select_fp8_out if kind == PLAN_FP8_OUT else configs.select_swiglu)(m, n, k, sms, sw=sw)
        if not configs.fused_epilogue_pays(choice, m, k, sms, sw):  # the bf16 GEMM's plan, then the Triton steps
            choice, unfused = configs.select(m, n, k, sms, sw=sw), True
    elif kind == PLAN_RECIPE_256:
        choice = configs.select_recipe_256(m, n, k, sms, sw=sw)
    elif kind == PLAN_PLACED:
        choice = configs.select(m, n, k, sms, swap_ok=False, sw=sw)
        side0 = configs.side0_n_tiles(choice.variant, n, split_rows) if side_aware else None
    elif kind in (PLAN_CONTIGUOUS, PLAN_MASKED):
        grouping = configs.GROUP_CONTIGUOUS if kind == PLAN_CONTIGUOUS else configs.GROUP_MASKED
        choice = configs.select_grouped(grouping, max(1, rows), groups, n, k, sms, sw=sw)
    elif kind in (PLAN_GROUPED_SWIGLU, PLAN_MASKED_SWIGLU):
        grouping = configs.GROUP_CONTIGUOUS if kind == PLAN_GROUPED_SWIGLU else configs.GROUP_MASKED
        if configs.grouped_swiglu_fused(sw):
            choice = configs.select_grouped_swiglu(grouping, max(1, rows), groups, n, k, sms, sw=sw)
        else:  # the grouped bf16 GEMM's plan, then the Triton steps
            choice = configs.select_grouped(grouping, max(1, rows), groups, n, k, sms, sw=sw)
            unfused = True
    else:
        raise ValueError(f"deepergemm::_plan: unknown kind {kind}")
    choice.variant.check_k(k)
    kernel = extension.load(choice.variant)
    return [kernel.id, choice.group_n, choice.l2_hints, int(choice.stream_k), side0 or 0,
            int(configs.pdl_enabled(sw)), int(unfused)]


@functools.lru_cache(maxsize=None)
def sm_side_table(index: int) -> torch.Tensor:
    """(256,) uint8 on the device: the L2 side of each SM id, from the (cached) detection (deepergemm.l2_sides)."""
    from . import l2_sides
    from .l2_placement import sm_side_table as table_of

    sides = l2_sides.detect(torch.device("cuda", index))
    if not sides.decided:
        raise RuntimeError(f"L2 sides of cuda:{index} undecided: {sides.reason}")
    return table_of(sides, torch.device("cuda", index))


def side_claims(device: torch.device) -> torch.Tensor:
    """The L2-side slot counters the binding keeps for the current stream (3 int32 + 1, zero between launches)."""
    extension.load_binding()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.ops.deepergemm_native.side_claims(index)


def stream_k_workspace(device: torch.device) -> torch.Tensor:
    """The binding's stream-K workspace for the current stream (int32: num_sms * math warpgroups flags, zero between
    launches, then the partial sums; empty before the stream's first stream-K launch)."""
    extension.load_binding()
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.ops.deepergemm_native.stream_k_workspace(index)


@dataclass(frozen=True)
class PlacedB:
    """B as an L2-placed pool (deepergemm/l2_placement.py): `b` is then the (slots * slab_rows, 128) pool."""
    slots: torch.Tensor  # (K/128, slabs) int32 slot of each slab
    slab_rows: int       # a power of two in 8..256 (layouts.PLACED_SLAB_ROWS)
    n: int               # rows of B


@dataclass(frozen=True)
class SideSchedule:
    """L2-side-aware scheduling: N-tiles [0, side0_n_tiles) on side 0 (configs.side0_n_tiles)."""
    sm_side: torch.Tensor  # (256,) uint8: the side of each SM id
    side0_n_tiles: int


def launch(kernel: extension.LoadedKernel, a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
           b_scales: torch.Tensor, out: torch.Tensor, bias: torch.Tensor | None = None, group_n: int = 16,
           l2_hints: int = 0, stream_k: bool = False, group_rows: torch.Tensor | None = None, group_stride: int = 0,
           placed: PlacedB | None = None, sides: SideSchedule | None = None, pdl: bool | None = None,
           trace_log: torch.Tensor | None = None, out_scales: torch.Tensor | None = None, ue8m0: bool = False) -> None:
    """One launch of a loaded variant (extension.load) on the current stream, inputs already in the kernel's
    layouts (a_scales M-major, b_scales contiguous). Grouped variants take b (groups * N, K), b_scales
    (groups * ceil(N/128), K/128), the (groups,) int32 row counts and the group stride (the alignment, or masked
    max_m). placed: b is an L2-placed pool; sides: schedule the N-tiles by L2 side. trace_log: the event log of a
    DG_TRACE / DG_LIFETRACE build. fp8-output variants: out is (M, N) float8_e4m3fn and out_scales its (M, N/128) fp32
    scales in the activation layout (layouts.empty_act_scales); ue8m0 rounds them to powers of two."""
    torch.ops.deepergemm_native.launch(
        kernel.id, a, a_scales, b, b_scales, out, bias, _BIAS_KIND[None if bias is None else bias.dtype], group_n,
        l2_hints, stream_k, group_rows, group_stride, placed.slots if placed else None,
        placed.slab_rows if placed else 0, placed.n if placed else 0, sides.sm_side if sides else None,
        sides.side0_n_tiles if sides else 0, configs.pdl_enabled() if pdl is None else pdl, trace_log, out_scales,
        ue8m0)
