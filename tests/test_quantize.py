"""Triton quantizers (deepergemm.triton_kernels.quantize).

GPU: q and scales bit-exact with the reference computed on the CPU (the contract; the eager
reference on a CUDA tensor rounds ``amax / 448`` differently, see the module's docstring).
CPU: the PTX uses the exact instructions (correctly rounded division, RN saturating fp8 cvt,
NaN-propagating max), and the kernels run in Triton's interpreter give the reference's scales and,
through an fp32 output hook, its values before the fp8 cast (the Triton 3.9 interpreter's own
fp32 -> fp8 cast is wrong, so its fp8 q is not checked).
"""
import os

import pytest
import torch

from deepergemm import layouts
from deepergemm import reference as ref

triton = pytest.importorskip("triton")
from deepergemm.triton_kernels import quantize as tq  # noqa: E402

FP8 = ref.FP8_DTYPE
G = ref.GROUP_K


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def _rand(rows, k, dtype=torch.bfloat16, device="cpu"):
    """randn with row magnitudes spread over 1e-3..1e3, so amax varies across groups and blocks."""
    x = torch.randn(rows, k) * torch.pow(10.0, torch.empty(rows, 1).uniform_(-3, 3))
    return x.to(dtype).to(device)


def _near_fp8_ties(rows, k, dtype=torch.float32):
    """Every group holds +-amax and the 126 midpoints between consecutive positive fp8 values,
    scaled by amax/448 and moved by -2..2 fp32 ulps: after scaling, each element lies within a few
    ulps of an fp8 rounding tie (including ties into the next binade and to zero), so a one-ulp
    different multiplier or a non-RNE cast changes q. Groups with an even index get
    amax = 448 * 2**e, which makes the ties exact under UE8M0 scaling."""
    fp8_values = torch.arange(0, 0x7F, dtype=torch.uint8).view(FP8).double()  # 0 .. 448
    mids = (fp8_values[:-1] + fp8_values[1:]) / 2
    assert mids.numel() == G - 2
    groups = rows * (k // G)
    amax = torch.exp(torch.empty(groups, 1, dtype=torch.float64).uniform_(-8, 8))
    exact = torch.arange(groups) % 2 == 0
    amax[exact] = 448 * torch.exp2(torch.randint(-10, 10, (int(exact.sum()), 1)).double())
    body = (mids[torch.randperm(G - 2)] * amax / 448).float()
    body = (body.view(torch.int32) + torch.randint(-2, 3, body.shape, dtype=torch.int32)).view(torch.float32)
    body = body * (torch.randint(0, 2, body.shape) * 2 - 1)
    x = torch.cat([amax.float(), -amax.float(), body], dim=1)
    x = x[:, torch.randperm(G)]  # amax anywhere in the group
    return x.reshape(rows, k).to(dtype)


def _small_partial_block(dtype=torch.float32, device="cpu"):
    """N = 136 with |w| < 1 everywhere: padding the partial block with anything but zeros (or
    reading past N) would raise its amax."""
    return (torch.randn(136, 256) * 1e-2).to(dtype).to(device)


# (row, group) of each planted special group in _with_specials; it needs rows >= 6, K >= 256
TINY, POW2_AMAX, NAN, POS_INF, INF_AND_NAN, ZEROS = (0, 0), (0, 1), (1, 0), (2, 1), (3, 0), (5, 1)


def _with_specials(rows, k, dtype=torch.bfloat16):
    """Random rows with planted groups: all below AMAX_EPS (amax clamps), amax = 7 = 448/64 (an
    exact power-of-two scale: UE8M0 must not round it up), a NaN, a +Inf, Inf and NaN together, all
    zeros; and +-amax elements (map to +-448) in every ordinary group."""
    x = _rand(rows, k, torch.float32)
    gx = x.view(rows, k // G, G)
    gx[0, 0] = torch.randn(G) * 1e-6
    gx[0, 1] = torch.rand(G) * 6.9
    gx[0, 1, 17] = -7.0
    gx[1, 0, 5] = float("nan")
    gx[2, 1, 100] = float("inf")
    gx[3, 0, 3], gx[3, 0, 4] = float("-inf"), float("nan")
    gx[5, 1] = 0.0
    gx[4, :, 9] = gx[4].abs().amax(-1)  # an element equal to +amax
    gx[4, :, 10] = -gx[4, :, 9]
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------
# comparison
# ----------------------------------------------------------------------------------------------
def _assert_bitwise(got, want, what):
    """Bit-exact, except that any NaN matches any NaN: NaN signs differ between CPU and GPU
    (x86's inf * 0 is a negative NaN, CUDA's a positive one) and are not part of the contract."""
    got, want = got.cpu(), want.cpu()
    assert (got.shape, got.dtype) == (want.shape, want.dtype), f"{what}: {got.shape} {got.dtype} vs {want.dtype}"
    nan_g, nan_w = got.float().isnan(), want.float().isnan()
    bits = torch.uint8 if got.element_size() == 1 else torch.int32
    differ = (got.view(bits) != want.view(bits)) & ~(nan_g & nan_w)
    if differ.any():
        idx = differ.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(differ.sum())} of {got.numel()} elements differ; first at {idx}: "
                             f"got {got[tuple(idx)].float().item()!r}, want {want[tuple(idx)].float().item()!r}")


def check_act(x, ue8m0):
    q, s = tq.quantize_act(x, ue8m0=ue8m0)
    want_q, want_s = ref.quantize_act(x.cpu(), ue8m0=ue8m0)
    m, k = x.shape
    assert q.is_contiguous() and s.stride() == (1, layouts.act_scale_stride(m)), s.stride()
    _assert_bitwise(s, want_s, f"quantize_act{tuple(x.shape)} {x.dtype} ue8m0={ue8m0} scales")
    _assert_bitwise(q, want_q, f"quantize_act{tuple(x.shape)} {x.dtype} ue8m0={ue8m0} q")
    return q, s


def check_weight(w, ue8m0):
    q, s = tq.quantize_weight(w, ue8m0=ue8m0)
    want_q, want_s = ref.quantize_weight(w.cpu(), ue8m0=ue8m0)
    assert q.is_contiguous() and s.is_contiguous()
    _assert_bitwise(s, want_s, f"quantize_weight{tuple(w.shape)} {w.dtype} ue8m0={ue8m0} scales")
    _assert_bitwise(q, want_q, f"quantize_weight{tuple(w.shape)} {w.dtype} ue8m0={ue8m0} q")
    return q, s


def _assert_no_new_nan(x, q):
    assert not x.isnan().any() and not q.float().isnan().any(), "NaN in q from a NaN-free input"


# ----------------------------------------------------------------------------------------------
# GPU: bit-exact with the CPU reference
# ----------------------------------------------------------------------------------------------
DTYPES = [torch.bfloat16, torch.float32]


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [128, 384, 7168])
@pytest.mark.parametrize("m", [1, 7, 65, 129, 1000])
def test_act_matches_reference(m, k, dtype, ue8m0):
    x = _rand(m, k, dtype, "cuda")
    q, _ = check_act(x, ue8m0)
    _assert_no_new_nan(x, q)


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [128, 384, 7168])
@pytest.mark.parametrize("n", [1, 127, 128, 136, 2056])
def test_weight_matches_reference(n, k, dtype, ue8m0):
    w = _rand(n, k, dtype, "cuda")
    q, _ = check_weight(w, ue8m0)
    _assert_no_new_nan(w, q)


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
def test_fp16_input(ue8m0):
    x = (torch.randn(33, 512) * 100).half().cuda()
    check_act(x, ue8m0)
    check_weight(x, ue8m0)


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rounding_ties(dtype, ue8m0):
    x = _near_fp8_ties(300, 1024, dtype).cuda()
    check_act(x, ue8m0)
    check_weight(x, ue8m0)


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_act_special_values(dtype, ue8m0):
    x = _with_specials(70, 384, dtype).cuda()
    q, s = check_act(x, ue8m0)
    qg, s = q.float().view(70, 3, G).cpu(), s.cpu()
    # what the contract says, on top of agreeing with the reference
    assert torch.isnan(s[NAN]) and qg[NAN].isnan().all()
    assert torch.isnan(s[INF_AND_NAN]) and qg[INF_AND_NAN].isnan().all()
    assert torch.isinf(s[POS_INF]) and qg[POS_INF][100].isnan() and qg[POS_INF].isnan().sum() == 1
    assert (qg[POS_INF].nan_to_num(0) == 0).all()
    eps_scale = torch.tensor(ref.AMAX_EPS, dtype=torch.float32) / ref.FP8_MAX
    assert s[TINY] == (ref.ue8m0_round_up(eps_scale) if ue8m0 else eps_scale) == s[ZEROS]
    assert s[POW2_AMAX] == 2.0**-6 and qg[POW2_AMAX][17] == -448
    if not ue8m0:
        assert (qg[4, :, 9] == 448).all() and (qg[4, :, 10] == -448).all()
    rows_without_specials = x[6:]
    _assert_no_new_nan(rows_without_specials, q[6:])


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
def test_weight_special_values(ue8m0):
    w = _with_specials(200, 384, torch.float32).cuda()  # NaN rows 1, 3 are in block row 0
    q, s = check_weight(w, ue8m0)
    s = s.cpu()
    assert s[0].isnan().tolist() == [True, False, False] and s[0, 1].isinf()
    assert not s[1].isnan().any() and not q[128:].float().isnan().any()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_weight_partial_block_uses_real_rows(dtype):
    check_weight(_small_partial_block(dtype, "cuda"), False)


@pytest.mark.gpu
def test_strided_rows():
    x = _rand(50, 1024, torch.bfloat16, "cuda")[:, 256:768]  # row stride 1024, not K
    check_act(x, False)
    check_weight(x, True)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 5, 64])
def test_layouts_and_empty(m):
    q, s = tq.quantize_act(_rand(m, 256, torch.bfloat16, "cuda"))
    assert q.dtype == FP8 and s.dtype == torch.float32 and layouts.is_act_scale_layout(s)
    assert s.shape == (m, 2) and s.stride() == (1, layouts.round_up(m, 4))
    q, s = tq.quantize_weight(_rand(m, 256, torch.bfloat16, "cuda"))
    assert s.shape == (1, 2) and s.is_contiguous() and q.shape == (m, 256)
    for fn in (tq.quantize_act, tq.quantize_weight):
        q, s = fn(torch.empty(0, 256, device="cuda"))
        assert q.shape == (0, 256) and s.shape == (0, 2)


@pytest.mark.gpu
@pytest.mark.parametrize("ue8m0", [False, True])
def test_custom_ops_cuda_match_cpu(ue8m0):
    """torch.ops.deepergemm.quantize_* dispatch to the Triton kernels on CUDA and the reference on CPU."""
    x = _rand(100, 640, torch.bfloat16)
    for op in (torch.ops.deepergemm.quantize_act, torch.ops.deepergemm.quantize_weight):
        for got, want in zip(op(x.cuda(), ue8m0), op(x, ue8m0)):
            assert got.stride() == want.stride()
            _assert_bitwise(got, want, f"{op} ue8m0={ue8m0}")


@pytest.mark.gpu
def test_cuda_graph_replay():
    """The launchers only allocate through torch and never synchronize: they capture and replay."""
    x = _rand(64, 512, torch.bfloat16, "cuda")
    tq.quantize_act(x), tq.quantize_weight(x)  # compile before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = tq.quantize_act(x) + tq.quantize_weight(x)
    x.copy_(_rand(64, 512, torch.bfloat16, "cuda"))
    graph.replay()
    wants = ref.quantize_act(x.cpu()) + ref.quantize_weight(x.cpu())
    for got, want, name in zip(outs, wants, ("act q", "act scales", "weight q", "weight scales")):
        _assert_bitwise(got, want, f"graph replay: {name}")


@pytest.mark.gpu
@pytest.mark.slow
def test_offsets_past_2_31():
    """Elements beyond index 2**31 (64-bit offsets): check the last rows against the reference."""
    k = 7168
    rows = (2**31) // k + 64
    x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
    for fn, ref_fn in ((tq.quantize_act, ref.quantize_act), (tq.quantize_weight, ref.quantize_weight)):
        q, s = fn(x)
        tail = rows - 128 - rows % 128  # whole weight blocks
        want_q, want_s = ref_fn(x[tail:].cpu())
        _assert_bitwise(q[tail:], want_q, f"{fn.__name__} q tail")
        got_s = s[tail:] if fn is tq.quantize_act else s[tail // 128:]
        _assert_bitwise(got_s, want_s, f"{fn.__name__} scales tail")
        del q, s


# ----------------------------------------------------------------------------------------------
# CPU: input rules
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [tq.quantize_act, tq.quantize_weight])
def test_rejects_bad_inputs(fn, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA tensor"):
        fn(torch.randn(4, 128))
    with pytest.raises(TypeError, match="dtype"):
        fn(torch.ones(4, 128, dtype=torch.int32))
    with pytest.raises(ValueError, match="multiple of 128"):
        fn(torch.randn(4, 100))
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.randn(128))


# ----------------------------------------------------------------------------------------------
# CPU: the test inputs can catch a one-ulp error
# ----------------------------------------------------------------------------------------------
def test_tie_inputs_are_sensitive():
    """The near-tie inputs tell multipliers one ulp apart: a single correctly rounded 448 / amax
    (what reference.py's docstring says) gives other fp8 values than the reference, which computes
    torch's `448.0 / amax`, i.e. amax.reciprocal() * 448."""
    x = _near_fp8_ties(64, 1024)
    groups = x.reshape(64, -1, G)
    amax = groups.abs().amax(-1, keepdim=True)
    single_division = (groups * (torch.full_like(amax, ref.FP8_MAX) / amax)).to(FP8).reshape(x.shape)
    differ = single_division.view(torch.uint8) != ref.quantize_act(x)[0].view(torch.uint8)
    assert differ.sum() > 10


# ----------------------------------------------------------------------------------------------
# CPU: PTX for sm_90, compiled without a GPU
# ----------------------------------------------------------------------------------------------
def _ptx(kernel, dtypes, constexprs, num_warps, aligned_ints):
    """Compile like a launch would: 16-byte aligned pointers and the K-multiple strides get
    Triton's divisibility specialization (what enables 16-byte vector loads)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name in dtypes:
            signature[p.name] = "*" + dtypes[p.name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[p.name] = "i32"
            if p.name in aligned_ints:
                attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "enable_fp_fusion": False})
    return compiled.asm["ptx"]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
@pytest.mark.parametrize("ue8m0", [False, True])
@pytest.mark.parametrize("which", ["act", "weight"])
def test_ptx_instructions(which, ue8m0):
    if which == "act":
        block_m, block_g, num_warps = tq.act_config(4096)
        ptx = _ptx(tq._quantize_act_kernel, {"x_ptr": "bf16", "q_ptr": "fp8e4nv", "s_ptr": "fp32"},
                   {"UE8M0": ue8m0, "BLOCK_M": block_m, "BLOCK_G": block_g, "GROUP_SIZE": G}, num_warps,
                   {"stride_xm", "stride_qm"})
    else:
        ptx = _ptx(tq._quantize_weight_kernel, {"w_ptr": "fp32", "q_ptr": "fp8e4nv", "s_ptr": "fp32"},
                   {"UE8M0": ue8m0, "BLOCK_N": G, "BLOCK_K": G}, 8, {"stride_wn", "stride_qn"})
    assert "cvt.rn.satfinite.e4m3x2.f32" in ptx, "fp8 cast must be RN with saturation"
    assert "div.rn.f32" in ptx, "scale and reciprocal must be correctly rounded divisions"
    for imprecise in ("div.full", "div.approx", "rcp.approx", ".ftz.f32", "fma.rn.f32"):
        assert imprecise not in ptx, f"{imprecise} in the PTX: not bit-exact with the reference"
    assert "max.NaN.f32" in ptx and "max.f32" not in ptx, "float max must keep NaN like torch.amax/clamp"
    assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx, "loads and stores should be 16 bytes wide"


# ----------------------------------------------------------------------------------------------
# CPU: the kernels in Triton's interpreter
# ----------------------------------------------------------------------------------------------
def interpreter_cases():
    """Run in a subprocess with TRITON_INTERPRET=1 (read when triton is imported). Scales come from
    the kernels as they are; q comes through the launchers' fp32 hook (the values before the fp8
    cast, cast here by torch), because the Triton 3.9 interpreter's own fp32 -> fp8 cast is wrong."""
    inputs = [_rand(1, 128), _rand(7, 384, torch.float32), _rand(65, 256, torch.float16),
              _rand(136, 256, torch.float32), _rand(257, 128), _small_partial_block(), _with_specials(40, 384),
              _near_fp8_ties(8, 512), _rand(9, 1024)[:, 256:768]]
    for ue8m0 in (False, True):
        for x in inputs:
            what = f"{tuple(x.shape)} {x.dtype} ue8m0={ue8m0}"
            want_q, want_s = ref.quantize_act(x, ue8m0)
            pre_cast, s = tq.launch_act(x, ue8m0, q_dtype=torch.float32)
            assert s.stride() == (1, layouts.act_scale_stride(x.shape[0])), s.stride()
            _assert_bitwise(s, want_s, f"act {what} scales")
            _assert_bitwise(pre_cast.to(FP8), want_q, f"act {what} q (cast by torch)")
            _assert_bitwise(tq.quantize_act(x, ue8m0)[1], want_s, f"act {what} scales (fp8 kernel)")

            want_q, want_s = ref.quantize_weight(x, ue8m0)
            pre_cast, s = tq.launch_weight(x, ue8m0, q_dtype=torch.float32)
            _assert_bitwise(s, want_s, f"weight {what} scales")
            _assert_bitwise(pre_cast.to(FP8), want_q, f"weight {what} q (cast by torch)")
            _assert_bitwise(tq.quantize_weight(x, ue8m0)[1], want_s, f"weight {what} scales (fp8 kernel)")
    print("interpreter OK")


@pytest.mark.slow  # (a subprocess in Triton's interpreter: ~4 s on 2 cores)
def test_interpreter_matches_reference(run_interpreted):
    run_interpreted("test_quantize")


# ----------------------------------------------------------------------------------------------
# CPU: the benchmark's command line
# ----------------------------------------------------------------------------------------------
def test_quant_bench_cli():
    from deepergemm.benchmark import quantize as bench

    assert bench.parse_shapes("8192x7168, 1X128") == [(8192, 7168), (1, 128)]
    with pytest.raises(ValueError, match="multiple of 128"):
        bench.parse_shapes("64x100")
    assert bench.moved_bytes(torch.empty(4, 256, dtype=torch.bfloat16), torch.empty(4, 2)) == 4 * 256 * 3 + 8 * 4
    if not torch.cuda.is_available():
        assert bench.main([]) == 1
