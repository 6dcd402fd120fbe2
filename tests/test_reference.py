"""The reference math: the quantization rules and the reference GEMM (CPU; the same code runs on GPU)."""
import math

import pytest
import torch

from deepergemm import reference as ref


def _rand(*shape, dtype=torch.bfloat16, spread=True):
    x = torch.randn(*shape, dtype=torch.float32)
    if spread:  # scales spanning 1e-3..1e3 across rows
        x = x * torch.pow(10.0, torch.empty(shape[0], 1).uniform_(-3, 3))
    return x.to(dtype)


@pytest.mark.parametrize("m,k", [(1, 128), (7, 384), (65, 256)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_act_quantization_rules(m, k, dtype):
    x = _rand(m, k, dtype=dtype, spread=dtype != torch.float16)
    q, s = ref.quantize_act(x)
    assert q.dtype == ref.FP8_DTYPE and q.shape == (m, k) and s.shape == (m, k // 128)
    groups = x.float().reshape(m, -1, 128)
    amax = groups.abs().amax(-1).clamp(min=ref.AMAX_EPS)
    torch.testing.assert_close(s, amax / 448, rtol=0, atol=0)
    # the largest element of each group maps to +-448 exactly
    qg = q.float().reshape(m, -1, 128)
    assert torch.equal(qg.abs().amax(-1), torch.full_like(amax, 448.0))
    # dequantization error is bounded by half an fp8 ulp (3 mantissa bits) of each element's binade
    deq = ref.dequantize_act(q, s)
    err = (deq - x.float()).abs()
    assert (err <= x.float().abs() * 2.0**-4 + s.repeat_interleave(128, 1) * 2.0**-9).all()


def test_act_quantization_matches_explicit_formula_bitwise():
    x = _rand(33, 512)
    q, s = ref.quantize_act(x)
    groups = x.float().reshape(33, 4, 128)
    amax = groups.abs().amax(-1, keepdim=True).clamp(min=1e-4)
    expected = (groups * (448.0 / amax)).to(torch.float8_e4m3fn).reshape(33, 512)
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))


def test_ue8m0_scales_are_powers_of_two_and_cover_amax():
    x = _rand(17, 768, dtype=torch.float32)
    q, s = ref.quantize_act(x, ue8m0=True)
    mant, _ = torch.frexp(s)
    assert torch.all(mant == 0.5), "UE8M0 scales must be exact powers of two"
    amax = x.reshape(17, -1, 128).abs().amax(-1).clamp(min=1e-4)
    assert torch.all(s >= amax / 448) and torch.all(s < 2 * amax / 448)
    assert torch.isfinite(q.float()).all() and q.float().abs().max() <= 448


def test_ue8m0_round_up_bits():
    vals = torch.tensor([1.0, 1.5, 0.75, 2.0**-20, 3.0 * 2.0**10, float("inf"), float("nan")])
    out = ref.ue8m0_round_up(vals)
    assert out[:5].tolist() == [1.0, 2.0, 1.0, 2.0**-20, 2.0**12]
    assert math.isinf(out[5]) and math.isnan(out[6])


def test_values_that_round_up_to_next_binade():
    # 0.96875*448 sits between fp8 values; values just below a power of two round up to it
    x = torch.full((1, 128), 1.0)
    x[0, 0] = 448.0  # amax -> multiplier exactly 1
    x[0, 1] = 15.9  # rounds to 16 (next binade) in e4m3
    x[0, 2] = 0.00195  # subnormal range of e4m3 (2**-9 is the smallest subnormal)
    q, s = ref.quantize_act(x)
    assert s.item() == 1.0
    assert q.float()[0, :3].tolist() == [448.0, 16.0, 0.001953125]


def test_tiny_group_is_clamped():
    x = torch.full((2, 128), 1e-7)
    q, s = ref.quantize_act(x)
    assert torch.all(s == torch.tensor(1e-4) / 448)


def test_non_finite_groups_poison_only_their_group():
    x = torch.randn(3, 256)
    x[0, 5] = float("nan")
    x[1, 200] = float("inf")
    q, s = ref.quantize_act(x)
    assert math.isnan(s[0, 0]) and math.isinf(s[1, 1])
    deq = ref.dequantize_act(q, s)
    assert torch.isnan(deq[0, :128]).all() and torch.isnan(deq[1, 128:]).all()
    assert torch.isfinite(deq[0, 128:]).all() and torch.isfinite(deq[1, :128]).all() and torch.isfinite(deq[2]).all()


@pytest.mark.parametrize("n,k", [(8, 128), (136, 384), (300, 256)])
def test_weight_quantization_blocks_and_edge_padding(n, k):
    w = _rand(n, k, dtype=torch.float32)
    q, s = ref.quantize_weight(w)
    nb = -(-n // 128)
    assert q.shape == (n, k) and s.shape == (nb, k // 128) and q.is_contiguous() and s.is_contiguous()
    for i in range(nb):
        for j in range(k // 128):
            block = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]  # edge block: only its real rows
            assert s[i, j] == block.abs().max().clamp(min=1e-4) / 448
    deq = ref.dequantize_weight(q, s)
    assert ((deq - w).abs() <= w.abs() * 2.0**-4 + s.max() * 2.0**-9).all()


def test_reference_gemm_matches_float64():
    m, n, k = 37, 136, 384
    a, a_s = ref.quantize_act(_rand(m, k))
    b, b_s = ref.quantize_weight(_rand(n, k, spread=False))
    bias = torch.randn(n)
    out = ref.fp8_gemm(a, a_s, b, b_s, torch.float32, bias)
    exact = ref.dequantize_act(a, a_s).double() @ ref.dequantize_weight(b, b_s).double().t() + bias.double()
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
    bf = ref.fp8_gemm(a, a_s, b, b_s, torch.bfloat16, bias)
    assert bf.dtype == torch.bfloat16
    assert ref.calc_diff(bf, exact) < 1e-5


def test_calc_diff():
    x = torch.randn(100, 100)
    assert ref.calc_diff(x, x) == pytest.approx(0.0, abs=1e-12)
    assert ref.calc_diff(x, -x) == pytest.approx(2.0)
    assert 1e-7 < ref.calc_diff(x, x.bfloat16()) < 1e-4
    y = x.clone()
    y[3, 3] = float("nan")
    assert math.isnan(ref.calc_diff(x, y))
    assert ref.calc_diff(torch.zeros(4), torch.zeros(4)) == 0.0


def test_linear_reference_keeps_leading_dims_and_dtype():
    x = _rand(6, 256).reshape(2, 3, 256)
    w, ws = ref.quantize_weight(torch.randn(24, 256))
    y = ref.linear(x, w, ws)
    assert y.shape == (2, 3, 24) and y.dtype == torch.bfloat16
    # exactly the GEMM of the quantized activations (per 1x128 group), rounded once to bf16...
    q, s = ref.quantize_act(x.reshape(6, 256))
    exact = ref.dequantize_act(q, s) @ ref.dequantize_weight(w, ws).t()
    assert ref.calc_diff(y.reshape(6, 24), exact) < 1e-5
    # ...and near the unquantized product: e4m3 keeps 3 mantissa bits (relative error <= 2^-4 per element;
    # 144 outputs measured up to 1.1e-3, so 1e-3 was a flaky bound)
    assert ref.calc_diff(y, x.float() @ ref.dequantize_weight(w, ws).t()) < 4e-3


def test_exactness_bound_is_the_tolerance_unless_bf16_rounding_alone_exceeds_it():
    torch.manual_seed(0)
    big = torch.randn(256, 512)
    assert ref.exactness_bound(big, torch.bfloat16) == ref.EXACT_TOL
    assert ref.exactness_bound(big, torch.float32) == ref.EXACT_TOL
    # 8 outputs just below a bf16 midpoint (spacing at 1 is 2**-7): the exact rounding goes down to 1,
    # a tensor-core sum (relative error up to TENSOR_CORE_REL) may land above the midpoint: 1 + 2**-7
    tiny = torch.tensor([1.0 + 2 ** -8 * (1 - 2 ** -12)] * 8)
    down, up = torch.ones(8), torch.full((8,), 1.0 + 2 ** -7)
    assert ref.calc_diff(down, tiny) > ref.EXACT_TOL
    bound = ref.exactness_bound(tiny, torch.bfloat16)
    assert ref.calc_diff(down, tiny) <= bound and ref.calc_diff(up, tiny) <= bound
    # but not two units off, nor a wrong scale
    assert ref.calc_diff(torch.full((8,), 1.0 + 2 ** -6), tiny) > bound
    assert ref.calc_diff(tiny * 1.01, tiny) > bound
    # 8 outputs whose exact rounding is within the tolerance, one of them near a midpoint (the H200's 1x8x128
    # case: -4.1378 rounds to -4.125, the tensor cores' sum to -4.15625): that flip is allowed, two units not
    seen = torch.tensor([1.7975, 0.8696, 5.5699, -1.1523, -2.3116, 3.1824, -5.4403, -4.1378])
    assert 1.25 * ref.calc_diff(seen.bfloat16().float(), seen) <= ref.EXACT_TOL
    flipped = seen.bfloat16().float()
    flipped[7] = -4.15625
    assert ref.calc_diff(flipped, seen) > ref.EXACT_TOL
    bound = ref.exactness_bound(seen, torch.bfloat16)
    assert ref.calc_diff(flipped, seen) <= bound
    flipped[7] = -4.1875
    assert ref.calc_diff(flipped, seen) > bound


def test_the_wider_recipe_quantizes_per_256_of_k():
    """quantize_act(group_k=256) and quantize_weight(block_k=256): one scale per 1x256 and 128x256, each the group's
    amax / 448; dequantization reads the group from the scales' shape."""
    x = torch.randn(3, 512) * torch.linspace(0.1, 10, 512)
    q, s = ref.quantize_act(x, group_k=256)
    assert s.shape == (3, 2) and torch.equal(s, x.reshape(3, 2, 256).abs().amax(2) / ref.FP8_MAX)
    back = ref.dequantize_act(q, s)
    assert ref.calc_diff(back, x) < 1e-3
    w = torch.randn(200, 768)
    qw, sw = ref.quantize_weight(w, block_k=256)
    assert sw.shape == (2, 3)
    assert float(sw[1, 2]) == float(w[128:, 512:].abs().amax() / ref.FP8_MAX)  # (fp32 division, as quantized)
    assert ref.calc_diff(ref.dequantize_weight(qw, sw), w) < 1e-3
    # the 128 recipe of the same data differs (a finer grid), and K must be a multiple of the group
    assert not torch.equal(ref.dequantize_act(*ref.quantize_act(x)), back)
    with pytest.raises(ValueError, match="multiple of 256"):
        ref.quantize_act(torch.randn(2, 384), group_k=256)
    with pytest.raises(ValueError, match="must be one of"):
        ref.quantize_act(x, group_k=64)
