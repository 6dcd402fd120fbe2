"""deepergemm.compat: DeepGEMM's three GEMMs and vLLM/SGLang's w8a8_block_fp8_matmul and per_token_group_quant_fp8,
each against a float64 reference of its documented behaviour: both activation-scale layouts, scales with more rows
than M, NaN-poisoned outputs (rows that must stay untouched stay NaN), odd M, and the rules' errors.
"""
import math

import pytest
import torch

import deepergemm as dg
from deepergemm import compat
from deepergemm import reference as ref

FP8 = torch.float8_e4m3fn
ALIGN = 128


def _bits(t):
    return t.view(torch.uint8) if t.dtype == FP8 else t


def _act(m, k, device="cpu", dtype=torch.bfloat16, spread=3):
    """Activations whose rows span 10^-spread..10^spread (every group gets its own scale), never zero."""
    x = torch.randn(m, k, device=device) * torch.pow(10.0, torch.empty(m, 1, device=device).uniform_(-spread, spread))
    return x.to(dtype)


def _weight(n, k, device="cpu"):
    return dg.quantize_weight(torch.randn(n, k, device=device) * torch.empty(1, device=device).uniform_(0.1, 10))


def _expected(a, a_s, b, b_s):
    """The documented product in float64: dequant(a) (1x128 groups) @ dequant(b) (128x128 blocks).T."""
    return ref.dequantize_act(a, a_s).double() @ ref.dequantize_weight(b, b_s).double().t()


def _check(out, expected, what=""):
    assert not out.isnan().any(), f"{what}: unwritten elements"
    diff, bound = ref.calc_diff(out, expected), ref.exactness_bound(expected.float(), out.dtype)
    assert diff <= bound, f"{what}: calc_diff {diff:.3e} > {bound:.3e}"


def _column_major(s, pad_to=None):
    """(M, G) scales stored M-major with an M stride of pad_to (default M): DeepGEMM's / vLLM's column-major form."""
    m, g = s.shape
    stride = pad_to or m
    out = torch.empty_strided((m, g), (1, stride), dtype=s.dtype, device=s.device)
    out.copy_(s)
    return out


def _padded_rows(s, extra=3):
    """Scales allocated for M + extra rows (NaN there: they must never be read)."""
    out = torch.full((s.shape[0] + extra, *s.shape[1:]), float("nan"), dtype=s.dtype, device=s.device)
    out[:s.shape[0]] = s
    return out


SCALE_LAYOUTS = {"row_major": lambda s: s.contiguous(), "column_major": _column_major,
                 "tma_aligned": lambda s: _column_major(s, -(-s.shape[0] // 4) * 4), "m_padded": _padded_rows}


# ----------------------------------------------------------------------------------------------
# per_token_group_quant_fp8
# ----------------------------------------------------------------------------------------------
def _quant_reference(x, group_size, eps, ue8m0):
    """vLLM's documented formula in float64, each fp32 step rounded to fp32: scale = max(amax, eps) / 448 (fp32),
    2^ceil(log2(scale)) with ue8m0 (from frexp), q = clamp(fp32(x / scale), -448, 448) -> e4m3."""
    values = x.double().reshape(*x.shape[:-1], -1, group_size)
    amax = values.abs().amax(-1).clamp(min=eps)
    scale = (amax / 448.0).float().double()
    if ue8m0:
        mantissa, exponent = torch.frexp(scale)
        scale = torch.where(mantissa == 0.5, scale, torch.pow(2.0, exponent.double()))
    q = (values / scale.unsqueeze(-1)).float().clamp(-448, 448).to(FP8).reshape(x.shape)
    return q, scale.float()


@pytest.mark.parametrize("shape,group_size", [((1, 128), 128), ((7, 384), 128), ((65, 256), 64), ((2, 5, 256), 128),
                                              ((3, 96), 32)])
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_per_token_group_quant_matches_the_documented_formula(shape, group_size, ue8m0, dtype):
    x = _act(math.prod(shape[:-1]), shape[-1], dtype=torch.float32).reshape(shape).to(dtype)
    flat = x.reshape(-1, shape[-1])
    flat[0, :group_size] = 0  # an all-zero group: the scale is eps / 448
    flat[-1, -group_size:] *= 1e-12 if dtype == torch.float32 else 1e-3  # a group below eps=1e-4 (fp32)
    for eps in (1e-10, 1e-4):
        q, s = compat.per_token_group_quant_fp8(x, group_size, eps=eps, use_ue8m0=ue8m0)
        want_q, want_s = _quant_reference(x, group_size, eps, ue8m0)
        assert q.dtype == FP8 and q.shape == x.shape and s.shape == (*shape[:-1], shape[-1] // group_size)
        assert s.is_contiguous() and torch.equal(s, want_s)
        assert torch.equal(_bits(q), _bits(want_q))


def test_per_token_group_quant_scale_layouts_and_out_q():
    x = _act(7, 384)
    want_q, want_s = _quant_reference(x, 128, 1e-10, False)
    _, s = compat.per_token_group_quant_fp8(x, 128, column_major_scales=True)
    assert s.stride() == (1, 7) and torch.equal(s, want_s)
    _, s = compat.per_token_group_quant_fp8(x, 128, column_major_scales=True, tma_aligned_scales=True)
    assert s.stride() == (1, 8) and torch.equal(s, want_s)
    _, s = compat.per_token_group_quant_fp8(x, 128, tma_aligned_scales=True)  # (only with column-major scales)
    assert s.is_contiguous()
    x3 = _act(10, 256).reshape(2, 5, 256)
    _, s3 = compat.per_token_group_quant_fp8(x3, 128, column_major_scales=True, tma_aligned_scales=True)
    assert s3.stride() == (16, 1, 8) and torch.equal(s3, _quant_reference(x3, 128, 1e-10, False)[1])
    out_q = torch.full((7, 384), float("nan")).to(FP8)
    q, _ = compat.per_token_group_quant_fp8(x, 128, 1e-10, torch.float8_e4m3fn, False, False, out_q, False)
    assert q is out_q and torch.equal(_bits(out_q), _bits(want_q))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"group_size": 100}, ValueError, r"x.shape\[-1\] \(K=384\) must be a multiple of group_size \(100\)"),
    ({"group_size": 0}, ValueError, "group_size must be a positive int"),
    ({"group_size": 128, "dtype": torch.float8_e5m2}, ValueError, "dtype must be None or torch.float8_e4m3fn"),
    ({"group_size": 128, "eps": -1.0}, ValueError, "eps must be a finite number >= 0"),
    ({"group_size": 128, "column_major_scales": 1}, TypeError, "column_major_scales must be a bool"),
    ({"group_size": 128, "out_q": torch.empty(7, 128, dtype=FP8)}, ValueError, r"out_q must have shape \(7, 384\)"),
    ({"group_size": 128, "out_q": torch.empty(7, 384)}, TypeError, "out_q must have dtype torch.float8_e4m3fn"),
])
def test_per_token_group_quant_rules(kwargs, error, match):
    with pytest.raises(error, match=match):
        compat.per_token_group_quant_fp8(_act(7, 384), **kwargs)


def test_per_token_group_quant_rules_on_x():
    with pytest.raises(TypeError, match="x must be bfloat16, float16 or float32"):
        compat.per_token_group_quant_fp8(torch.ones(2, 128, dtype=torch.int32), 128)
    with pytest.raises(ValueError, match="column_major_scales takes a 2-D x"):
        compat.per_token_group_quant_fp8(_act(4, 128).reshape(2, 2, 128), 128, column_major_scales=True)


# ----------------------------------------------------------------------------------------------
# w8a8_block_fp8_matmul
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lead,n,k", [((1,), 8, 128), ((65,), 136, 384), ((2, 5), 264, 256), ((), 16, 128)])
@pytest.mark.parametrize("output_dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_w8a8_block_fp8_matmul_matches_the_reference(lead, n, k, output_dtype):
    m = math.prod(lead)
    a, a_s = compat.per_token_group_quant_fp8(_act(m, k, spread=1), 128)  # (fp16 output: no overflow)
    b, b_s = _weight(n, k)
    want = _expected(a, a_s, b, b_s).reshape(*lead, n)
    c = compat.w8a8_block_fp8_matmul(a.reshape(*lead, k), b, a_s.reshape(*lead, k // 128), b_s, [128, 128],
                                     output_dtype)
    assert c.shape == (*lead, n) and c.dtype == output_dtype
    _check(c, want, f"{lead} {output_dtype}")
    assert compat.w8a8_block_fp8_matmul(a.reshape(*lead, k), b, a_s.reshape(*lead, k // 128), b_s,
                                        (128, 128)).dtype == torch.float16  # vLLM's default


@pytest.mark.parametrize("layout", list(SCALE_LAYOUTS))
def test_w8a8_block_fp8_matmul_takes_every_scale_layout(layout):
    a, a_s = compat.per_token_group_quant_fp8(_act(33, 256), 128)
    b, b_s = _weight(48, 256)
    c = compat.w8a8_block_fp8_matmul(a, b, SCALE_LAYOUTS[layout](a_s), b_s, [128, 128], torch.bfloat16)
    _check(c, _expected(a, a_s, b, b_s), layout)


@pytest.mark.parametrize("change,error,match", [
    (lambda a: {**a, "block_size": [128, 64]}, ValueError, r"block_size must be \[128, 128\]"),
    (lambda a: {**a, "block_size": None}, ValueError, r"block_size must be \[128, 128\]"),
    (lambda a: {**a, "output_dtype": torch.int8}, TypeError, "output_dtype must be"),
    (lambda a: {**a, "As": a["As"][:, :1]}, ValueError, r"As must be \(\.\.\., K/128\) = \(\.\.\., 2\)"),
    (lambda a: {**a, "B": a["B"][:, :128]}, ValueError, "a and b must share K"),
    (lambda a: {**a, "Bs": a["Bs"].bfloat16()}, TypeError, "b_scales must have dtype torch.float32"),
    (lambda a: {**a, "A": a["A"].float()}, TypeError, "a must have dtype torch.float8_e4m3fn"),
])
def test_w8a8_block_fp8_matmul_rules(change, error, match):
    a, a_s = compat.per_token_group_quant_fp8(_act(5, 256), 128)
    b, b_s = _weight(16, 256)
    args = change({"A": a, "B": b, "As": a_s, "Bs": b_s, "block_size": [128, 128], "output_dtype": torch.bfloat16})
    with pytest.raises(error, match=match):
        compat.w8a8_block_fp8_matmul(**args)


def test_w8a8_k_not_a_multiple_of_128_is_a_named_rule():
    a = torch.randn(4, 200).to(FP8)
    b = torch.randn(16, 200).to(FP8)
    with pytest.raises(ValueError, match="K must be a positive multiple of 128, got K=200"):
        compat.w8a8_block_fp8_matmul(a, b, torch.ones(4, 2), torch.ones(1, 2), [128, 128])


# ----------------------------------------------------------------------------------------------
# fp8_gemm_nt
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,n,k", [(1, 8, 128), (7, 136, 384), (65, 264, 256), (130, 16, 512)])
@pytest.mark.parametrize("layout", list(SCALE_LAYOUTS))
def test_fp8_gemm_nt_writes_d(m, n, k, layout):
    a, a_s = dg.quantize_act(_act(m, k))
    b, b_s = _weight(n, k)
    d = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
    assert compat.fp8_gemm_nt((a, SCALE_LAYOUTS[layout](a_s)), (b, b_s), d) is None
    _check(d, _expected(a, a_s, b, b_s), f"{m}x{n}x{k} {layout}")


def test_fp8_gemm_nt_fp32_d_accumulate_c_and_strided_d():
    a, a_s = dg.quantize_act(_act(9, 256))
    b, b_s = _weight(24, 256)
    want = _expected(a, a_s, b, b_s)
    d32 = torch.full((9, 24), float("nan"))
    c = torch.randn(9, 24)
    compat.fp8_gemm_nt((a, a_s), (b, b_s), d32, c, recipe=(1, 128, 128), compiled_dims="mnk", disable_ue8m0_cast=True)
    _check(d32, want + c.double(), "d = c + a @ b.T")
    buffer = torch.full((9, 40), float("nan"), dtype=torch.bfloat16)
    compat.gemm_fp8_fp8_bf16_nt((a, a_s), (b, b_s), buffer[:, 8:32])  # DeepGEMM's earlier name; a strided d
    _check(buffer[:, 8:32], want, "strided d")
    assert buffer[:, :8].isnan().all() and buffer[:, 32:].isnan().all()


@pytest.mark.parametrize("change,error,match", [
    (lambda a: {**a, "a": a["a"][0]}, TypeError, r"a must be a pair \(a, a_s\) of tensors"),
    (lambda a: {**a, "a": (a["a"][0], a["a"][1].int())}, TypeError, r"a's scales \(a\[1\]\) must be float32.*UE8M0"),
    (lambda a: {**a, "recipe": (1, 1, 128)}, ValueError, r"recipe must be None or \(1, 128, 128\)"),
    (lambda a: {**a, "d": torch.empty(5, 8, dtype=torch.bfloat16)}, ValueError, r"d must have shape \(5, 16\)"),
    (lambda a: {**a, "d": torch.empty(5, 16, dtype=torch.float16)}, TypeError, "d must have dtype torch.bfloat16"),
    (lambda a: {**a, "c": torch.empty(5, 16, dtype=torch.bfloat16)}, TypeError, "c must have dtype torch.float32"),
    (lambda a: {**a, "b": (a["b"][0][:12], a["b"][1]), "d": torch.empty(5, 12, dtype=torch.bfloat16)}, ValueError,
     r"N \(b.shape\[0\]\) must be a positive multiple of 8"),
])
def test_fp8_gemm_nt_rules(change, error, match):
    a, a_s = dg.quantize_act(_act(5, 256))
    b, b_s = _weight(16, 256)
    args = change({"a": (a, a_s), "b": (b, b_s), "d": torch.empty(5, 16, dtype=torch.bfloat16), "c": None})
    with pytest.raises(error, match=match):
        compat.fp8_gemm_nt(**args)


# ----------------------------------------------------------------------------------------------
# m_grouped_fp8_gemm_nt_contiguous
# ----------------------------------------------------------------------------------------------
def _m_indices(sizes, label_padding=False):
    """DeepGEMM's contiguous layout as vLLM and SGLang build it: expert g's rows from the first multiple of 128
    after expert g-1's, -1 on the padding (or g there too, label_padding: SGLang's ep_scatter)."""
    rows = sum(-(-s // ALIGN) * ALIGN for s in sizes)
    m_indices = torch.full((rows,), -1, dtype=torch.int32)
    start = 0
    for g, size in enumerate(sizes):
        span = -(-size // ALIGN) * ALIGN
        m_indices[start:start + (span if label_padding else size)] = g
        start += span
    return m_indices


def _grouped_expected(a, a_s, b, b_s, m_indices):
    rows = ref.dequantize_act(a, a_s).double()
    out = torch.full((a.shape[0], b.shape[1]), float("nan"), dtype=torch.float64)
    for g in range(b.shape[0]):
        mine = m_indices == g
        if mine.any():
            out[mine] = rows[mine] @ ref.dequantize_weight(b[g], b_s[g]).double().t()
    return out


def _grouped_weights(groups, n, k, device="cpu"):
    qs, ss = zip(*(_weight(n, k, device) for _ in range(groups)))
    return torch.stack(qs), torch.stack(ss)


@pytest.mark.parametrize("sizes,label_padding", [([5, 0, 130, 1], False), ([128, 77], True), ([0, 0, 3], False)])
@pytest.mark.parametrize("layout", ["row_major", "column_major", "m_padded"])
def test_contiguous_writes_only_the_rows_of_experts(sizes, label_padding, layout):
    m_indices = _m_indices(sizes, label_padding)
    a, a_s = dg.quantize_act(_act(m_indices.shape[0], 256))
    b, b_s = _grouped_weights(len(sizes), 136, 256)
    d = torch.full((m_indices.shape[0], 136), float("nan"), dtype=torch.bfloat16)
    compat.m_grouped_fp8_gemm_nt_contiguous((a, SCALE_LAYOUTS[layout](a_s)), (b, b_s), d, m_indices)
    want = _grouped_expected(a, a_s, b, b_s, m_indices)
    mine = m_indices >= 0
    for g in range(len(sizes)):
        rows = m_indices == g
        if rows.any():
            _check(d[rows], want[rows], f"expert {g}")
    assert d[~mine].isnan().all(), "rows with m_indices -1 were written"
    # int64 m_indices, and the check switched off, give the same
    d2 = torch.full_like(d, float("nan"))
    compat.m_grouped_gemm_fp8_fp8_bf16_nt_contiguous((a, a_s), (b, b_s), d2, m_indices.long(), check_layout=False)
    assert torch.equal(d2.nan_to_num(7), d.nan_to_num(7))


@pytest.mark.parametrize("breaks,match", [
    (lambda mi: mi.flip(0), "row 0 holds -1, the layout of these expert counts has 0 there"),
    (lambda mi: torch.cat([mi[128:], mi[:128]]), "row 0 holds 1"),  # experts out of order
    (lambda mi: torch.where(torch.arange(mi.shape[0]) == 2, -1, mi), "row 2 holds -1"),  # a hole in expert 0
    (lambda mi: torch.where(mi == 1, 5, mi), "row 128 holds 5"),  # an id outside [0, groups)
])
def test_contiguous_refuses_other_layouts(breaks, match):
    m_indices = breaks(_m_indices([5, 100]).long()).int()
    a, a_s = dg.quantize_act(_act(m_indices.shape[0], 128))
    b, b_s = _grouped_weights(2, 16, 128)
    d = torch.zeros(m_indices.shape[0], 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=match):
        compat.m_grouped_fp8_gemm_nt_contiguous((a, a_s), (b, b_s), d, m_indices)
    with pytest.raises(ValueError, match=match):
        compat.check_m_indices(m_indices, 2)


@pytest.mark.parametrize("change,error,match", [
    (lambda a: {**a, "m_indices": a["m_indices"][:-1]}, ValueError, r"m_indices must have shape \(M,\) = \(256,\)"),
    (lambda a: {**a, "m_indices": a["m_indices"].float()}, TypeError, "m_indices must have dtype"),
    (lambda a: {**a, "d": torch.empty(16, 256, dtype=torch.bfloat16).t()}, ValueError, "d must be contiguous"),
    (lambda a: {**a, "b": (a["b"][0][0], a["b"][1][0])}, ValueError, r"b must be 3-D \(groups, N, K\)"),
    (lambda a: {**a, "check_layout": 1}, TypeError, "check_layout must be a bool"),
])
def test_contiguous_rules(change, error, match):
    m_indices = _m_indices([5, 100])
    a, a_s = dg.quantize_act(_act(256, 128))
    b, b_s = _grouped_weights(2, 16, 128)
    args = change({"a": (a, a_s), "b": (b, b_s), "d": torch.empty(256, 16, dtype=torch.bfloat16),
                   "m_indices": m_indices})
    with pytest.raises(error, match=match):
        compat.m_grouped_fp8_gemm_nt_contiguous(**args)


# ----------------------------------------------------------------------------------------------
# m_grouped_fp8_gemm_nt_masked
# ----------------------------------------------------------------------------------------------
def _masked_scales(a_s, layout):
    if layout == "row_major":
        return a_s.contiguous()
    if layout == "column_major":
        return compat.get_mn_major_tma_aligned_tensor(a_s)
    return _padded_rows(a_s.transpose(0, 1), 5).transpose(0, 1)  # (groups, max_m + 5, K/128)


@pytest.mark.parametrize("groups,max_m,masked", [(1, 1, [1]), (3, 65, [0, 65, 17]), (4, 130, [130, 1, 500, 64])])
@pytest.mark.parametrize("layout", ["row_major", "column_major", "m_padded"])
def test_masked_writes_the_first_masked_m_rows(groups, max_m, masked, layout):
    n, k = 24, 384
    a, a_s = dg.quantize_act(_act(groups * max_m, k))
    a3, a3_s = a.view(groups, max_m, k), a_s.reshape(groups, max_m, k // 128)
    b, b_s = _grouped_weights(groups, n, k)
    d = torch.full((groups, max_m, n), float("nan"), dtype=torch.bfloat16)
    compat.m_grouped_fp8_gemm_nt_masked((a3, _masked_scales(a3_s, layout)), (b, b_s), d,
                                        torch.tensor(masked, dtype=torch.int32), max_m)
    for g in range(groups):
        real = min(masked[g], max_m)
        if real:
            _check(d[g, :real], _expected(a3[g, :real], a3_s[g, :real], b[g], b_s[g]), f"group {g}")
        assert d[g, real:].isnan().all(), f"group {g}: rows past masked_m were written"


def test_masked_rules_and_the_earlier_name():
    a, a_s = dg.quantize_act(_act(16, 128))
    b, b_s = _grouped_weights(2, 16, 128)
    a3, a3_s = a.view(2, 8, 128), a_s.reshape(2, 8, 1)
    masked = torch.tensor([3, 8], dtype=torch.int32)
    d = torch.empty(2, 8, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"d must have shape \(2, 8, 16\)"):
        compat.m_grouped_fp8_gemm_nt_masked((a3, a3_s), (b, b_s), d[:, :, :8], masked, 4)
    with pytest.raises(ValueError, match="expected_m must be an int >= 1"):
        compat.m_grouped_fp8_gemm_nt_masked((a3, a3_s), (b, b_s), d, masked, 0)
    with pytest.raises(ValueError, match=r"a must be 3-D \(groups, max_m, K\)"):
        compat.m_grouped_fp8_gemm_nt_masked((a, a_s), (b, b_s), d, masked, 4)
    d = torch.full((2, 8, 16), float("nan"), dtype=torch.bfloat16)
    compat.m_grouped_gemm_fp8_fp8_bf16_nt_masked((a3, a3_s), (b, b_s), d, masked, 4)
    assert not d[0, :3].isnan().any() and d[0, 3:].isnan().all() and not d[1].isnan().any()


def test_layout_helpers():
    assert compat.get_m_alignment_for_contiguous_layout() == 128 == compat.get_mk_alignment_for_contiguous_layout()
    s = torch.rand(7, 3)
    t = compat.get_col_major_tma_aligned_tensor(s)
    assert t.stride() == (1, 8) and torch.equal(t, s)
    s3 = torch.rand(2, 5, 3)
    t3 = compat.get_mn_major_tma_aligned_tensor(s3)
    assert t3.stride() == (24, 1, 8) and torch.equal(t3, s3)
    with pytest.raises(ValueError, match="x must be a 2-D"):
        compat.get_mn_major_tma_aligned_tensor(torch.rand(3))


@pytest.mark.slow  # (an inductor compile: ~4 s on 2 cores)
def test_compat_calls_compile_fullgraph():
    """Under torch.compile the layout check is skipped (it would read a flag back from the device)."""
    torch._dynamo.reset()
    m_indices = _m_indices([5, 100])
    a, a_s = dg.quantize_act(_act(256, 128))
    b, b_s = _grouped_weights(2, 16, 128)

    def calls(a, a_s, b, b_s, m_indices):
        d = torch.zeros(256, 16, dtype=torch.bfloat16)
        compat.m_grouped_fp8_gemm_nt_contiguous((a, a_s), (b, b_s), d, m_indices)
        d2 = torch.zeros(256, 16, dtype=torch.bfloat16)
        compat.fp8_gemm_nt((a, a_s), (b[0], b_s[0]), d2)
        return d, d2

    eager = calls(a, a_s, b, b_s, m_indices)
    compiled = torch.compile(calls, fullgraph=True)(a, a_s, b, b_s, m_indices)
    assert all(torch.equal(x, y) for x, y in zip(eager, compiled))


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_per_token_group_quant_equals_the_cpu_bits():
    for ue8m0 in (False, True):
        x = _act(129, 7168)
        q, s = compat.per_token_group_quant_fp8(x.cuda(), 128, column_major_scales=True, tma_aligned_scales=True,
                                                use_ue8m0=ue8m0)
        want_q, want_s = _quant_reference(x, 128, 1e-10, ue8m0)
        assert torch.equal(_bits(q.cpu()), _bits(want_q)) and torch.equal(s.cpu(), want_s)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(SCALE_LAYOUTS))
def test_gpu_gemms_match_the_reference(layout):
    a, a_s = compat.per_token_group_quant_fp8(_act(65, 1024, "cuda"), 128)
    b, b_s = _weight(2112, 1024, "cuda")
    d = torch.full((65, 2112), float("nan"), device="cuda", dtype=torch.bfloat16)
    compat.fp8_gemm_nt((a, SCALE_LAYOUTS[layout](a_s)), (b, b_s), d)
    want = _expected(a, a_s, b, b_s)
    _check(d, want, f"fp8_gemm_nt {layout}")
    _check(compat.w8a8_block_fp8_matmul(a, b, SCALE_LAYOUTS[layout](a_s), b_s, [128, 128], torch.bfloat16), want,
           f"w8a8 {layout}")
    m_indices = _m_indices([200, 0, 1, 129]).cuda()
    ga, ga_s = dg.quantize_act(_act(m_indices.shape[0], 512, "cuda"))
    gb, gb_s = _grouped_weights(4, 264, 512, "cuda")
    gd = torch.full((m_indices.shape[0], 264), float("nan"), device="cuda", dtype=torch.bfloat16)
    compat.m_grouped_fp8_gemm_nt_contiguous((ga, SCALE_LAYOUTS[layout](ga_s)), (gb, gb_s), gd, m_indices)
    want = _grouped_expected(ga.cpu(), ga_s.cpu(), gb.cpu(), gb_s.cpu(), m_indices.cpu())
    for g in (0, 2, 3):
        rows = (m_indices == g).cpu()
        _check(gd.cpu()[rows], want[rows], f"expert {g}")
    assert gd.cpu()[(m_indices < 0).cpu()].isnan().all()


@pytest.mark.gpu
def test_gpu_contiguous_in_a_cuda_graph_replays_new_m_indices():
    a, a_s = dg.quantize_act(_act(512, 256, "cuda"))
    b, b_s = _grouped_weights(3, 136, 256, "cuda")
    m_indices = _m_indices([100, 128, 200]).cuda()
    d = torch.full((512, 136), float("nan"), device="cuda", dtype=torch.bfloat16)
    compat.m_grouped_fp8_gemm_nt_contiguous((a, a_s), (b, b_s), d, m_indices)  # warm-up (the layout is checked)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # (no check while capturing)
        compat.m_grouped_fp8_gemm_nt_contiguous((a, a_s), (b, b_s), d, m_indices)
    for sizes in ([1, 0, 300], [128, 128, 128], [0, 0, 0]):
        layout = _m_indices(sizes)
        m_indices.fill_(-1)
        m_indices[:layout.shape[0]] = layout.cuda()
        d.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        want = _grouped_expected(a.cpu(), a_s.cpu(), b.cpu(), b_s.cpu(), m_indices.cpu())
        for g in range(3):
            rows = (m_indices == g).cpu()
            if rows.any():
                _check(d.cpu()[rows], want[rows], f"{sizes} expert {g}")
        assert d.cpu()[(m_indices < 0).cpu()].isnan().all()
