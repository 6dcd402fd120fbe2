"""Pure-torch reference math: the definition every kernel is checked against.

Runs on CPU and GPU. These functions are the CPU implementations of the custom ops and the ground
truth of the tests, so the rules below are the library's contract.

Quantization rules (DeepSeek-V3 style)
-------------------------------------
* Activations: one scale per 1x128 group along K (``act_group``).
  Weights: one scale per 128x128 block (``weight_block``); blocks at the N and K edges are padded
  with zeros (the padding only ever lowers nothing: it is ignored by ``amax`` unless the whole
  block is zero, where the amax clamp applies).
* ``amax = max(|x|)`` over the group in fp32, clamped below at ``AMAX_EPS`` = 1e-4.
* fp32 scales (default): ``scale = amax / 448`` and ``q = fp8_e4m3fn(x * ((1 / amax) * 448))``.
  ``amax / 448`` and ``1 / amax`` are correctly rounded fp32 divisions (tensor by tensor, so CPU and
  CUDA agree: torch turns division by a Python scalar into a multiply by its rounded reciprocal on
  CUDA); ``* 448`` and ``x * multiplier`` are single fp32 multiplies. The largest element maps to 448
  (within one fp32 ulp, which the fp8 rounding absorbs).
* UE8M0 scales (``ue8m0=True``): ``scale = 2 ** ceil(log2(amax / 448))``, computed on the fp32 bits
  (exponent + 1 when the mantissa is not zero), still stored as fp32; ``q = fp8(x * (1 / scale))``,
  exact scaling by a power of two.
* The fp8 cast rounds to nearest, ties to even (``torch.Tensor.to(float8_e4m3fn)`` and PTX
  ``cvt.rn.satfinite.e4m3x2.f32`` agree on every value the rules can produce, which are at most
  448 in magnitude).
* Non-finite input: a group holding NaN gets a NaN scale and NaN data; a group holding +-Inf (and
  no NaN) gets an Inf scale, NaN for the Inf elements and 0 for the others. Either way every
  element of that group dequantizes to NaN, and so does every output row (activations) or column
  block (weights) that the group feeds: bad values are never silently turned into numbers.

Dequantization is ``q.float() * scale`` broadcast over the group/block, and the reference GEMM is
``dequant(a) @ dequant(b).T`` in fp32 (TF32 off), plus an optional bias, cast once to the output
dtype. That is the value an exact kernel must reproduce up to fp32 summation order.
"""
from __future__ import annotations

import contextlib

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
AMAX_EPS = 1e-4
GROUP_K = 128  # activation group size along K, and the weight block size in both dimensions

__all__ = [
    "FP8_DTYPE", "FP8_MAX", "AMAX_EPS", "GROUP_K",
    "ue8m0_round_up", "quantize_act", "quantize_weight", "dequantize_act", "dequantize_weight",
    "fp8_gemm", "linear", "calc_diff", "exact_fp32_matmul",
    "swiglu", "contiguous_group_bounds", "m_grouped_fp8_gemm_contiguous", "m_grouped_fp8_gemm_masked",
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def ue8m0_round_up(scale: torch.Tensor) -> torch.Tensor:
    """Round positive fp32 scales up to a power of two, exactly (bit arithmetic, no log2).

    NaN and Inf pass through unchanged (their exponent field is all ones already, and an
    all-ones-exponent value is returned as is)."""
    bits = scale.contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    mantissa = bits & 0x7FFFFF
    finite = exponent != 0xFF
    exponent = exponent + ((mantissa != 0) & finite).to(torch.int32)
    rounded = (exponent << 23).view(torch.float32)
    return torch.where(finite, rounded, scale)


def _scales_and_multipliers(amax: torch.Tensor, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """amax (fp32, any shape) -> (scale, multiplier applied to x before the fp8 cast)."""
    amax = amax.float()
    # clamp keeps NaN (torch.clamp propagates it), so a NaN group stays NaN
    amax = torch.clamp(amax, min=AMAX_EPS)
    # tensor / tensor divisions: correctly rounded on every device (see the module docstring)
    one, fp8_max = torch.ones_like(amax), torch.full_like(amax, FP8_MAX)
    if ue8m0:
        scale = ue8m0_round_up(amax / fp8_max)
        return scale, one / scale
    return amax / fp8_max, (one / amax) * FP8_MAX


SCALE_GROUPS_K = (128, 256)  # the K extents of a scale group the reference knows (256: the wider recipe's)


def _check_float_matrix(name: str, x: torch.Tensor, k_multiple: bool = True, group_k: int = GROUP_K) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"{name} must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, K), got shape {tuple(x.shape)}")
    if group_k not in SCALE_GROUPS_K:
        raise ValueError(f"the scale group along K must be one of {SCALE_GROUPS_K}, got {group_k}")
    if k_multiple and (x.shape[1] == 0 or x.shape[1] % group_k != 0):
        raise ValueError(f"{name}.shape[1] (K) must be a positive multiple of {group_k}, got K={x.shape[1]}")


def quantize_act(x: torch.Tensor, ue8m0: bool = False, group_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(1 x group_k) fp8 quantization of activations (group_k 128, or 256 for the wider recipe).

    x: (M, K) bf16/fp16/fp32, K a positive multiple of group_k.
    Returns (q (M, K) float8_e4m3fn contiguous, scales (M, K/group_k) fp32). The reference returns
    row-major scales; the GPU quantizer returns the same values in the GEMM's M-major layout
    (see deepergemm.layouts.empty_act_scales)."""
    _check_float_matrix("x", x, group_k=group_k)
    m, k = x.shape
    groups = x.float().reshape(m, k // group_k, group_k)
    amax = groups.abs().amax(dim=2, keepdim=True)
    scale, mult = _scales_and_multipliers(amax, ue8m0)
    q = (groups * mult).to(FP8_DTYPE).reshape(m, k)
    return q, scale.reshape(m, k // group_k)


def quantize_weight(w: torch.Tensor, ue8m0: bool = False, block_k: int = GROUP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(128 x block_k)-block fp8 quantization of weights (N, K), N any size (edge blocks padded); block_k 128,
    or 256 for the wider recipe.

    Returns (q (N, K) float8_e4m3fn contiguous, scales (ceil(N/128), K/block_k) fp32 contiguous)."""
    _check_float_matrix("w", w, group_k=block_k)
    n, k = w.shape
    nb, kb = _ceil_div(n, GROUP_K), k // block_k
    padded = torch.zeros(nb * GROUP_K, k, dtype=torch.float32, device=w.device)
    padded[:n] = w.float()
    blocks = padded.reshape(nb, GROUP_K, kb, block_k)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True)
    scale, mult = _scales_and_multipliers(amax, ue8m0)
    q = (blocks * mult).to(FP8_DTYPE).reshape(nb * GROUP_K, k)[:n].contiguous()
    return q, scale.reshape(nb, kb).contiguous()


def _group_k_of(k: int, scale_columns: int) -> int:
    """The scale group along K that a (.., K) tensor with scale_columns scales per row was quantized with."""
    if scale_columns == 0 or k % scale_columns or k // scale_columns not in SCALE_GROUPS_K:
        raise ValueError(f"{scale_columns} scales per row do not fit K={k} with a group of {SCALE_GROUPS_K}")
    return k // scale_columns


def dequantize_act(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(M, K) fp8 and (M, K/g) scales (any strides; g = 128 or 256, from their shape) -> (M, K) fp32."""
    m, k = q.shape
    g = _group_k_of(k, scales.shape[1])
    return (q.float().reshape(m, k // g, g) * scales.float().unsqueeze(2)).reshape(m, k)


def dequantize_weight(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(N, K) fp8 and (ceil(N/128), K/g) scales (g = 128 or 256, from their shape) -> (N, K) fp32."""
    n, k = q.shape
    g = _group_k_of(k, scales.shape[1])
    expanded = scales.float().repeat_interleave(GROUP_K, dim=0)[:n].repeat_interleave(g, dim=1)
    return q.float() * expanded


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """Full-precision fp32 matmul on CUDA (TF32 off) for the duration, restoring the user's setting."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def exact_fp32_matmul(x: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """x @ y_t.T in IEEE fp32 (no TF32)."""
    with _ieee_fp32_matmul():
        return x.float() @ y_t.float().t()


def fp8_gemm(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
             out_dtype: torch.dtype = torch.bfloat16, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference block-scaled GEMM: out = dequant(a) @ dequant(b).T (+ bias), computed in fp32,
    rounded once to out_dtype. a (M,K) fp8, a_scales (M,K/128), b (N,K) fp8, b_scales (ceil(N/128),K/128)."""
    acc = exact_fp32_matmul(dequantize_act(a, a_scales), dequantize_weight(b, b_scales))
    if bias is not None:
        acc = acc + bias.float()
    return acc.to(out_dtype)


def linear(x: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor, bias: torch.Tensor | None = None,
           ue8m0: bool = False) -> torch.Tensor:
    """Reference of deepergemm.linear: quantize x per 1x128 group, then the block-scaled GEMM.
    x (..., K) bf16/fp16/fp32; returns (..., N) in x's dtype (rounded once from the fp32 sum)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    q, s = quantize_act(x2, ue8m0=ue8m0)
    out = fp8_gemm(q, s, w, w_scales, out_dtype=x.dtype, bias=bias)
    return out.reshape(*lead, w.shape[0])


# ----------------------------------------------------------------------------------------------
# SwiGLU (deepergemm.swiglu, fp8_gemm_swiglu)
# ----------------------------------------------------------------------------------------------
NEG_LOG2E = -1.4426950216293335  # -log2(e) rounded to fp32 (bits 0xBFB8AA3B)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU of an interleaved (M, 2I) gate/up output (128 gate columns, then the matching 128 up columns) -> h
    (M, I) bf16: in fp32 on the bf16-rounded gate g and up u, each step rounded once as the GPU's instructions
    round (triton_kernels/swiglu.py): t = g * -log2(e), e = 2^t, d = e + 1, r = 1 / d, s = g * r, h = bf16(s * u).
    torch's exp2 and reciprocal are correctly rounded or nearly, the GPU's ex2.approx and rcp.approx within an ulp
    or two, so h may differ from the GPU's in its last bit."""
    m, n = gate_up.shape
    pairs = gate_up.to(torch.bfloat16).float().reshape(m, n // (2 * GROUP_K), 2, GROUP_K)
    g, u = pairs[:, :, 0], pairs[:, :, 1]
    t = g * torch.tensor(NEG_LOG2E, dtype=torch.float32)
    d = torch.exp2(t) + 1.0
    s = g * torch.reciprocal(d)
    return (s * u).reshape(m, n // 2).to(torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# grouped (MoE) GEMMs: out rows of group g = dequant(a rows of g) @ dequant(b[g]).T; other rows untouched
# ----------------------------------------------------------------------------------------------
def contiguous_group_bounds(group_sizes: torch.Tensor, rows: int, alignment: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) (G,) int64 of each group's real rows in a contiguous grouped layout of `rows` rows, on the
    sizes' device, with no host synchronization. Group g starts where the segment of g - 1 ends, rounded up to
    `alignment` (segment = real rows rounded up); negative sizes count as 0, and rows past the end of A are
    cut off (a segment that starts at or past `rows` is empty). The kernel's scheduler clamps the same way."""
    sizes = group_sizes.to(torch.int64).clamp(min=0, max=rows)
    spans = (sizes + alignment - 1) // alignment * alignment
    start = (torch.cumsum(spans, 0) - spans).clamp(max=rows)
    end = start + torch.minimum(sizes, rows - start)
    return start, end


def _write_rows(out: torch.Tensor, keep: torch.Tensor, value: torch.Tensor) -> None:
    """out[r] = value[r] where keep[r]; other rows untouched (no host sync: the row counts stay on the device)."""
    out.copy_(torch.where(keep.unsqueeze(1), value.to(out.dtype), out))


def m_grouped_fp8_gemm_contiguous(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                                  group_sizes: torch.Tensor, out: torch.Tensor, alignment: int) -> None:
    """Reference m-grouped contiguous GEMM into out (M, N): a (M, K) fp8 with a_scales (M, K/128); b (G, N, K)
    fp8 with b_scales (G, ceil(N/128), K/128); group g's real rows [start, end) (contiguous_group_bounds)
    get dequant(a) @ dequant(b[g]).T in fp32, rounded once; every other row of out is left as it was."""
    start, end = contiguous_group_bounds(group_sizes, a.shape[0], alignment)
    row = torch.arange(a.shape[0], device=a.device)
    full = dequantize_act(a, a_scales)
    for g in range(b.shape[0]):
        keep = (row >= start[g]) & (row < end[g])
        _write_rows(out, keep, exact_fp32_matmul(full, dequantize_weight(b[g], b_scales[g])))


def m_grouped_fp8_gemm_masked(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor, b_scales: torch.Tensor,
                              masked_m: torch.Tensor, out: torch.Tensor) -> None:
    """Reference m-grouped masked GEMM into out (G, max_m, N): a (G, max_m, K) fp8 with a_scales (G, max_m,
    K/128); b, b_scales as for the contiguous form; rows r < masked_m[g] (clamped to 0..max_m) of group g get
    dequant(a[g]) @ dequant(b[g]).T, the rows after them are left as they were."""
    row = torch.arange(a.shape[1], device=a.device)
    for g in range(a.shape[0]):
        keep = row < masked_m[g].to(torch.int64)
        _write_rows(out[g], keep, exact_fp32_matmul(dequantize_act(a[g], a_scales[g]),
                                                    dequantize_weight(b[g], b_scales[g])))


def calc_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    """DeepGEMM's similarity error: 1 - 2<x,y> / (|x|^2 + |y|^2), in float64.

    0 for identical tensors; about 1.4e-6 for an exact kernel's bf16 output against the fp32
    reference. NaN anywhere gives NaN (never a pass). Two all-zero tensors give 0."""
    x, y = x.double(), y.double()
    denominator = (x * x + y * y).sum()
    if denominator == 0:
        return 0.0 if torch.isfinite(x).all() and torch.isfinite(y).all() else float("nan")
    return float(1 - 2 * (x * y).sum() / denominator)


EXACT_TOL = 2e-6  # calc_diff an exact kernel must meet against the fp32 reference (cuBLAS: ~1.4e-6)


# Hopper's fp8 wgmma keeps about 14 bits while it sums the 128 products of one K block (DeepSeek-V3
# report, section 3.3.2): relative to an output that partly cancels, ~2**-10, a quarter of a bf16 unit.
TENSOR_CORE_REL = 2.0 ** -10


def exactness_bound(expected: torch.Tensor, out_dtype: torch.dtype, tol: float = EXACT_TOL) -> float:
    """The calc_diff an exact kernel's `out_dtype` output must meet against `expected` (fp32).

    Normally `tol`: over many elements the tensor cores' rounding averages out (cuBLAS reads ~1.4e-6). But
    when a handful of elements carry the whole norm (fewer than FEW_ELEMENTS effective ones: tiny outputs
    such as M=1, N=8, or scales spread over 1e-3..1e3), calc_diff is the rounding of those few: even the
    exact result rounded once to bf16 can exceed 2e-6, and the tensor cores' sums (TENSOR_CORE_REL; cuBLAS's
    too) may round an element near a bf16 midpoint to its other neighbour (seen at 1x8x128: 2.2e-6 against
    1.6e-6 for the exact result on the H100, 2.3e-6 against a 2e-6 rounding floor on the H200). There the
    bound is 1.25x the calc_diff of the worst rounding of each element within that relative error."""
    near = expected.to(out_dtype).float()
    if 1.25 * calc_diff(near, expected) <= tol and _effective_elements(expected) >= FEW_ELEMENTS:
        return tol
    worst = near
    for factor in (1 + TENSOR_CORE_REL, 1 - TENSOR_CORE_REL):
        other = (expected * factor).to(out_dtype).float()
        worst = torch.where((other - expected).abs() > (worst - expected).abs(), other, worst)
    return max(tol, 1.25 * calc_diff(worst, expected))


FEW_ELEMENTS = 256  # below this many effective elements one rounding flip moves calc_diff past the tolerance


def _effective_elements(x: torch.Tensor) -> float:
    """How many elements carry the squared norm: (sum x^2)^2 / sum x^4 (n for equal magnitudes, 1 when one
    element dominates)."""
    sq = x.double().square()
    fourth = sq.square().sum()
    return float(sq.sum().square() / fourth) if fourth > 0 else 0.0
