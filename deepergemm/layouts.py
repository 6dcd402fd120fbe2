"""Tensor layouts the kernels read and write, and the input rules, with clear errors (one place).

Layouts
-------
* ``a`` (M, K) float8_e4m3fn, K-major (row stride >= K, a multiple of 16 bytes; unit column stride).
* ``a_scales`` (M, K/128) fp32, **M-major**: element (m, g) at ``g * M_pad + m`` where
  ``M_pad = round_up(M, 4)`` so that each K-group's column starts 16-byte aligned (TMA's rule).
  ``empty_act_scales`` allocates it; ``to_act_scale_layout`` converts any other layout.
* ``b`` (N, K) float8_e4m3fn, K-major like ``a``.
* ``b_scales`` (ceil(N/128), K/128) fp32, row-major contiguous.
* ``out`` (M, N) bf16 or fp32, row-major contiguous.

Every rule raises TypeError (wrong type/dtype) or ValueError (shape, alignment, device, layout)
naming the argument, what was given and what is required.
"""
from __future__ import annotations

import torch

from .reference import FP8_DTYPE, GROUP_K

SCALE_M_ALIGN = 4  # fp32 elements per 16 bytes: TMA needs 16-byte aligned strides
TMA_ALIGN_BYTES = 16
N_ALIGN = 8  # output rows must be 16-byte aligned for the TMA store of bf16
OUT_DTYPES = (torch.bfloat16, torch.float32)
BIAS_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
LINEAR_X_DTYPES = (torch.bfloat16, torch.float32)


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


def empty_act_scales(m: int, k: int, device: torch.device | str) -> torch.Tensor:
    """Uninitialised (M, K/128) fp32 scales in the GEMM's M-major TMA layout."""
    return torch.empty_strided((m, k // GROUP_K), (1, act_scale_stride(m)), dtype=torch.float32, device=device)


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


def _require_rank(name: str, t: torch.Tensor, rank: int, what: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {what}, got shape {tuple(t.shape)}")


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
    if has_storage(t) and t.data_ptr() % TMA_ALIGN_BYTES != 0:
        raise ValueError(f"{name} data pointer must be {TMA_ALIGN_BYTES}-byte aligned (TMA), got address "
                         f"{t.data_ptr():#x} (a view at an odd offset?); call .clone() first")


def _require_same_device(named: dict[str, torch.Tensor | None]) -> None:
    devices = {name: t.device for name, t in named.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"all tensors must be on one device: {first_name} is on {first}, {name} is on {dev}")


def check_quantize_input(name: str, x: torch.Tensor) -> None:
    """Rules for quantize_act / quantize_weight inputs."""
    _require_tensor(name, x)
    _require_dtype(name, x, (torch.bfloat16, torch.float16, torch.float32))
    _require_rank(name, x, 2, "(rows, K)")
    if x.shape[1] % GROUP_K != 0:
        raise ValueError(f"{name}.shape[1] (K) must be a multiple of {GROUP_K}, got K={x.shape[1]}")


def check_gemm_inputs(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                      out_dtype: torch.dtype, bias: torch.Tensor | None) -> tuple[int, int, int]:
    """Validate fp8_gemm's arguments; return (M, N, K)."""
    for name, t in (("a", a), ("a_scales", a_scales), ("b", b), ("b_scales", b_scales)):
        _require_tensor(name, t)
    _require_dtype("a", a, (FP8_DTYPE,))
    _require_dtype("b", b, (FP8_DTYPE,))
    _require_rank("a", a, 2, "(M, K)")
    _require_rank("b", b, 2, "(N, K)")
    m, k = a.shape
    n, kb_ = b.shape
    if kb_ != k:
        raise ValueError(f"a and b must share K (a is (M, K), b is (N, K)): got a {tuple(a.shape)}, b {tuple(b.shape)}")
    if k == 0 or k % GROUP_K != 0:
        raise ValueError(f"K must be a positive multiple of {GROUP_K}, got K={k}")
    if n % N_ALIGN != 0:
        raise ValueError(f"N (b.shape[0]) must be a multiple of {N_ALIGN} (16-byte aligned output rows), got N={n}")
    _require_dtype("a_scales", a_scales, (torch.float32,))
    _require_dtype("b_scales", b_scales, (torch.float32,))
    groups = k // GROUP_K
    if tuple(a_scales.shape) != (m, groups):
        raise ValueError(f"a_scales must have shape (M, K/128) = {(m, groups)}, got {tuple(a_scales.shape)}")
    if tuple(b_scales.shape) != (ceil_div(n, GROUP_K), groups):
        raise ValueError(f"b_scales must have shape (ceil(N/128), K/128) = {(ceil_div(n, GROUP_K), groups)}, "
                         f"got {tuple(b_scales.shape)}")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")
    if bias is not None:
        _require_tensor("bias", bias)
        _require_dtype("bias", bias, BIAS_DTYPES)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape (N,) = ({n},), got {tuple(bias.shape)}")
    _require_same_device({"a": a, "a_scales": a_scales, "b": b, "b_scales": b_scales, "bias": bias})
    _require_k_major("a", a)
    _require_k_major("b", b)
    return m, n, k


def check_linear_inputs(x: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor,
                        bias: torch.Tensor | None) -> None:
    """Rules for linear(x, w, w_scales, bias): x (..., K) bf16/fp32; w and w_scales as fp8_gemm's b."""
    _require_tensor("x", x)
    _require_dtype("x", x, LINEAR_X_DTYPES)
    if x.dim() < 1:
        raise ValueError(f"x must have at least 1 dimension (..., K), got shape {tuple(x.shape)}")
    _require_tensor("w", w)
    _require_dtype("w", w, (FP8_DTYPE,))
    _require_rank("w", w, 2, "(N, K)")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"x.shape[-1] (K={x.shape[-1]}) must equal w.shape[1] (K={w.shape[1]})")
