"""Grouped SwiGLU (m_grouped_fp8_gemm_contiguous_swiglu): the experts' gate/up GEMM, SwiGLU and the down
projection's quantization in one grouped kernel, each expert's B rows gate then up (stacked experts as stored).

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
    with pytest.raises(ValueError, match="layout.rows"):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a[:128], a_s[:128], b, b_s, layout)


@pytest.mark.parametrize("change,error,match", [
    ("n_not_256", ValueError, r"N \(b.shape\[1\]: each group's gate rows, then its up rows\) must be a positive "
                              r"multiple of 256 for m_grouped_fp8_gemm_contiguous_swiglu, got N=128"),
    ("b_rank", ValueError, r"b must be .*\(groups, N, K\)"),
    ("sizes_dtype", TypeError, "group_sizes must have dtype torch.int32"),
    ("a_dtype", TypeError, "a must have dtype torch.float8_e4m3fn"),
    ("k_mismatch", ValueError, "a and b must share K"),
    ("cublas", ValueError, "backend='cublas' has no grouped GEMM"),
])
def test_input_rules_are_named(change, error, match):
    a, a_s, b, b_s, counts = _problem([3, 9], 128, 256)
    backend = "auto"
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
    with pytest.raises(error, match=match):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, backend=backend)


def test_flag_and_group_sizes_types():
    a, a_s, b, b_s, counts = _problem([3], 128, 128)
    with pytest.raises(TypeError, match="ue8m0"):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts, ue8m0=1)
    with pytest.raises(TypeError, match="group_sizes must be a torch.Tensor or a ContiguousLayout"):
        dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, [3])


def test_zero_rows():
    a, a_s, b, b_s, counts = _problem([0, 0], 128, 128, extra_rows=0)
    q, s = dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts)
    assert q.shape == (0, 128) and s.shape == (0, 1)


def test_fake_kernel_gives_the_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    a, a_s, b, b_s, counts = _problem([70, 5], 384, 256, extra_rows=3)
    with FakeTensorMode() as mode:
        q, s = OP(*(mode.from_tensor(t) for t in (a, a_s, b, b_s, counts)), False, "auto")
        rows = a.shape[0]
        assert q.shape == (rows, 384) and q.dtype == FP8 and q.stride() == (384, 1)
        assert s.shape == (rows, 3) and s.dtype == torch.float32 and s.stride() == (1, layouts.act_scale_stride(rows))


def test_opcheck():
    a, a_s, b, b_s, counts = _problem([20, 0, 7], 128, 256, extra_rows=0)
    checks = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for ue8m0 in (False, True):
        torch.library.opcheck(OP.default, (a, a_s, b, b_s, counts, ue8m0, "auto"), test_utils=checks)


@pytest.mark.slow  # (an aot_eager compile)
def test_compiles_fullgraph_on_cpu():
    a, a_s, b, b_s, counts = _problem([20, 0, 7], 128, 256)

    def fn(a, a_s, b, b_s, counts):
        return dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, b, b_s, counts)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert_same(compiled(a, a_s, b, b_s, counts), fn(a, a_s, b, b_s, counts), "compiled")


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
    assert [v.key for v in configs.GROUPED_SWIGLU_VARIANTS] == ["64x256s5dgcswiglu", "64x256s5dc2gcswiglu"]
    for v in configs.GROUPED_SWIGLU_VARIANTS:
        assert configs.parse_key(v.key) == v
        assert v.swiglu and v.fp8_out and v.grouping == configs.GROUP_CONTIGUOUS and v.fp8_out_mode == 2
        assert v.smem_bytes <= configs.SMEM_LIMIT
        assert v in configs.BUILT_VARIANTS
    with pytest.raises(ValueError, match="plain or grouped contiguous"):
        configs.parse_key("64x256s5dgmswiglu")
    with pytest.raises(ValueError, match="ungrouped but for SwiGLU"):
        configs.parse_key("64x256s5dgcq")


@pytest.mark.parametrize("rows,k,paired", [(1, 7168, False), (64, 7168, False), (65, 7168, True), (128, 7168, True),
                                           (700, 7168, True), (576, 7168, False), (128, 1024, False)])
def test_select_grouped_swiglu_pairs(rows, k, paired, monkeypatch):
    """2x1 B-multicast pairs where each group's M-tiles round up to pairs with at most 10% more (9 tiles -> 10 is
    11%: unpaired) and K is long enough for the small-M clusters; never with DEEPERGEMM_SMALL_M_CLUSTER=0."""
    choice = configs.select_grouped_swiglu(rows, 8, 4096, k, 132)
    assert choice.variant in configs.GROUPED_SWIGLU_VARIANTS and not choice.stream_k
    assert (choice.variant.cluster_m == 2) == paired
    tiles_per_group = -(-(-(-rows // 64)) // choice.variant.cluster_m) * choice.variant.cluster_m
    assert choice.tiles == 8 * tiles_per_group * 4096 // 256
    monkeypatch.setenv("DEEPERGEMM_SMALL_M_CLUSTER", "0")
    assert configs.select_grouped_swiglu(rows, 8, 4096, k, 132).variant.cluster_m == 1
    with pytest.raises(ValueError, match="multiple of 256"):
        configs.select_grouped_swiglu(rows, 8, 4096 + 128, k, 132)


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
    plan = kernels.plan(kernels.PLAN_GROUPED_SWIGLU, 0, 1024, 4096, 7168, 8, 128, 0, False)
    assert loaded[-1] == configs.select_grouped_swiglu(128, 8, 4096, 7168, 132).variant and plan[6] == 0
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "0")
    plan = kernels.plan(kernels.PLAN_GROUPED_SWIGLU, 0, 1024, 4096, 7168, 8, 128, 0, False)
    assert loaded[-1] == configs.select_grouped(configs.GROUP_CONTIGUOUS, 128, 8, 4096, 7168, 132).variant
    assert plan[6] == 1


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
