"""Input rules: every bad input gets a clear error naming the argument, the value and the rule."""
import pytest
import torch

import deepergemm as dg
from deepergemm import layouts
from deepergemm import reference as ref


def _inputs(m=16, n=136, k=256):
    a, a_s = dg.quantize_act(torch.randn(m, k, dtype=torch.bfloat16))
    b, b_s = dg.quantize_weight(torch.randn(n, k, dtype=torch.bfloat16))
    return a, a_s, b, b_s


def _gemm(a, a_s, b, b_s, **kw):
    return dg.fp8_gemm(a, a_s, b, b_s, **kw)


@pytest.mark.parametrize("mutate,exc,words", [
    (lambda a, a_s, b, b_s: (a.float(), a_s, b, b_s), TypeError, ["a must have dtype", "float8_e4m3fn", "float32"]),
    (lambda a, a_s, b, b_s: (a, a_s, b.view(torch.int8), b_s), TypeError, ["b must have dtype", "int8"]),
    (lambda a, a_s, b, b_s: (a.unsqueeze(0), a_s, b, b_s), ValueError, ["a must be 2-D", "(1, 16, 256)"]),
    (lambda a, a_s, b, b_s: (a, a_s, b[:, :128], b_s[:, :1]), ValueError, ["share K", "(16, 256)", "(136, 128)"]),
    (lambda a, a_s, b, b_s: (a, a_s[:, :1], b, b_s), ValueError, ["a_scales must have shape", "(16, 2)", "(16, 1)"]),
    (lambda a, a_s, b, b_s: (a, a_s.double(), b, b_s), TypeError, ["a_scales must have dtype", "float64"]),
    (lambda a, a_s, b, b_s: (a, a_s, b, b_s[:1]), ValueError, ["b_scales must have shape", "(2, 2)", "(1, 2)"]),
    (lambda a, a_s, b, b_s: (a, a_s, b, b_s.half()), TypeError, ["b_scales must have dtype"]),
    (lambda a, a_s, b, b_s: (a, a_s, b[:132], b_s), ValueError, ["multiple of 8", "N=132"]),
    (lambda a, a_s, b, b_s: (a.t(), a_s, b, b_s), ValueError, ["share K"]),
    (lambda a, a_s, b, b_s: (a, a_s, b.t().contiguous().t(), b_s), ValueError, ["b must be K-major", "stride"]),
    (lambda a, a_s, b, b_s: ("a", a_s, b, b_s), TypeError, ["a must be a torch.Tensor", "str"]),
])
def test_gemm_rules(mutate, exc, words):
    args = mutate(*_inputs())
    with pytest.raises(exc) as info:
        _gemm(*args)
    for w in words:
        assert w in str(info.value), f"{w!r} missing from: {info.value}"


def test_k_not_multiple_of_128():
    a = torch.randn(4, 192).to(ref.FP8_DTYPE)
    b = torch.randn(8, 192).to(ref.FP8_DTYPE)
    with pytest.raises(ValueError, match=r"K must be a positive multiple of 128, got K=192"):
        _gemm(a, torch.ones(4, 2), b, torch.ones(1, 2))


def test_quantize_rules():
    with pytest.raises(ValueError, match=r"x.shape\[1\] \(K\) must be a positive multiple of 128, got K=100"):
        dg.quantize_act(torch.randn(4, 100))
    with pytest.raises(TypeError, match=r"x must have dtype .*got torch.int32"):
        dg.quantize_act(torch.ones(4, 128, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"w must be 2-D"):
        dg.quantize_weight(torch.randn(128))


def test_out_dtype_and_bias_rules():
    a, a_s, b, b_s = _inputs()
    with pytest.raises(TypeError,
                       match="out_dtype must be torch.bfloat16, torch.float32 or torch.float8_e4m3fn, got torch.float16"):
        _gemm(a, a_s, b, b_s, out_dtype=torch.float16)
    with pytest.raises(ValueError, match=r"bias must have shape \(N,\) = \(136,\), got \(135,\)"):
        _gemm(a, a_s, b, b_s, bias=torch.randn(135))
    with pytest.raises(TypeError, match="bias must have dtype"):
        _gemm(a, a_s, b, b_s, bias=torch.ones(136, dtype=torch.int64))


def test_backend_name_rule():
    a, a_s, b, b_s = _inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        _gemm(a, a_s, b, b_s, backend="fast")
    with pytest.raises(ValueError, match="backend='cublas' needs CUDA tensors"):
        _gemm(a, a_s, b, b_s, backend="cublas")


def test_devices_must_match():
    a, a_s, b, b_s = _inputs()
    with pytest.raises(ValueError, match="one device: a is on cpu, b_scales is on meta"):
        layouts.check_gemm_inputs(a, a_s, b, b_s.to("meta"), torch.bfloat16, None)


def test_misaligned_data_pointer():
    a, a_s, b, b_s = _inputs()
    storage = torch.empty(a.numel() + 1, dtype=torch.uint8)
    shifted = storage[1:].view(ref.FP8_DTYPE).view(a.shape)
    with pytest.raises(ValueError, match="a data pointer must be 16-byte aligned"):
        _gemm(shifted, a_s, b, b_s)


def test_padded_row_stride_is_accepted():
    a, a_s, b, b_s = _inputs(k=256)
    wide = torch.empty(a.shape[0], 384, dtype=torch.uint8).view(ref.FP8_DTYPE)
    wide[:, :256] = a
    out = _gemm(wide[:, :256], a_s, b, b_s)
    torch.testing.assert_close(out, _gemm(a, a_s, b, b_s), rtol=0, atol=0)


def test_empty_m_returns_empty():
    a, a_s, b, b_s = _inputs(m=0)
    out = _gemm(a, a_s, b, b_s)
    assert out.shape == (0, 136) and out.dtype == torch.bfloat16


def test_linear_rules():
    _, _, b, b_s = _inputs()
    with pytest.raises(TypeError, match="x must have dtype torch.bfloat16 or torch.float16 or torch.float32, got "
                                        "torch.float64"):
        dg.linear(torch.randn(4, 256, dtype=torch.float64), b, b_s)
    with pytest.raises(ValueError, match=r"x.shape\[-1\] \(K=128\) must equal w.shape\[1\] \(K=256\)"):
        dg.linear(torch.randn(4, 128, dtype=torch.bfloat16), b, b_s)
    with pytest.raises(TypeError, match="w must have dtype"):
        dg.linear(torch.randn(4, 256, dtype=torch.bfloat16), b.float(), b_s)


@pytest.mark.parametrize("change,exc,words", [
    pytest.param(lambda x, w, w_s, bias: (x, w, torch.ones(16, 2), bias), ValueError,
                 ["w_scales must have shape (ceil(N/128), K/128) = (2, 2) (or (ceil(N/128), K/256) = (2, 1) for the 256-K recipe), got (16, 2)"], id="w_scales-shape"),
    pytest.param(lambda x, w, w_s, bias: (x, w, w_s.half(), bias), TypeError,
                 ["w_scales must have dtype torch.float32"], id="w_scales-dtype"),
    pytest.param(lambda x, w, w_s, bias: (x, w[:12], w_s[:1], bias[:12]), ValueError,
                 ["N (w.shape[0]) must be a positive multiple of 8", "N=12"], id="N"),
    pytest.param(lambda x, w, w_s, bias: (x, w, w_s.to("meta"), bias), ValueError,
                 ["all tensors must be on one device: x is on cpu, w_scales is on meta"], id="w_scales-device"),
    pytest.param(lambda x, w, w_s, bias: (x, w, w_s, bias.to("meta")), ValueError,
                 ["all tensors must be on one device: x is on cpu, bias is on meta"], id="bias-device"),
    pytest.param(lambda x, w, w_s, bias: (x, w.t().contiguous().t(), w_s, bias), ValueError, ["w must be K-major"],
                 id="w-strides"),
    pytest.param(lambda x, w, w_s, bias: (x, w, [[1.0]], bias), TypeError,
                 ["w_scales must be a torch.Tensor, got list"], id="w_scales-type"),
])
def test_linear_errors_name_w_and_w_scales(change, exc, words):
    """linear's weight is w with w_scales: its errors never speak of fp8_gemm's b and b_scales (or a)."""
    _, _, w, w_s = _inputs()
    x = torch.randn(3, 256, dtype=torch.bfloat16)
    with pytest.raises(exc) as info:
        dg.linear(*change(x, w, w_s, torch.randn(136, dtype=torch.bfloat16)))
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    for wrong in ("b_scales", "b.shape", "b must", "a is on", "b is on"):
        assert wrong not in message, f"{wrong!r} in: {message}"


def test_k_is_a_positive_multiple_of_128_everywhere():
    """One rule for K: the quantizers refuse what the GEMMs refuse, K = 0 included."""
    for fn, name in ((dg.quantize_act, "x"), (dg.quantize_weight, "w"), (ref.quantize_act, "x"),
                     (ref.quantize_weight, "w")):
        for k in (0, 64):
            with pytest.raises(ValueError, match=rf"{name}.shape\[1\] \(K\) must be a positive multiple of 128, "
                                                 rf"got K={k}"):
                fn(torch.randn(4, k))
    a, a_s, b, b_s = _inputs()
    with pytest.raises(ValueError, match="K must be a positive multiple of 128, got K=0"):
        _gemm(a[:, :0], a_s[:, :0], b[:, :0], b_s[:, :0])


def test_n_is_a_positive_multiple_of_8_for_every_gemm():
    """N = 0 (a weight without rows) is refused by every GEMM alike, as the grouped ones always did."""
    a, a_s, b, b_s = _inputs()
    with pytest.raises(ValueError, match=r"N \(b.shape\[0\]\) must be a positive multiple of 8 .*got N=0"):
        _gemm(a, a_s, b[:0], b_s[:0])
    with pytest.raises(ValueError, match=r"N \(w.shape\[0\]\) must be a positive multiple of 8 .*got N=0"):
        dg.linear(torch.randn(2, 256), b[:0], b_s[:0])
    groups = torch.tensor([16], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"N \(b.shape\[1\]\) must be a positive multiple of 8 .*got N=0"):
        dg.m_grouped_fp8_gemm_contiguous(a, a_s, b[None, :0], b_s[None, :0], groups)
    with pytest.raises(ValueError, match=r"N \(b.shape\[1\]\) must be a positive multiple of 8 .*got N=0"):
        dg.m_grouped_fp8_gemm_masked(a[None], a_s[None], b[None, :0], b_s[None, :0], groups, 16)
    # M = 0 stays an empty result (an empty batch, an expert without tokens)
    assert _gemm(a[:0], a_s[:0], b, b_s).shape == (0, 136)


def test_act_scale_layout_helpers():
    s = layouts.empty_act_scales(7, 384, "cpu")
    assert s.shape == (7, 3) and s.stride() == (1, 8)
    assert layouts.is_act_scale_layout(s)
    row_major = torch.randn(7, 3)
    converted = layouts.to_act_scale_layout(row_major)
    assert converted.stride() == (1, 8) and torch.equal(converted, row_major)
    assert layouts.to_act_scale_layout(converted) is converted
