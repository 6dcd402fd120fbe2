"""deepergemm.nn: FP8Linear, convert, the router, FP8Experts and FP8MoE.

CPU: the modules against independent float64 references of their documented math (CPU tensors run the
reference GEMMs), parameter names and state-dict round trips, the rules and their errors, torch.compile.
GPU (marked): CUDA results against the CPU reference, torch.compile, CUDA-graph capture and replay (the MoE block
with new routing on every replay).
"""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepergemm as dg
import deepergemm.nn as dnn
from deepergemm import reference as ref

FP8 = torch.float8_e4m3fn


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8 else t


def _linear(k, n, bias=True, dtype=torch.float32):
    layer = nn.Linear(k, n, bias=bias, dtype=dtype)
    with torch.no_grad():
        layer.weight.normal_(std=k ** -0.5)
        if bias:
            layer.bias.normal_()
    return layer


def _linear_reference(x, w8, w_s, bias):
    """float64: x quantized per 1x128 group (the documented rule), times the dequantized weight, plus bias."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = ref.quantize_act(x2)
    y = ref.dequantize_act(q, s).double() @ ref.dequantize_weight(w8, w_s).double().t()
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*x.shape[:-1], w8.shape[0])


# ----------------------------------------------------------------------------------------------
# FP8Linear
# ----------------------------------------------------------------------------------------------
def test_fp8linear_parameters_are_named_and_shaped_as_the_frameworks_store_them():
    layer = dnn.FP8Linear(384, 200, bias=True, dtype=torch.bfloat16)
    params = dict(layer.named_parameters())
    assert list(params) == ["weight", "weight_scale_inv", "bias"]
    assert params["weight"].dtype == FP8 and params["weight"].shape == (200, 384)
    assert params["weight_scale_inv"].dtype == torch.float32 and params["weight_scale_inv"].shape == (2, 3)
    assert params["bias"].dtype == torch.bfloat16 and params["bias"].shape == (200,)
    assert not any(p.requires_grad for p in params.values())
    assert list(layer.state_dict()) == ["weight", "weight_scale_inv", "bias"]
    assert dnn.FP8Linear(128, 8).bias is None
    # the transformers keyword form, block_size as a list or None
    assert dnn.FP8Linear(in_features=128, out_features=16, bias=False, dtype=torch.bfloat16, block_size=[128, 128],
                         device="cpu", activation_scheme="dynamic").block_size == (128, 128)
    assert dnn.FP8Linear(128, 16, block_size=None).weight.device.type == "cpu"
    assert dnn.FP8Linear(128, 16, device="meta").weight.is_meta


@pytest.mark.parametrize("kwargs,error,match", [
    ({"in_features": 100, "out_features": 64}, ValueError, r"in_features \(K\) must be a positive multiple of 128"),
    ({"in_features": 128, "out_features": 12}, ValueError, r"out_features \(N\) must be a positive multiple of 8"),
    ({"in_features": 128, "out_features": 64, "block_size": (64, 64)}, ValueError, r"block_size must be \(128, 128\)"),
    ({"in_features": 128, "out_features": 64, "block_size": [1, 128]}, ValueError, "block_size must be"),
    ({"in_features": 128, "out_features": 64, "activation_scheme": "static"}, ValueError, "activation_scheme must"),
    ({"in_features": 128, "out_features": 64, "dtype": torch.int32}, TypeError, "dtype must be torch.bfloat16"),
    ({"in_features": 128, "out_features": 64, "backend": "fast"}, ValueError, "backend must be one of"),
    ({"in_features": 128.0, "out_features": 64}, TypeError, "in_features must be an int"),
    ({"in_features": 0, "out_features": 64}, ValueError, "in_features must be >= 1"),
])
def test_fp8linear_rules(kwargs, error, match):
    with pytest.raises(error, match=match):
        dnn.FP8Linear(**kwargs)


@pytest.mark.parametrize("shape,dtype,bias", [((1, 256), torch.bfloat16, True), ((3, 5, 256), torch.bfloat16, False),
                                              ((7, 256), torch.float16, True), ((2, 256), torch.float32, True)])
def test_fp8linear_from_linear_matches_the_reference(shape, dtype, bias):
    linear = _linear(256, 136, bias=bias)
    layer = dnn.FP8Linear.from_linear(linear)
    w8, w_s = dg.quantize_weight(linear.weight.detach())
    assert torch.equal(_bits(layer.weight), _bits(w8)) and torch.equal(layer.weight_scale_inv, w_s)
    x = torch.randn(*shape, dtype=dtype)
    y = layer(x)
    assert y.shape == (*shape[:-1], 136) and y.dtype == dtype
    assert torch.equal(y, dg.linear(x, w8, w_s, linear.bias.detach() if bias else None))
    want = _linear_reference(x, w8, w_s, layer.bias)
    assert ref.calc_diff(y, want) <= ref.exactness_bound(want.float(), dtype)
    # and the quantization error against the unquantized layer stays what fp8 gives
    assert ref.calc_diff(y, linear(x.float()).detach()) < 5e-3


def test_fp8linear_keeps_the_bias_dtype_and_device_of_the_linear():
    linear = _linear(128, 16, dtype=torch.bfloat16)
    layer = dnn.FP8Linear.from_linear(linear, backend="reference")
    assert layer.bias.dtype == torch.bfloat16 and layer.backend == "reference"
    assert layer.bias.data_ptr() != linear.bias.data_ptr()  # a copy: the linear may be freed or changed
    meta = dnn.FP8Linear.from_linear(nn.Linear(256, 64, device="meta"))
    assert meta.weight.is_meta and meta.weight.dtype == FP8 and meta.weight_scale_inv.shape == (1, 2)
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        dnn.FP8Linear.from_linear(nn.Conv1d(1, 1, 1))
    with pytest.raises(ValueError, match=r"in_features \(K\) must be a positive multiple of 128, got 100"):
        dnn.FP8Linear.from_linear(nn.Linear(100, 64))


def test_fp8linear_is_forward_only():
    layer = dnn.FP8Linear.from_linear(_linear(128, 16))
    x = torch.randn(4, 128, requires_grad=True)
    with pytest.raises(NotImplementedError, match="forward only"):
        layer(x)
    with torch.no_grad():
        assert layer(x).shape == (4, 16)


def test_fp8linear_state_dict_round_trip_and_refusals():
    layer = dnn.FP8Linear.from_linear(_linear(384, 264))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    other = dnn.FP8Linear(384, 264, bias=True)
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    x = torch.randn(5, 384, dtype=torch.bfloat16)
    assert torch.equal(other(x), layer(x))

    state = layer.state_dict()
    with pytest.raises(TypeError, match="weight must be float8_e4m3fn.*got torch.bfloat16"):
        other.load_state_dict({**state, "weight": torch.randn(264, 384, dtype=torch.bfloat16)})
    with pytest.raises(TypeError, match="weight_scale_inv must be float32"):
        other.load_state_dict({**state, "weight_scale_inv": state["weight_scale_inv"].bfloat16()})
    with pytest.raises(ValueError, match=r"weight_scale_inv must have shape \(3, 3\) \(128x128 blocks of a 264x384 "
                                         r"weight\), got \(5, 6\).*another block size"):
        other.load_state_dict({**state, "weight_scale_inv": torch.ones(5, 6)})
    with pytest.raises(ValueError, match=r"weight must have shape \(264, 384\)"):
        other.load_state_dict({**state, "weight": torch.zeros(8, 384, dtype=FP8)})
    # nothing was half loaded by the refusals
    assert torch.equal(other(x), layer(x))


# ----------------------------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------------------------
class _Tower(nn.Module):
    def __init__(self, device=None):
        super().__init__()
        self.embed = nn.Embedding(10, 256, device=device)
        self.up = nn.Linear(256, 512, device=device)
        self.odd_k = nn.Linear(100, 64, device=device)
        self.odd_n = nn.Linear(256, 60, device=device)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(512, 256, bias=False, device=device), nn.ReLU())
                                     for _ in range(2)])
        self.attn = nn.MultiheadAttention(256, 2, device=device)  # out_proj: a subclass of nn.Linear
        self.head = nn.Linear(256, 10 * 8, device=device)
        self.lm_head = nn.Linear(256, 10, bias=False, device=device)
        self.lm_head.weight = self.embed.weight  # tied, and N = 10


def test_convert_swaps_eligible_linears_and_reports_the_rest():
    model = _Tower()
    blocks_before = [model.blocks[i][0] for i in range(2)]
    report = dnn.convert(model, skip=["head", "blocks.1.*"])
    assert dict(report) == {
        "odd_k": "in_features (K) must be a positive multiple of 128, got 100",
        "odd_n": "out_features (N) must be a positive multiple of 8, got 60",
        "blocks.1.0": "in skip",
        "attn.out_proj": "a subclass of nn.Linear (NonDynamicallyQuantizableLinear): its forward may differ, so it is "
                         "left alone",
        "head": "in skip",
        "lm_head": "out_features (N) must be a positive multiple of 8, got 10",
    }
    assert isinstance(model.up, dnn.FP8Linear) and isinstance(model.blocks[0][0], dnn.FP8Linear)
    assert model.blocks[1][0] is blocks_before[1] and type(model.head) is nn.Linear
    # the converted layer computes what from_linear of the original does
    x = torch.randn(3, 512)
    assert torch.equal(model.blocks[0][0](x), dnn.FP8Linear.from_linear(blocks_before[0])(x))
    # again without skip: the skipped ones are converted now, the others are reported as before
    assert dnn.convert(model) == [(n, r) for n, r in report if r != "in skip"]
    assert isinstance(model.head, dnn.FP8Linear) and isinstance(model.blocks[1][0], dnn.FP8Linear)


def test_convert_reports_tied_weights_and_odd_dtypes():
    model = nn.Module()
    model.a = nn.Linear(128, 64, bias=False)
    model.b = nn.Linear(128, 64, bias=False)
    model.b.weight = model.a.weight
    model.c = nn.Linear(128, 64, dtype=torch.float64)
    report = dict(dnn.convert(model))
    assert report == {"a": "weight is tied to b (quantizing one copy would untie them)",
                      "b": "weight is tied to a (quantizing one copy would untie them)",
                      "c": "weight dtype torch.float64 is not bfloat16, float16 or float32"}
    assert dnn.convert(nn.Linear(128, 8)) == [("", "the model itself is an nn.Linear: use "
                                                    "FP8Linear.from_linear(model)")]
    with pytest.raises(TypeError, match="skip must be names"):
        dnn.convert(model, skip=[3])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        dnn.convert("model")


def test_convert_without_quantizing_on_the_meta_device():
    with torch.device("meta"):
        model = _Tower()
    report = dnn.convert(model, skip="head", quantize=False)
    assert ("head", "in skip") in report
    assert isinstance(model.up, dnn.FP8Linear) and model.up.weight.is_meta and model.up.bias.is_meta
    assert model.up.weight_scale_inv.shape == (4, 2)
    cpu = nn.Sequential(nn.Linear(128, 16, dtype=torch.bfloat16))
    dnn.convert(cpu, quantize=False)
    layer = cpu[0]
    assert (layer.weight.float() == 0).all() and (layer.weight_scale_inv == 1).all()
    assert layer.bias.dtype == torch.bfloat16 and layer(torch.randn(2, 128, dtype=torch.bfloat16)).abs().sum() == 0


# ----------------------------------------------------------------------------------------------
# router
# ----------------------------------------------------------------------------------------------
def _route_by_hand(router, x):
    """An independent per-token loop of TopKRouter's documented rule (float64 scores)."""
    logits = x.double() @ router.weight.double().t()
    ids, weights = [], []
    for row in logits:
        if router.scoring == "softmax":
            scores = row.softmax(-1)
            choice = scores.clone()
        else:
            scores = row.sigmoid()
            choice = scores + router.e_score_correction_bias.double()
        size = router.num_experts // router.n_group
        if router.n_group > 1:
            ratings = []
            for g in range(router.n_group):
                part = sorted(choice[g * size:(g + 1) * size].tolist(), reverse=True)
                ratings.append(part[0] + part[1] if router.scoring == "sigmoid" else part[0])
            best = sorted(range(router.n_group), key=lambda g: -ratings[g])[:router.topk_group]
            allowed = [e for e in range(router.num_experts) if e // size in best]
        else:
            allowed = list(range(router.num_experts))
        chosen = sorted(allowed, key=lambda e: -float(choice[e]))[:router.top_k]
        w = torch.stack([scores[e] for e in chosen])
        if router.norm_topk_prob:
            w = w / w.sum()
        ids.append(chosen)
        weights.append(w * router.routed_scaling_factor)
    return torch.tensor(ids), torch.stack(weights)


@pytest.mark.parametrize("kwargs", [
    {"scoring": "softmax"}, {"scoring": "softmax", "norm_topk_prob": False},
    {"scoring": "softmax", "n_group": 4, "topk_group": 2},
    {"scoring": "sigmoid", "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5},
    {"scoring": "sigmoid"},
])
def test_router_matches_its_documented_rule(kwargs):
    router = dnn.TopKRouter(256, 16, 3, **kwargs)
    if router.e_score_correction_bias is not None:
        with torch.no_grad():
            router.e_score_correction_bias.normal_(std=0.1)
    x = torch.randn(50, 256, dtype=torch.bfloat16)
    ids, weights = router(x)
    want_ids, want_weights = _route_by_hand(router, x)
    assert ids.shape == (50, 3) and weights.dtype == torch.float32
    # (fp32 against float64 scores: a near tie may order two experts differently; compare as sets per token)
    same = [set(a) == set(b) for a, b in zip(ids.tolist(), want_ids.tolist())]
    assert sum(same) >= 49
    for t in [i for i, s in enumerate(same) if s]:
        order = [ids[t].tolist().index(e) for e in want_ids[t].tolist()]
        assert torch.allclose(weights[t, order].double(), want_weights[t], rtol=1e-5)


def test_router_rules():
    for kwargs, match in (({"scoring": "relu"}, "scoring must be one of"), ({"top_k": 20}, "top_k \\(20\\) must be"),
                          ({"n_group": 3}, "multiple of n_group"), ({"n_group": 4, "topk_group": 5}, "topk_group"),
                          ({"n_group": 4, "topk_group": 1, "top_k": 5}, "experts of topk_group groups"),
                          ({"scoring": "sigmoid", "n_group": 16, "topk_group": 16}, "best two experts")):
        args = {"hidden_size": 128, "num_experts": 16, "top_k": 2, **kwargs}
        with pytest.raises(ValueError, match=match):
            dnn.TopKRouter(**args)


# ----------------------------------------------------------------------------------------------
# experts and the MoE block
# ----------------------------------------------------------------------------------------------
def _experts(num_experts=6, hidden=256, inter=128, backend="auto"):
    gate_up = torch.randn(num_experts, 2 * inter, hidden) * hidden ** -0.5
    down = torch.randn(num_experts, hidden, inter) * inter ** -0.5
    return dnn.FP8Experts.from_weights(gate_up, down, backend=backend), gate_up, down


def _experts_reference(ex, x, ids, weights):
    """Per token and choice, the documented math through the reference GEMMs one row at a time, summed in float64:
    quantize the token, gate/up GEMM rounded to the GEMM dtype, SiLU(gate) * up in fp32, quantize, down GEMM."""
    gemm_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
    x2 = x.reshape(-1, ex.hidden_size)
    q, s = ref.quantize_act(x2)
    out = torch.zeros(x2.shape[0], ex.hidden_size, dtype=torch.float64)
    for t in range(x2.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if not 0 <= e < ex.num_experts:
                continue
            h = ref.fp8_gemm(q[t:t + 1], s[t:t + 1], ex.gate_up_proj[e], ex.gate_up_proj_scale_inv[e], gemm_dtype)
            i = ex.intermediate_size
            q2, s2 = ref.quantize_act(F.silu(h[:, :i].float()) * h[:, i:].float())
            y = ref.fp8_gemm(q2, s2, ex.down_proj[e], ex.down_proj_scale_inv[e], gemm_dtype)
            out[t] += float(weights[t, j]) * y[0].double()
    return out


def _routing(tokens, top_k, experts):
    ids = torch.stack([torch.randperm(experts)[:top_k] for _ in range(tokens)])
    return ids, torch.rand(tokens, top_k)


@pytest.mark.parametrize("tokens,top_k,dtype", [(1, 1, torch.bfloat16), (37, 2, torch.bfloat16),
                                                (65, 3, torch.float32), (9, 2, torch.float16)])
def test_experts_match_the_reference(tokens, top_k, dtype):
    ex, _, _ = _experts()
    x = torch.randn(tokens, 256, dtype=dtype)
    ids, weights = _routing(tokens, top_k, 6)
    if tokens > 3:
        ids[3, 0] = -1  # a choice of another rank (expert parallelism) adds nothing
    y = ex(x, ids, weights)
    assert y.shape == x.shape and y.dtype == dtype and not y.isnan().any()
    assert ref.calc_diff(y, _experts_reference(ex, x, ids, weights)) < 1e-5


def test_experts_quantization_error_against_the_unquantized_math():
    ex, gate_up, down = _experts()
    x = torch.randn(40, 256)
    ids, weights = _routing(40, 2, 6)
    want = torch.zeros(40, 256, dtype=torch.float64)
    for t in range(40):
        for j in range(2):
            e = int(ids[t, j])
            h = gate_up[e].double() @ x[t].double()
            want[t] += float(weights[t, j]) * (down[e].double() @ (F.silu(h[:128]) * h[128:]))
    assert ref.calc_diff(ex(x, ids, weights), want) < 5e-3


def test_experts_shapes_and_an_empty_batch():
    ex, _, _ = _experts()
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    ids, weights = _routing(6, 2, 6)
    assert torch.equal(ex(x, ids.int(), weights.bfloat16()).reshape(6, 256),
                       ex(x.reshape(6, 256), ids, weights.bfloat16()))
    empty = ex(torch.randn(0, 256, dtype=torch.bfloat16), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert empty.shape == (0, 256)


def test_experts_parameters_and_rules():
    ex = dnn.FP8Experts(4, 256, 128)
    shapes = {n: (tuple(p.shape), p.dtype) for n, p in ex.named_parameters()}
    assert shapes == {"gate_up_proj": ((4, 256, 256), FP8), "gate_up_proj_scale_inv": ((4, 2, 2), torch.float32),
                      "down_proj": ((4, 256, 128), FP8), "down_proj_scale_inv": ((4, 2, 1), torch.float32)}
    for args, kwargs, error, match in (
            ((300, 256, 128), {}, ValueError, "num_experts must be at most 256"),
            ((4, 200, 128), {}, ValueError, "hidden_size must be a multiple of 128"),
            ((4, 256, 100), {}, ValueError, "intermediate_size must be a multiple of 128"),
            ((4, 256, 128), {"backend": "cublas"}, ValueError, "backend must be one of"),
            ((4, 256, 128), {"block_size": (128, 64)}, ValueError, "block_size must be")):
        with pytest.raises(error, match=match):
            dnn.FP8Experts(*args, **kwargs)
    x = torch.randn(5, 256)
    with pytest.raises(ValueError, match=r"topk_ids must be \(T, top_k\) with T = 5"):
        ex(x, torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., hidden_size=256\)"):
        ex(torch.randn(5, 128), torch.zeros(5, 2, dtype=torch.long), torch.ones(5, 2))
    with pytest.raises(NotImplementedError, match="FP8Experts is forward only"):
        ex(x.requires_grad_(), torch.zeros(5, 2, dtype=torch.long), torch.ones(5, 2))
    with pytest.raises(ValueError, match=r"gate_up_proj must be \(E, 2I, H\)"):
        dnn.FP8Experts.from_weights(torch.randn(2, 256, 128), torch.randn(2, 128, 256))


def _moe(**kwargs):
    torch.manual_seed(1234)
    moe = dnn.FP8MoE(256, 128, 8, 2, shared_intermediate_size=128, **kwargs)
    moe.experts = _experts(8)[0]
    moe.shared_experts = dnn.FP8MLP(256, 128)
    for name in ("gate_proj", "up_proj", "down_proj"):
        layer = getattr(moe.shared_experts, name)
        setattr(moe.shared_experts, name, dnn.FP8Linear.from_linear(_linear(layer.in_features, layer.out_features,
                                                                            bias=False)))
    return moe


def test_moe_block_is_router_experts_and_shared_expert():
    moe = _moe(scoring="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    x = torch.randn(2, 11, 256, dtype=torch.bfloat16)
    y = moe(x)
    x2 = x.reshape(22, 256)
    ids, weights = moe.gate(x2)
    want = moe.experts(x2, ids, weights) + moe.shared_experts(x2)
    assert y.shape == x.shape and torch.equal(y.reshape(22, 256), want)
    names = list(moe.state_dict())
    assert names == ["gate.weight", "gate.e_score_correction_bias", "experts.gate_up_proj",
                     "experts.gate_up_proj_scale_inv", "experts.down_proj", "experts.down_proj_scale_inv",
                     "shared_experts.gate_proj.weight", "shared_experts.gate_proj.weight_scale_inv",
                     "shared_experts.up_proj.weight", "shared_experts.up_proj.weight_scale_inv",
                     "shared_experts.down_proj.weight", "shared_experts.down_proj.weight_scale_inv"]
    # state-dict round trip into a fresh block
    fresh = dnn.FP8MoE(256, 128, 8, 2, shared_intermediate_size=128, scoring="sigmoid", n_group=4, topk_group=2,
                       routed_scaling_factor=2.5)
    buffer = io.BytesIO()
    torch.save(moe.state_dict(), buffer)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    assert torch.equal(fresh(x), y)
    assert dnn.FP8MoE(256, 128, 8, 2).shared_experts is None


@pytest.mark.slow  # (inductor compiles: ~6 s on 2 cores)
def test_torch_compile_fullgraph_equals_eager_for_new_token_counts(monkeypatch):
    """Bitwise equal where inductor rounds its fused bf16 pointwise math as eager does (emulate_precision_casts;
    by default it rounds SiLU(gate) * up once instead of twice: calc_diff ~3e-5 against eager)."""
    monkeypatch.setattr(torch._inductor.config, "emulate_precision_casts", True)
    torch._dynamo.reset()
    model = nn.Sequential(dnn.FP8Linear.from_linear(_linear(256, 256)),
                          _moe(scoring="sigmoid", n_group=4, topk_group=2))
    compiled = torch.compile(model, fullgraph=True)
    for tokens in (5, 7, 1):  # the second count recompiles (a dynamic count or one graph per count: both work)
        x = torch.randn(tokens, 256, dtype=torch.bfloat16)
        assert torch.equal(compiled(x), model(x)), tokens


def test_no_graph_break_in_the_moe_block():
    torch._dynamo.reset()
    moe = _moe()
    explanation = torch._dynamo.explain(moe)(torch.randn(6, 256, dtype=torch.bfloat16))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    code = "\n".join(str(g.graph) for g in explanation.graphs)
    assert code.count("deepergemm.m_grouped_fp8_gemm_contiguous") == 2 and code.count("deepergemm.linear") == 3


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
def _to_cuda(module: nn.Module) -> nn.Module:
    return module.to("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 7, 129])
def test_gpu_fp8linear_matches_the_cpu_reference(tokens):
    layer = dnn.FP8Linear.from_linear(_linear(512, 264))
    x = torch.randn(tokens, 512, dtype=torch.bfloat16)
    cpu = layer(x)
    gpu = _to_cuda(layer)(x.cuda())
    want = _linear_reference(x, layer.weight.cpu(), layer.weight_scale_inv.cpu(), layer.bias.cpu())
    assert ref.calc_diff(gpu.cpu(), want) <= ref.exactness_bound(want.float(), torch.bfloat16)
    assert ref.calc_diff(gpu.cpu(), cpu) < 2e-6


@pytest.mark.gpu
def test_gpu_moe_matches_the_cpu_reference():
    """The CUDA block against the reference math on the CPU copy of its weights, with the CUDA router's choices
    (the two routers' fp32 sums may order a near tie differently). Not bit-identical: each GEMM is exact up to
    its bf16 rounding, but where the tensor cores' sum rounds a near-midpoint the other way, the intermediate
    fed to the next quantization differs by one bf16 ulp and may flip an fp8 rounding (one e4m3 step is 6-12%
    of the element). Measured 1.4e-5 on the H200; a wrong expert, weight or scale gives 1e-2 and more."""
    cpu_moe = _moe(scoring="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5)
    moe = _to_cuda(copy.deepcopy(cpu_moe))
    x = torch.randn(300, 256, dtype=torch.bfloat16)
    gpu = moe(x.cuda()).cpu()
    ids, weights = moe.gate(x.cuda())
    want = _experts_reference(cpu_moe.experts, x, ids.cpu(), weights.cpu()) + cpu_moe.shared_experts(x).double()
    assert not gpu.isnan().any() and ref.calc_diff(gpu, want) < 5e-5


@pytest.mark.gpu
def test_gpu_torch_compile_equals_eager(monkeypatch):
    monkeypatch.setattr(torch._inductor.config, "emulate_precision_casts", True)
    torch._dynamo.reset()
    model = _to_cuda(nn.Sequential(dnn.FP8Linear.from_linear(_linear(256, 256)), _moe()))
    compiled = torch.compile(model, fullgraph=True)
    for tokens in (64, 3):
        x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(compiled(x), model(x))


def _capture(fn, *static):
    from deepergemm.benchmark.timing import capture_graph

    return capture_graph(fn, *static)


@pytest.mark.gpu
def test_gpu_cuda_graph_replays_fp8linear_on_new_inputs():
    layer = _to_cuda(dnn.FP8Linear.from_linear(_linear(512, 1024)))
    static_x = torch.randn(32, 512, device="cuda", dtype=torch.bfloat16)
    graph, static_y = _capture(layer, static_x)
    for _ in range(3):
        fresh = torch.randn_like(static_x)
        static_x.copy_(fresh)
        static_y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, layer(fresh))


@pytest.mark.gpu
def test_gpu_cuda_graph_replays_the_moe_block_with_new_routing():
    """New tokens on every replay: the router sends them to other experts, with other counts per expert (the
    layout and the grouped GEMMs read them on the GPU); every replay equals eager."""
    moe = _to_cuda(_moe(scoring="sigmoid", n_group=4, topk_group=2))
    static_x = torch.randn(48, 256, device="cuda", dtype=torch.bfloat16)
    graph, static_y = _capture(moe, static_x)
    seen = set()
    for _ in range(4):
        fresh = torch.randn_like(static_x) * 3
        static_x.copy_(fresh)
        static_y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ids, _ = moe.gate(fresh)
        seen.add(tuple(torch.bincount(ids.flatten(), minlength=8).tolist()))
        assert torch.equal(static_y, moe(fresh))
    assert len(seen) > 1, "the replays should have routed differently"
    # the experts alone, with routing written into static buffers
    ex = moe.experts
    x, ids, weights = static_x.clone(), torch.zeros(48, 2, dtype=torch.long, device="cuda"), torch.rand(48, 2,
                                                                                                     device="cuda")
    graph, out = _capture(ex, x, ids, weights)
    for _ in range(3):
        new_ids, new_w = _routing(48, 2, 8)
        ids.copy_(new_ids)
        weights.copy_(new_w)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ex(x, ids, weights))
