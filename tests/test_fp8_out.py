"""fp8 output from the GEMM (fp8_gemm(..., out_dtype=torch.float8_e4m3fn), op deepergemm::fp8_gemm_fp8_out).

The contract: (q, scales) bit-identical to quantize_act(fp8_gemm(..., out_dtype=torch.bfloat16)), scales in the
activation layout. CPU: the reference path, its rules against an independent per-group computation, the input
rules, fake kernel, torch.compile and opcheck. GPU (marked gpu): the fused kernel against quantize_act of the bf16
GEMM, every fp8-output variant against its bf16 twin, outputs poisoned before the launch, CUDA graphs.
"""
import dataclasses

import pytest
import torch

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts
from deepergemm import reference as ref
from quantized_output import FP8, assert_same, bits as _bits, check_graph_and_compile

OP = torch.ops.deepergemm.fp8_gemm_fp8_out


def _inputs(m, n, k, device="cpu", outliers=True, zero_group=True):
    """Fresh random operands; a few output channels 100x larger than the rest (outliers), and, when N >= 256, output
    columns 128..255 exactly zero (B's rows zero there: an all-zero group of every output row)."""
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    if outliers:
        w[torch.randperm(n, device=device)[: max(1, n // 64)]] *= 100.0
    if zero_group and n >= 256:
        w[128:256] = 0.0
    a, a_s = ref.quantize_act(x) if device == "cpu" else dg.quantize_act(x)
    b, b_s = ref.quantize_weight(w) if device == "cpu" else dg.quantize_weight(w)
    if device == "cpu":
        a_s = layouts.to_act_scale_layout(a_s)
    return a, a_s, b, b_s


def _bias(n, dtype, device="cpu"):
    if dtype is None:
        return None
    bias = torch.randn(n, device=device).to(dtype)
    if n >= 256:
        bias[128:256] = 0  # keeps the zero group zero
    return bias


def _independent_quantization(y: torch.Tensor, ue8m0: bool):
    """quantize_act's rules written out per group with plain float math (not reference.quantize_act): y (M, N) bf16."""
    m, n = y.shape
    groups = y.float().reshape(m, n // 128, 128)
    amax = groups.abs().amax(dim=2)
    amax = torch.maximum(amax, torch.tensor(1e-4, dtype=torch.float32))
    scale = amax / torch.tensor(448.0)
    if ue8m0:
        scale = torch.exp2(torch.ceil(torch.log2(scale.double()))).float()
        mult = torch.ones_like(scale) / scale
    else:
        mult = (torch.ones_like(amax) / amax) * torch.tensor(448.0)
    q = (groups * mult[:, :, None]).to(FP8).reshape(m, n)
    return q, scale


# ----------------------------------------------------------------------------------------------
# CPU: the reference path
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("m,n,k,bias", [(1, 128, 128, None), (5, 384, 256, torch.bfloat16), (67, 256, 384, torch.float32),
                                        (130, 640, 128, torch.float16)])
def test_reference_path_is_quantize_act_of_the_bf16_gemm(m, n, k, bias, ue8m0):
    a, a_s, b, b_s = _inputs(m, n, k)
    bias_t = _bias(n, bias)
    got = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, bias=bias_t, ue8m0=ue8m0)
    y = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.bfloat16, bias=bias_t)
    assert_same(got, dg.quantize_act(y, ue8m0=ue8m0), f"{m}x{n}x{k}")
    # the same rules written out independently (q may differ only where x * multiplier is a tie whose rounding the
    # double-precision log2 path cannot see: none in practice; the scales must agree exactly)
    q_ind, s_ind = _independent_quantization(y, ue8m0)
    assert torch.equal(got[1], s_ind)
    assert torch.equal(_bits(got[0]), _bits(q_ind))
    if n >= 256:  # the all-zero group: the clamped scale, zero data
        assert torch.all(got[1][:, 1] == torch.tensor(1e-4) / torch.tensor(448.0)) or ue8m0
        assert torch.all(got[0][:, 128:256].float() == 0)


def test_reference_path_keeps_nan_and_m_zero():
    a, a_s, b, b_s = _inputs(3, 256, 128, zero_group=False)
    b_s = b_s.clone()
    b_s[0, 0] = float("nan")  # output columns 0..127 of every row: NaN
    q, s = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8)
    assert s[:, 0].isnan().all() and q[:, :128].float().isnan().all()
    assert not s[:, 1].isnan().any() and not q[:, 128:].float().isnan().any()
    q0, s0 = dg.fp8_gemm(a[:0], a_s[:0], b, b_s, out_dtype=FP8)
    assert q0.shape == (0, 256) and q0.dtype == FP8 and s0.shape == (0, 2)


def test_op_schema_and_prepared_weight():
    a, a_s, b, b_s = _inputs(9, 256, 256)
    direct = OP(a, a_s, b, b_s, None, False, "auto")
    assert_same(dg.fp8_gemm(a, a_s, dg.prepare_weight(b, b_s), out_dtype=FP8), direct, "unplaced PreparedWeight")
    assert_same(dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, backend="reference"), direct, "backend=reference")


# ----------------------------------------------------------------------------------------------
# CPU: the epilogue's division-free roundings (ptx/epilogue.cuh: div_by_448_rn, rcp_rn), on every float
# ----------------------------------------------------------------------------------------------
def _check_roundings(stride: int) -> None:
    """For every stride-th float32 a >= 1e-4 (finite): a * (1/448) in fp64 rounded to fp32 is a / 448 correctly
    rounded (numpy's fp32 division), exactly as the kernel computes it; and every value within 2^-51 of 1 / a
    (80-bit arithmetic) rounds to fp32's correctly rounded 1 / a, the margin the kernel's fp64 Newton steps (within
    2^-52) rely on."""
    np = pytest.importorskip("numpy")
    if np.finfo(np.longdouble).nmant < 63:
        pytest.skip("needs 80-bit long double")
    first = int(np.array([1e-4], dtype=np.float32).view(np.uint32)[0])
    last = 0x7F7FFFFF
    band = np.longdouble(2.0) ** -51
    inv448 = np.float64(1.0) / np.float64(448.0)
    chunk = (1 << 24) * stride
    for start in range(first, last + 1, chunk):
        a = np.arange(start, min(start + chunk, last + 1), stride, dtype=np.uint32).view(np.float32)
        got = (a.astype(np.float64) * inv448).astype(np.float32)
        assert np.array_equal(got.view(np.uint32), (a / np.float32(448.0)).view(np.uint32)), hex(start)
        exact = np.longdouble(1.0) / a.astype(np.longdouble)
        want = (np.float32(1.0) / a).view(np.uint32)
        for edge in (exact * (1 - band), exact * (1 + band)):
            assert np.array_equal(edge.astype(np.float32).view(np.uint32), want), hex(start)


def test_division_free_roundings_sampled():
    _check_roundings(stride=4099)


@pytest.mark.slow
def test_division_free_roundings_on_every_float():
    _check_roundings(stride=1)


# ----------------------------------------------------------------------------------------------
# CPU: input rules
# ----------------------------------------------------------------------------------------------
def test_n_must_be_whole_groups():
    a, a_s, _, _ = _inputs(4, 128, 256)
    b, b_s = ref.quantize_weight(torch.randn(136, 256))
    with pytest.raises(ValueError, match=r"^N \(b.shape\[0\]\) must be a positive multiple of 128 for fp8 output \(one "
                                         r"scale per 1x128 group of an output row, as quantize_act's K\), got N=136$"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8)
    b, b_s = ref.quantize_weight(torch.randn(12, 256))
    with pytest.raises(ValueError, match=r"N \(b.shape\[0\]\) must be a positive multiple of 8 "):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8)


def test_bad_arguments_are_named():
    a, a_s, b, b_s = _inputs(4, 128, 256)
    with pytest.raises(ValueError, match=r"ue8m0=True applies to fp8 output only"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.bfloat16, ue8m0=True)
    with pytest.raises(TypeError, match=r"ue8m0 must be a bool"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, ue8m0=1)
    with pytest.raises(TypeError, match=r"^out_dtype must be torch.bfloat16, torch.float32 or torch.float8_e4m3fn, got "
                                        r"torch.float8_e5m2$"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float8_e5m2)
    with pytest.raises(TypeError, match=r"^a must have dtype torch.float8_e4m3fn, got torch.float32$"):
        dg.fp8_gemm(a.float(), a_s, b, b_s, out_dtype=FP8)
    with pytest.raises(ValueError, match=r"^a_scales must have shape \(M, K/128\)"):
        dg.fp8_gemm(a, a_s[:, :1], b, b_s, out_dtype=FP8)
    with pytest.raises(ValueError, match=r"^bias must have shape \(N,\) = \(128,\), got \(127,\)$"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, bias=torch.randn(127))
    with pytest.raises(ValueError, match=r"^a must be K-major"):
        dg.fp8_gemm(a.t().contiguous().t(), a_s, b, b_s, out_dtype=FP8)
    with pytest.raises(ValueError, match=r"^backend must be one of"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, backend="cudnn")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^all tensors must be on one device"):
            dg.fp8_gemm(a, a_s, b.cuda(), b_s, out_dtype=FP8)


# ----------------------------------------------------------------------------------------------
# CPU: fake kernel, torch.compile, opcheck
# ----------------------------------------------------------------------------------------------
def test_fake_kernel_gives_the_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    a, a_s, b, b_s = _inputs(67, 384, 256)
    b136, b136_s = ref.quantize_weight(torch.randn(136, 256))
    with FakeTensorMode() as mode:
        fa, fa_s, fb, fb_s = (mode.from_tensor(t) for t in (a, a_s, b, b_s))
        q, s = OP(fa, fa_s, fb, fb_s, None, False, "auto")
        assert q.shape == (67, 384) and q.dtype == FP8 and q.stride() == (384, 1)
        assert s.shape == (67, 3) and s.dtype == torch.float32 and s.stride() == (1, 68)
        with pytest.raises(ValueError, match="multiple of 128 for fp8 output"):
            OP(fa, fa_s, mode.from_tensor(b136), mode.from_tensor(b136_s), None, False, "auto")


def test_compiles_fullgraph_on_cpu():
    a, a_s, b, b_s = _inputs(33, 256, 256)
    bias = _bias(256, torch.bfloat16)

    def fn(a, a_s, b, b_s, bias):
        q, s = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, bias=bias)
        return q, s

    # (aot_eager: Dynamo's whole-graph trace and AOT autograd over the fake kernel, without inductor's C++ build;
    # the GPU test compiles with inductor)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert_same(compiled(a, a_s, b, b_s, bias), fn(a, a_s, b, b_s, bias), "compiled")


def test_opcheck():
    """opcheck's fake-tensor, autograd-registration and AOT-dispatch checks (its schema check compares the fp8
    inputs before and after the call with arithmetic torch has no CPU kernel for on float8: not run)."""
    a, a_s, b, b_s = _inputs(20, 256, 256)
    for args in ((a, a_s, b, b_s, None, False, "auto"), (a, a_s, b, b_s, _bias(256, torch.float32), True, "auto")):
        torch.library.opcheck(OP.default, args,
                              test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


# ----------------------------------------------------------------------------------------------
# CPU: variant selection
# ----------------------------------------------------------------------------------------------
def test_fp8_out_variants_are_twins_of_selectable_ones():
    for v in configs.FP8_OUT_VARIANTS:
        assert v.fp8_out and v.key.endswith("q") and configs.parse_key(v.key) == v
        assert v.wg_n % 128 == 0 and not v.swapped and v.grouping == configs.GROUP_NONE
        assert dataclasses.replace(v, fp8_out=False) in configs.VARIANTS
        assert v in configs.BUILT_VARIANTS
        assert v.compile_defines()["DG_FP8_OUT"] == 1 and dict(zip(configs.BINDING_FIELDS, v.binding_info()))["fp8_out"]
    assert all(v.compile_defines()["DG_FP8_OUT"] == 0 for v in configs.TESTED_VARIANTS + configs.GROUPED_VARIANTS)
    with pytest.raises(ValueError, match="fp8 output needs"):
        configs.Variant(64, 128, 8, True, math_wgs=2, fp8_out=True)  # warpgroups of 64 columns


def test_select_fp8_out_picks_an_fp8_variant_at_every_m():
    sw = configs.Switches.from_environ({})
    checked = 0
    for n, k in ((128, 128), (384, 512), (7168, 2048), (4096, 7168), (18432, 7168), (2048, 1024), (1152, 7168)):
        for m in (1, 2, 31, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4096, 16384):
            choice = configs.select_fp8_out(m, n, k, 132, sw=sw)
            assert choice.variant in configs.FP8_OUT_VARIANTS, (m, n, k, choice.variant.key)
            assert choice.variant.block_m == 64 if m <= 128 else choice.variant.block_m >= 128
            plain = configs.select(m, n, k, 132, swap_ok=False, sw=sw)
            twins = [v for v in configs.FP8_OUT_VARIANTS if dataclasses.replace(v, fp8_out=False) == plain.variant]
            if twins:  # the bf16 pick's twin: the same sums, the same stream-K
                assert choice.variant == twins[0] and choice.stream_k == plain.stream_k and choice.grid == plain.grid
                checked += 1
    assert checked > 15  # (middle M's unclustered picks have no fp8-output twin: the wave model picks there)
    with pytest.raises(ValueError, match="multiple of 128"):
        configs.select_fp8_out(64, 136, 256, 132, sw=sw)


# ----------------------------------------------------------------------------------------------
# GPU: the fused kernel
# ----------------------------------------------------------------------------------------------
GPU_SHAPES = ((1, 128, 128), (1, 7168, 2048), (37, 384, 256), (64, 1152, 1024), (65, 640, 1536), (127, 256, 7168),
              (129, 384, 512), (200, 1280, 256), (333, 384, 384), (1000, 896, 640), (4097, 1152, 256))


def _poison_allocator(m, n):
    """Free blocks of q's and the scales' sizes, filled with 0xFF bytes (NaN as fp8 e4m3fn and as fp32), so the op's
    outputs most likely start as NaN (the caching allocator hands out the last freed block that fits)."""
    for size in (m * n, 4 * layouts.act_scale_stride(m) * (n // 128)):
        torch.full((size,), 0xFF, dtype=torch.uint8, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", GPU_SHAPES, ids=lambda v: str(v))
def test_gpu_fused_equals_quantize_act_of_bf16_gemm(no_split_orders, m, n, k):
    a, a_s, b, b_s = _inputs(m, n, k, "cuda")
    for bias_dtype, ue8m0 in ((None, False), (torch.bfloat16, False), (torch.float32, True), (torch.float16, False)):
        bias = _bias(n, bias_dtype, "cuda")
        _poison_allocator(m, n)
        got = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, bias=bias, ue8m0=ue8m0, backend="ptx")
        y = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.bfloat16, bias=bias, backend="ptx")
        want = dg.quantize_act(y, ue8m0=ue8m0)
        assert_same(got, want, f"{m}x{n}x{k} bias={bias_dtype} ue8m0={ue8m0}")
        assert not got[1].isnan().any()


def _launch(variant, a, a_s, b, b_s, bias, ue8m0, stream_k, group_n=16):
    """One direct launch of a variant into NaN-poisoned outputs: bf16 (M, N), or fp8 q (0x7F is NaN in e4m3fn) and
    scales for an fp8-output variant. (With stream-K the rasterization band decides where tiles are cut: equal
    group_n, equal sums.)"""
    m, n = a.shape[0], b.shape[0]
    sa = layouts.to_act_scale_layout(a_s)
    hints = configs.variant_l2_hints(m, variant)
    if variant.fp8_out:
        q = torch.full((m, n), 0x7F, dtype=torch.uint8, device="cuda").view(FP8)
        s = layouts.empty_act_scales(m, n, "cuda").fill_(float("nan"))
        kernels.launch(extension.load(variant), a, sa, b, b_s, q, bias, group_n=group_n, l2_hints=hints,
                       stream_k=stream_k, out_scales=s, ue8m0=ue8m0)
        return q, s
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    kernels.launch(extension.load(variant), a, sa, b, b_s, out, bias, group_n=group_n, l2_hints=hints,
                   stream_k=stream_k)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("variant", configs.FP8_OUT_VARIANTS, ids=lambda v: v.key)
def test_gpu_every_fp8_variant_equals_its_bf16_twin(variant):
    """Every fp8-output variant, poisoned outputs, odd shapes (M tails, N-tiles that leave a cluster's partner a
    padding tile, an all-zero group, outlier channels), with the same stream-K setting as its bf16 twin."""
    twin = dataclasses.replace(variant, fp8_out=False)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for m, n, k in ((1, 128, 128), (63, 384, 384), (65, 256, 1536), (129, 640, 256), (300, 384, 640),
                    (1000, 1152, 512)):
        a, a_s, b, b_s = _inputs(m, n, k, "cuda")
        stream_k = configs.stream_k_pays(m, n, k, variant, sms)
        for bias_dtype, ue8m0 in ((None, False), (torch.float32, True), (torch.bfloat16, False)):
            bias = _bias(n, bias_dtype, "cuda")
            got = _launch(variant, a, a_s, b, b_s, bias, ue8m0, stream_k)
            y = _launch(twin, a, a_s, b, b_s, bias, ue8m0, stream_k)
            torch.cuda.synchronize()
            assert not y.isnan().any()
            assert_same(got, dg.quantize_act(y, ue8m0=ue8m0), f"{variant.key} {m}x{n}x{k} {bias_dtype} {ue8m0}")


@pytest.mark.gpu
def test_gpu_stream_k_tail():
    """A shape whose fp8 pick runs a stream-K tail (256x128 at 4.x waves): the same bits as its bf16 twin with it."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    m, n, k = 4096, 1152, 6144  # (a tail needs K >= STREAM_K_MIN_K)
    choice = configs.select_fp8_out(m, n, k, sms)
    assert choice.stream_k, "pick a shape with a stream-K tail"
    a, a_s, b, b_s = _inputs(m, n, k, "cuda")
    got = _launch(choice.variant, a, a_s, b, b_s, None, False, True, choice.group_n)
    y = _launch(dataclasses.replace(choice.variant, fp8_out=False), a, a_s, b, b_s, None, False, True, choice.group_n)
    assert_same(got, dg.quantize_act(y), "stream-K")
    assert_same(dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8), got, "op with stream-K")


@pytest.mark.gpu
def test_gpu_nan_input_and_determinism():
    a, a_s, b, b_s = _inputs(200, 384, 512, "cuda", zero_group=False)
    b_s = b_s.clone()
    b_s[1, 2] = float("nan")  # output columns 128..255: NaN in every row
    q, s = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8)
    assert s[:, 1].isnan().all() and q[:, 128:256].float().isnan().all()
    assert not s[:, [0, 2]].isnan().any() and not q[:, :128].float().isnan().any()
    q2, s2 = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8)
    assert torch.equal(_bits(q), _bits(q2)) and torch.equal(_bits(s), _bits(s2))


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile(no_split_orders):
    m, n, k = 96, 640, 1024
    a, a_s, b, b_s = _inputs(m, n, k, "cuda")
    bias = _bias(n, torch.bfloat16, "cuda")

    def fn(a, a_s, b, b_s, bias):
        return dg.fp8_gemm(a, a_s, b, b_s, out_dtype=FP8, bias=bias)

    check_graph_and_compile(fn, (a, a_s, b, b_s, bias), lambda: _inputs(m, n, k, "cuda")[:2],
                            lambda: dg.quantize_act(dg.fp8_gemm(a, a_s, b, b_s, bias=bias)))
