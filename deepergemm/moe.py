"""MoE token layout for the m-grouped contiguous GEMM: router output -> grouped rows of A, and back.

    layout = build_contiguous_layout(topk_ids, num_experts)   # topk_ids (T, topk): the router's choices
    a = permute_tokens(x, layout)                               # (layout.rows, K): experts' rows back to back
    ...                                                         # grouped GEMM over a, given the layout
    y = unpermute_tokens(out, layout, topk_weights)             # (T, N): sum_k w[t, k] * out[row_of[t, k]]

The layout
----------
Expert e owns the segment of rows ``[group_starts[e], group_starts[e] + round_up(group_sizes[e], alignment))``;
its first ``group_sizes[e]`` rows hold its choices, in order of their flat index ``t * topk + k`` (a stable
sort: the layout is a function of topk_ids alone), the rest is padding. Segments follow each other in expert
order: ``group_starts[e] = min(sum_{j<e} round_up(group_sizes[j], alignment), rows)``, which is what the
grouped GEMM computes from ``group_sizes`` (deepergemm/layouts.py: GROUPED_M_ALIGNMENT).

* Dropped choices: an id of -1, or any id outside ``[0, num_experts)``, is not placed (expert parallelism: an
  expert of another rank). Its ``row_of`` is -1; ``unpermute_tokens`` adds 0 for it.
* ``max_rows=None``: ``rows`` is the exact total, ``sum_e round_up(group_sizes[e], alignment)``, read back to
  the host: one synchronization with the device.
* ``max_rows`` given: no host synchronization at all (CUDA-graph capturable); ``rows = max_rows``, and every
  choice whose row would be ``>= max_rows`` is dropped (``row_of`` -1, not counted in ``group_sizes``). Pass
  ``contiguous_rows_bound(T, topk, num_experts)`` to never drop one.

CUDA tensors run the Triton kernels of deepergemm.triton_kernels.moe_layout; other tensors the pure-torch
implementation below (the tests' reference, same results bit for bit). permute_tokens, unpermute_tokens and
build_contiguous_layout with max_rows go through custom ops (deepergemm/ops.py: moe_permute, moe_unpermute,
moe_contiguous_layout), so they trace under torch.compile(fullgraph=True); max_rows=None cannot (its sizes
depend on the data). Every rule raises TypeError (wrong
type/dtype) or ValueError (value, shape, device) naming the argument, what was given and what is required.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .layouts import GROUPED_M_ALIGNMENT, _require_dtype, _require_same_device, _require_tensor, check_rank

__all__ = ["ContiguousLayout", "contiguous_rows_bound", "build_contiguous_layout", "group_sizes_from_m_indices",
           "permute_tokens", "unpermute_tokens"]

_ID_DTYPES = (torch.int32, torch.int64)
_Y_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_INT32_MAX = 2**31 - 1  # rows are int32 (the GEMM's group_sizes and row indices)
_ALIGNMENT_ATTR = "_deepergemm_alignment"  # on a layout's group_sizes when its alignment is not the GEMM's


@dataclass(frozen=True, eq=False)
class ContiguousLayout:
    """Where each routed choice sits in the grouped GEMM's A (see the module's docstring).

    row_of:       (T, topk) int32: the row of choice (t, k), -1 when dropped.
    token_of:     (rows,) int32: the token whose row this is, -1 for padding and unused rows (the inverse of
                  row_of, which permute_tokens reads).
    group_sizes:  (E,) int32: rows placed for each expert (the grouped GEMM's per-group row counts).
    group_starts: (E,) int32: first row of each expert's segment.
    rows:         rows of the permuted tensor.
    """
    row_of: torch.Tensor
    token_of: torch.Tensor
    group_sizes: torch.Tensor
    group_starts: torch.Tensor
    rows: int
    alignment: int
    num_experts: int

    def __post_init__(self):
        # The grouped GEMM reads only group sizes and starts each segment at a multiple of GROUPED_M_ALIGNMENT: the
        # sizes of a layout with another alignment carry it, so that the GEMM refuses them (check_layout_alignment)
        # instead of reading rows from the wrong places. (Not while torch.compile traces: no attributes there.)
        if self.alignment != GROUPED_M_ALIGNMENT and not torch.compiler.is_compiling():
            setattr(self.group_sizes, _ALIGNMENT_ATTR, self.alignment)

    @property
    def num_tokens(self) -> int:
        return self.row_of.shape[0]

    @property
    def topk(self) -> int:
        return self.row_of.shape[1]


# ----------------------------------------------------------------------------------------------
# rules
# ----------------------------------------------------------------------------------------------
def _require_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _require_layout(layout) -> None:
    if not isinstance(layout, ContiguousLayout):
        raise TypeError(f"layout must be a ContiguousLayout (from build_contiguous_layout), got {type(layout).__name__}")


def _alignment_error(what: str, alignment: int) -> ValueError:
    return ValueError(f"{what} (alignment={alignment}), but m_grouped_fp8_gemm_contiguous starts each "
                      f"group's rows at a multiple of GROUPED_M_ALIGNMENT ({GROUPED_M_ALIGNMENT}) and would read "
                      "them from other rows; build the layout with the default alignment")


def check_layout_alignment(group_sizes: torch.Tensor) -> None:
    """The grouped GEMM's group_sizes must not come from a layout of another alignment (ContiguousLayout)."""
    alignment = getattr(group_sizes, _ALIGNMENT_ATTR, GROUPED_M_ALIGNMENT)
    if alignment != GROUPED_M_ALIGNMENT:
        raise _alignment_error("group_sizes come from a ContiguousLayout of another alignment", alignment)


def layout_group_sizes(layout: ContiguousLayout, a: torch.Tensor) -> torch.Tensor:
    """The grouped GEMM's group_sizes from the layout that permuted its A: the layout's alignment must be the
    GEMM's and its rows those of A."""
    if layout.alignment != GROUPED_M_ALIGNMENT:
        raise _alignment_error("layout was built for another alignment", layout.alignment)
    check_rank("a", a, 2, "(M, K): the tokens of every group back to back")
    if a.shape[0] != layout.rows:
        raise ValueError(f"a.shape[0] (M={a.shape[0]}) must equal layout.rows ({layout.rows}): a holds the permuted "
                         "tokens, quantize_act(permute_tokens(x, layout))")
    return layout.group_sizes


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def contiguous_rows_bound(num_tokens: int, topk: int, num_experts: int, alignment: int = GROUPED_M_ALIGNMENT) -> int:
    """The most rows any routing of num_tokens x topk choices over num_experts experts can need (attained).

    Each non-empty segment wastes at most alignment - 1 rows and at most min(E, T * topk) are non-empty; the
    total is a multiple of alignment, so round the sum down. Allocate once with it: no host synchronization."""
    _require_int("num_tokens", num_tokens, 0)
    _require_int("topk", topk, 0)
    _require_int("num_experts", num_experts, 1)
    _require_int("alignment", alignment, 1)
    choices = num_tokens * topk
    return (choices + min(num_experts, choices) * (alignment - 1)) // alignment * alignment


def build_contiguous_layout(topk_ids: torch.Tensor, num_experts: int, alignment: int = GROUPED_M_ALIGNMENT,
                            max_rows: int | None = None) -> ContiguousLayout:
    """Place the router's choices topk_ids (T, topk) int32/int64 in the contiguous grouped layout.

    Ids outside [0, num_experts) (-1 included) are dropped. max_rows=None reads the total back from the
    device (one synchronization); a given max_rows never synchronizes and drops the choices past it. The grouped
    GEMM (m_grouped_fp8_gemm_contiguous) places segments at multiples of GROUPED_M_ALIGNMENT: it refuses a layout
    of another alignment, and that layout's group_sizes (other alignments serve other grouped kernels)."""
    _require_tensor("topk_ids", topk_ids)
    _require_dtype("topk_ids", topk_ids, _ID_DTYPES)
    check_rank("topk_ids", topk_ids, 2, "(T, topk)")
    _require_int("num_experts", num_experts, 1)
    _require_int("alignment", alignment, 1)
    if max_rows is not None:
        _require_int("max_rows", max_rows, 0)
    t, topk = topk_ids.shape
    # rows, and the Triton path's row + rank before it is compared with rows, are int32
    bound = contiguous_rows_bound(t, topk, num_experts, alignment)
    if max(bound, max_rows or 0) + t * topk > _INT32_MAX:
        raise ValueError(f"rows must fit in int32: topk_ids {tuple(topk_ids.shape)} with num_experts={num_experts} "
                         f"and alignment={alignment} may need {bound} rows (max_rows={max_rows})")
    if max_rows is None:  # the total is read back to the host: no custom op (its outputs' sizes depend on data)
        return _build(topk_ids, num_experts, alignment, None, triton=topk_ids.is_cuda)
    row_of, token_of, sizes, starts = torch.ops.deepergemm.moe_contiguous_layout(topk_ids, num_experts, alignment,
                                                                                 max_rows)
    return ContiguousLayout(row_of, token_of, sizes, starts, max_rows, alignment, num_experts)


def place(topk_ids: torch.Tensor, num_experts: int, alignment: int, max_rows: int):
    """The kernel of build_contiguous_layout with max_rows (custom op deepergemm::moe_contiguous_layout):
    (row_of, token_of, group_sizes, group_starts)."""
    layout = _build(topk_ids, num_experts, alignment, max_rows, triton=topk_ids.is_cuda)
    return layout.row_of, layout.token_of, layout.group_sizes, layout.group_starts


def group_sizes_from_m_indices(m_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """DeepGEMM's per-row expert index (m_indices (M,), -1 for padding rows) -> the grouped GEMM's group_sizes
    (E,) int32: the rows of each expert, counted on the device (no host synchronization). It describes the same
    rows only for a layout of ours: experts' segments in expert order, each starting at a multiple of
    GROUPED_M_ALIGNMENT, its real rows first (DeepGEMM's contiguous layout, built that way). Indices outside
    [0, num_experts) count as padding."""
    _require_tensor("m_indices", m_indices)
    _require_dtype("m_indices", m_indices, _ID_DTYPES)
    check_rank("m_indices", m_indices, 1, "(M,): the expert of each row of A, -1 for padding")
    _require_int("num_experts", num_experts, 1)
    valid = (m_indices >= 0) & (m_indices < num_experts)
    counts = torch.zeros(num_experts + 1, dtype=torch.int32, device=m_indices.device)
    bucket = torch.where(valid, m_indices, num_experts).long()  # padding: a spare last bucket
    counts.scatter_add_(0, bucket, torch.ones_like(m_indices, dtype=torch.int32))
    return counts[:num_experts]


def permute_tokens(x: torch.Tensor, layout: ContiguousLayout) -> torch.Tensor:
    """x (T, K) floating point -> (layout.rows, K) in x's dtype: row row_of[t, k] holds x[t], every other
    row is zero (so quantizing the padding is harmless). Bits are copied as they are."""
    _require_tensor("x", x)
    _require_layout(layout)
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating-point dtype, got {x.dtype}")
    check_rank("x", x, 2, "(T, K)")
    if x.shape[0] != layout.num_tokens:
        raise ValueError(f"x.shape[0] (T={x.shape[0]}) must equal the layout's tokens "
                         f"(layout.row_of.shape[0] = {layout.num_tokens})")
    _require_same_device({"x": x, "layout": layout.row_of})
    return torch.ops.deepergemm.moe_permute(x, layout.token_of)


def unpermute_tokens(y_perm: torch.Tensor, layout: ContiguousLayout,
                     topk_weights: torch.Tensor | None = None) -> torch.Tensor:
    """y_perm (layout.rows, N) bf16/fp16/fp32 -> y (T, N) in y_perm's dtype.

    y[t] = sum over k = 0 .. topk-1, in that order, accumulated in fp32, of topk_weights[t, k] *
    y_perm[row_of[t, k]] (weight 1 when topk_weights is None; a dropped choice adds 0). Bitwise deterministic,
    the same bits on CPU and CUDA."""
    _require_tensor("y_perm", y_perm)
    _require_layout(layout)
    _require_dtype("y_perm", y_perm, _Y_DTYPES)
    check_rank("y_perm", y_perm, 2, "(rows, N)")
    if y_perm.shape[0] != layout.rows:
        raise ValueError(f"y_perm.shape[0] must equal layout.rows ({layout.rows}), got shape {tuple(y_perm.shape)}")
    if topk_weights is not None:
        _require_tensor("topk_weights", topk_weights)
        _require_dtype("topk_weights", topk_weights, _Y_DTYPES)
        want = (layout.num_tokens, layout.topk)
        if tuple(topk_weights.shape) != want:
            raise ValueError(f"topk_weights must have shape (T, topk) = {want}, got {tuple(topk_weights.shape)}")
    _require_same_device({"y_perm": y_perm, "layout": layout.row_of, "topk_weights": topk_weights})
    return torch.ops.deepergemm.moe_unpermute(y_perm, layout.row_of, topk_weights)


def permute(x: torch.Tensor, token_of: torch.Tensor) -> torch.Tensor:
    """The kernel of permute_tokens (custom op deepergemm::moe_permute): Triton on CUDA, torch elsewhere."""
    return _permute_triton(x, token_of) if x.is_cuda else _permute_torch(x, token_of)


def unpermute(y_perm: torch.Tensor, row_of: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The kernel of unpermute_tokens (custom op deepergemm::moe_unpermute): Triton on CUDA, torch elsewhere."""
    return _unpermute_triton(y_perm, row_of, weights) if y_perm.is_cuda else _unpermute_torch(y_perm, row_of, weights)


# ----------------------------------------------------------------------------------------------
# shared by both paths
# ----------------------------------------------------------------------------------------------
def _build(topk_ids: torch.Tensor, num_experts: int, alignment: int, max_rows: int | None,
           triton: bool) -> ContiguousLayout:
    t, topk = topk_ids.shape
    place = _place_triton if triton else _place_torch
    row_of, token_of, sizes, starts, rows = place(topk_ids.reshape(-1), num_experts, topk, alignment, max_rows)
    return ContiguousLayout(row_of.view(t, topk), token_of, sizes, starts, rows, alignment, num_experts)


def _segments(counts: torch.Tensor, alignment: int, max_rows: int | None):
    """counts (E,) -> (group_sizes (E,) int32, group_starts (E,) int32, rows). Segments are laid out for all
    counts, then cut at rows: an expert crossing it keeps the rows before it, the later ones start at rows."""
    padded = (counts.long() + alignment - 1) // alignment * alignment
    ends = padded.cumsum(0)
    rows = int(ends[-1]) if max_rows is None else max_rows  # int(): the one host synchronization
    starts = (ends - padded).clamp(max=rows)
    sizes = torch.minimum(counts.long(), rows - starts)
    return sizes.int(), starts.int(), rows


# ----------------------------------------------------------------------------------------------
# pure torch (CPU; any device, no synchronization but max_rows=None's)
# ----------------------------------------------------------------------------------------------
def _place_torch(ids: torch.Tensor, num_experts: int, topk: int, alignment: int, max_rows: int | None):
    n = ids.numel()
    valid = (ids >= 0) & (ids < num_experts)
    expert = torch.where(valid, ids, num_experts).long()  # dropped choices: an extra last bucket
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=ids.device)
    counts.scatter_add_(0, expert, torch.ones_like(expert))
    sizes, starts, rows = _segments(counts[:num_experts], alignment, max_rows)

    # rank of each choice among its expert's: its place in the stable sort minus where the expert's run begins
    order = torch.sort(expert, stable=True).indices
    run_start = counts.cumsum(0) - counts
    rank = torch.empty_like(expert)
    rank[order] = torch.arange(n, device=ids.device) - run_start[expert[order]]
    row = starts.long()[expert.clamp(max=num_experts - 1)] + rank
    keep = valid & (row < rows)
    row_of = torch.where(keep, row, -1).int()

    # token_of: scatter every kept choice's token; dropped ones land in a spare last slot
    token_of = torch.full((rows + 1,), -1, dtype=torch.int32, device=ids.device)
    token = torch.arange(n, device=ids.device, dtype=torch.int32) // topk
    token_of.scatter_(0, torch.where(keep, row, rows), token)
    return row_of, token_of[:rows], sizes, starts, rows


def _with_zero_row(t: torch.Tensor) -> torch.Tensor:
    """t and a row of zeros after its last: indexing it with a row index of -1 gives zeros (no
    synchronization, also when t has no rows)."""
    return torch.cat([t, t.new_zeros(1, t.shape[1])])


def _permute_torch(x: torch.Tensor, token_of: torch.Tensor) -> torch.Tensor:
    return _with_zero_row(x)[token_of.long()]


def _unpermute_torch(y_perm: torch.Tensor, row_of: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    y_ext = _with_zero_row(y_perm)
    acc = torch.zeros((row_of.shape[0], y_perm.shape[1]), dtype=torch.float32, device=y_perm.device)
    for k in range(row_of.shape[1]):  # the kernel's order and roundings: v = y (* w), then acc + v
        row = row_of[:, k]
        v = y_ext[row.long()].float()
        if weights is not None:
            v = v * weights[:, k, None].float()
        acc = acc + torch.where(row[:, None] >= 0, v, 0.0)  # 0, not 0 * w: the weight may be anything
    return acc.to(y_perm.dtype)


# ----------------------------------------------------------------------------------------------
# Triton (CUDA; CPU tensors in Triton's interpreter)
# ----------------------------------------------------------------------------------------------
def _place_triton(ids: torch.Tensor, num_experts: int, topk: int, alignment: int, max_rows: int | None):
    from .triton_kernels import moe_layout

    counts = moe_layout.count_experts(ids, num_experts)  # (chunks, E)
    sizes, starts, rows = _segments(counts.sum(0), alignment, max_rows)
    base = (counts.cumsum(0, dtype=torch.int32) - counts + starts).int()  # + choices of e in earlier chunks
    row_of, token_of = moe_layout.place_choices(ids, base, topk, rows)
    return row_of, token_of, sizes, starts, rows


def _permute_triton(x: torch.Tensor, token_of: torch.Tensor) -> torch.Tensor:
    from .triton_kernels import moe_layout

    return moe_layout.permute(x, token_of)


def _unpermute_triton(y_perm: torch.Tensor, row_of: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    from .triton_kernels import moe_layout

    return moe_layout.unpermute(y_perm, row_of, weights)
