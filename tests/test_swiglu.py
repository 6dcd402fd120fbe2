"""SwiGLU fused into the gate/up GEMM (dg.fp8_gemm_swiglu, op deepergemm::fp8_gemm_swiglu) and its unfused path
(dg.swiglu, op deepergemm::swiglu, triton_kernels/swiglu.py).

The contract: (q, scales) = quantize_act(swiglu(fp8_gemm(a, a_s, w_gu, w_gu_s))) with w_gu = prepare_gate_up(...),
bit-identical on the GPU (the bf16 GEMM unsplit: no split-K, no stream-K). CPU: the reference formula, the layout
round trip, the input rules, fake kernel, torch.compile, opcheck, the selection, and that the Triton kernel's
inline assembly is ptx.cuh's swiglu_f32. GPU (marked gpu): fused against unfused over odd shapes, outlier channels
and saturating gates, poisoned outputs, every SwiGLU unit launched directly, CUDA graphs, the CPU reference within a
stated tolerance, the MLP option.
"""
import pathlib
import re

import pytest
import torch

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts
from deepergemm import reference as ref
from quantized_output import FP8, assert_same, bits as _bits, check_graph_and_compile

OP = torch.ops.deepergemm.fp8_gemm_swiglu
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _weights(i, k, device="cpu", outliers=True, saturate=True):
    """Fresh gate and up weights (I, K), quantized, and their interleaved form. Outliers: a few gate and up rows 100x
    larger (outputs far above the rest of their group); saturate: gate rows 8..15 x 1000 and -1000 (SiLU's flat
    ends: exp overflows to Inf, or 2^t underflows to 0)."""
    wg = torch.randn(i, k, device=device)
    wu = torch.randn(i, k, device=device)
    if outliers:
        wg[torch.randperm(i, device=device)[: max(1, i // 64)]] *= 100.0
        wu[torch.randperm(i, device=device)[: max(1, i // 64)]] *= 100.0
    if saturate:
        wg[8:12] *= 1000.0
        wg[12:16] *= -1000.0
    quant = ref.quantize_weight if device == "cpu" else dg.quantize_weight
    (g, g_s), (u, u_s) = quant(wg), quant(wu)
    w, w_s = dg.prepare_gate_up(g, g_s, u, u_s)
    return w, w_s, (g, g_s, u, u_s)


def _act(m, k, device="cpu"):
    x = torch.randn(m, k, device=device)
    a, a_s = ref.quantize_act(x) if device == "cpu" else dg.quantize_act(x)
    return a, (layouts.to_act_scale_layout(a_s) if device == "cpu" else a_s)


# ----------------------------------------------------------------------------------------------
# CPU: the formula and the layout
# ----------------------------------------------------------------------------------------------
def test_reference_swiglu_is_silu_times_up_within_rounding():
    gate_up = (torch.randn(37, 1024) * 4).to(torch.bfloat16)
    h = dg.swiglu(gate_up)
    g, u = layouts.split_gate_up(gate_up.t())
    want = torch.nn.functional.silu(g.t().double()) * u.t().double()
    assert h.dtype == torch.bfloat16 and h.shape == (37, 512)
    err = (h.double() - want).abs()
    assert (err <= want.abs() * 2.0 ** -8 * (1 + 2.0 ** -6) + 1e-30).all(), err.max()  # bf16's half ulp, fp32 steps


def test_reference_swiglu_saturates_and_keeps_nan():
    gate_up = torch.zeros(1, 256, dtype=torch.bfloat16)
    gate_up[0, :4] = torch.tensor([-1e30, 1e30, float("nan"), -100.0])
    gate_up[0, 128:132] = torch.tensor([3.0, 3.0, 1.0, 5.0])
    h = dg.swiglu(gate_up)[0, :4]
    assert h[0] == 0 and h[1] == (gate_up[0, 1].float() * 3).to(torch.bfloat16) and h[2].isnan()
    assert h[3].abs() < 1e-30


def test_reference_steps_are_the_documented_ones():
    """reference.swiglu, step by step as triton_kernels/swiglu.py documents it (fp32, each step rounded)."""
    gate_up = (torch.randn(9, 512) * 3).to(torch.bfloat16)
    g, u = (t.t().float() for t in layouts.split_gate_up(gate_up.t()))
    t = g * torch.tensor(-1.4426950408889634, dtype=torch.float32)  # -log2(e) rounded to fp32
    assert torch.tensor(ref.NEG_LOG2E, dtype=torch.float32).view(torch.int32).item() == 0xBFB8AA3B - (1 << 32)
    h = ((g * (1.0 / (torch.exp2(t) + 1.0))) * u).to(torch.bfloat16)
    assert torch.equal(h, ref.swiglu(gate_up))


def test_gate_up_layout_round_trip():
    i, k = 384, 256
    w, w_s, (g, g_s, u, u_s) = _weights(i, k)
    assert w.shape == (2 * i, k) and w_s.shape == (2 * i // 128, k // 128)
    for j in range(i // 128):  # block j of gate, then block j of up; scales likewise, one row each
        assert torch.equal(_bits(w[256 * j: 256 * j + 128]), _bits(g[128 * j: 128 * j + 128]))
        assert torch.equal(_bits(w[256 * j + 128: 256 * j + 256]), _bits(u[128 * j: 128 * j + 128]))
        assert torch.equal(w_s[2 * j], g_s[j]) and torch.equal(w_s[2 * j + 1], u_s[j])
    back = dg.unprepare_gate_up(w, w_s)
    for x, y in zip(back, (g, g_s, u, u_s)):
        assert torch.equal(_bits(x), _bits(y))
    # the GEMM of the interleaved weight holds gate's and up's outputs in the same interleave
    a, a_s = _act(5, k)
    out = dg.fp8_gemm(a, a_s, w, w_s)
    go, uo = layouts.split_gate_up(out.t())
    for part, (wp, wp_s) in ((go, (g, g_s)), (uo, (u, u_s))):  # (BLAS may sum in another order: last bits)
        assert torch.allclose(part.t().float(), dg.fp8_gemm(a, a_s, wp, wp_s).float(), rtol=2.0 ** -7, atol=0)


@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("m,i,k", [(1, 128, 128), (5, 256, 384), (67, 384, 256), (130, 640, 128)])
def test_reference_path_is_the_three_steps(m, i, k, ue8m0):
    w, w_s, _ = _weights(i, k)
    a, a_s = _act(m, k)
    got = dg.fp8_gemm_swiglu(a, a_s, w, w_s, ue8m0=ue8m0)
    want = dg.quantize_act(dg.swiglu(dg.fp8_gemm(a, a_s, w, w_s)), ue8m0=ue8m0)
    assert_same(got, want, f"{m}x{i}x{k}")
    assert got[0].shape == (m, i) and got[1].shape == (m, i // 128)
    assert not got[1].isnan().any()


def test_m_zero_and_backend_names():
    w, w_s, _ = _weights(128, 256)
    a, a_s = _act(0, 256)
    q, s = dg.fp8_gemm_swiglu(a, a_s, w, w_s)
    assert q.shape == (0, 128) and q.dtype == FP8 and s.shape == (0, 1)
    a, a_s = _act(3, 256)
    assert_same(dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend="reference"), dg.fp8_gemm_swiglu(a, a_s, w, w_s), "ref")


# ----------------------------------------------------------------------------------------------
# CPU: the Triton kernel's instructions are the epilogue's
# ----------------------------------------------------------------------------------------------
def _instructions(text: str) -> list[str]:
    return [re.sub(r"\s+", " ", line.strip().rstrip(";")) for line in text.splitlines()
            if line.strip() and line.strip() not in ("{", "}")]


def test_triton_assembly_is_the_epilogues():
    from deepergemm.triton_kernels import swiglu as triton_swiglu

    source = (ROOT / "ptx" / "ptx.cuh").read_text()
    body = re.search(r"float swiglu_f32\(float g, float u\) \{.*?asm\((.*?)\s*:\s*\"=f\"\(h\)", source, re.S).group(1)
    cuda = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body)).replace("\\n", "\n")
    cuda = re.sub(r"%(\d)", r"$\1", cuda)
    assert _instructions(cuda) == _instructions(triton_swiglu.SWIGLU_ASM)
    assert len(_instructions(cuda)) == 7  # the register declaration and the six documented steps


# ----------------------------------------------------------------------------------------------
# CPU: input rules (the binding's copies: tests/test_binding_cpu.py)
# ----------------------------------------------------------------------------------------------
def test_input_rules_are_named():
    w, w_s, (g, g_s, u, u_s) = _weights(256, 256)
    a, a_s = _act(4, 256)
    b3, b3_s = ref.quantize_weight(torch.randn(384, 256))
    with pytest.raises(ValueError, match=r"^N \(b.shape\[0\]: gate and up rows interleaved per 128\) must be a positive "
                                         r"multiple of 256 for fp8_gemm_swiglu, got N=384$"):
        dg.fp8_gemm_swiglu(a, a_s, b3, b3_s)
    with pytest.raises(TypeError, match=r"^a must have dtype torch.float8_e4m3fn, got torch.float32$"):
        dg.fp8_gemm_swiglu(a.float(), a_s, w, w_s)
    with pytest.raises(ValueError, match=r"^a_scales must have shape \(M, K/128\)"):
        dg.fp8_gemm_swiglu(a, a_s[:, :1], w, w_s)
    with pytest.raises(TypeError, match=r"ue8m0 must be a bool"):
        dg.fp8_gemm_swiglu(a, a_s, w, w_s, ue8m0=1)
    with pytest.raises(ValueError, match=r"^backend must be one of"):
        dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend="cudnn")
    with pytest.raises(ValueError, match=r"^gate_up.shape\[1\] \(2I: gate and up columns interleaved per 128\) must be "
                                         r"a positive multiple of 256, got 384$"):
        dg.swiglu(torch.randn(2, 384).to(torch.bfloat16))
    with pytest.raises(TypeError, match=r"^gate_up must have dtype torch.bfloat16, got torch.float32$"):
        dg.swiglu(torch.randn(2, 256))
    with pytest.raises(ValueError, match=r"^w_gate.shape\[0\] \(the intermediate size I\) must be a multiple of 128, "
                                         r"got 136$"):
        dg.prepare_gate_up(*ref.quantize_weight(torch.randn(136, 256)), *ref.quantize_weight(torch.randn(136, 256)))
    with pytest.raises(ValueError, match=r"^w_gate and w_up must have one shape \(I, K\)"):
        dg.prepare_gate_up(g, g_s, *ref.quantize_weight(torch.randn(128, 256)))
    with pytest.raises(TypeError, match=r"^w_up must have dtype torch.float8_e4m3fn"):
        dg.prepare_gate_up(g, g_s, u.float(), u_s)
    with pytest.raises(ValueError, match=r"^w_gate_scales must have shape"):
        dg.prepare_gate_up(g, g_s[:1], u, u_s)


# ----------------------------------------------------------------------------------------------
# CPU: fake kernel, torch.compile, opcheck
# ----------------------------------------------------------------------------------------------
def test_fake_kernels_give_the_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    w, w_s, _ = _weights(384, 256)
    a, a_s = _act(67, 256)
    with FakeTensorMode() as mode:
        fa, fa_s, fw, fw_s = (mode.from_tensor(t) for t in (a, a_s, w, w_s))
        q, s = OP(fa, fa_s, fw, fw_s, False, "auto")
        assert q.shape == (67, 384) and q.dtype == FP8 and q.stride() == (384, 1)
        assert s.shape == (67, 3) and s.dtype == torch.float32 and s.stride() == (1, 68)
        h = torch.ops.deepergemm.swiglu(mode.from_tensor(torch.zeros(5, 768, dtype=torch.bfloat16)))
        assert h.shape == (5, 384) and h.dtype == torch.bfloat16
        b3, b3_s = ref.quantize_weight(torch.randn(384, 256))
        with pytest.raises(ValueError, match="multiple of 256 for fp8_gemm_swiglu"):
            OP(fa, fa_s, mode.from_tensor(b3), mode.from_tensor(b3_s), False, "auto")


def test_compiles_fullgraph_on_cpu():
    w, w_s, _ = _weights(256, 256)
    a, a_s = _act(33, 256)

    def fused(a, a_s, w, w_s):
        return dg.fp8_gemm_swiglu(a, a_s, w, w_s)

    def unfused(a, a_s, w, w_s):
        return dg.quantize_act(dg.swiglu(dg.fp8_gemm(a, a_s, w, w_s)))

    for fn in (fused, unfused):
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        assert_same(compiled(a, a_s, w, w_s), fn(a, a_s, w, w_s), fn.__name__)


def test_opcheck():
    w, w_s, _ = _weights(256, 256)
    a, a_s = _act(20, 256)
    checks = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    for ue8m0 in (False, True):
        torch.library.opcheck(OP.default, (a, a_s, w, w_s, ue8m0, "auto"), test_utils=checks)
    torch.library.opcheck(torch.ops.deepergemm.swiglu.default, (torch.randn(7, 512).to(torch.bfloat16),))


# ----------------------------------------------------------------------------------------------
# CPU: variants and selection
# ----------------------------------------------------------------------------------------------
def test_swiglu_variants():
    for v in configs.SWIGLU_VARIANTS:
        assert v.swiglu and v.fp8_out and v.key.endswith("swiglu") and configs.parse_key(v.key) == v
        assert (v.block_m, v.block_n, v.math_wgs, v.wg_n, v.splits) == (64, 256, 2, 128, 1)
        assert v in configs.BUILT_VARIANTS and v.smem_bytes <= configs.SMEM_LIMIT
        assert v.compile_defines()["DG_FP8_OUT"] == 2
        assert dict(zip(configs.BINDING_FIELDS, v.binding_info()))["fp8_out"] == 2
    assert all(v.compile_defines()["DG_FP8_OUT"] < 2 for v in configs.BUILT_VARIANTS if not v.swiglu)
    with pytest.raises(ValueError, match="SwiGLU output needs"):
        configs.Variant(64, 128, 8, True, math_wgs=1, fp8_out=True, swiglu=True)
    with pytest.raises(ValueError, match="SwiGLU output needs"):
        configs.Variant(64, 256, 4, True, fp8_out=False, swiglu=True)


def test_select_swiglu_at_every_m():
    sw = configs.Switches.from_environ({})
    for n, k in ((256, 128), (36864, 7168), (4096, 7168), (768, 1024)):
        for m in (1, 2, 63, 64, 65, 127, 128, 129, 1000, 4096, 16384):
            choice = configs.select_swiglu(m, n, k, 132, sw=sw)
            assert choice.variant in configs.SWIGLU_VARIANTS and not choice.stream_k, (m, n, k)
            paired = m > 64 and k >= configs.SMALL_M_CLUSTER_MIN_K
            assert choice.variant.cluster_m == (2 if paired else 1), (m, n, k)
    unpaired = configs.Switches.from_environ({"DEEPERGEMM_SMALL_M_CLUSTER": "0"})
    assert configs.select_swiglu(4096, 36864, 7168, 132, sw=unpaired).variant.cluster_m == 1
    with pytest.raises(ValueError, match="multiple of 256"):
        configs.select_swiglu(64, 384, 256, 132, sw=sw)


# ----------------------------------------------------------------------------------------------
# CPU: the MLP option
# ----------------------------------------------------------------------------------------------
def _mlp(h, i, fused):
    from deepergemm import nn as dnn

    mlp = dnn.FP8MLP(h, i, fused_swiglu=fused)
    for layer in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        q, s = dg.quantize_weight(torch.randn(layer.out_features, layer.in_features) * 0.1)
        layer.weight.data, layer.weight_scale_inv.data = q, s
    return mlp


def test_mlp_fused_swiglu_option():
    from deepergemm import nn as dnn

    assert dnn.FP8MLP(256, 384).fused_swiglu is False  # off until measured
    mlp = _mlp(256, 384, True)
    x = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    y = mlp(x)
    a, a_s = dg.quantize_act(x.reshape(15, 256))
    w, w_s = dg.prepare_gate_up(mlp.gate_proj.weight, mlp.gate_proj.weight_scale_inv, mlp.up_proj.weight,
                                mlp.up_proj.weight_scale_inv)
    h, h_s = dg.quantize_act(dg.swiglu(dg.fp8_gemm(a, a_s, w, w_s)))
    want = dg.fp8_gemm(h, h_s, mlp.down_proj.weight, mlp.down_proj.weight_scale_inv).reshape(3, 5, 256)
    assert y.shape == (3, 5, 256) and torch.equal(y, want)
    mlp.fused_swiglu = False
    assert dg.calc_diff(mlp(x).float(), y.float()) < 1e-3  # only SwiGLU's roundings differ
    # load_state_dict replaces the weights: the interleaved copy is made again
    other = _mlp(256, 384, True)
    other(x)
    other.load_state_dict(_mlp(256, 384, False).state_dict())
    assert other._gate_up is None
    compiled = torch.compile(_mlp(256, 384, True), fullgraph=True, backend="aot_eager")
    compiled(x)
    with pytest.raises(ValueError, match="multiple of 128"):
        dnn.FP8MLP(256, 200, fused_swiglu=True)


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
# (M, I, K): M = 1, M not a multiple of 64, I a multiple of 128 but not of 256, one group, K short and long
GPU_SHAPES = ((1, 128, 128), (1, 2048, 7168), (37, 384, 256), (64, 640, 1024), (65, 128, 1536), (127, 1152, 7168),
              (129, 384, 512), (200, 1280, 256), (333, 384, 2048), (1000, 896, 640), (4097, 1152, 256))


def _poison_allocator(m, i):
    """Free blocks of q's and the scales' sizes filled with 0xFF (NaN in e4m3fn and fp32): the op's outputs most
    likely start as NaN."""
    for size in (m * i, 4 * layouts.act_scale_stride(m) * (i // 128)):
        torch.full((size,), 0xFF, dtype=torch.uint8, device="cuda")


def _unfused(a, a_s, w, w_s, ue8m0=False):
    return dg.quantize_act(dg.swiglu(dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")), ue8m0=ue8m0)


@pytest.mark.gpu
@pytest.mark.parametrize("m,i,k", GPU_SHAPES, ids=lambda v: str(v))
def test_gpu_fused_equals_unfused(no_split_orders, m, i, k):
    w, w_s, _ = _weights(i, k, "cuda")
    a, a_s = _act(m, k, "cuda")
    for ue8m0 in (False, True):
        _poison_allocator(m, i)
        got = dg.fp8_gemm_swiglu(a, a_s, w, w_s, ue8m0=ue8m0, backend="ptx")
        assert_same(got, _unfused(a, a_s, w, w_s, ue8m0), f"{m}x{i}x{k} ue8m0={ue8m0}")
        assert not got[1].isnan().any() and not got[0].float().isnan().any()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", configs.SWIGLU_VARIANTS, ids=lambda v: v.key)
def test_gpu_every_swiglu_unit_into_poisoned_outputs(no_split_orders, variant):
    """Each unit launched directly (paired or not, whatever the selection would pick at that M) into NaN-filled q
    (0x7F) and scales: every byte written, the same bits as the unfused steps."""
    for m, i, k in ((1, 128, 128), (63, 384, 384), (65, 256, 1536), (129, 640, 256), (300, 128, 640),
                    (1000, 1152, 512)):
        w, w_s, _ = _weights(i, k, "cuda")
        a, a_s = _act(m, k, "cuda")
        for ue8m0 in (False, True):
            q = torch.full((m, i), 0x7F, dtype=torch.uint8, device="cuda").view(FP8)
            s = layouts.empty_act_scales(m, i, "cuda").fill_(float("nan"))
            kernels.launch(extension.load(variant), a, layouts.to_act_scale_layout(a_s), w, w_s, q,
                           l2_hints=configs.variant_l2_hints(m, variant), out_scales=s, ue8m0=ue8m0)
            torch.cuda.synchronize()
            assert_same((q, s), _unfused(a, a_s, w, w_s, ue8m0), f"{variant.key} {m}x{i}x{k} {ue8m0}")


@pytest.mark.gpu
def test_gpu_swiglu_kernel_against_the_reference():
    """The Triton kernel against the CPU reference: ex2.approx and rcp.approx are within 2 ulp of exact (fp32), so h
    may differ from the reference in its last bf16 bit (relative 2^-7), never more; most values are equal."""
    gate_up = torch.cat([torch.randn(300, 1024) * 3, torch.randn(300, 1024) * 100]).to(torch.bfloat16)
    # saturating gates on both sides (2^t overflows to Inf, or is 0), and zeros; (not g ~ -88: there 1 / d is
    # subnormal, which rcp.approx.ftz flushes to 0 and the reference keeps: h ~ 1e-37 * u against 0)
    gate_up[:, :8] = torch.tensor([-1e4, 1e4, -50.0, 50.0, -200.0, 200.0, 0.0, -0.0]).to(torch.bfloat16)
    got = dg.swiglu(gate_up.cuda()).cpu()
    want = ref.swiglu(gate_up)
    diff = (got.float() - want.float()).abs()
    assert (diff <= want.float().abs() * 2.0 ** -7 + 1e-30).all(), diff.max()
    assert (got != want).float().mean() < 0.01
    assert torch.equal(got[:, :8], want[:, :8])


def _scale_move_bound(gate_up: torch.Tensor) -> torch.Tensor:
    """How far (relative) a group's scale may move when the GEMM's bf16 gate g and up u, summed in another order,
    each differ in their last bit (2^-7 relative at most) and so does h = SiLU(g) u: an element's h moves by
    2^-7 (|d ln SiLU / d ln g| + 2) relative, with d ln SiLU / d ln g = 1 + g (1 - sigmoid(g)), 1.28 at most for
    g > 0 but ~|g| for negative g (a large u can make such an h its group's largest); the group's amax moves by
    at most the largest of its elements' moves. (M, I / 128), from the CPU reference's gate_up."""
    g, u = (t.t().double() for t in layouts.split_gate_up(gate_up.t()))
    h = torch.nn.functional.silu(g) * u
    sens = (1 + g * (1 - torch.sigmoid(g))).abs()
    move = 2.0 ** -7 * (sens + 2) * h.abs()
    m = h.shape[0]
    amax = h.abs().view(m, -1, 128).amax(dim=2)
    return move.view(m, -1, 128).amax(dim=2) / amax * (1 + 2.0 ** -6)


@pytest.mark.gpu
def test_gpu_fused_against_the_cpu_reference():
    """Fused on the GPU against the CPU reference of the three steps: a scale may move as far as its group's
    elements may (_scale_move_bound: the GEMM's bf16 gate and up, summed in another order than the CPU's, and h,
    each in their last bit); dequantized outputs within 1.5 fp8 steps of the group's largest element plus that
    move: each side rounds to its own grid (half a step of 32 s each, the grids apart by the scale move) and h
    itself may differ in its last bf16 bit (2^-7 of up to 448 s)."""
    m, i, k = 70, 384, 512
    w, w_s, _ = _weights(i, k, "cuda")
    a, a_s = _act(m, k, "cuda")
    q, s = dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend="ptx")
    q_ref, s_ref = dg.fp8_gemm_swiglu(a.cpu(), a_s.cpu(), w.cpu(), w_s.cpu())
    bound = _scale_move_bound(dg.fp8_gemm(a.cpu(), a_s.cpu(), w.cpu(), w_s.cpu()))
    got, want = dg.dequantize_act(q.cpu(), s.cpu()), dg.dequantize_act(q_ref, s_ref)
    step = s_ref.repeat_interleave(128, dim=1) * 32  # an e4m3 step at the group's top (448: steps of 32)
    slack = (bound * s_ref * 448).repeat_interleave(128, dim=1)
    assert ((got - want).abs() <= 1.5 * step + slack).all(), ((got - want).abs() / step).max()
    moved = (s.cpu() - s_ref).abs() / s_ref
    assert (moved <= bound).all(), (moved / bound).max()


@pytest.mark.gpu
def test_gpu_cuda_graph_and_compile(no_split_orders):
    m, i, k = 96, 640, 1024
    w, w_s, _ = _weights(i, k, "cuda")
    a, a_s = _act(m, k, "cuda")

    def fn(a, a_s, w, w_s):
        return dg.fp8_gemm_swiglu(a, a_s, w, w_s)

    check_graph_and_compile(fn, (a, a_s, w, w_s), lambda: _act(m, k, "cuda"), lambda: _unfused(a, a_s, w, w_s))
    unfused = torch.compile(lambda a, a_s, w, w_s: _unfused(a, a_s, w, w_s), fullgraph=True)
    assert_same(unfused(a, a_s, w, w_s), fn(a, a_s, w, w_s), "compiled unfused")


@pytest.mark.gpu
def test_gpu_mlp_fused_option(no_split_orders):
    mlp = _mlp(1024, 768, True).cuda()
    x = torch.randn(77, 1024, dtype=torch.bfloat16, device="cuda")
    y = mlp(x)
    a, a_s = dg.quantize_act(x)
    w, w_s = mlp._gate_up
    h, h_s = _unfused(a, a_s, w, w_s)
    assert torch.equal(y, dg.fp8_gemm(h, h_s, mlp.down_proj.weight, mlp.down_proj.weight_scale_inv))


@pytest.mark.slow
def test_both_sides_compile_to_the_same_instructions(tmp_path):
    """No GPU needed: the SwiGLU unit (nvcc) and the Triton kernel (Triton's ptxas, sm_90) turn the assembly into the
    same SASS: per element FMUL by -log2(e), a bare MUFU.EX2 (ftz: no range scaling around it), FADD of 1, a bare
    MUFU.RCP and two FMULs; counted per kernel (every EX2 has its FMUL by the constant and its FADD of 1), and none of
    the checks the instructions without .ftz would add (seen in a Triton build of that form)."""
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from deepergemm.__main__ import main
    from deepergemm.triton_kernels import swiglu as triton_swiglu

    if extension.toolchain_problem() is not None:
        pytest.skip("nvcc not found")
    cuobjdump = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    variant = configs.SWIGLU_VARIANTS[0]
    assert main(["build", "--variants", variant.key, "--out", str(tmp_path)]) == 0
    unit = tmp_path / extension.kernel_file_name(variant)
    signature = {"x_ptr": "*bf16", "h_ptr": "*bf16", "M": "i32", "GROUPS": "i32", "stride_xm": "i32",
                 "stride_hm": "i32", "BLOCK_M": "constexpr", "GROUP_SIZE": "constexpr"}
    source = ASTSource(fn=triton_swiglu._swiglu_kernel, signature=signature,
                       constexprs={"BLOCK_M": 32, "GROUP_SIZE": 128})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": 4, "enable_fp_fusion": False})
    (tmp_path / "triton.cubin").write_bytes(compiled.asm["cubin"])
    for cubin in (unit, tmp_path / "triton.cubin"):
        sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        ex2 = len(re.findall(r"MUFU\.EX2 ", sass))
        by_log2e = len(re.findall(r"FMUL R\d+, R\d+, -1\.4426950216293334961 ;", sass))
        plus_one = len(re.findall(r"FADD R\d+, R\d+, 1 ;", sass))
        assert ex2 > 0 and ex2 == by_log2e == plus_one, (cubin.name, ex2, by_log2e, plus_one)
        assert len(re.findall(r"MUFU\.RCP ", sass)) >= ex2, cubin.name
        # what ex2.approx.f32 and rcp.approx.f32 without .ftz add: a range check before EX2, a subnormal one at RCP
        assert not re.search(r"FSETP\.\w+\.AND P\d, PT, R\d+, -126, PT", sass), cubin.name
        assert "1.175494350822287508e-38" not in sass, cubin.name


def test_fused_epilogue_runs_where_it_measured_faster(monkeypatch):
    """configs.fused_epilogue_pays, the rule the plans of fp8_gemm_swiglu and of fp8 output follow with
    DEEPERGEMM_FUSED_EPILOGUE=auto (bit-identical either way): fp8 output fused at M <= 128 and K <= 2048 where the
    fused tiles fill 40% of the SMs, SwiGLU never (the H100 figures of configs.py); 1 / 0 force either; unset: the
    rule."""
    sms = 132
    pays = configs.fused_epilogue_pays
    monkeypatch.delenv("DEEPERGEMM_FUSED_EPILOGUE", raising=False)
    assert configs.FUSED_EPILOGUE_DEFAULT == "auto"
    assert not pays(configs.select_swiglu(4096, 2 * 18432, 7168, sms), 4096, 7168, sms)
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "auto")
    for m in (1, 32, 128):
        assert not pays(configs.select_swiglu(m, 2 * 18432, 7168, sms), m, 7168, sms)  # block 1.01-1.10x
        assert not pays(configs.select_swiglu(m, 2 * 2048, 7168, sms), m, 7168, sms)   # 1.24-1.41x
    for m in (1, 32, 128):
        assert pays(configs.select_fp8_out(m, 7168, 2048, sms), m, 2048, sms)          # 0.92-0.98x
        assert not pays(configs.select_fp8_out(m, 36864, 7168, sms), m, 7168, sms)     # 0.99-1.06x
    assert pays(configs.select_fp8_out(32, 32768, 512, sms), 32, 512, sms)             # 0.96x
    assert not pays(configs.select_fp8_out(128, 4096, 7168, sms), 128, 7168, sms)      # 1.09x
    assert not pays(configs.select_fp8_out(4096, 7168, 2048, sms), 4096, 2048, sms)    # M > 128: 1.27x (H200)
    assert not pays(configs.select_fp8_out(128, 2048, 512, sms), 128, 512, sms)        # 16 tiles: unmeasured
    for value, want in (("1", True), ("0", False)):
        monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", value)
        assert pays(configs.select_fp8_out(4096, 7168, 2048, sms), 4096, 2048, sms) is want
        assert pays(configs.select_swiglu(32, 2 * 18432, 7168, sms), 32, 7168, sms) is want
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "yes")
    with pytest.raises(ValueError, match="DEEPERGEMM_FUSED_EPILOGUE must be 0, 1 or auto"):
        pays(configs.select_fp8_out(4096, 7168, 2048, sms), 4096, 2048, sms)


@pytest.mark.gpu
@pytest.mark.parametrize("fuse", ["0", "auto"])
def test_gpu_unfused_plans_give_the_same_bits(monkeypatch, fuse):
    """The ops' unfused plans (DEEPERGEMM_FUSED_EPILOGUE=0, and auto, the measured rule, which runs these unfused): the
    bf16 GEMM of the plain plan, then the Triton steps, from inside the C++ op; equal to those steps called one by
    one, and to the fused kernel (forced) where the GEMM sums in one pass; CUDA-graph capturable."""
    from deepergemm.benchmark.timing import capture_graph

    monkeypatch.setenv("DEEPERGEMM_SPLIT_K", "0")
    monkeypatch.setenv("DEEPERGEMM_STREAM_K", "0")
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", fuse)
    for m, i, k in ((4096, 256, 512), (37, 384, 256)):
        w, w_s, _ = _weights(i, k, "cuda")
        a, a_s = _act(m, k, "cuda")
        got = dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend="ptx")
        want = dg.quantize_act(dg.swiglu(dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")))
        assert_same(got, want, f"swiglu {m}x{i}x{k} fuse={fuse!r}")
        y8 = dg.fp8_gemm(a, a_s, w, w_s, out_dtype=FP8, backend="ptx")
        assert_same(y8, dg.quantize_act(dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")), f"fp8 out {m}x{2 * i}x{k}")
        graph, out = capture_graph(lambda: dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend="ptx"))
        graph.replay()
        torch.cuda.synchronize()
        assert_same(out, want, f"graph {m}x{i}x{k}")
    monkeypatch.setenv("DEEPERGEMM_FUSED_EPILOGUE", "1")
    assert_same(dg.fp8_gemm_swiglu(a, a_s, w, w_s, backend="ptx"), want, "forced fused")
