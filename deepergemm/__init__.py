"""deepergemm: exact FP8 block-scaled GEMM for NVIDIA Hopper, from PyTorch.

    import deepergemm as dg
    w8, w_s = dg.quantize_weight(w)            # (N, K) fp8, (ceil(N/128), K/128) fp32: 128x128 blocks
    y = dg.linear(x, w8, w_s, bias=None)       # quantize x per 1x128 group, multiply: (..., N) in x's dtype
    a, a_s = dg.quantize_act(x2d)              # (M, K) fp8, (M, K/128) fp32 (M-major, TMA aligned)
    y = dg.fp8_gemm(a, a_s, w8, w_s)           # bf16 (M, N) = dequant(a) @ dequant(w8).T
    q, q_s = dg.fp8_gemm(a, a_s, w8, w_s, out_dtype=torch.float8_e4m3fn)  # = quantize_act(y), in one kernel

    # SwiGLU fused into the gate/up GEMM (gate and up rows interleaved per 128 once, with their scales)
    w_gu, w_gu_s = dg.prepare_gate_up(w_gate8, w_gate_s, w_up8, w_up_s)
    h, h_s = dg.fp8_gemm_swiglu(a, a_s, w_gu, w_gu_s)    # = quantize_act(dg.swiglu(dg.fp8_gemm(a, a_s, w_gu, w_gu_s)))

    # L2-side placement (once per weight): B stored next to the L2 half of the SMs that read it
    wp = dg.prepare_weight(w8, w_s)            # PreparedWeight (unplaced, with the reason, where it cannot)
    y = dg.linear(x, wp)                       # or dg.fp8_gemm(a, a_s, wp)

    # Mixture-of-experts: one launch for every expert (b: (experts, N, K), b_s: (experts, ceil(N/128), K/128))
    y = dg.m_grouped_fp8_gemm_contiguous(a, a_s, b, b_s, group_sizes)   # a: experts' rows back to back
    y = dg.m_grouped_fp8_gemm_masked(a3, a3_s, b, b_s, masked_m, expected_m)  # a3: (experts, max_m, K)
    h, h_s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, w_gate_up, w_gate_up_s, group_sizes)  # gate, up rows
    h3, h3_s = dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, w_gate_up, w_gate_up_s, masked_m, expected_m)
    layout = dg.build_contiguous_layout(topk_ids, experts, max_rows=bound)  # router output -> rows per expert
    a, a_s = dg.quantize_act(dg.permute_tokens(x, layout))    # ... grouped GEMM with layout.group_sizes ...
    y = dg.unpermute_tokens(out, layout, topk_weights)        # back to (tokens, N), weighted sum over top-k

All of them are torch.library custom ops (torch.ops.deepergemm.*; build_contiguous_layout when given max_rows,
e.g. contiguous_rows_bound(...)): they run inside torch.compile(fullgraph=True) and CUDA graphs, on CPU through
the pure-torch reference.
"""
from __future__ import annotations

import torch

import importlib as _importlib
import importlib.util as _importlib_util

# The Triton kernels (triton_kernels/) and the CUDA sources (ptx/) are top-level folders of the repository that an
# installation maps into this package (pyproject.toml's package-dir; `pip install -e .` does it for a checkout).
if _importlib_util.find_spec(f"{__name__}.triton_kernels") is None or _importlib_util.find_spec(f"{__name__}._ptx") is None:
    raise ImportError("deepergemm is imported from a source checkout that is not installed: run `pip install -e .` "
                      "there (it maps the folders triton_kernels/ and ptx/ into the package as deepergemm.triton_kernels "
                      "and deepergemm._ptx)")

from . import ops as _ops  # registers torch.ops.deepergemm.*
from . import layouts as _layouts
from . import moe as _moe
from .layouts import GROUPED_M_ALIGNMENT, MAX_GROUPS
from .moe import (ContiguousLayout, build_contiguous_layout, contiguous_rows_bound, group_sizes_from_m_indices,
                  permute_tokens, unpermute_tokens)
from .layouts import require_tensors as _require_tensors
from .reference import calc_diff, dequantize_act, dequantize_weight
from .l2_placement import PreparedWeight, prepare_weight

__version__ = "0.1.0"

__all__ = ["quantize_act", "quantize_weight", "fp8_gemm", "linear", "calc_diff",
           "dequantize_act", "dequantize_weight", "BACKENDS",
           "m_grouped_fp8_gemm_contiguous", "m_grouped_fp8_gemm_masked", "m_grouped_fp8_gemm_contiguous_swiglu",
           "m_grouped_fp8_gemm_masked_swiglu", "GROUPED_M_ALIGNMENT", "MAX_GROUPS",
           "ContiguousLayout", "build_contiguous_layout", "contiguous_rows_bound", "group_sizes_from_m_indices",
           "permute_tokens", "unpermute_tokens", "PreparedWeight", "prepare_weight",
           "fp8_gemm_swiglu", "swiglu", "prepare_gate_up", "unprepare_gate_up"]

BACKENDS = _ops.BACKENDS
_SUBMODULES = ("nn", "compat", "checkpoint")  # imported on first use: `import deepergemm` stays light


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r} ({type(value).__name__})")


def _check_backend(backend) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {BACKENDS}, got {backend!r} ({type(backend).__name__})")


def _check_out_dtype(out_dtype, none_ok: bool = False, fp8_ok: bool = False) -> None:
    if not isinstance(out_dtype, torch.dtype) and not (none_ok and out_dtype is None):
        allowed = ("torch.bfloat16, torch.float32 or torch.float8_e4m3fn" if fp8_ok
                   else "torch.bfloat16 or torch.float32")
        raise TypeError(f"out_dtype must be {allowed}{' (or None)' if none_ok else ''}, got "
                        f"{out_dtype!r} ({type(out_dtype).__name__})")


def _forward_only(op: str, **named) -> None:
    """No op has a backward yet: refuse at the call rather than at backward (PyTorch's "no autograd formula").
    Called only with grad mode on."""
    for name, t in named.items():
        if t is not None and t.requires_grad:
            raise NotImplementedError(
                f"deepergemm.{op} is forward only (it has no backward yet), but {name} requires grad and grad mode "
                f"is on: call it under torch.no_grad() or torch.inference_mode(), or pass {name}.detach()")


def quantize_act(x: torch.Tensor, ue8m0: bool = False, group_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations (M, K) per 1x128 group: (fp8 (M, K), fp32 scales (M, K/128), M-major).

    x bf16, fp16 or fp32, K a positive multiple of 128. ue8m0=True rounds every scale up to a power of two
    (stored as fp32). group_k=256: the 256-K recipe's 1x256 groups (scales (M, K/256); K a multiple of 256), which
    fp8_gemm takes with weights quantized by quantize_weight(w, block=(128, 256))."""
    _require_tensors(x=x)
    _check_flag("ue8m0", ue8m0)
    if isinstance(group_k, bool) or group_k not in (128, 256):
        raise ValueError(f"group_k must be 128 or 256 (the 256-K recipe), got {group_k!r}")
    return torch.ops.deepergemm.quantize_act(x, ue8m0, group_k)


def quantize_weight(w: torch.Tensor, ue8m0: bool = False,
                    block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize weights (N, K) per 128x128 block: (fp8 (N, K), fp32 scales (ceil(N/128), K/128)).

    w bf16, fp16 or fp32, any N, K a positive multiple of 128. block=(128, 256): the 256-K recipe's 128x256
    blocks (scales (ceil(N/128), K/256); K a multiple of 256)."""
    _require_tensors(w=w)
    _check_flag("ue8m0", ue8m0)
    if not isinstance(block, (tuple, list)) or tuple(block) not in ((128, 128), (128, 256)):
        raise ValueError(f"block must be (128, 128) or (128, 256) (the 256-K recipe), got {block!r}")
    return torch.ops.deepergemm.quantize_weight(w, ue8m0, block[1])


def _prepared_scales(name: str, w: PreparedWeight, scales) -> torch.Tensor:
    if scales is not None:
        raise ValueError(f"{name}: a PreparedWeight carries its own scales; pass None (got a {type(scales).__name__})")
    return w.scales


def _placed_gemm(a, a_scales, w: PreparedWeight, out_dtype, bias, backend) -> torch.Tensor:
    return torch.ops.deepergemm.fp8_gemm_placed(a, a_scales, w.pool, w.slots, w.scales, w.n, w.slab_rows,
                                                w.split_rows, out_dtype, bias, w.sm_side, True, backend)


def fp8_gemm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor | PreparedWeight,
             b_scales: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
             bias: torch.Tensor | None = None, backend: str = "auto",
             ue8m0: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """out (M, N) = dequant(a) @ dequant(b).T (+ bias), rounded once to out_dtype (bf16 or fp32).

    a (M, K) fp8 e4m3 with a_scales (M, K/128) fp32; b (N, K) fp8 e4m3 with b_scales
    (ceil(N/128), K/128) fp32, or a PreparedWeight (prepare_weight: B placed by L2 side, its scales inside,
    b_scales None); K a positive multiple of 128, N a positive multiple of 8, M >= 0. backend: "auto", "ptx",
    "cublas" or "reference" (see deepergemm.ops). Forward only: no input may require grad in grad mode.

    out_dtype=torch.float8_e4m3fn: returns (q, scales), the output quantized for the next GEMM, bit-identical to
    quantize_act(fp8_gemm(..., out_dtype=torch.bfloat16), ue8m0) (with the ptx backend, quantized in the GEMM's
    epilogue: one kernel). q (M, N) fp8 e4m3, scales (M, N/128) fp32 in the activation layout; N a positive
    multiple of 128; b a plain tensor or an unplaced PreparedWeight. ue8m0 (fp8 output only): power-of-two scales."""
    _check_out_dtype(out_dtype, fp8_ok=True)
    _check_backend(backend)
    _check_flag("ue8m0", ue8m0)
    if out_dtype not in (torch.bfloat16, torch.float32, torch.float8_e4m3fn):
        raise TypeError(f"out_dtype must be torch.bfloat16, torch.float32 or torch.float8_e4m3fn, got {out_dtype}")
    fp8_out = out_dtype == torch.float8_e4m3fn
    if ue8m0 and not fp8_out:
        raise ValueError(f"ue8m0=True applies to fp8 output only (out_dtype=torch.float8_e4m3fn), got out_dtype="
                         f"{out_dtype}")
    if isinstance(b, PreparedWeight):
        scales = _prepared_scales("b_scales", b, b_scales)
        _require_tensors(a=a, a_scales=a_scales, bias=bias)
        if torch.is_grad_enabled():
            _forward_only("fp8_gemm", a=a, a_scales=a_scales, bias=bias)
        if fp8_out:
            if b.placed:
                raise ValueError("fp8 output (out_dtype=torch.float8_e4m3fn) takes a plain b or an unplaced "
                                 "PreparedWeight; this one is placed by L2 side (pass b.unplaced() and b.scales)")
            return torch.ops.deepergemm.fp8_gemm_fp8_out(a, a_scales, b.weight, scales, bias, ue8m0, backend)
        if not b.placed:
            return torch.ops.deepergemm.fp8_gemm(a, a_scales, b.weight, scales, out_dtype, bias, backend)
        return _placed_gemm(a, a_scales, b, out_dtype, bias, backend)
    if b_scales is None:
        raise ValueError("b_scales is required with a plain fp8 b (only a PreparedWeight carries its own)")
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales, bias=bias)
    if torch.is_grad_enabled():
        _forward_only("fp8_gemm", a=a, a_scales=a_scales, b=b, b_scales=b_scales, bias=bias)
    if fp8_out:
        return torch.ops.deepergemm.fp8_gemm_fp8_out(a, a_scales, b, b_scales, bias, ue8m0, backend)
    return torch.ops.deepergemm.fp8_gemm(a, a_scales, b, b_scales, out_dtype, bias, backend)


def prepare_gate_up(w_gate: torch.Tensor, w_gate_scales: torch.Tensor, w_up: torch.Tensor,
                    w_up_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gate and up projections' fp8 weights (I, K) and scales (I/128, K/128), I a multiple of 128, as the one
    weight fp8_gemm_swiglu takes: (2I, K) with rows interleaved per 128 (gate rows [128j, 128j + 128), then up's)
    and (2I/128, K/128) scales interleaved per row, so each 128x128 scale block stays wholly gate or wholly up (the
    same values, reordered: nothing is requantized). unprepare_gate_up undoes it."""
    _require_tensors(w_gate=w_gate, w_gate_scales=w_gate_scales, w_up=w_up, w_up_scales=w_up_scales)
    for name, w, scales in (("w_gate", w_gate, w_gate_scales), ("w_up", w_up, w_up_scales)):
        _layouts._require_dtype(name, w, (torch.float8_e4m3fn,))
        _layouts.check_rank(name, w, 2, "(I, K)")
        _layouts.check_weight_layout(name, w, f"{name}_scales", scales, "I")
        if w.shape[0] % _layouts.GROUP_K:
            raise ValueError(f"{name}.shape[0] (the intermediate size I) must be a multiple of {_layouts.GROUP_K}, "
                             f"got {w.shape[0]}")
    if w_gate.shape != w_up.shape:
        raise ValueError(f"w_gate and w_up must have one shape (I, K), got {tuple(w_gate.shape)} and "
                         f"{tuple(w_up.shape)}")
    return (_layouts.interleave_gate_up(w_gate, w_up), _layouts.interleave_gate_up(w_gate_scales, w_up_scales, 1))


def unprepare_gate_up(w: torch.Tensor, w_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                         torch.Tensor]:
    """prepare_gate_up's inverse: (w_gate, w_gate_scales, w_up, w_up_scales)."""
    _require_tensors(w=w, w_scales=w_scales)
    gate, up = _layouts.split_gate_up(w)
    gate_s, up_s = _layouts.split_gate_up(w_scales, 1)
    return gate, gate_s, up, up_s


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """h (M, I) bf16 = SwiGLU of a gate/up GEMM's bf16 output (M, 2I) whose columns interleave per 128 as
    prepare_gate_up's weight rows do: silu(gate) * up in fp32 with fixed roundings (triton_kernels/swiglu.py),
    rounded once to bf16. The unfused path of fp8_gemm_swiglu; Triton on CUDA, the reference on CPU."""
    _require_tensors(gate_up=gate_up)
    return torch.ops.deepergemm.swiglu(gate_up)


def fp8_gemm_swiglu(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                    ue8m0: bool = False, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scales) = quantize_act(swiglu(fp8_gemm(a, a_scales, b, b_scales)), ue8m0): the gate/up projection, SwiGLU
    and the next GEMM's quantization; with the ptx backend one kernel (SwiGLU and quantization in the epilogue),
    bit-identical to those three steps on the GPU where the bf16 GEMM runs unsplit (no split-K, no stream-K: the same
    sums in the same order). b (2I, K) and b_scales (2I/128, K/128) from prepare_gate_up, I a multiple of 128; a (M, K)
    fp8 with a_scales (M, K/128). q (M, I) fp8 e4m3, scales (M, I/128) fp32 in the activation layout."""
    _check_backend(backend)
    _check_flag("ue8m0", ue8m0)
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales)
    if torch.is_grad_enabled():
        _forward_only("fp8_gemm_swiglu", a=a, a_scales=a_scales, b=b, b_scales=b_scales)
    return torch.ops.deepergemm.fp8_gemm_swiglu(a, a_scales, b, b_scales, ue8m0, backend)


def linear(x: torch.Tensor, w: torch.Tensor | PreparedWeight, w_scales: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """y = x @ dequant(w).T + bias with x quantized per 1x128 group on the fly; y has x's dtype.

    x (..., K) bf16, fp16 or fp32 (fp16: the GEMM's fp32 result rounded once to fp16); w (N, K) fp8 e4m3 with
    w_scales (ceil(N/128), K/128) fp32, or a PreparedWeight (prepare_weight; w_scales None). Forward only: no
    input may require grad in grad mode."""
    _check_backend(backend)
    if isinstance(w, PreparedWeight):
        scales = _prepared_scales("w_scales", w, w_scales)
        _require_tensors(x=x, bias=bias)
        if torch.is_grad_enabled():
            _forward_only("linear", x=x, bias=bias)
        if not w.placed:
            return torch.ops.deepergemm.linear(x, w.weight, scales, bias, backend)
        _layouts.check_linear_x(x, w.k)
        x2 = x.reshape(-1, x.shape[-1])
        q, s = torch.ops.deepergemm.quantize_act(x2 if x2.is_contiguous() else x2.contiguous())
        out = _placed_gemm(q, s, w, _layouts.linear_gemm_dtype(x.dtype), bias, backend)
        return out.to(x.dtype).reshape(*x.shape[:-1], w.n)
    if w_scales is None:
        raise ValueError("w_scales is required with a plain fp8 w (only a PreparedWeight carries its own)")
    _require_tensors(x=x, w=w, w_scales=w_scales, bias=bias)
    if torch.is_grad_enabled():
        _forward_only("linear", x=x, w=w, w_scales=w_scales, bias=bias)
    return torch.ops.deepergemm.linear(x, w, w_scales, bias, backend)


def _new_grouped_out(shape: tuple[int, ...], like: torch.Tensor, out_dtype: torch.dtype | None) -> torch.Tensor:
    out_dtype = torch.bfloat16 if out_dtype is None else out_dtype
    if out_dtype not in _layouts.OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.bfloat16 or torch.float32, got {out_dtype}")
    return torch.empty(shape, dtype=out_dtype, device=like.device)


def _check_out_agrees(out: torch.Tensor, out_dtype: torch.dtype | None) -> None:
    if out_dtype is not None and out_dtype != out.dtype:
        raise ValueError(f"out_dtype={out_dtype} disagrees with out.dtype={out.dtype}: out_dtype only chooses the "
                         "dtype of an output allocated here; leave it None when passing out=")


def _contiguous_group_sizes(group_sizes, a) -> torch.Tensor:
    """The contiguous grouped GEMMs' group_sizes: given, or from the ContiguousLayout that permuted a."""
    if isinstance(group_sizes, ContiguousLayout):
        _require_tensors(a=a)
        return _moe.layout_group_sizes(group_sizes, a)
    if not isinstance(group_sizes, torch.Tensor):
        raise TypeError(f"group_sizes must be a torch.Tensor or a ContiguousLayout, got {type(group_sizes).__name__}")
    _moe.check_layout_alignment(group_sizes)
    return group_sizes


def m_grouped_fp8_gemm_contiguous(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                                  group_sizes: torch.Tensor | ContiguousLayout, out: torch.Tensor | None = None,
                                  out_dtype: torch.dtype | None = None, zero_padding: bool = False,
                                  backend: str = "auto") -> torch.Tensor:
    """Mixture-of-experts GEMM, m-grouped contiguous layout: the rows of A hold every group's (expert's) tokens
    back to back, group g's segment starting at ``sum_{j<g} round_up(group_sizes[j], GROUPED_M_ALIGNMENT)``
    (128); the rows of a segment after its ``group_sizes[g]`` real rows are padding.

    a (M, K) fp8 with a_scales (M, K/128) fp32; b (groups, N, K) fp8 with b_scales (groups, ceil(N/128), K/128)
    fp32; group_sizes (groups,) int32 on a's device (read by the kernel: no host synchronization, so CUDA graphs
    replay it with new sizes), or the ContiguousLayout that permuted A (build_contiguous_layout: its alignment
    must be GROUPED_M_ALIGNMENT and its rows M; the group sizes of a layout with another alignment are refused
    too). Row r of group g: out[r] = dequant(a[r]) @ dequant(b[g]).T, rounded once.
    Padding rows and rows past the last segment are never computed nor written: they keep what ``out`` held
    (uninitialized memory when ``out`` is None), or are zero with ``zero_padding=True`` (a memset of out first).
    Sizes are clamped: negative counts read as 0 and a segment past row M is cut off. Up to MAX_GROUPS groups.
    Returns out ((M, N); allocated here with out_dtype, bf16 when None; with ``out=``, out_dtype is None or
    out's dtype). backend: "auto", "ptx" or "reference". Forward only: no input may require grad in grad mode."""
    _check_out_dtype(out_dtype, none_ok=True)
    _check_flag("zero_padding", zero_padding)
    _check_backend(backend)
    group_sizes = _contiguous_group_sizes(group_sizes, a)
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales, out=out)
    if torch.is_grad_enabled():
        _forward_only("m_grouped_fp8_gemm_contiguous", a=a, a_scales=a_scales, b=b, b_scales=b_scales, out=out)
    if out is None:
        _layouts.check_rank("a", a, 2, "(M, K): the tokens of every group back to back")
        _layouts.check_rank("b", b, 3, "(groups, N, K)")
        out = _new_grouped_out((a.shape[0], b.shape[1]), a, out_dtype)
    else:
        _check_out_agrees(out, out_dtype)
    torch.ops.deepergemm.m_grouped_fp8_gemm_contiguous(a, a_scales, b, b_scales, group_sizes, out, zero_padding,
                                                       backend)
    return out


def m_grouped_fp8_gemm_contiguous_swiglu(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                                         b_scales: torch.Tensor, group_sizes: torch.Tensor | ContiguousLayout,
                                         ue8m0: bool = False, backend: str = "auto",
                                         expected_m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture-of-experts gate/up projection, SwiGLU and the down projection's quantization in one kernel (ptx):
    (q, scales) = quantize_act(swiglu(h_gate_up), ue8m0) on the groups' real rows, where h_gate_up is
    m_grouped_fp8_gemm_contiguous(a, a_scales, b, b_scales, group_sizes) in bf16 and each expert's N = 2I rows of b
    are its gate rows [0, I) then its up rows [I, 2I), as stacked experts are stored (transformers' gate_up_proj):
    no interleaved copy. SwiGLU is swiglu's formula (silu(gate) * up in fp32, rounded once to bf16), and on the
    GPU the result is bit-identical to those steps (the bf16 GEMM, its columns interleaved per 128, swiglu,
    quantize_act).

    a, a_scales, b (groups, 2I, K), b_scales and group_sizes (or a ContiguousLayout) as for
    m_grouped_fp8_gemm_contiguous; 2I a multiple of 256. Returns q (M, I) fp8 e4m3 and scales (M, I/128) fp32 in
    quantize_act's layout, which m_grouped_fp8_gemm_contiguous takes as the down projection's input with the same
    group sizes. Rows outside the groups' real rows (padding, rows past the last segment) are unspecified: the
    kernel never writes them. expected_m, the real rows per group the tile choice plans for (only a hint): by
    default, given a ContiguousLayout, its routed choices / groups (a layout sized by contiguous_rows_bound holds far
    more rows than choices at decode), else M / groups. backend: "auto", "ptx" or "reference". Forward only."""
    _check_flag("ue8m0", ue8m0)
    _check_backend(backend)
    if expected_m is None:  # (0: the op's M / groups)
        experts = group_sizes.num_experts if isinstance(group_sizes, ContiguousLayout) else 0
        expected_m = (group_sizes.row_of.numel() + experts - 1) // experts if experts else 0
    _layouts.check_expected_m(expected_m, zero_ok=True)  # (the dispatcher's own error for a float is a RuntimeError)
    group_sizes = _contiguous_group_sizes(group_sizes, a)
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales)
    if torch.is_grad_enabled():
        _forward_only("m_grouped_fp8_gemm_contiguous_swiglu", a=a, a_scales=a_scales, b=b, b_scales=b_scales)
    return torch.ops.deepergemm.m_grouped_fp8_gemm_contiguous_swiglu(a, a_scales, b, b_scales, group_sizes,
                                                                     expected_m, ue8m0, backend)


def m_grouped_fp8_gemm_masked(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                              masked_m: torch.Tensor, expected_m: int, out: torch.Tensor | None = None,
                              out_dtype: torch.dtype | None = None, backend: str = "auto") -> torch.Tensor:
    """Mixture-of-experts GEMM, m-grouped masked layout (decode): a (groups, max_m, K) fp8 with a_scales
    (groups, max_m, K/128) fp32, of which group g's first masked_m[g] rows are real; b, b_scales as for
    m_grouped_fp8_gemm_contiguous; masked_m (groups,) int32 on a's device, read by the kernel (no host
    synchronization: capture once in a CUDA graph, replay with new counts); expected_m, the rows per group the
    caller expects, only guides the tile choice. out[g, r] = dequant(a[g, r]) @ dequant(b[g]).T for r <
    masked_m[g]; the rows after them are never written (they keep what ``out`` held, uninitialized memory when
    it is None). Returns out ((groups, max_m, N); out_dtype as for the contiguous form). Forward only."""
    _check_out_dtype(out_dtype, none_ok=True)
    _check_backend(backend)
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales, masked_m=masked_m, out=out)
    _layouts.check_expected_m(expected_m)  # (the dispatcher's own error for a float is a RuntimeError)
    if torch.is_grad_enabled():
        _forward_only("m_grouped_fp8_gemm_masked", a=a, a_scales=a_scales, b=b, b_scales=b_scales, out=out)
    if out is None:
        _layouts.check_rank("a", a, 3, "(groups, max_m, K)")
        _layouts.check_rank("b", b, 3, "(groups, N, K)")
        out = _new_grouped_out((a.shape[0], a.shape[1], b.shape[1]), a, out_dtype)
    else:
        _check_out_agrees(out, out_dtype)
    torch.ops.deepergemm.m_grouped_fp8_gemm_masked(a, a_scales, b, b_scales, masked_m, expected_m, out, backend)
    return out


def m_grouped_fp8_gemm_masked_swiglu(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                                     b_scales: torch.Tensor, masked_m: torch.Tensor, expected_m: int,
                                     ue8m0: bool = False,
                                     backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """m_grouped_fp8_gemm_contiguous_swiglu for the masked layout (decode): a (groups, max_m, K), a_scales,
    masked_m and expected_m as for m_grouped_fp8_gemm_masked; b (groups, 2I, K) gate rows then up rows per expert.
    Returns q (groups, max_m, I) fp8 e4m3 and scales (groups, max_m, I/128) fp32, a view of scales in quantize_act's
    layout over the groups' rows back to back, which m_grouped_fp8_gemm_masked takes as the down projection's input
    as is. Rows r >= masked_m[g] are unspecified (never written). Forward only."""
    _check_flag("ue8m0", ue8m0)
    _check_backend(backend)
    _require_tensors(a=a, a_scales=a_scales, b=b, b_scales=b_scales, masked_m=masked_m)
    _layouts.check_expected_m(expected_m)
    if torch.is_grad_enabled():
        _forward_only("m_grouped_fp8_gemm_masked_swiglu", a=a, a_scales=a_scales, b=b, b_scales=b_scales)
    return torch.ops.deepergemm.m_grouped_fp8_gemm_masked_swiglu(a, a_scales, b, b_scales, masked_m, expected_m,
                                                                 ue8m0, backend)
