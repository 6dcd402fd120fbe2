"""Custom ops: schemas and fake kernels (opcheck), torch.compile without graph breaks, CUDA paths."""
import pytest
import torch

import deepergemm as dg
from deepergemm import cublas
from deepergemm import reference as ref

OPS = torch.ops.deepergemm
# opcheck's test_schema compares inputs with torch.allclose, which has no fp8 kernel; ops with fp8
# inputs run the other three opcheck tests, and _check_no_mutation_no_alias does test_schema's job.
FP8_OPCHECK = ("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _snapshot(args):
    return [a.view(torch.uint8).clone() if a.dtype == ref.FP8_DTYPE else a.clone()
            for a in args if isinstance(a, torch.Tensor)]


def _check_no_mutation_no_alias(op, args):
    before = _snapshot(args)
    outs = op(*args)
    after = _snapshot(args)
    assert all(torch.equal(x, y) for x, y in zip(before, after)), "the op mutated an input"
    outs = outs if isinstance(outs, tuple) else (outs,)
    storages = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and a.numel()}
    assert not any(o.numel() and o.untyped_storage().data_ptr() in storages for o in outs), "output aliases an input"


def opcheck_fp8(op, args):
    torch.library.opcheck(op, args, test_utils=FP8_OPCHECK)
    _check_no_mutation_no_alias(op, args)


def _gemm_args(m, n, k, device="cpu", bias=False, out_dtype=torch.bfloat16):
    a, a_s = ref.quantize_act(torch.randn(m, k, device=device, dtype=torch.bfloat16))
    b, b_s = ref.quantize_weight(torch.randn(n, k, device=device, dtype=torch.bfloat16))
    a_s = dg.layouts.to_act_scale_layout(a_s)
    bias_t = torch.randn(n, device=device, dtype=torch.bfloat16) if bias else None
    return (a, a_s, b, b_s, out_dtype, bias_t, "auto")


@pytest.mark.parametrize("m,n,k,bias,out_dtype", [
    (1, 8, 128, False, torch.bfloat16), (7, 136, 384, True, torch.bfloat16), (65, 24, 256, True, torch.float32),
])
def test_opcheck_fp8_gemm(m, n, k, bias, out_dtype):
    opcheck_fp8(OPS.fp8_gemm.default, _gemm_args(m, n, k, bias=bias, out_dtype=out_dtype))


@pytest.mark.parametrize("m,k,ue8m0", [(1, 128, False), (7, 384, True), (64, 256, False)])
def test_opcheck_quantize(m, k, ue8m0):
    torch.library.opcheck(OPS.quantize_act.default, (torch.randn(m, k, dtype=torch.bfloat16), ue8m0))
    torch.library.opcheck(OPS.quantize_weight.default, (torch.randn(m + 129, k), ue8m0))


@pytest.mark.parametrize("shape,bias,dtype", [((5, 256), False, torch.bfloat16), ((2, 3, 256), True, torch.bfloat16),
                                              ((4, 256), True, torch.float16)])
def test_opcheck_linear(shape, bias, dtype):
    w, ws = ref.quantize_weight(torch.randn(40, 256))
    b = torch.randn(40, dtype=torch.bfloat16) if bias else None
    opcheck_fp8(OPS.linear.default, (torch.randn(*shape, dtype=dtype), w, ws, b, "auto"))


def test_quantize_act_op_layout_and_values():
    x = torch.randn(7, 384, dtype=torch.bfloat16)
    q, s = dg.quantize_act(x)
    rq, rs = ref.quantize_act(x)
    assert s.stride() == (1, 8), "activation scales are M-major with a 16-byte aligned M stride"
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)) and torch.equal(s, rs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_linear_equals_reference(dtype):
    """y has x's dtype, rounded once from the fp32 sum (fp16 too: the GEMM writes fp32, then one cast)."""
    x = torch.randn(2, 5, 256, dtype=dtype)
    w, ws = dg.quantize_weight(torch.randn(48, 256))
    bias = torch.randn(48, dtype=torch.bfloat16)
    y = dg.linear(x, w, ws, bias)
    assert y.shape == (2, 5, 48) and y.dtype == dtype
    assert torch.equal(y, ref.linear(x, w, ws, bias))
    q, s = dg.quantize_act(x.reshape(10, 256))
    assert torch.equal(y.reshape(10, 48), dg.fp8_gemm(q, s, w, ws, torch.float32, bias).to(dtype))
    assert torch.equal(dg.linear(x, dg.prepare_weight(w, ws), bias=bias), y)  # (unplaced on CPU)


class FP8MLP(torch.nn.Module):
    """Two FP8 linear layers with a ReLU between: the shape of a transformer MLP."""

    def __init__(self, d_model: int, d_hidden: int, device="cpu"):
        super().__init__()
        w1, s1 = ref.quantize_weight(torch.randn(d_hidden, d_model, device=device) / d_model**0.5)
        w2, s2 = ref.quantize_weight(torch.randn(d_model, d_hidden, device=device) / d_hidden**0.5)
        self.register_buffer("w1", w1)
        self.register_buffer("s1", s1)
        self.register_buffer("w2", w2)
        self.register_buffer("s2", s2)
        self.register_buffer("b1", torch.randn(d_hidden, device=device, dtype=torch.bfloat16))

    def forward(self, x):
        h = torch.relu(dg.linear(x, self.w1, self.s1, self.b1))
        return dg.linear(h, self.w2, self.s2)


@pytest.mark.slow
def test_torch_compile_fullgraph_cpu_equals_eager():
    torch._dynamo.reset()
    model = FP8MLP(256, 384)
    x = torch.randn(3, 7, 256, dtype=torch.bfloat16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.equal(compiled(x), eager)
    x2 = torch.randn(3, 7, 256, dtype=torch.bfloat16)  # fresh inputs through the same graph
    assert torch.equal(compiled(x2), model(x2))


def test_compiled_graph_has_our_ops_and_no_break():
    torch._dynamo.reset()
    model = FP8MLP(128, 256)
    explanation = torch._dynamo.explain(model)(torch.randn(4, 128, dtype=torch.bfloat16))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    code = "\n".join(str(g.graph) for g in explanation.graphs)
    assert code.count("deepergemm.linear") == 2


# ----------------------------------------------------------------------------------------------
# GPU: the CUDA kernels of the ops
# ----------------------------------------------------------------------------------------------
CUDA_GEMM_SHAPES = [(1, 8, 128), (7, 136, 384), (65, 2056, 256), (20, 256, 256), (129, 256, 1024), (1000, 2112, 512)]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cublas", "auto"])
@pytest.mark.parametrize("m,n,k", CUDA_GEMM_SHAPES)
def test_cuda_fp8_gemm_is_exact(backend, m, n, k):
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * torch.pow(
        10.0, torch.empty(m, 1, device="cuda").uniform_(-3, 3)).bfloat16()
    a_q, a_s = dg.quantize_act(a)
    b_q, b_s = dg.quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
    expected = ref.fp8_gemm(a_q, a_s, b_q, b_s, torch.float32)
    if backend == "cublas" and not cublas.supports(n, k):
        with pytest.raises(ValueError, match="multiple of 16" if not cublas.supports_n(n) else "K >= 512"):
            dg.fp8_gemm(a_q, a_s, b_q, b_s, backend=backend)
        return
    out = dg.fp8_gemm(a_q, a_s, b_q, b_s, backend=backend)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all(), "every output element must be written"
    # tiny outputs (1x8) and rows scaled over 1e-3..1e3: the bf16 rounding floor itself can pass 2e-6
    assert ref.calc_diff(out, expected) <= ref.exactness_bound(expected, out.dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cublas", "auto"])
def test_cuda_bias_and_fp32_out(backend):
    m, n, k = 33, 272, 512  # N % 16 == 0: cuBLAS's rule
    args = _gemm_args(m, n, k, device="cuda", bias=True, out_dtype=torch.float32)
    out = OPS.fp8_gemm(*args[:-1], backend)
    expected = ref.fp8_gemm(*args[:6])
    assert out.dtype == torch.float32 and ref.calc_diff(out, expected) < 1e-7  # bf16 rounding alone: ~1e-6


@pytest.mark.gpu
def test_opcheck_cuda():
    opcheck_fp8(OPS.fp8_gemm.default, _gemm_args(65, 136, 384, device="cuda", bias=True))
    torch.library.opcheck(OPS.quantize_act.default, (torch.randn(65, 384, device="cuda", dtype=torch.bfloat16), False))
    torch.library.opcheck(OPS.quantize_weight.default, (torch.randn(136, 384, device="cuda"), True))
    w, ws = dg.quantize_weight(torch.randn(48, 256, device="cuda"))
    opcheck_fp8(OPS.linear.default, (torch.randn(5, 256, device="cuda", dtype=torch.bfloat16), w, ws, None, "auto"))


@pytest.mark.gpu
def test_cuda_linear_matches_cpu_op():
    x = torch.randn(3, 40, 512, dtype=torch.bfloat16)
    w, ws = ref.quantize_weight(torch.randn(264, 512))
    bias = torch.randn(264, dtype=torch.bfloat16)
    cpu = dg.linear(x, w, ws, bias)
    gpu = dg.linear(x.cuda(), w.cuda(), ws.cuda(), bias.cuda())
    assert ref.calc_diff(gpu.cpu(), cpu) < 2e-6


@pytest.mark.gpu
def test_cuda_compile_and_cuda_graph_equal_eager():
    torch._dynamo.reset()
    model = FP8MLP(512, 1024, device="cuda")
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    assert torch.equal(compiled(x), eager)
    # capture the compiled model in a CUDA graph, replay on new data written into the static input
    from deepergemm.benchmark.timing import capture_graph

    static_x = x.clone()
    graph, static_y = capture_graph(compiled, static_x)
    fresh = torch.randn_like(x)
    static_x.copy_(fresh)
    static_y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, model(fresh))


def test_cublas_backend_n_rule_is_exposed():
    # the rule callers (bench/sweep_variants.py) check before asking cuBLAS, and the error that names it
    assert cublas.supports_n(2112) and not cublas.supports_n(2056) and not cublas.supports_n(8)
    a, a_s = dg.quantize_act(torch.randn(4, 128, dtype=torch.bfloat16))
    b, b_s = dg.quantize_weight(torch.randn(136, 128, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"needs N \(rows of b\) to be a multiple of 16, got N=136"):
        cublas.fp8_gemm_cublas(a, a_s, b, b_s, torch.bfloat16, None)
    # wide N at short K: cuBLASLt answers wrongly there (bench/cublas_shapes.py), so the backend refuses
    assert cublas.supports(128, 128) and cublas.supports(256, 512) and not cublas.supports(256, 384)
    b, b_s = dg.quantize_weight(torch.randn(256, 128, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"needs K >= 512 when N \(rows of b\) > 128 .* got N=256, K=128"):
        cublas.fp8_gemm_cublas(a, a_s, b, b_s, torch.bfloat16, None)
