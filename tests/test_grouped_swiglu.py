"""Grouped SwiGLU (m_grouped_fp8_gemm_contiguous_swiglu, m_grouped_fp8_gemm_masked_swiglu): the experts' gate/up
GEMM, SwiGLU and the down projection's quantization in one grouped kernel, each expert's B rows gate then up
(stacked experts as stored).

CPU: the reference is the documented steps (grouped bf16 GEMM, its halves interleaved, swiglu, quantize_act) and
means silu(gate) * up of the right halves; input rules, fake kernels, opcheck, torch.compile; the variants and
their selection; FP8Experts(fused_swiglu=True).
GPU (marked): every grouped SwiGLU unit launched into NaN-poisoned outputs (the real rows written, bit-identical to
the unfused steps on the GPU, every other row untouched), the op and its unfused plan, FP8Experts fused against
unfused, a CUDA graph and torch.compile.
"""
import pytest
import torch
import torch.nn.functional as F

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts
from deepergemm import reference as ref
from quantized_output import FP8, assert_same, bits

OP = torch.ops.deepergemm.m_grouped_fp8_gemm_contiguous_swiglu
MASKED_OP = torch.ops.deepergemm.m_grouped_fp8_gemm_masked_swiglu
ALIGN = dg.GROUPED_M_ALIGNMENT


def _experts(groups, i, k, device="cpu"):
    """Stacked gate/up weights (groups, 2I, K): rows [0, I) gate, [I, 2I) up, each expert quantized on its own;
    a few gate rows saturate SiLU (x 1000 and x -1000) and a few up rows are outliers (x 100)."""
    w = torch.randn(groups, 2 * i, k, device=device)
    w[:, 8:12] *= 1000.0
    w[:, 12:16] *= -1000.0
    w[:, i + 3::97] *= 100.0
    q, s = dg.quantize_weight(w.reshape(groups * 2 * i, k))
    return q.view(groups, 2 * i, k), s.view(groups, -1, k // 128)


def _acts(rows, k, device="cpu"):
    return dg.quantize_act(torch.randn(rows, k, device=device))


def _segments(sizes, rows):
    """[(first row, real rows)] of each group of the contiguous layout, clipped at `rows`."""
    out, start = [], 0
    for size in sizes:
        size = max(size, 0)
        first = min(start, rows)
        out.append((first, min(size, rows - first)))
        start += -(-size // ALIGN) * ALIGN
    return out


def _real_rows(sizes, rows, device="cpu"):
    mask = torch.zeros(rows, dtype=torch.bool, device=device)
    for first, real in _segments(sizes, rows):
        mask[first:first + real] = True
    return mask


def _problem(sizes, i, k, device="cpu", extra_rows=64):
    rows = sum(-(-max(s, 0) // ALIGN) * ALIGN for s in sizes) + extra_rows
    a, a_s = _acts(rows, k, device)
    b, b_s = _experts(len(sizes), i, k, device)
    return a, a_s, b, b_s, torch.tensor(sizes, dtype=torch.int32, device=device)


def _unfused(a, a_s, b, b_s, sizes, ue8m0=False, backend="auto"):
    """The steps the fused kernel reproduces: the grouped bf16 GEMM, its halves interleaved per 128, swiglu,
    quantize_act."""
    gate_up = dg.m_grouped_fp8_gemm_contiguous(a, a_s, b, b_s, sizes, zero_padding=True, backend=backend)
    return dg.quantize_act(dg.swiglu(layouts.interleave_halves(gate_up)), ue8m0=ue8m0)


def _assert_same_rows(got, want, mask, what):
    """(q, scales) bit-identical on the real rows."""
    (q, s), (q_want, s_want) = got, want
    assert q.dtype == FP8 and q.shape == q_want.shape and s.shape == s_want.shape, what
    assert layouts.is_act_scale_layout(s), f"{what}: scales not in quantize_act's layout: {s.stride()}"
    bad_q = (bits(q[mask]) != bits(q_want[mask])).sum().item()
    bad_s = (bits(s[mask]) != bits(s_want[mask])).sum().item()
    assert bad_q == 0 and bad_s == 0, f"{what}: {bad_q} q bytes and {bad_s} scales differ on the real rows"


# ----------------------------------------------------------------------------------------------
# CPU: the reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("sizes,i,k", [([5, 0, 130], 128, 256), ([1], 256, 128), ([64, 65, 3, 0, 200], 384, 384)])
def test_reference_is_the_documented_steps(sizes, i, k, ue8m0):
    a, a_s, b, b_s, counts = _problem(sizes, i, k)
    got = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, ue8m0=ue8m0)
    mask = _real_rows(sizes, a.shape[0])
    _assert_same_rows(got, _unfused(a, a_s, b, b_s, counts, ue8m0), mask, f"{sizes} {i} {k}")
    assert got[0].shape == (a.shape[0], i) and got[0].is_contiguous()
    assert got[1].shape == (a.shape[0], i // 128) and got[1].stride() == (1, layouts.act_scale_stride(a.shape[0]))


def test_reference_is_silu_of_the_gate_half_times_the_up_half():
    """Independent of the op's own steps: per group, h = silu(gate) * up from the fp32 GEMM of that expert's first
    and second halves of rows, within the bf16 roundings and the fp8 quantization (swapping the halves, or taking
    them interleaved, fails by far)."""
    sizes, i, k = [70, 0, 129], 256, 256
    a, a_s, b, b_s, counts = _problem(sizes, i, k)
    q, s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts)
    got = ref.dequantize_act(q, s)
    for g, (first, real) in enumerate(_segments(sizes, a.shape[0])):
        if real == 0:
            continue
        rows = slice(first, first + real)
        y = ref.exact_fp32_matmul(ref.dequantize_act(a[rows], a_s[rows]), ref.dequantize_weight(b[g], b_s[g]))
        want = F.silu(y[:, :i]) * y[:, i:]
        assert ref.calc_diff(got[rows], want) < 1e-3, f"group {g}"
        swapped = F.silu(y[:, i:]) * y[:, :i]
        assert ref.calc_diff(got[rows], swapped) > 1e-2, f"group {g}: the halves are not told apart"


def test_takes_the_layout_and_its_rules():
    a, a_s, b, b_s, counts = _problem([3, 9], 128, 128)
    topk_ids = torch.tensor([[0], [1], [1], [0]], dtype=torch.int32)
    layout = dg.build_contiguous_layout(topk_ids, 2, max_rows=a.shape[0])
    q, s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, layout)
    mask = _real_rows(layout.group_sizes.tolist(), a.shape[0])
    _assert_same_rows((q, s), _unfused(a, a_s, b, b_s, layout.group_sizes), mask, "layout")
    # expected_m only guides the tile choice: any hint, the same result
    hinted = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, layout.group_sizes, expected_m=1000)
    _assert_same_rows(hinted, (q, s), mask, "hinted")
    with pytest.raises(ValueError, match="layout.rows"):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a[:128], a_s[:128], b, b_s, layout)


def test_expected_m_from_the_layout(monkeypatch):
    """Given a ContiguousLayout, the tile choice plans for its routed choices per expert, not for the rows a layout
    sized by contiguous_rows_bound holds (at decode ~127 padding rows per expert); given sizes, M / groups (0)."""
    seen = []
    monkeypatch.setattr(torch.ops.deepergemm, "m_grouped_fp8_gemm_contiguous_swiglu",
                        lambda *args: seen.append(args[5]) or (None, None), raising=True)
    topk_ids = torch.randint(0, 16, (32, 8), dtype=torch.int32)
    layout = dg.build_contiguous_layout(topk_ids, 16, max_rows=dg.contiguous_rows_bound(32, 8, 16))
    a, a_s = _acts(layout.rows, 128)
    b, b_s = _experts(16, 128, 128)
    dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, layout)
    dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, layout.group_sizes)
    dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, layout, expected_m=7)
    assert seen == [16, 0, 7] and layout.rows // 16 > 100


@pytest.mark.parametrize("change,error,match", [
    ("n_not_256", ValueError, r"N \(b.shape\[1\]: each group's gate rows, then its up rows\) must be a positive "
                              r"multiple of 256 for m_grouped_fp8_gemm_contiguous_swiglu, got N=128"),
    ("b_rank", ValueError, r"b must be .*\(groups, N, K\)"),
    ("sizes_dtype", TypeError, "group_sizes must have dtype torch.int32"),
    ("a_dtype", TypeError, "a must have dtype torch.float8_e4m3fn"),
    ("k_mismatch", ValueError, "a and b must share K"),
    ("cublas", ValueError, "backend='cublas' has no grouped GEMM"),
    ("expected_m", ValueError, r"expected_m must be an int >= 0 \(the rows per group the tile choice plans for; 0: "),
])
def test_input_rules_are_named(change, error, match):
    a, a_s, b, b_s, counts = _problem([3, 9], 128, 256)
    backend, expected_m = "auto", None
    if change == "n_not_256":
        b, b_s = b[:, :128].contiguous(), b_s[:, :1].contiguous()
    elif change == "b_rank":
        b = b.reshape(-1, 256)
    elif change == "sizes_dtype":
        counts = counts.long()
    elif change == "a_dtype":
        a = a.float()
    elif change == "k_mismatch":
        b, b_s = _experts(2, 128, 128)
    elif change == "cublas":
        backend = "cublas"
    elif change == "expected_m":
        expected_m = -1
    with pytest.raises(error, match=match):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, backend=backend, expected_m=expected_m)


def test_flag_and_group_sizes_types():
    a, a_s, b, b_s, counts = _problem([3], 128, 128)
    with pytest.raises(TypeError, match="ue8m0"):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, ue8m0=1)
    with pytest.raises(TypeError, match="group_sizes must be a torch.Tensor or a ContiguousLayout"):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, [3])
    for bad in (2.5, True):
        with pytest.raises(ValueError, match="expected_m must be an int >= 0"):
            dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, expected_m=bad)


def test_zero_rows():
    a, a_s, b, b_s, counts = _problem([0, 0], 128, 128, extra_rows=0)
    q, s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts)
    assert q.shape == (0, 128) and s.shape == (0, 1)


def test_fake_kernel_gives_the_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    a, a_s, b, b_s, counts = _problem([70, 5], 384, 256, extra_rows=3)
    with FakeTensorMode() as mode:
        q, s = OP(*(mode.from_tensor(t) for t in (a, a_s, b, b_s, counts)), 0, False, "auto")
        rows = a.shape[0]
        assert q.shape == (rows, 384) and q.dtype == FP8 and q.stride() == (384, 1)
        assert s.shape == (rows, 3) and s.dtype == torch.float32 and s.stride() == (1, layouts.act_scale_stride(rows))


def test_opcheck():
    a, a_s, b, b_s, counts = _problem([20, 0, 7], 128, 256, extra_rows=0)
    checks = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for ue8m0 in (False, True):
        torch.library.opcheck(OP.default, (a, a_s, b, b_s, counts, 3, ue8m0, "auto"), test_utils=checks)


@pytest.mark.slow  # (two aot_eager compiles)
def test_compiles_fullgraph_on_cpu():
    """Both forms, the masked one's outputs views of its row-major results, then the down projection's masked GEMM."""
    a, a_s, b, b_s, counts = _problem([20, 0, 7], 128, 256)

    def fn(a, a_s, b, b_s, counts):
        return dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert_same(compiled(a, a_s, b, b_s, counts), fn(a, a_s, b, b_s, counts), "compiled")
    a3, a3_s, b, b_s, masked_m = _masked_problem([5, 0, 12], 12, 128, 256)
    wd, wd_s = _experts(3, 64, 128)

    def masked(a3, a3_s, b, b_s, masked_m):
        h, h_s = dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, b, b_s, masked_m, 4)
        return dg.m_grouped_fp8_gemm_masked(h, h_s, wd, wd_s, masked_m, 4, out=torch.zeros(3, 12, 128,
                                                                                         dtype=torch.bfloat16))

    eager = masked(a3, a3_s, b, b_s, masked_m)
    assert torch.equal(torch.compile(masked, fullgraph=True, backend="aot_eager")(a3, a3_s, b, b_s, masked_m), eager)


# ----------------------------------------------------------------------------------------------
# CPU: the masked form
# ----------------------------------------------------------------------------------------------
def _masked_problem(masked, max_m, i, k, device="cpu"):
    groups = len(masked)
    a, a_s = _acts(groups * max_m, k, device)
    b, b_s = _experts(groups, i, k, device)
    a3, a3_s = a.view(groups, max_m, k), a_s.reshape(groups, max_m, k // 128)
    return a3, a3_s, b, b_s, torch.tensor(masked, dtype=torch.int32, device=device)


def _masked_rows(masked, max_m, device="cpu"):
    """(groups * max_m,) bool: the rows r < masked_m[g] of each group (clamped to 0..max_m)."""
    row = torch.arange(max_m, device=device)
    return torch.cat([row < max(0, min(m, max_m)) for m in masked])


def _masked_unfused(a3, a3_s, b, b_s, masked_m, ue8m0=False, backend="auto"):
    groups, max_m, _ = a3.shape
    gate_up = torch.zeros(groups, max_m, b.shape[1], dtype=torch.bfloat16, device=a3.device)
    dg.m_grouped_fp8_gemm_masked(a3, a3_s, b, b_s, masked_m, max(1, max_m), out=gate_up, backend=backend)
    return dg.quantize_act(dg.swiglu(layouts.interleave_halves(gate_up.view(groups * max_m, -1))), ue8m0=ue8m0)


def _flat(pair):
    """(q, scales) of the masked form as the rows back to back (a view: the scales are M-major over all rows)."""
    q, s = pair
    return q.reshape(-1, q.shape[-1]), s.reshape(-1, s.shape[-1])


@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("masked,max_m,i,k", [([5, 0, 72], 72, 128, 256), ([1], 4, 256, 128),
                                              ([64, 65, -3, 500], 68, 384, 384)])
def test_masked_reference_is_the_documented_steps(masked, max_m, i, k, ue8m0):
    a3, a3_s, b, b_s, masked_m = _masked_problem(masked, max_m, i, k)
    q, s = dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, b, b_s, masked_m, 16, ue8m0=ue8m0)
    groups = len(masked)
    assert q.shape == (groups, max_m, i) and s.shape == (groups, max_m, i // 128)
    flat_s = s.reshape(-1, i // 128)
    assert flat_s.data_ptr() == s.data_ptr() and layouts.is_act_scale_layout(flat_s)  # a view: no copy for down
    rows = _masked_rows(masked, max_m)
    _assert_same_rows(_flat((q, s)), _masked_unfused(a3, a3_s, b, b_s, masked_m, ue8m0), rows, f"{masked}")
    # the down projection's masked GEMM takes (q, s) as they are
    wd, wd_s = _experts(groups, 64, i)
    y = dg.m_grouped_fp8_gemm_masked(q, s, wd, wd_s, masked_m, 16)
    for g, m in enumerate(masked):
        m = max(0, min(m, max_m))
        if m:
            want = ref.exact_fp32_matmul(ref.dequantize_act(q[g, :m], s[g, :m]), ref.dequantize_weight(wd[g], wd_s[g]))
            assert ref.calc_diff(y[g, :m].float(), want) < 1e-5, g


@pytest.mark.parametrize("change,error,match", [
    ("n_not_256", ValueError, r"must be a positive multiple of 256 for m_grouped_fp8_gemm_masked_swiglu, got N=128"),
    ("expected_m", ValueError, "expected_m must be an int >= 1"),
    ("groups", ValueError, "a and b must have the same number of groups"),
    ("masked_dtype", TypeError, "masked_m must have dtype torch.int32"),
    ("max_m_odd", ValueError, r"a.shape\[1\] \(max_m\) must be a multiple of 4 for m_grouped_fp8_gemm_masked_swiglu"),
])
def test_masked_input_rules_are_named(change, error, match):
    a3, a3_s, b, b_s, masked_m = _masked_problem([3, 9], 16, 128, 256)
    expected_m = 8
    if change == "n_not_256":
        b, b_s = b[:, :128].contiguous(), b_s[:, :1].contiguous()
    elif change == "expected_m":
        expected_m = 0
    elif change == "groups":
        b, b_s = _experts(3, 128, 256)
    elif change == "masked_dtype":
        masked_m = masked_m.long()
    elif change == "max_m_odd":
        a3, a3_s, b, b_s, masked_m = _masked_problem([3, 9], 18, 128, 256)
    with pytest.raises(error, match=match):
        dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, b, b_s, masked_m, expected_m)


def test_masked_fake_kernel_opcheck_and_zero_rows():
    from torch._subclasses.fake_tensor import FakeTensorMode

    a3, a3_s, b, b_s, masked_m = _masked_problem([3, 9], 20, 384, 256)
    with FakeTensorMode() as mode:
        q, s = MASKED_OP(*(mode.from_tensor(t) for t in (a3, a3_s, b, b_s, masked_m)), 8, False, "auto")
        assert q.shape == (2, 20, 384) and q.dtype == FP8 and q.is_contiguous()
        assert s.shape == (2, 20, 3) and s.stride() == (20, 1, layouts.act_scale_stride(40))
    checks = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(MASKED_OP.default, (a3, a3_s, b, b_s, masked_m, 8, False, "auto"), test_utils=checks)
    q, s = dg.m_grouped_fp8_gemm_masked_swiglu(a3[:, :0], a3_s[:, :0], b, b_s, masked_m, 8)
    assert q.shape == (2, 0, 384) and s.shape == (2, 0, 3)


def test_interleave_halves():
    gate_up = torch.arange(2 * 512, dtype=torch.float32).reshape(2, 512)
    out = layouts.interleave_halves(gate_up)
    assert torch.equal(out[:, :128], gate_up[:, :128]) and torch.equal(out[:, 128:256], gate_up[:, 256:384])
    assert torch.equal(out[:, 256:384], gate_up[:, 128:256]) and torch.equal(out[:, 384:], gate_up[:, 384:])
    with pytest.raises(ValueError, match="multiple of 256"):
        layouts.interleave_halves(gate_up[:, :384])


# ----------------------------------------------------------------------------------------------
# CPU: variants and selection
# ----------------------------------------------------------------------------------------------
def test_grouped_swiglu_variants():
    assert [v.key for v in configs.GROUPED_SWIGLU_VARIANTS] == ["64x256s5dgcswiglu", "64x256s5dc2gcswiglu",
                                                                 "64x256s5dgmswiglu", "64x256s5dc2gmswiglu"]
    for v in configs.GROUPED_SWIGLU_VARIANTS:
        assert configs.parse_key(v.key) == v
        assert v.swiglu and v.fp8_out and v.grouping != configs.GROUP_NONE and v.fp8_out_mode == 2
        assert v.smem_bytes <= configs.SMEM_LIMIT
        assert v in configs.BUILT_VARIANTS
    with pytest.raises(ValueError, match="ungrouped but for SwiGLU"):
        configs.parse_key("64x256s5dgcq")


@pytest.mark.parametrize("rows,k,paired", [(1, 7168, False), (64, 7168, False), (65, 7168, True), (128, 7168, True),
                                           (700, 7168, True), (576, 7168, False), (128, 1024, False)])
@pytest.mark.parametrize("grouping", [configs.GROUP_CONTIGUOUS, configs.GROUP_MASKED])
def test_select_grouped_swiglu_pairs(grouping, rows, k, paired, monkeypatch):
    """2x1 B-multicast pairs where each group's M-tiles round up to pairs with at most 10% more (9 tiles -> 10 is
    11%: unpaired) and K is long enough for the small-M clusters; never with DEEPERGEMM_SMALL_M_CLUSTER=0."""
    choice = configs.select_grouped_swiglu(grouping, rows, 8, 4096, k, 132)
    assert choice.variant in configs.GROUPED_SWIGLU_VARIANTS and not choice.stream_k
    assert choice.variant.grouping == grouping and (choice.variant.cluster_m == 2) == paired
    tiles_per_group = -(-(-(-rows // 64)) // choice.variant.cluster_m) * choice.variant.cluster_m
    assert choice.tiles == 8 * tiles_per_group * 4096 // 256
    monkeypatch.setenv("DEEPERGEMM_SMALL_M_CLUSTER", "0")
    assert configs.select_grouped_swiglu(grouping, rows, 8, 4096, k, 132).variant.cluster_m == 1
    with pytest.raises(ValueError, match="multiple of 256"):
        configs.select_grouped_swiglu(grouping, rows, 8, 4096 + 128, k, 132)
    with pytest.raises(ValueError, match="grouping must be"):
        configs.select_grouped_swiglu(configs.GROUP_NONE, rows, 8, 4096, k, 132)


def test_fused_switch(monkeypatch):
    assert configs.grouped_swiglu_fused()
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "0")
    assert not configs.grouped_swiglu_fused()
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "1")
    assert configs.grouped_swiglu_fused()
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "sometimes")
    with pytest.raises(ValueError, match="must be 0, 1 or auto"):
        configs.grouped_swiglu_fused()


def test_plan_fused_or_the_grouped_bf16_plan(monkeypatch):
    """kernels.plan: the grouped SwiGLU unit, or with DEEPERGEMM_FUSED_EPILOGUE=0 the contiguous grouped bf16 GEMM's
    plan marked unfused (no GPU: the SM count and the unit's loading stubbed)."""
    loaded = []

    class Unit:
        def __init__(self, variant):
            self.id = len(loaded)
            loaded.append(variant)

    monkeypatch.setattr(kernels, "sm_count", lambda index: 132)
    monkeypatch.setattr(extension, "load", Unit)
    kinds = {kernels.PLAN_GROUPED_SWIGLU: configs.GROUP_CONTIGUOUS, kernels.PLAN_MASKED_SWIGLU: configs.GROUP_MASKED}
    for kind, grouping in kinds.items():
        plan = kernels.plan(kind, 0, 1024, 4096, 7168, 8, 128, 0, False)
        assert loaded[-1] == configs.select_grouped_swiglu(grouping, 128, 8, 4096, 7168, 132).variant
        assert plan[6] == 0
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "0")
    for kind, grouping in kinds.items():
        plan = kernels.plan(kind, 0, 1024, 4096, 7168, 8, 128, 0, False)
        assert loaded[-1] == configs.select_grouped(grouping, 128, 8, 4096, 7168, 132).variant and plan[6] == 1


# ----------------------------------------------------------------------------------------------
# CPU: FP8Experts(fused_swiglu=True)
# ----------------------------------------------------------------------------------------------
def _experts_module(e, h, i, fused):
    from deepergemm import nn as dnn

    gate_up = torch.randn(e, 2 * i, h) * h ** -0.5
    down = torch.randn(e, h, i) * i ** -0.5
    return dnn.FP8Experts.from_weights(gate_up, down, fused_swiglu=fused)


def test_experts_fused_forward_is_the_fused_op_then_down():
    from deepergemm import nn as dnn

    assert dnn.FP8Experts(4, 256, 128).fused_swiglu is False  # opt-in until measured
    torch.manual_seed(1)
    experts = _experts_module(4, 256, 256, True)
    x = torch.randn(2, 9, 256, dtype=torch.bfloat16)
    topk_ids = torch.randint(-1, 4, (18, 2), dtype=torch.int32)
    topk_weights = torch.rand(18, 2)
    with torch.no_grad():
        y = experts(x, topk_ids, topk_weights)
    x2 = x.reshape(18, 256)
    layout = dg.build_contiguous_layout(topk_ids, 4, max_rows=dg.contiguous_rows_bound(18, 2, 4))
    q, s = dg.quantize_act(x2)
    a, a_s = dg.permute_tokens(q, layout), dg.permute_tokens(s, layout)
    h, h_s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, experts.gate_up_proj, experts.gate_up_proj_scale_inv,
                                                     layout)
    down = dg.m_grouped_fp8_gemm_contiguous(h, h_s, experts.down_proj, experts.down_proj_scale_inv, layout)
    want = dg.unpermute_tokens(down, layout, topk_weights).to(x.dtype).reshape(x.shape)
    assert y.shape == x.shape and torch.equal(y, want)
    experts.fused_swiglu = False
    with torch.no_grad():
        unfused = experts(x, topk_ids, topk_weights)
    assert ref.calc_diff(unfused.float(), y.float()) < 1e-3  # only SwiGLU's roundings differ
    assert "fused_swiglu=False" in repr(experts)
    with pytest.raises(TypeError, match="fused_swiglu must be a bool"):
        dnn.FP8Experts(4, 256, 128, fused_swiglu=1)


def test_moe_passes_fused_swiglu_on():
    from deepergemm import nn as dnn

    moe = dnn.FP8MoE(256, 128, 4, 2, shared_intermediate_size=256, device="meta", fused_swiglu=True)
    assert moe.experts.fused_swiglu and moe.shared_experts.fused_swiglu
    assert not dnn.FP8MoE(256, 128, 4, 2, device="meta").experts.fused_swiglu


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
# (sizes, I, K, rows of A past the last segment): group sizes 0, 1, below and above a 64-row tile, a whole alignment,
# many small groups, and (negative) A ending inside the last group, which is cut off there; K short and long
GPU_CASES = (([0, 1, 130, 128, 7], 128, 384, 64), ([300, 0, 0, 65], 256, 128, 3), ([1000, 77, 129], 384, 1536, -200),
             ([5] * 40, 128, 256, 0), ([64, 63, 200], 1024, 7168, 64))


def _launch(variant, a, a_s, b, b_s, sizes, q, s, ue8m0):
    groups, n, k = b.shape
    kernels.launch(extension.load(variant), a, layouts.to_act_scale_layout(a_s), b.view(groups * n, k),
                   b_s.view(-1, b_s.shape[-1]), q, group_rows=torch.tensor(sizes, dtype=torch.int32, device="cuda"),
                   group_stride=ALIGN, out_scales=s, ue8m0=ue8m0)
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", configs.GROUPED_SWIGLU_VARIANTS, ids=lambda v: v.key)
def test_gpu_every_grouped_swiglu_unit_into_poisoned_outputs(variant):
    """Each unit launched directly into NaN-filled q (0x7F) and scales: the real rows bit-identical to the unfused
    steps on the GPU (ptx grouped bf16 GEMM, halves interleaved, Triton swiglu, quantize_act), every other row
    untouched, and a second launch the same bits."""
    for sizes, i, k, extra in GPU_CASES:
        a, a_s, b, b_s, counts = _problem(sizes, i, k, "cuda", extra_rows=extra)
        rows = a.shape[0]
        mask = _real_rows(sizes, rows, "cuda")
        for ue8m0 in (False, True):
            q = torch.full((rows, i), 0x7F, dtype=torch.uint8, device="cuda").view(FP8)
            s = layouts.empty_act_scales(rows, i, "cuda").fill_(float("nan"))
            _launch(variant, a, a_s, b, b_s, sizes, q, s, ue8m0)
            what = f"{variant.key} sizes {sizes[:5]} I {i} K {k} ue8m0={ue8m0}"
            want = _unfused(a, a_s, b, b_s, counts, ue8m0, "ptx")
            _assert_same_rows((q, s), want, mask, what)
            assert not q[mask].float().isnan().any() and not s[mask].isnan().any(), f"{what}: unwritten real rows"
            assert (q[~mask].view(torch.uint8) == 0x7F).all() and s[~mask].isnan().all(), f"{what}: wrote padding"
            q2, s2 = q.clone(), s.clone()
            _launch(variant, a, a_s, b, b_s, sizes, q2, s2, ue8m0)
            assert torch.equal(bits(q2), bits(q)) and torch.equal(bits(s2.nan_to_num(0)), bits(s.nan_to_num(0))), \
                f"{what}: not reproducible"


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", ["1", "0"])
def test_gpu_op_fused_and_unfused_plans(monkeypatch, fuse):
    """Through the op (the plan's pick, fused or with DEEPERGEMM_FUSED_EPILOGUE=0 the grouped bf16 GEMM then the
    Triton steps inside the C++ op): the same bits as the steps called one by one; the reference backend on the GPU
    within the approximate SwiGLU's last bit (not compared bitwise)."""
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", fuse)
    for sizes, i, k, extra in GPU_CASES:
        a, a_s, b, b_s, counts = _problem(sizes, i, k, "cuda", extra_rows=extra)
        mask = _real_rows(sizes, a.shape[0], "cuda")
        got = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, backend="ptx")
        _assert_same_rows(got, _unfused(a, a_s, b, b_s, counts, backend="ptx"), mask, f"{sizes[:5]} fuse={fuse}")
        slow = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, backend="reference")
        diff = ref.calc_diff(ref.dequantize_act(*got)[mask], ref.dequantize_act(*slow)[mask])
        assert diff < 1e-4, f"{sizes[:5]}: against the reference backend {diff:.2e}"


@pytest.mark.gpu
def test_gpu_experts_fused_and_unfused():
    from deepergemm import nn as dnn

    torch.manual_seed(3)
    gate_up = torch.randn(8, 2 * 768, 1024, device="cuda") * 1024 ** -0.5
    down = torch.randn(8, 1024, 768, device="cuda") * 768 ** -0.5
    fused = dnn.FP8Experts.from_weights(gate_up, down, fused_swiglu=True)
    unfused = dnn.FP8Experts.from_weights(gate_up, down)
    for tokens in (1, 37, 300):
        x = torch.randn(tokens, 1024, dtype=torch.bfloat16, device="cuda")
        topk_ids = torch.randint(0, 8, (tokens, 2), dtype=torch.int32, device="cuda")
        topk_weights = torch.rand(tokens, 2, device="cuda")
        with torch.no_grad():
            y, y_unfused = fused(x, topk_ids, topk_weights), unfused(x, topk_ids, topk_weights)
        assert not y.isnan().any(), tokens
        assert ref.calc_diff(y.float(), y_unfused.float()) < 1e-3, tokens  # only SwiGLU's roundings differ


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile():
    """Captured in a CUDA graph and replayed with new activations and new group sizes (read by the kernel on the
    device), poisoned outputs each time; torch.compile(fullgraph=True) the same bits as eager."""
    from deepergemm.benchmark.timing import capture_graph

    sizes, i, k = [70, 0, 129, 5], 256, 512
    a, a_s, b, b_s, counts = _problem(sizes, i, k, "cuda")

    def fn(a, a_s, b, b_s, counts):
        return dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, backend="ptx")

    graph, (q, s) = capture_graph(fn, a, a_s, b, b_s, counts)
    for new_sizes in ([128, 1, 0, 64], [3, 3, 3, 3]):
        a2, a2_s = _acts(a.shape[0], k, "cuda")
        a.copy_(a2)
        a_s.copy_(a2_s)
        counts.copy_(torch.tensor(new_sizes, dtype=torch.int32))
        q.view(torch.uint8).fill_(0x7F)
        s.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        mask = _real_rows(new_sizes, a.shape[0], "cuda")
        _assert_same_rows((q, s), _unfused(a, a_s, b, b_s, counts, backend="ptx"), mask, f"replay {new_sizes}")
    compiled = torch.compile(fn, fullgraph=True)
    mask = _real_rows(counts.tolist(), a.shape[0], "cuda")
    _assert_same_rows(compiled(a, a_s, b, b_s, counts), fn(a, a_s, b, b_s, counts), mask, "compiled")


# (masked_m, max_m, I, K): empty groups, a full group, counts past max_m and negative (clamped), one row; max_m a
# multiple of 4 (the op's rule)
MASKED_GPU_CASES = (([5, 0, 72, 64], 72, 128, 384), ([1], 4, 256, 128), ([200, 3, -1, 500], 256, 384, 1536),
                    ([7] * 32, 8, 1024, 7168))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [v for v in configs.GROUPED_SWIGLU_VARIANTS if v.grouping == configs.GROUP_MASKED],
                         ids=lambda v: v.key)
def test_gpu_every_masked_swiglu_unit_into_poisoned_outputs(variant):
    for masked, max_m, i, k in MASKED_GPU_CASES:
        a3, a3_s, b, b_s, masked_m = _masked_problem(masked, max_m, i, k, "cuda")
        groups = len(masked)
        rows = _masked_rows(masked, max_m, "cuda")
        a, a_s = a3.view(groups * max_m, k), a3_s.reshape(groups * max_m, k // 128)
        for ue8m0 in (False, True):
            q = torch.full((groups * max_m, i), 0x7F, dtype=torch.uint8, device="cuda").view(FP8)
            s = layouts.empty_act_scales(groups * max_m, i, "cuda").fill_(float("nan"))
            groups_, n, _ = b.shape
            kernels.launch(extension.load(variant), a, layouts.to_act_scale_layout(a_s), b.view(groups_ * n, k),
                           b_s.view(-1, b_s.shape[-1]), q, group_rows=masked_m, group_stride=max_m, out_scales=s,
                           ue8m0=ue8m0)
            torch.cuda.synchronize()
            what = f"{variant.key} masked {masked[:4]} max_m {max_m} I {i} K {k} ue8m0={ue8m0}"
            _assert_same_rows((q, s), _masked_unfused(a3, a3_s, b, b_s, masked_m, ue8m0, "ptx"), rows, what)
            assert not q[rows].float().isnan().any() and not s[rows].isnan().any(), f"{what}: unwritten rows"
            assert (q[~rows].view(torch.uint8) == 0x7F).all() and s[~rows].isnan().all(), f"{what}: wrote past masked_m"


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", ["1", "0"])
def test_gpu_masked_op_and_graph_replay(monkeypatch, fuse):
    """The op's plans (fused, or the masked bf16 GEMM then the Triton steps) against the steps; then a CUDA graph
    replayed with new counts (read on the device), outputs poisoned each time."""
    from deepergemm.benchmark.timing import capture_graph

    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", fuse)
    for masked, max_m, i, k in MASKED_GPU_CASES:
        a3, a3_s, b, b_s, masked_m = _masked_problem(masked, max_m, i, k, "cuda")
        got = dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, b, b_s, masked_m, max(1, max_m // 2), backend="ptx")
        _assert_same_rows(_flat(got), _masked_unfused(a3, a3_s, b, b_s, masked_m, backend="ptx"),
                          _masked_rows(masked, max_m, "cuda"), f"{masked[:4]} fuse={fuse}")
    masked, max_m, i, k = MASKED_GPU_CASES[0]
    a3, a3_s, b, b_s, masked_m = _masked_problem(masked, max_m, i, k, "cuda")

    def fn(a3, a3_s, b, b_s, masked_m):
        return dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, b, b_s, masked_m, 32, backend="ptx")

    graph, (q, s) = capture_graph(fn, a3, a3_s, b, b_s, masked_m)
    for new in ([72, 72, 0, 1], [3, 64, 9, 0]):
        masked_m.copy_(torch.tensor(new, dtype=torch.int32))
        q.view(torch.uint8).fill_(0x7F)
        s.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        _assert_same_rows(_flat((q, s)), _masked_unfused(a3, a3_s, b, b_s, masked_m, backend="ptx"),
                          _masked_rows(new, max_m, "cuda"), f"replay {new} fuse={fuse}")
