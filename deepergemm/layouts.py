"""Tensor layouts the kernels read and write, and the input rules, with clear errors (one place).

Layouts
-------
* ``a`` (M, K) float8_e4m3fn, K-major (row stride >= K, a multiple of 16 bytes; unit column stride).
* ``a_scales`` (M, K/128) fp32, **M-major**: element (m, g) at ``g * M_pad + m`` where
  ``M_pad = round_up(M, 4)`` so that each K-group's column starts 16-byte aligned (TMA's rule).
  ``empty_act_scales`` allocates it; ``to_act_scale_layout`` converts any other layout.
* ``b`` (N, K) float8_e4m3fn, K-major like ``a``.
* ``b_scales`` (ceil(N/128), K/128) fp32, row-major contiguous.
* ``out`` (M, N) bf16 or fp32, row-major contiguous; or, fp8 output (``fp8_gemm_fp8_out``), ``q`` (M, N) float8_e4m3fn
  contiguous with its ``scales`` (M, N/128) fp32 in the activation layout above: what ``quantize_act`` returns.

Every rule raises TypeError (wrong type/dtype) or ValueError (shape, alignment, device, layout)
naming the argument, what was given and what is required.
"""
from __future__ import annotations

import torch

from .reference import FP8_DTYPE, GROUP_K, SCALE_GROUPS_K

SCALE_M_ALIGN = 4  # fp32 elements per 16 bytes: TMA needs 16-byte aligned strides
TMA_ALIGN_BYTES = 16
N_ALIGN = 8  # output rows must be 16-byte aligned for the TMA store of bf16
OUT_DTYPES = (torch.bfloat16, torch.float32)
BIAS_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
LINEAR_X_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # fp16: the GEMM writes fp32, rounded once
# Grouped (MoE) GEMMs, contiguous layout: each expert's rows start at a multiple of this many rows of A (the
# rows after its last real row, up to the next multiple, are padding; DeepGEMM's alignment). The kernel's
# tiles start at their expert's first row, so a tile never stores another expert's rows, whatever its height.
GROUPED_M_ALIGNMENT = 128


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


# ----------------------------------------------------------------------------------------------
# activation scales: M-major with a 16-byte aligned M stride
# ----------------------------------------------------------------------------------------------
def act_scale_stride(m: int) -> int:
    """Distance in elements between consecutive K-groups of the M-major activation scales."""
    return round_up(m, SCALE_M_ALIGN)


def empty_act_scales(m: int, k: int, device: torch.device | str, group_k: int = GROUP_K) -> torch.Tensor:
    """Uninitialised (M, K/group_k) fp32 scales in the GEMM's M-major TMA layout."""
    return torch.empty_strided((m, k // group_k), (1, act_scale_stride(m)), dtype=torch.float32, device=device)


def is_act_scale_layout(s: torch.Tensor) -> bool:
    m, groups = s.shape
    if m <= 1 and groups <= 1:
        return s.data_ptr() % TMA_ALIGN_BYTES == 0
    ok_m = s.stride(0) == 1 or m == 1
    ok_g = groups == 1 or (s.stride(1) >= m and s.stride(1) % SCALE_M_ALIGN == 0)
    return ok_m and ok_g and s.data_ptr() % TMA_ALIGN_BYTES == 0


def to_act_scale_layout(s: torch.Tensor) -> torch.Tensor:
    """Return activation scales in the M-major TMA layout, copying only when needed."""
    if is_act_scale_layout(s):
        return s
    out = empty_act_scales(s.shape[0], s.shape[1] * GROUP_K, s.device)
    out.copy_(s)
    return out


# ----------------------------------------------------------------------------------------------
# rules
# ----------------------------------------------------------------------------------------------
def has_storage(t: torch.Tensor) -> bool:
    """False for fake/meta tensors (torch.compile tracing), whose addresses cannot be checked."""
    if t.device.type == "meta":
        return False
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # pragma: no cover - older torch
        return True
    return not is_fake(t)


def _require_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def require_tensors(**named) -> None:
    """Type check before dispatch: the dispatcher's own message for a non-tensor is a RuntimeError."""
    for name, t in named.items():
        if t is not None:
            _require_tensor(name, t)


def _require_dtype(name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        want = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must have dtype {want}, got {t.dtype}")


def check_rank(name: str, t: torch.Tensor, rank: int, what: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {what}, got shape {tuple(t.shape)}")


_require_rank = check_rank  # (the module-internal name)


def _require_tma_aligned(name: str, t: torch.Tensor) -> None:
    if has_storage(t) and t.data_ptr() % TMA_ALIGN_BYTES != 0:
        raise ValueError(f"{name} data pointer must be {TMA_ALIGN_BYTES}-byte aligned (TMA), got address "
                         f"{t.data_ptr():#x} (a view at an odd offset?); call .clone() first")


def _require_k_major(name: str, t: torch.Tensor) -> None:
    """Rows of a K-major fp8 operand: unit column stride, 16-byte aligned rows and base address."""
    rows, k = t.shape
    if rows == 0 or k == 0:
        return
    if t.stride(1) != 1 and k > 1:
        raise ValueError(f"{name} must be K-major (row-major, stride(1) == 1), got strides {t.stride()}; "
                         f"call .contiguous() first")
    if rows > 1 and (t.stride(0) < k or (t.stride(0) * t.element_size()) % TMA_ALIGN_BYTES != 0):
        raise ValueError(f"{name} row stride must be >= K and a multiple of {TMA_ALIGN_BYTES} bytes, "
                         f"got stride(0)={t.stride(0)} for K={k}; call .contiguous() first")
    _require_tma_aligned(name, t)


def _check_k(k: int) -> None:
    if k == 0 or k % GROUP_K != 0:
        raise ValueError(f"K must be a positive multiple of {GROUP_K}, got K={k}")


def _require_same_device(named: dict[str, torch.Tensor | None]) -> None:
    devices = {name: t.device for name, t in named.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"all tensors must be on one device: {first_name} is on {first}, {name} is on {dev}")


def check_quantize_input(name: str, x: torch.Tensor, group_k: int = GROUP_K) -> None:
    """Rules for quantize_act / quantize_weight inputs (K as every GEMM takes it: a positive multiple of 128, or of
    the 256-K recipe's group_k = 256)."""
    if group_k not in SCALE_GROUPS_K:
        raise ValueError(f"the scale group along K (group_k, block[1]) must be one of {SCALE_GROUPS_K}, got {group_k!r}")
    _require_tensor(name, x)
    _require_dtype(name, x, (torch.bfloat16, torch.float16, torch.float32))
    check_rank(name, x, 2, "(rows, K)")
    k = x.shape[1]
    if k == 0 or k % group_k != 0:
        raise ValueError(f"{name}.shape[1] (K) must be a positive multiple of {group_k}, got K={k}")


def check_gemm_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                      out_dtype: torch.dtype, bias: torch.Tensor | None,
                      recipe_256_ok: bool = False) -> tuple[int, int, int]:
    """Validate fp8_gemm's arguments; return (M, N, K). recipe_256_ok: the scales may also be the 256-K recipe's
    (a_scales (M, K/256), b_scales (ceil(N/128), K/256); scale_group_k tells which)."""
    _require_tensor("b", b)
    _require_dtype("b", b, (FP8_DTYPE,))
    check_rank("b", b, 2, "(N, K)")
    n, k_b = b.shape
    m, k = _check_a_and_scales(a, a_scales, b_scales, n, k_b, out_dtype, bias,
                               f"a and b must share K (a is (M, K), b is (N, K)): got a {{a}}, b {tuple(b.shape)}",
                               recipe_256_ok)
    _require_same_device({"a": a, "b": b})
    _require_k_major("b", b)
    return m, n, k


def check_gemm_fp8_out_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                              bias: torch.Tensor | None) -> tuple[int, int, int]:
    """Validate fp8_gemm_fp8_out's arguments (fp8_gemm's, then N as quantize_act takes K: whole 1x128 groups);
    return (M, N, K)."""
    m, n, k = check_gemm_inputs(a, a_scales, b, b_scales, torch.bfloat16, bias)
    if n % GROUP_K != 0:
        raise ValueError(f"N (b.shape[0]) must be a positive multiple of {GROUP_K} for fp8 output (one scale per "
                         f"1x128 group of an output row, as quantize_act's K), got N={n}")
    return m, n, k


# ----------------------------------------------------------------------------------------------
# SwiGLU (fp8_gemm_swiglu, swiglu): gate and up weights with their rows interleaved per 128
# ----------------------------------------------------------------------------------------------
SWIGLU_GROUP = 2 * GROUP_K  # a gate group of 128 rows (columns of the output) and its up group


def interleave_gate_up(gate: torch.Tensor, up: torch.Tensor, block: int = GROUP_K) -> torch.Tensor:
    """(I, ...) gate and up -> (2I, ...): block j of gate's rows (rows [block * j, block * (j + 1))), then block j
    of up's, for j = 0, 1, ... Weights interleave per block = 128 rows, their (I/128, K/128) scales per block = 1;
    I must be a multiple of `block`."""
    if gate.shape != up.shape or gate.dim() < 1 or gate.shape[0] % block:
        raise ValueError(f"gate and up must have one shape whose first dimension is a multiple of {block}, got "
                         f"{tuple(gate.shape)} and {tuple(up.shape)}")
    blocks = gate.shape[0] // block
    pairs = torch.stack((gate.reshape(blocks, block, *gate.shape[1:]), up.reshape(blocks, block, *up.shape[1:])), 1)
    return pairs.reshape(2 * gate.shape[0], *gate.shape[1:])


def interleave_halves(gate_up: torch.Tensor) -> torch.Tensor:
    """(M, 2I) columns in halves (gate [0, I), up [I, 2I): a grouped SwiGLU's bf16 GEMM output) -> the same columns
    interleaved per 128 as swiglu reads them (a copy)."""
    m, two_i = gate_up.shape
    if two_i % SWIGLU_GROUP:
        raise ValueError(f"gate_up.shape[1] must be a multiple of {SWIGLU_GROUP}, got {two_i}")
    return gate_up.reshape(m, 2, two_i // SWIGLU_GROUP, GROUP_K).transpose(1, 2).reshape(m, two_i)


def split_gate_up(gate_up: torch.Tensor, block: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """interleave_gate_up's inverse along dim 0: (2I, ...) -> (gate, up), each (I, ...) and contiguous."""
    if gate_up.dim() < 1 or gate_up.shape[0] % (2 * block):
        raise ValueError(f"gate_up's first dimension must be a multiple of {2 * block}, got {tuple(gate_up.shape)}")
    pairs = gate_up.reshape(gate_up.shape[0] // (2 * block), 2, block, *gate_up.shape[1:])
    rest = gate_up.shape[1:]
    return (pairs[:, 0].reshape(-1, *rest).contiguous(), pairs[:, 1].reshape(-1, *rest).contiguous())


def check_swiglu_input(gate_up: torch.Tensor) -> None:
    """swiglu's input: (M, 2I) bf16, gate and up columns interleaved per 128 (2I a multiple of 256)."""
    _require_tensor("gate_up", gate_up)
    _require_dtype("gate_up", gate_up, (torch.bfloat16,))
    check_rank("gate_up", gate_up, 2, "(M, 2I)")
    if gate_up.shape[1] == 0 or gate_up.shape[1] % SWIGLU_GROUP:
        raise ValueError(f"gate_up.shape[1] (2I: gate and up columns interleaved per {GROUP_K}) must be a positive "
                         f"multiple of {SWIGLU_GROUP}, got {gate_up.shape[1]}")


def check_gemm_swiglu_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                             b_scales: torch.Tensor) -> tuple[int, int, int]:
    """Validate fp8_gemm_swiglu's arguments (fp8_gemm's, then B's rows as gate and up interleaved per 128);
    return (M, N, K), N = 2I (B's rows)."""
    m, n, k = check_gemm_inputs(a, a_scales, b, b_scales, torch.bfloat16, None)
    if n % SWIGLU_GROUP != 0:
        raise ValueError(f"N (b.shape[0]: gate and up rows interleaved per {GROUP_K}) must be a positive multiple of "
                         f"{SWIGLU_GROUP} for fp8_gemm_swiglu, got N={n}")
    return m, n, k


def scale_group_k(a_scales: torch.Tensor, k: int) -> int:
    """The K group of a GEMM's scales: 256 for the 256-K recipe's a_scales (M, K/256), else 128."""
    wide = 2 * GROUP_K
    return wide if k % wide == 0 and a_scales.dim() == 2 and a_scales.shape[1] == k // wide else GROUP_K


def _check_a_and_scales(a: torch.Tensor, a_scales: torch.Tensor, b_scales: torch.Tensor, n: int, k_b: int,
                        out_dtype: torch.dtype, bias: torch.Tensor | None, k_mismatch: str,
                        recipe_256_ok: bool = False) -> tuple[int, int]:
    """What fp8_gemm and fp8_gemm_placed share: A, the scales, N, out_dtype and bias against B's (n, k_b)."""
    for name, t in (("a", a), ("a_scales", a_scales), ("b_scales", b_scales)):
        _require_tensor(name, t)
    _require_dtype("a", a, (FP8_DTYPE,))
    check_rank("a", a, 2, "(M, K)")
    m, k = a.shape
    if k_b != k:
        raise ValueError(k_mismatch.format(a=tuple(a.shape)))
    _check_k(k)
    if n % N_ALIGN != 0 or n == 0:
        raise ValueError(f"N (b.shape[0]) must be a positive multiple of {N_ALIGN} (16-byte aligned output rows), "
                         f"got N={n}")
    _require_dtype("a_scales", a_scales, (torch.float32,))
    _require_dtype("b_scales", b_scales, (torch.float32,))
    group = scale_group_k(a_scales, k) if recipe_256_ok else GROUP_K
    groups = k // group
    if recipe_256_ok:
        also = f" (or (M, K/256) = {(m, k // (2 * GROUP_K))} for the 256-K recipe)" if k % (2 * GROUP_K) == 0 else ""
    else:
        also = " (the 256-K recipe's scales: fp8_gemm with a bf16 or fp32 output only)" \
            if scale_group_k(a_scales, k) != GROUP_K else ""
    nb = ceil_div(n, GROUP_K)
    if group != GROUP_K and tuple(b_scales.shape) == (nb, k // GROUP_K):  # the recipes mixed: name both
        raise ValueError(f"a_scales must have shape (M, K/128) = {(m, k // GROUP_K)} to match b_scales "
                         f"{tuple(b_scales.shape)} (the 128 recipe), got {tuple(a_scales.shape)} (the 256-K recipe's; "
                         f"its b_scales are (ceil(N/128), K/256) = {(nb, groups)})")
    if tuple(a_scales.shape) != (m, groups):
        raise ValueError(f"a_scales must have shape (M, K/128) = {(m, k // GROUP_K)}{also}, got {tuple(a_scales.shape)}")
    if tuple(b_scales.shape) != (ceil_div(n, GROUP_K), groups):
        raise ValueError(f"b_scales must have shape (ceil(N/128), K/{group}) = {(ceil_div(n, GROUP_K), groups)}"
                         f"{' (the 256-K recipe, as a_scales)' if group != GROUP_K else ''}, got {tuple(b_scales.shape)}")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")
    _check_bias(bias, n)
    _require_same_device({"a": a, "a_scales": a_scales, "b_scales": b_scales, "bias": bias})
    _require_k_major("a", a)
    return m, k


def _check_bias(bias: torch.Tensor | None, n: int) -> None:
    if bias is not None:
        _require_tensor("bias", bias)
        _require_dtype("bias", bias, BIAS_DTYPES)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape (N,) = ({n},), got {tuple(bias.shape)}")


PLACED_SLAB_ROWS = (8, 16, 32, 64, 128, 256)


def check_placed_inputs(a: torch.Tensor, a_scales: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor,
                        b_scales: torch.Tensor, n: int, slab_rows: int, split_rows: int, out_dtype: torch.dtype,
                        bias: torch.Tensor | None, sm_side: torch.Tensor | None) -> tuple[int, int]:
    """Validate fp8_gemm_placed's arguments (B as an L2-placed pool, deepergemm/l2_placement.py); return (M, K)."""
    for name, t in (("pool", pool), ("slots", slots)):
        _require_tensor(name, t)
    if slab_rows not in PLACED_SLAB_ROWS:
        raise ValueError(f"slab_rows must be one of {PLACED_SLAB_ROWS}, got {slab_rows}")
    _require_dtype("pool", pool, (torch.uint8,))
    _require_dtype("slots", slots, (torch.int32,))
    if pool.dim() != 2 or pool.shape[1] != GROUP_K or pool.shape[0] % slab_rows != 0 or not pool.is_contiguous():
        raise ValueError(f"pool must be a contiguous (slots * slab_rows, 128) uint8 tensor, got {tuple(pool.shape)}")
    check_rank("slots", slots, 2, "(K/128, slabs)")
    if not slots.is_contiguous():
        raise ValueError("slots must be contiguous")
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n (rows of B) must be a positive int, got {n!r}")
    if slots.shape[1] * slab_rows < round_up(n, 256) + 512:
        raise ValueError(f"slots must cover round_up(n, 256) + 512 rows of B ({round_up(n, 256) + 512}), got "
                         f"{slots.shape[1]} slabs of {slab_rows}")
    if not 0 <= split_rows <= n:
        raise ValueError(f"split_rows must lie in [0, n={n}], got {split_rows}")
    m, k = _check_a_and_scales(a, a_scales, b_scales, n, slots.shape[0] * GROUP_K, out_dtype, bias,
                               f"a must be (M, K) with K = 128 * slots.shape[0] = {slots.shape[0] * GROUP_K}, "
                               "got {a}")
    _require_same_device({"a": a, "pool": pool, "slots": slots})
    _require_tma_aligned("pool", pool)
    if sm_side is not None:
        _require_dtype("sm_side", sm_side, (torch.uint8,))
        if tuple(sm_side.shape) != (256,):
            raise ValueError(f"sm_side must have shape (256,) (the L2 side of each SM id), got {tuple(sm_side.shape)}")
        _require_same_device({"a": a, "sm_side": sm_side})
    return m, k


def check_linear_inputs(x: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor,
                        bias: torch.Tensor | None) -> None:
    """Rules for linear(x, w, w_scales, bias), in linear's names: x (..., K) bf16/fp16/fp32; w (N, K) and w_scales
    (ceil(N/128), K/128), or the 256-K recipe's (ceil(N/128), K/256), as fp8_gemm's b and b_scales (whose own checks,
    after these, would say b and b_scales)."""
    _require_tensor("x", x)
    _require_tensor("w", w)
    _require_tensor("w_scales", w_scales)
    _require_dtype("w", w, (FP8_DTYPE,))
    check_rank("w", w, 2, "(N, K)")
    n, k = w.shape
    check_linear_x(x, k)
    _check_k(k)
    if n % N_ALIGN != 0 or n == 0:
        raise ValueError(f"N (w.shape[0]) must be a positive multiple of {N_ALIGN} (16-byte aligned output rows), "
                         f"got N={n}")
    _require_dtype("w_scales", w_scales, (torch.float32,))
    group = linear_group_k(w_scales, k)
    want = (ceil_div(n, GROUP_K), k // group)
    if tuple(w_scales.shape) != want:
        wide = f" (or (ceil(N/128), K/256) = {(want[0], k // 256)} for the 256-K recipe)" if k % 256 == 0 else ""
        raise ValueError(f"w_scales must have shape (ceil(N/128), K/128) = {want}{wide}, got {tuple(w_scales.shape)}")
    _check_bias(bias, n)
    _require_same_device({"x": x, "w": w, "w_scales": w_scales, "bias": bias})
    _require_k_major("w", w)


def linear_group_k(w_scales: torch.Tensor, k: int) -> int:
    """linear's activation group: 256 where w_scales are the 256-K recipe's (ceil(N/128), K/256), else 128."""
    wide = 2 * GROUP_K
    return wide if k % wide == 0 and w_scales.dim() == 2 and w_scales.shape[1] == k // wide else GROUP_K


def linear_gemm_dtype(x_dtype: torch.dtype) -> torch.dtype:
    """The GEMM's out_dtype for linear's x dtype: fp16 goes through fp32 (the GEMM writes bf16 or fp32), rounded
    once to fp16 afterwards."""
    return torch.float32 if x_dtype == torch.float16 else x_dtype


def check_linear_x(x: torch.Tensor, k: int) -> None:
    """linear's x against the weight's K (also for a PreparedWeight, whose w is no tensor)."""
    _require_tensor("x", x)
    _require_dtype("x", x, LINEAR_X_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (..., K), got shape {tuple(x.shape)}")
    if x.shape[-1] != k:
        raise ValueError(f"x.shape[-1] (K={x.shape[-1]}) must equal w.shape[1] (K={k})")


# ----------------------------------------------------------------------------------------------
# grouped (MoE) GEMMs
# ----------------------------------------------------------------------------------------------
MAX_GROUPS = 256           # groups one launch takes (the kernel's shared-memory table: configs.MAX_GROUPS)
MAX_GROUPED_ROWS = 1 << 25  # rows of A (the kernel sums segment sizes in 32-bit integers)


def _check_grouped_b(b: torch.Tensor, b_scales: torch.Tensor, k: int) -> tuple[int, int]:
    """b (G, N, K) fp8 contiguous and b_scales (G, ceil(N/128), K/128) fp32; returns (G, N)."""
    _require_dtype("b", b, (FP8_DTYPE,))
    check_rank("b", b, 3, "(groups, N, K)")
    groups, n, kb_ = b.shape
    if kb_ != k:
        raise ValueError(f"a and b must share K (b is (groups, N, K)): got K={k} for a, b {tuple(b.shape)}")
    if not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"b.shape[0] (groups) must be 1..{MAX_GROUPS}, got {groups}")
    check_weight_layout("b", b, "b_scales", b_scales, "N (b.shape[1])", (groups,))
    return groups, n


def check_weight_layout(name: str, w: torch.Tensor, scales_name: str, scales: torch.Tensor, n_text: str,
                        groups: tuple[int, ...] = ()) -> None:
    """What every stored fp8 weight obeys (plain or per group, (*groups, N, K)): N a positive multiple of 8,
    contiguous, TMA-aligned, and fp32 scales (*groups, ceil(N/128), K/128)."""
    n, k = w.shape[-2:]
    if n % N_ALIGN != 0 or n == 0:
        raise ValueError(f"{n_text} must be a positive multiple of {N_ALIGN} (16-byte aligned output rows), "
                         f"got N={n}")
    if not w.is_contiguous():
        raise ValueError(f"{name} must be contiguous ({'groups, ' if groups else ''}N, K), K-major, got strides "
                         f"{w.stride()}; call .contiguous() first")
    _require_tma_aligned(name, w)
    _require_dtype(scales_name, scales, (torch.float32,))
    want = (*groups, ceil_div(n, GROUP_K), k // GROUP_K)
    if tuple(scales.shape) != want:
        raise ValueError(f"{scales_name} must have shape ({'groups, ' if groups else ''}ceil(N/128), K/128) = {want}, "
                         f"got {tuple(scales.shape)}")


def _check_group_counts(name: str, t: torch.Tensor, groups: int) -> None:
    _require_tensor(name, t)
    _require_dtype(name, t, (torch.int32,))
    if tuple(t.shape) != (groups,):
        raise ValueError(f"{name} must have shape (groups,) = ({groups},), got {tuple(t.shape)}")


def _check_grouped_out(out: torch.Tensor, shape: tuple[int, ...]) -> None:
    _require_tensor("out", out)
    if out.dtype not in OUT_DTYPES:
        raise TypeError(f"out must have dtype torch.bfloat16 or torch.float32, got {out.dtype}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out must have shape {shape}, got {tuple(out.shape)}")
    if not out.is_contiguous():
        raise ValueError(f"out must be contiguous, got strides {out.stride()}")
    _require_tma_aligned("out", out)


def check_grouped_contiguous_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                                    group_sizes: torch.Tensor,
                                    out: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Rules of m_grouped_fp8_gemm_contiguous; returns (M, N, K, groups). a (M, K) fp8 K-major with a_scales
    (M, K/128) fp32; b (groups, N, K) fp8 contiguous with b_scales (groups, ceil(N/128), K/128) fp32;
    group_sizes (groups,) int32; out (M, N) bf16 or fp32, contiguous (None: the SwiGLU form, which makes its own);
    all on one device."""
    for name, t in (("a", a), ("a_scales", a_scales), ("b", b), ("b_scales", b_scales)):
        _require_tensor(name, t)
    _require_dtype("a", a, (FP8_DTYPE,))
    check_rank("a", a, 2, "(M, K): the tokens of every group back to back")
    m, k = a.shape
    _check_k(k)
    if m >= MAX_GROUPED_ROWS:
        raise ValueError(f"a.shape[0] (M) must be below {MAX_GROUPED_ROWS}, got {m}")
    groups, n = _check_grouped_b(b, b_scales, k)
    _require_dtype("a_scales", a_scales, (torch.float32,))
    if tuple(a_scales.shape) != (m, k // GROUP_K):
        raise ValueError(f"a_scales must have shape (M, K/128) = {(m, k // GROUP_K)}, got {tuple(a_scales.shape)}")
    _check_group_counts("group_sizes", group_sizes, groups)
    named = {"a": a, "a_scales": a_scales, "b": b, "b_scales": b_scales, "group_sizes": group_sizes}
    if out is not None:
        _check_grouped_out(out, (m, n))
        named["out"] = out
    _require_same_device(named)
    _require_k_major("a", a)
    return m, n, k, groups


def _check_swiglu_halves(n: int, op: str) -> None:
    """The grouped SwiGLU forms' extra rule: each group's N rows of b are its gate rows [0, N/2), then its up rows
    [N/2, N), N/2 a multiple of 128."""
    if n % SWIGLU_GROUP:
        raise ValueError(f"N (b.shape[1]: each group's gate rows, then its up rows) must be a positive multiple of "
                         f"{SWIGLU_GROUP} for {op}, got N={n}")


def check_grouped_swiglu_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                                group_sizes: torch.Tensor, expected_m: int) -> tuple[int, int, int, int]:
    """Rules of m_grouped_fp8_gemm_contiguous_swiglu: the contiguous form's (no out), then b's rows in gate and up
    halves per group, expected_m >= 0 (a hint; 0: M / groups); returns (M, N, K, groups), N = 2I."""
    m, n, k, groups = check_grouped_contiguous_inputs(a, a_scales, b, b_scales, group_sizes, None)
    _check_swiglu_halves(n, "m_grouped_fp8_gemm_contiguous_swiglu")
    check_expected_m(expected_m, zero_ok=True)
    return m, n, k, groups


def check_grouped_masked_swiglu_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                                       b_scales: torch.Tensor, masked_m: torch.Tensor,
                                       expected_m: int) -> tuple[int, int, int, int]:
    """Rules of m_grouped_fp8_gemm_masked_swiglu: the masked form's (no out), then b's rows in gate and up halves
    per group, and max_m a multiple of 4; returns (groups, max_m, N, K), N = 2I."""
    groups, max_m, n, k = check_grouped_masked_inputs(a, a_scales, b, b_scales, masked_m, expected_m, None)
    _check_swiglu_halves(n, "m_grouped_fp8_gemm_masked_swiglu")
    if max_m % SCALE_M_ALIGN:
        raise ValueError(f"a.shape[1] (max_m) must be a multiple of {SCALE_M_ALIGN} for m_grouped_fp8_gemm_masked_swiglu "
                         f"(each group's A scales start on 16 bytes, as the kernel's scale loads need), got {max_m}")
    return groups, max_m, n, k


def check_expected_m(expected_m, zero_ok: bool = False) -> None:
    """expected_m: an int >= 1 (masked), or >= 0 where 0 means M / groups (the contiguous SwiGLU form)."""
    least = 0 if zero_ok else 1
    if isinstance(expected_m, bool) or not isinstance(expected_m, (int, torch.SymInt)) or expected_m < least:
        what = "; 0: M / groups" if zero_ok else ""
        raise ValueError(f"expected_m must be an int >= {least} (the rows per group the tile choice plans for{what}), "
                         f"got {expected_m!r}")


def check_grouped_masked_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                                masked_m: torch.Tensor, expected_m: int,
                                out: torch.Tensor | None) -> tuple[int, int, int, int]:
    """Rules of m_grouped_fp8_gemm_masked; returns (groups, max_m, N, K). a (groups, max_m, K) fp8 contiguous with
    a_scales (groups, max_m, K/128) fp32; b, b_scales as for the contiguous form; masked_m (groups,) int32;
    expected_m >= 1 (a hint); out (groups, max_m, N) bf16 or fp32, contiguous (None: the SwiGLU form, which makes
    its own); all on one device."""
    for name, t in (("a", a), ("a_scales", a_scales), ("b", b), ("b_scales", b_scales)):
        _require_tensor(name, t)
    _require_dtype("a", a, (FP8_DTYPE,))
    check_rank("a", a, 3, "(groups, max_m, K)")
    groups_a, max_m, k = a.shape
    _check_k(k)
    groups, n = _check_grouped_b(b, b_scales, k)
    if groups_a != groups:
        raise ValueError(f"a and b must have the same number of groups: a {tuple(a.shape)}, b {tuple(b.shape)}")
    if groups * max_m >= MAX_GROUPED_ROWS:
        raise ValueError(f"groups * max_m must be below {MAX_GROUPED_ROWS}, got {groups} * {max_m}")
    if not a.is_contiguous():
        raise ValueError(f"a must be contiguous (groups, max_m, K), got strides {a.stride()}; call .contiguous() first")
    _require_tma_aligned("a", a)
    _require_dtype("a_scales", a_scales, (torch.float32,))
    if tuple(a_scales.shape) != (groups, max_m, k // GROUP_K):
        raise ValueError(f"a_scales must have shape (groups, max_m, K/128) = {(groups, max_m, k // GROUP_K)}, got "
                         f"{tuple(a_scales.shape)}")
    _check_group_counts("masked_m", masked_m, groups)
    check_expected_m(expected_m)
    named = {"a": a, "a_scales": a_scales, "b": b, "b_scales": b_scales, "masked_m": masked_m}
    if out is not None:
        _check_grouped_out(out, (groups, max_m, n))
        named["out"] = out
    _require_same_device(named)
    return groups, max_m, n, k
