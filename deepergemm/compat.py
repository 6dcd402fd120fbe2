"""The block-FP8 entry points vLLM, SGLang and transformers call, with the same names, argument order and
semantics, over deepergemm's kernels:

    import deepergemm.compat as deep_gemm          # where a framework has `import deep_gemm`
    deep_gemm.fp8_gemm_nt((a, a_s), (b, b_s), d)                                        # d (M, N) written
    deep_gemm.m_grouped_fp8_gemm_nt_contiguous((a, a_s), (b, b_s), d, m_indices)       # m_indices: expert per row
    deep_gemm.m_grouped_fp8_gemm_nt_masked((a, a_s), (b, b_s), d, masked_m, expected_m)
    from deepergemm.compat import w8a8_block_fp8_matmul, per_token_group_quant_fp8    # the Triton fallbacks

What they share: fp8 e4m3 operands, fp32 scales, activations in 1x128 groups along K and weights in 128x128
blocks (DeepGEMM's recipe (1, 128, 128), vLLM's block_size [128, 128]; others are refused). Activation scales
(M, K/128) come in any layout: row-major, column-major (M-major, DeepGEMM's TMA-aligned form included), or with
more rows than M (only the first M are read). What deepergemm adds or needs, function by function:
* K must be a multiple of 128 and N of 8 (a ValueError names the rule; DeepGEMM and vLLM's Triton kernel take
  other K with a partial last group).
* Scales are used as given: fp32 scales are never rounded to powers of two (DeepGEMM's UE8M0 cast is for sm100),
  so disable_ue8m0_cast changes nothing; packed UE8M0 (int32) scales are refused. compiled_dims, a JIT hint, is
  accepted and ignored (nothing is compiled at run time here).
* fp8_gemm_nt also takes an fp32 d and an fp32 c (d = c + a @ b.T, summed in fp32), which DeepGEMM's sm90 path
  refuses; the result is written into d (a copy: the GEMM writes its own output first).
* m_grouped_fp8_gemm_nt_contiguous reads m_indices as vLLM and SGLang build it: experts in ascending order, each
  expert's segment starting at a multiple of 128 rows, its rows first and -1 after them (or its id on them too:
  those rows are then computed, as DeepGEMM does). DeepGEMM also takes segments in other orders; this layout is
  checked (check_m_indices) whenever a check is possible: not while torch.compile traces or a CUDA graph
  captures, and not with check_layout=False (it reads a flag back from the GPU: one synchronization). Rows with
  m_indices -1 are never written: d keeps what it held there (DeepGEMM leaves them unspecified).
* per_token_group_quant_fp8 is plain torch (a few elementwise kernels), exactly vLLM's formula: scale =
  max(amax, eps) / 448, rounded up to a power of two with use_ue8m0, and q = clamp(x / scale, -448, 448) in
  fp32, then e4m3. (dg.quantize_act, the fast Triton quantizer, has its own rules: eps 1e-4 and x * (448 / amax).)
"""
from __future__ import annotations

import torch

import deepergemm as dg

from .layouts import GROUPED_M_ALIGNMENT, act_scale_stride, to_act_scale_layout
from .reference import FP8_DTYPE, FP8_MAX, GROUP_K, contiguous_group_bounds, ue8m0_round_up

__all__ = ["fp8_gemm_nt", "m_grouped_fp8_gemm_nt_contiguous", "m_grouped_fp8_gemm_nt_masked",
           "w8a8_block_fp8_matmul", "per_token_group_quant_fp8", "check_m_indices",
           "get_m_alignment_for_contiguous_layout", "get_mk_alignment_for_contiguous_layout",
           "get_mn_major_tma_aligned_tensor", "get_col_major_tma_aligned_tensor",
           "gemm_fp8_fp8_bf16_nt", "m_grouped_gemm_fp8_fp8_bf16_nt_contiguous", "m_grouped_gemm_fp8_fp8_bf16_nt_masked"]

RECIPE = (1, GROUP_K, GROUP_K)
_OUT_DTYPES = (torch.bfloat16, torch.float32)
_LINEAR_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# argument rules, in the callers' names
# ----------------------------------------------------------------------------------------------
def _pair(name: str, value) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)):
        raise TypeError(f"{name} must be a pair ({name}, {name}_s) of tensors: the fp8 operand and its fp32 scales, "
                        f"got {type(value).__name__}")
    tensor, scales = value
    if scales.dtype != torch.float32:
        raise TypeError(f"{name}'s scales ({name}[1]) must be float32, got {scales.dtype} (packed UE8M0 int32 scales "
                        "are DeepGEMM's sm100 format; pass fp32 scales)")
    return tensor, scales


def _check_recipe(recipe) -> None:
    if recipe is not None and tuple(recipe) != RECIPE:
        raise ValueError(f"recipe must be None or {RECIPE} (1x128 activation groups, 128x128 weight blocks), got "
                         f"{recipe!r}")


def _check_output(name: str, t, shape: tuple[int, ...], dtypes: tuple[torch.dtype, ...], contiguous: bool) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")


def _check_rank(name: str, t: torch.Tensor, rank: int, what: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {what}, got shape {tuple(t.shape)}")


def _first_rows(scales: torch.Tensor, rows: int, dim: int) -> torch.Tensor:
    """Scales allocated for more rows than the operand has (M padded): the first `rows` along dim, a view."""
    return scales.narrow(dim, 0, rows) if scales.dim() > dim and scales.shape[dim] > rows else scales


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


# ----------------------------------------------------------------------------------------------
# DeepGEMM
# ----------------------------------------------------------------------------------------------
def fp8_gemm_nt(a, b, d: torch.Tensor, c: torch.Tensor | None = None, recipe=None, compiled_dims: str = "nk",
                disable_ue8m0_cast: bool = False) -> None:
    """d = a @ b.T (+ c), written into d. a = (a (M, K) e4m3, a_s (M, K/128) fp32), b = (b (N, K) e4m3, b_s
    (ceil(N/128), K/128) fp32), d (M, N) bf16 (or fp32), c None or (M, N) fp32."""
    a, a_s = _pair("a", a)
    b, b_s = _pair("b", b)
    _check_recipe(recipe)
    _check_rank("a", a, 2, "(M, K)")
    _check_rank("b", b, 2, "(N, K)")
    m, n = a.shape[0], b.shape[0]
    _check_output("d", d, (m, n), _OUT_DTYPES, contiguous=False)
    a_s = _first_rows(a_s, m, 0)
    if c is None:
        d.copy_(dg.fp8_gemm(a, a_s, b, b_s, out_dtype=d.dtype))
        return
    _check_output("c", c, (m, n), (torch.float32,), contiguous=False)
    d.copy_(dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float32) + c)


def _can_synchronize() -> bool:
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def check_m_indices(m_indices: torch.Tensor, num_groups: int) -> None:
    """Raise ValueError unless m_indices (M,) describes the contiguous layout the grouped GEMM reads: experts in
    ascending order, expert g's rows starting at the first multiple of 128 after the previous expert's, its ids
    first, -1 after them. One synchronization with the device (the verdict is read back)."""
    if not isinstance(m_indices, torch.Tensor):
        raise TypeError(f"m_indices must be a torch.Tensor, got {type(m_indices).__name__}")
    sizes = dg.group_sizes_from_m_indices(m_indices, num_groups)  # (its own rules on m_indices)
    rows = m_indices.shape[0]
    start, end = contiguous_group_bounds(sizes, rows, GROUPED_M_ALIGNMENT)
    row = torch.arange(rows, device=m_indices.device)
    group = (torch.bucketize(row, start, right=True) - 1).clamp(min=0)  # the last group starting at or before row
    inside = (row >= start[group]) & (row < end[group])
    expected = torch.where(inside, group, -1)
    wrong = (m_indices.long() != expected).nonzero()
    if wrong.numel():
        r = int(wrong[0, 0])
        raise ValueError(
            f"m_indices is not the contiguous layout the grouped GEMM reads: row {r} holds {int(m_indices[r])}, the "
            f"layout of these expert counts has {int(expected[r])} there (experts in ascending order, each expert's "
            f"rows starting at a multiple of {GROUPED_M_ALIGNMENT}, its ids first and -1 after them; ids outside "
            f"[0, {num_groups}) count as -1)")


def m_grouped_fp8_gemm_nt_contiguous(a, b, d: torch.Tensor, m_indices: torch.Tensor, recipe=None,
                                     compiled_dims: str = "nk", disable_ue8m0_cast: bool = False, *,
                                     check_layout: bool | None = None) -> None:
    """d[r] = a[r] @ b[m_indices[r]].T for every row with m_indices[r] >= 0, written into d; other rows of d keep
    what they held. a = (a (M, K) e4m3, a_s (M, K/128) fp32), b = (b (G, N, K) e4m3, b_s (G, ceil(N/128), K/128)
    fp32), d (M, N) bf16 (or fp32) contiguous, m_indices (M,) int32 (or int64) on a's device. check_layout: None
    checks the layout when it can (see the module's docstring), True always, False never."""
    a, a_s = _pair("a", a)
    b, b_s = _pair("b", b)
    _check_recipe(recipe)
    _check_rank("a", a, 2, "(M, K): the rows of every expert back to back")
    _check_rank("b", b, 3, "(groups, N, K)")
    if not isinstance(m_indices, torch.Tensor):
        raise TypeError(f"m_indices must be a torch.Tensor, got {type(m_indices).__name__}")
    m = a.shape[0]
    if tuple(m_indices.shape) != (m,):
        raise ValueError(f"m_indices must have shape (M,) = ({m},): one expert id per row of a, got "
                         f"{tuple(m_indices.shape)}")
    _check_output("d", d, (m, b.shape[1]), _OUT_DTYPES, contiguous=True)
    if check_layout is not None:
        _check_flag("check_layout", check_layout)
    if check_layout or (check_layout is None and _can_synchronize()):
        check_m_indices(m_indices, b.shape[0])
    sizes = dg.group_sizes_from_m_indices(m_indices, b.shape[0])
    dg.m_grouped_fp8_gemm_contiguous(a, _first_rows(a_s, m, 0), b, b_s, sizes, out=d)


def m_grouped_fp8_gemm_nt_masked(a, b, d: torch.Tensor, masked_m: torch.Tensor, expected_m: int, recipe=None,
                                 compiled_dims: str = "nk", disable_ue8m0_cast: bool = False) -> None:
    """d[g, r] = a[g, r] @ b[g].T for r < masked_m[g], written into d; the rows after keep what they held.
    a = (a (G, max_m, K) e4m3, a_s (G, max_m, K/128) fp32), b as for the contiguous form, d (G, max_m, N) bf16
    (or fp32) contiguous, masked_m (G,) int32 on a's device (read on the GPU: CUDA graphs replay new counts),
    expected_m the rows per group the caller expects (a tile-choice hint)."""
    a, a_s = _pair("a", a)
    b, b_s = _pair("b", b)
    _check_recipe(recipe)
    _check_rank("a", a, 3, "(groups, max_m, K)")
    _check_rank("b", b, 3, "(groups, N, K)")
    _check_output("d", d, (a.shape[0], a.shape[1], b.shape[1]), _OUT_DTYPES, contiguous=True)
    dg.m_grouped_fp8_gemm_masked(a, _first_rows(a_s, a.shape[1], 1), b, b_s, masked_m, expected_m, out=d)


def get_m_alignment_for_contiguous_layout() -> int:
    """Rows each expert's segment of the contiguous layout starts at a multiple of (128)."""
    return GROUPED_M_ALIGNMENT


get_mk_alignment_for_contiguous_layout = get_m_alignment_for_contiguous_layout


def get_mn_major_tma_aligned_tensor(x: torch.Tensor) -> torch.Tensor:
    """Activation scales (M, K/128), or (G, M, K/128), in the GEMMs' own layout: M-major with the M stride rounded
    up to 4 (16 bytes); copied only when needed. Any layout is accepted anyway: this saves the GEMM's copy."""
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"x must be a 2-D (M, K/128) or 3-D (G, M, K/128) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() == 2:
        return to_act_scale_layout(x)
    groups, m, k_groups = x.shape
    pad = act_scale_stride(m)
    out = torch.empty_strided((groups, m, k_groups), (pad * k_groups, 1, pad), dtype=x.dtype, device=x.device)
    out.copy_(x)
    return out


get_col_major_tma_aligned_tensor = get_mn_major_tma_aligned_tensor

# DeepGEMM's earlier names, which vLLM and SGLang releases still call
gemm_fp8_fp8_bf16_nt = fp8_gemm_nt
m_grouped_gemm_fp8_fp8_bf16_nt_contiguous = m_grouped_fp8_gemm_nt_contiguous
m_grouped_gemm_fp8_fp8_bf16_nt_masked = m_grouped_fp8_gemm_nt_masked


# ----------------------------------------------------------------------------------------------
# vLLM / SGLang Triton fallbacks
# ----------------------------------------------------------------------------------------------
def _check_block_size(block_size) -> None:
    if not isinstance(block_size, (list, tuple)) or len(block_size) != 2 or [int(v) for v in block_size] != [128, 128]:
        raise ValueError(f"block_size must be [128, 128] (128x128 weight blocks, 1x128 activation groups), got "
                         f"{block_size!r}")


def w8a8_block_fp8_matmul(A: torch.Tensor, B: torch.Tensor, As: torch.Tensor, Bs: torch.Tensor, block_size,
                          output_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """C (..., N) = dequant(A) @ dequant(B).T in output_dtype (fp16, bf16 or fp32, rounded once from the fp32 sum).
    A (..., K) e4m3 with As (..., K/128) fp32 (any layout; 2-D As may have more rows than A); B (N, K) e4m3 with Bs
    (ceil(N/128), K/128) fp32; block_size [128, 128]."""
    _check_block_size(block_size)
    for name, t in (("A", A), ("B", B), ("As", As), ("Bs", Bs)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if output_dtype not in _LINEAR_OUT_DTYPES:
        raise TypeError(f"output_dtype must be torch.float16, torch.bfloat16 or torch.float32, got {output_dtype!r}")
    if A.dim() < 1:
        raise ValueError("A must have at least 1 dimension (..., K)")
    if As.dim() < 1 or As.shape[-1] != -(-A.shape[-1] // GROUP_K):
        raise ValueError(f"As must be (..., K/128) = (..., {-(-A.shape[-1] // GROUP_K)}) for A {tuple(A.shape)}, got "
                         f"{tuple(As.shape)}")
    lead, k = A.shape[:-1], A.shape[-1]
    a2 = A.reshape(-1, k)
    m = a2.shape[0]
    as2 = As if As.dim() == 2 else As.reshape(-1, As.shape[-1])
    gemm_dtype = torch.bfloat16 if output_dtype == torch.bfloat16 else torch.float32
    out = dg.fp8_gemm(a2, _first_rows(as2, m, 0), B, Bs, out_dtype=gemm_dtype)
    return out.to(output_dtype).reshape(*lead, out.shape[1])


def _scale_tensor(x: torch.Tensor, groups: int, column_major: bool, tma_aligned: bool) -> torch.Tensor:
    """Where per_token_group_quant_fp8 puts the scales: row-major (..., G), or for 2-D x column-major (M, G) with
    M stride M (round_up(M, 4) when tma_aligned), or for 3-D x with tma_aligned (B, M, G) column-major per batch."""
    lead = tuple(x.shape[:-1])
    if not column_major:
        return torch.empty((*lead, groups), dtype=torch.float32, device=x.device)
    if x.dim() == 2 or (x.dim() == 3 and tma_aligned):
        m = lead[-1]
        pad = act_scale_stride(m) if tma_aligned else m
        strides = (1, pad) if x.dim() == 2 else (pad * groups, 1, pad)
        return torch.empty_strided((*lead, groups), strides, dtype=torch.float32, device=x.device)
    raise ValueError(f"column_major_scales takes a 2-D x (or a 3-D x with tma_aligned_scales), got x of shape "
                     f"{tuple(x.shape)}")


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int, eps: float = 1e-10, dtype: torch.dtype | None = None,
                              column_major_scales: bool = False, tma_aligned_scales: bool = False,
                              out_q: torch.Tensor | None = None,
                              use_ue8m0: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q, x_s): x (..., K) bf16/fp16/fp32 quantized to e4m3 in groups of group_size along K (any group_size
    dividing K; the GEMMs take 128). Per group, in fp32: x_s = max(amax, eps) / 448 (with use_ue8m0, rounded up to
    a power of two), x_q = clamp(x / x_s, -448, 448) rounded to e4m3. x_q has x's shape (written into out_q when
    given); x_s is (..., K/group_size), row-major, or column-major per column_major_scales / tma_aligned_scales
    (M stride rounded up to 4). dtype None or torch.float8_e4m3fn; use_ue8m0 None means False."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dimension (..., K)")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    k = x.shape[-1]
    if k % group_size:
        raise ValueError(f"x.shape[-1] (K={k}) must be a multiple of group_size ({group_size})")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if dtype is not None and dtype != FP8_DTYPE:
        raise ValueError(f"dtype must be None or torch.float8_e4m3fn (the only fp8 format here), got {dtype!r}")
    _check_flag("column_major_scales", column_major_scales)
    _check_flag("tma_aligned_scales", tma_aligned_scales)
    use_ue8m0 = False if use_ue8m0 is None else use_ue8m0
    _check_flag("use_ue8m0", use_ue8m0)
    if out_q is not None:
        _check_output("out_q", out_q, tuple(x.shape), (FP8_DTYPE,), contiguous=False)
    groups = k // group_size
    x_s = _scale_tensor(x, groups, column_major_scales, tma_aligned_scales)

    values = x.float().reshape(*x.shape[:-1], groups, group_size)
    amax = values.abs().amax(dim=-1)
    amax = torch.clamp(amax, min=float(eps))  # (NaN stays NaN)
    scale = amax / torch.full_like(amax, FP8_MAX)  # tensor / tensor: correctly rounded on every device
    if use_ue8m0:
        scale = ue8m0_round_up(scale)
    q = (values / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).reshape(x.shape)
    x_s.copy_(scale)
    if out_q is None:
        return q, x_s
    out_q.copy_(q)
    return out_q, x_s
