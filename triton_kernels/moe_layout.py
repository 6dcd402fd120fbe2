"""Triton kernels for the MoE contiguous layout (deepergemm.moe has the API, the rules and the pure-torch twin).

Placing the router's choices is a stable counting sort by expert, in two launches:

1. ``count_experts``: choices are cut into chunks of CHUNK (flat index t * topk + k); one program counts its
   chunk's choices per expert, giving counts (chunks, E).
2. The caller turns the counts into ``base[c, e]``: where expert e's first choice of chunk c goes (its
   segment's start plus the choices of e in the chunks before c; a cumsum over chunks), then
   ``place_choices`` gives each choice ``base[c, e]`` + the number of earlier choices of e in its chunk.

Both are deterministic (no atomics), so every row is a function of the routing alone. ``permute`` and
``unpermute`` move whole rows through the layout's maps, one program per (row, column block).

Launchers allocate only through torch and never synchronize (CUDA graphs capture them); they take CUDA
tensors, or CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepergemm.triton_kernels.launch import FastLaunch
from deepergemm.triton_kernels.quantize import _LAUNCH_OPTIONS, _interpreting, _on_device

CHUNK = 128  # choices per program of the sort: a CHUNK x CHUNK comparison finds the ranks inside a chunk
_EXPERT_TILE = 64  # experts counted at once (a CHUNK x 64 one-hot tile)
_COPY_BYTES = 16384  # bytes of a row one program moves: 128 bytes (eight 16-byte vectors) per thread

__all__ = ["CHUNK", "count_experts", "place_choices", "permute", "unpermute"]


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _chunk_experts(ids_ptr, idx, n, num_experts):
    """The expert of each choice idx, or -1 when dropped (an id outside [0, E), or idx past the end).
    Compared in the ids' own dtype: an int64 id such as 2**32 must not wrap into range."""
    ids = tl.load(ids_ptr + idx, mask=idx < n, other=-1)
    return tl.where((ids >= 0) & (ids < num_experts), ids, -1).to(tl.int32)


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, n, num_experts, CHUNK_SIZE: tl.constexpr, EXPERT_TILE: tl.constexpr):
    c = tl.program_id(0)
    expert = _chunk_experts(ids_ptr, c * CHUNK_SIZE + tl.arange(0, CHUNK_SIZE), n, num_experts)
    for e0 in range(0, num_experts, EXPERT_TILE):
        experts = e0 + tl.arange(0, EXPERT_TILE)
        counts = tl.sum((expert[:, None] == experts[None, :]).to(tl.int32), axis=0)
        tl.store(counts_ptr + c.to(tl.int64) * num_experts + experts, counts, mask=experts < num_experts)


@triton.jit
def _place_kernel(ids_ptr, base_ptr, row_of_ptr, token_of_ptr, n, num_experts, topk, rows,
                  CHUNK_SIZE: tl.constexpr):
    c = tl.program_id(0)
    lane = tl.arange(0, CHUNK_SIZE)
    idx = c * CHUNK_SIZE + lane
    expert = _chunk_experts(ids_ptr, idx, n, num_experts)
    valid = expert >= 0
    # rank inside the chunk: earlier choices of the same expert (dropped ones, all -1, are never stored)
    earlier = (expert[:, None] == expert[None, :]) & (lane[None, :] < lane[:, None])
    rank = tl.sum(earlier.to(tl.int32), axis=1)
    row = tl.load(base_ptr + c.to(tl.int64) * num_experts + expert, mask=valid, other=0) + rank
    keep = valid & (row < rows)
    tl.store(row_of_ptr + idx, tl.where(keep, row, -1), mask=idx < n)
    tl.store(token_of_ptr + row, idx // topk, mask=keep)


@triton.jit
def _columns_of(row, width):
    """Columns to read of a row index that may be -1: none for -1. (One comparison with the columns, rather
    than `cols < width & row >= 0`: the Triton 3.9 interpreter rejects that mask, a bool block & a bool scalar.)"""
    return tl.where(row >= 0, width, 0)


@triton.jit
def _permute_kernel(x_ptr, out_ptr, token_of_ptr, width, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    token = tl.load(token_of_ptr + row)
    # a padding row (token -1) reads no column and stores zeros
    v = tl.load(x_ptr + token.to(tl.int64) * stride_x + cols, mask=cols < _columns_of(token, width), other=0)
    tl.store(out_ptr + row.to(tl.int64) * stride_out + cols, v, mask=cols < width)


@triton.jit
def _unpermute_kernel(y_ptr, out_ptr, row_of_ptr, w_ptr, width, topk, stride_y, stride_out,
                      HAS_WEIGHTS: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(topk):  # in order of k, one rounding per multiply and per add (no FMA): deterministic
        row = tl.load(row_of_ptr + t * topk + k)
        v = tl.load(y_ptr + row.to(tl.int64) * stride_y + cols, mask=cols < _columns_of(row, width), other=0.0)
        v = v.to(tl.float32)
        if HAS_WEIGHTS:
            v = v * tl.load(w_ptr + t * topk + k).to(tl.float32)
        acc = acc + tl.where(row >= 0, v, 0.0)  # a dropped choice adds 0 whatever its weight
    tl.store(out_ptr + t.to(tl.int64) * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < width)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
_launch_count = FastLaunch(_count_kernel)
_launch_place = FastLaunch(_place_kernel)
_launch_permute = FastLaunch(_permute_kernel)
_launch_unpermute = FastLaunch(_unpermute_kernel)


def _check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not (_interpreting() and t.device.type == "cpu"):
        raise ValueError(f"{name} must be a CUDA tensor for the Triton kernels, got a tensor on {t.device}; "
                         f"use deepergemm.moe for CPU tensors")


def _unit_columns(t: torch.Tensor) -> torch.Tensor:
    """t with unit column stride (the kernels take any row stride)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def count_experts(ids: torch.Tensor, num_experts: int) -> torch.Tensor:
    """ids (n,) int32/int64 -> (ceil(n / CHUNK), num_experts) int32: choices of each expert per chunk
    (ids outside [0, num_experts) count nowhere)."""
    _check_device("ids", ids)
    ids = ids.contiguous()
    chunks = triton.cdiv(ids.numel(), CHUNK)
    counts = torch.empty((chunks, num_experts), dtype=torch.int32, device=ids.device)
    if chunks > 0:
        with _on_device(ids.device):
            _launch_count((chunks,), ids, counts, ids.numel(), num_experts, CHUNK_SIZE=CHUNK,
                          EXPERT_TILE=_EXPERT_TILE, num_warps=4, **_LAUNCH_OPTIONS)
    return counts


def place_choices(ids: torch.Tensor, base: torch.Tensor, topk: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (n,) and base (chunks, E) int32 (see the module's docstring) -> (row_of (n,) int32, token_of (rows,)
    int32): choice i goes to row base[i // CHUNK, ids[i]] + its rank among its chunk's choices of that expert,
    or -1 when dropped or when that row is >= rows; token_of[row] = i // topk, -1 for rows no choice took."""
    _check_device("ids", ids)
    ids, base = ids.contiguous(), base.contiguous()
    n, num_experts = ids.numel(), base.shape[1]
    row_of = torch.empty(n, dtype=torch.int32, device=ids.device)
    token_of = torch.full((rows,), -1, dtype=torch.int32, device=ids.device)
    if n > 0:
        with _on_device(ids.device):
            _launch_place((triton.cdiv(n, CHUNK),), ids, base, row_of, token_of, n, num_experts, topk, rows,
                          CHUNK_SIZE=CHUNK, num_warps=4, **_LAUNCH_OPTIONS)
    return row_of, token_of


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    """The same memory as integers of the element's width: the copy moves bits (any float dtype, fp8 too)."""
    return t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _row_grid(rows: int, width: int, element_size: int) -> tuple[tuple[int, int], int]:
    block = min(triton.next_power_of_2(max(width, 1)), _COPY_BYTES // element_size)
    return (rows, triton.cdiv(width, block)), block


def permute(x: torch.Tensor, token_of: torch.Tensor) -> torch.Tensor:
    """x (T, K) -> out (rows, K) with out[r] = x[token_of[r]], zeros where token_of[r] == -1."""
    _check_device("x", x)
    x = _unit_columns(x)
    rows, width = token_of.numel(), x.shape[1]
    out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    if rows > 0 and width > 0:
        grid, block = _row_grid(rows, width, x.element_size())
        with _on_device(x.device):
            _launch_permute(grid, _as_bits(x), _as_bits(out), token_of.contiguous(), width, x.stride(0),
                            out.stride(0), BLOCK=block, num_warps=4, **_LAUNCH_OPTIONS)
    return out


def unpermute(y: torch.Tensor, row_of: torch.Tensor, weights: torch.Tensor | None,
              out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y (rows, N), row_of (T, topk) -> out (T, N) in y's dtype: out[t] = sum over k in order, in fp32, of
    weights[t, k] * y[row_of[t, k]] (weight 1 when None; row -1 adds 0). out_dtype=torch.float32 stores the
    sums before the cast to y's dtype (a test hook: the Triton 3.9 interpreter truncates fp32 -> bf16)."""
    _check_device("y", y)
    y = _unit_columns(y)
    (t, topk), width = row_of.shape, y.shape[1]
    out = torch.empty((t, width), dtype=out_dtype or y.dtype, device=y.device)
    if t > 0 and width > 0:
        grid, block = _row_grid(t, width, 4)  # the accumulator is fp32
        w = weights.contiguous() if weights is not None else row_of  # any pointer: not read without weights
        with _on_device(y.device):
            _launch_unpermute(grid, y, out, row_of.contiguous(), w, width, topk, y.stride(0), out.stride(0),
                              HAS_WEIGHTS=weights is not None, BLOCK=block, num_warps=4, **_LAUNCH_OPTIONS)
    return out
