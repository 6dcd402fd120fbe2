"""The 256-K recipe: activations per 1x256 group, weights per 128x256 block, and fp8_gemm promoting once per 256 of K.

The contract: quantize_act(x, group_k=256) / quantize_weight(w, block=(128, 256)) bit-exact with the reference;
fp8_gemm on such scales within the exactness bar (calc_diff <= 2e-6) of the fp32 GEMM of the dequantized inputs, by
its pairs variants (configs.RECIPE_256_VARIANTS, key letter "r") where the plan has one, else by the 128 recipe's
kernel reading each K block's pair scale (bit-identical to it on the scales repeated per 128). CPU: the reference
path, the rules and their messages, fake kernels and torch.compile, variant selection. GPU (marked gpu): the quantizers bit for bit, the op over small and large M,
every pairs variant launched directly into NaN-poisoned outputs, the pairs against the 128 kernel on the same
operands.
"""
import dataclasses

import pytest
import torch

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts
from deepergemm import reference as ref

BAR = 2e-6  # the exactness bar of both recipes (cuBLAS: about 1.4e-6)


def _inputs(m, n, k, device="cpu", outliers=False):
    """Fresh random operands quantized by the 256 recipe (on CUDA by the library's quantizers)."""
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    if outliers:  # a few activation channels 50x larger
        x[:, torch.randperm(k, device=device)[: max(1, k // 512)]] *= 50
    if device == "cpu":
        a, a_s = ref.quantize_act(x.bfloat16(), group_k=256)
        b, b_s = ref.quantize_weight(w.bfloat16(), block_k=256)
        return a, layouts.to_act_scale_layout(a_s), b, b_s
    a, a_s = dg.quantize_act(x.bfloat16(), group_k=256)
    b, b_s = dg.quantize_weight(w.bfloat16(), block=(128, 256))
    return a, a_s, b, b_s


BLOCK_NOISE, PAIRS_NOISE = 2.0 ** -11, 2.0 ** -10  # of |A| @ |B|^T, per element (_assert_exact)


def _assert_exact(out, operands, what, pairs):
    """Within bf16's rounding of the exact product, element by element, and calc_diff under the bar where there are
    enough elements for it to mean something (an output of a hundred values can land above 2e-6 by its bf16
    roundings alone). Per element: half a bf16 ulp (2^-9 relative, 2^-8 allowed) plus the accumulation's noise,
    which scales with the sum of the terms' magnitudes (|A| @ |B|^T), not with the output: the tensor cores add
    each block (128 deep, a pair 256 deep) at reduced precision before the fp32 promotion, and a row of large
    cancelling terms keeps that error. 2^-11 of that sum is allowed a 128-deep block, 2^-10 a pair (PAIRS_NOISE):
    over 100 draws of outlier data at this file's shapes on the H100 (bench/pairs_noise.py) the pairs' largest error
    per element was up to 1.40x their 128-recipe twins' on the same operands, and it reached 1.02-1.14x of a 2^-11
    bound in three suite runs. A scale applied to the wrong K block misses by 9-25x the 2^-11 bound on random
    data, per element, and by percents in calc_diff."""
    expected, magnitude = _expected(*operands)
    err = (out.float() - expected).abs()
    bound = expected.abs() * 2.0 ** -8 + magnitude * (PAIRS_NOISE if pairs else BLOCK_NOISE)
    assert (err <= bound).all(), (what, (err / bound).max().item())
    if out.numel() >= 16384:
        assert ref.calc_diff(out, expected) < BAR, what


def _expected(a, a_s, b, b_s):
    """The fp32 GEMM of the dequantized operands, and of their magnitudes."""
    x, w = ref.dequantize_act(a.cpu(), a_s.cpu()), ref.dequantize_weight(b.cpu(), b_s.cpu())
    return ref.exact_fp32_matmul(x, w), ref.exact_fp32_matmul(x.abs(), w.abs())


# ----------------------------------------------------------------------------------------------
# CPU: quantizers, the op's reference path, rules
# ----------------------------------------------------------------------------------------------
def test_quantizers_give_the_256_layouts_on_cpu():
    x, w = torch.randn(37, 768), torch.randn(200, 768)
    a, a_s = dg.quantize_act(x, group_k=256)
    b, b_s = dg.quantize_weight(w, block=(128, 256))
    want_a, want_as = ref.quantize_act(x, group_k=256)
    want_b, want_bs = ref.quantize_weight(w, block_k=256)
    assert a_s.shape == (37, 3) and layouts.is_act_scale_layout(a_s) and b_s.shape == (2, 3)
    assert torch.equal(a.view(torch.uint8), want_a.view(torch.uint8)) and torch.equal(a_s, want_as)
    assert torch.equal(b.view(torch.uint8), want_b.view(torch.uint8)) and torch.equal(b_s, want_bs)
    # a 256 group is not two 128 groups: its scale is the larger of theirs
    _, s128 = ref.quantize_act(x)
    assert torch.equal(a_s, s128.reshape(37, 3, 2).amax(dim=2))


@pytest.mark.parametrize("m,n,k", [(1, 128, 256), (5, 136, 512), (67, 264, 768), (130, 256, 1024)])
def test_reference_path_is_exact(m, n, k):
    a, a_s, b, b_s = _inputs(m, n, k)
    out = dg.fp8_gemm(a, a_s, b, b_s)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    assert ref.calc_diff(out, _expected(a, a_s, b, b_s)[0]) < BAR
    # the same product through the 128 recipe's layout: scales repeated per 128
    again = dg.fp8_gemm(a, a_s.repeat_interleave(2, dim=1), b, b_s.repeat_interleave(2, dim=1))
    assert torch.equal(out, again)


def test_rules_name_the_recipe():
    a, a_s, b, b_s = _inputs(16, 256, 512)
    with pytest.raises(ValueError, match=r"a_scales must have shape \(M, K/128\) = \(16, 4\) to match b_scales"):
        dg.fp8_gemm(a, a_s, b, b_s.repeat_interleave(2, dim=1))
    with pytest.raises(ValueError, match=r"b_scales must have shape \(ceil\(N/128\), K/256\) = \(2, 2\)"):
        dg.fp8_gemm(a, a_s, b, b_s[:, :1])
    with pytest.raises(ValueError, match=r"or \(M, K/256\) = \(16, 2\) for the 256-K recipe"):
        dg.fp8_gemm(a, a_s[:, :1], b, b_s)
    with pytest.raises(ValueError, match="fp8_gemm with a bf16 or fp32 output only"):
        dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="group_k must be 128 or 256"):
        dg.quantize_act(torch.randn(4, 512), group_k=512)
    with pytest.raises(ValueError, match="block must be"):
        dg.quantize_weight(torch.randn(4, 512), block=(256, 256))
    with pytest.raises(ValueError, match="multiple of 256"):
        dg.quantize_act(torch.randn(4, 384), group_k=256)
    with pytest.raises(ValueError, match="multiple of 256"):
        dg.quantize_weight(torch.randn(4, 384), block=(128, 256))


def test_fake_kernels_and_compile():
    x, w = torch.randn(9, 512), torch.randn(136, 512)

    def f(x, w):
        return dg.fp8_gemm(*dg.quantize_act(x, group_k=256), *dg.quantize_weight(w, block=(128, 256)))

    want = f(x, w)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w)
    assert torch.equal(got, want)
    a, a_s, b, b_s = _inputs(9, 136, 512)
    torch.library.opcheck(torch.ops.deepergemm.fp8_gemm.default, (a, a_s, b, b_s, torch.bfloat16, None, "auto"),
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))
    torch.library.opcheck(torch.ops.deepergemm.quantize_act.default, (x, False, 256),
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))


def test_linear_quantizes_by_the_weights_recipe():
    x, w = torch.randn(3, 7, 512), torch.randn(136, 512)
    w8, w_s = dg.quantize_weight(w, block=(128, 256))
    y = dg.linear(x, w8, w_s)
    a, a_s = dg.quantize_act(x.reshape(21, 512), group_k=256)
    assert y.shape == (3, 7, 136) and y.dtype == torch.float32
    assert torch.equal(y.reshape(21, 136), dg.fp8_gemm(a, a_s, w8, w_s, out_dtype=torch.float32))
    with pytest.raises(ValueError, match=r"or \(ceil\(N/128\), K/256\) = \(2, 2\) for the 256-K recipe"):
        dg.linear(x, w8, w_s[:, :1])
    got = torch.compile(lambda x: dg.linear(x, w8, w_s), fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(got, y)


# ----------------------------------------------------------------------------------------------
# CPU: the pairs variants and their selection
# ----------------------------------------------------------------------------------------------
def test_pairs_variants_are_twins_of_one_partial_set_tiles():
    for v in configs.RECIPE_256_VARIANTS:
        assert v.pairs and v.acc_mode == 3 and "r" in v.key and configs.parse_key(v.key) == v
        assert v in configs.BUILT_VARIANTS and v.compile_defines()["DG_ACC"] == 3
        assert dataclasses.replace(v, pairs=False) in configs.VARIANTS + (dataclasses.replace(v, pairs=False),)
    for bad in (dict(splits=2, block_m=64, block_n=64, math_wgs=1), dict(dual_acc=True, block_m=128),
                dict(fp8_out=True)):
        fields = dict(block_m=128, block_n=128, stages=6, dual_acc=False, pairs=True) | bad
        with pytest.raises(ValueError):
            configs.Variant(**fields)


def test_select_recipe_256_takes_the_pairs_twin_of_the_plain_pick():
    """The pairs twin (same tile, cluster and launch) of select()'s pick where that is a one-partial-set tile with a
    twin (with the pick's stream-K, cut on pairs); select()'s own pick (on the pair scales) everywhere else."""
    sms = 132
    seen = set()
    for m in (1, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        for n, k in ((7168, 2048), (2112, 7168), (24576, 1536), (4096, 7168), (7168, 16384), (32768, 512)):
            plain = configs.select(m, n, k, sms)
            choice = configs.select_recipe_256(m, n, k, sms)
            twins = [v for v in configs.RECIPE_256_VARIANTS if dataclasses.replace(v, pairs=False) == plain.variant]
            if twins:
                twin = twins[0]
                assert choice == dataclasses.replace(plain, variant=twin), (m, n, k)
                seen.add(choice.variant.key)
            else:
                assert choice == plain, (m, n, k)
    assert seen == {"256x128s4r", "256x128s4rc1x2"}  # unclustered at middle M, A-multicast pairs at large M
    assert not configs.select_recipe_256(1, 7168, 2048, sms).variant.pairs  # decode keeps its small tiles
    tail = configs.select_recipe_256(4096, 2112, 7168, sms)  # the pick's stream-K tail, cut on pairs
    assert tail.variant.pairs and tail.stream_k and configs.stream_k_for(tail.variant)
    with pytest.raises(ValueError, match="multiple of 256"):
        configs.select_recipe_256(4096, 7168, 384, sms)


def test_pairs_switch_off(monkeypatch):
    monkeypatch.setenv("DEEPERGEMM_PAIRS", "0")
    try:
        sw = configs.reload_switches()
        assert not configs.select_recipe_256(4096, 7168, 2048, 132, sw=sw).variant.pairs
    finally:
        monkeypatch.delenv("DEEPERGEMM_PAIRS")
        configs.reload_switches()


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("m,k", [(1, 256), (37, 768), (128, 7168), (1000, 1536)])
def test_gpu_quantizers_bit_exact(m, k):
    x = torch.randn(m, k, device="cuda").bfloat16()
    x[0, :3] = torch.tensor([448.0 * 3, -1e-30, 0.0])
    w = torch.randn(m + 5, k, device="cuda").bfloat16()
    for ue8m0 in (False, True):
        a, a_s = dg.quantize_act(x, ue8m0=ue8m0, group_k=256)
        want_a, want_as = ref.quantize_act(x.cpu(), ue8m0=ue8m0, group_k=256)
        assert torch.equal(a.cpu().view(torch.uint8), want_a.view(torch.uint8)) and torch.equal(a_s.cpu(), want_as)
        assert layouts.is_act_scale_layout(a_s)
        b, b_s = dg.quantize_weight(w, ue8m0=ue8m0, block=(128, 256))
        want_b, want_bs = ref.quantize_weight(w.cpu(), ue8m0=ue8m0, block_k=256)
        assert torch.equal(b.cpu().view(torch.uint8), want_b.view(torch.uint8)) and torch.equal(b_s.cpu(), want_bs)


GPU_SHAPES = ((1, 7168, 2048), (37, 384, 512), (200, 1288, 768), (256, 7168, 4096), (333, 2112, 1024),
              (1024, 4096, 2048), (2048, 7168, 2048), (4096, 7168, 2048), (4097, 2112, 7168))


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", GPU_SHAPES, ids=lambda v: str(v))
def test_gpu_op_is_exact(no_split_orders, m, n, k):
    """fp8_gemm on 256-recipe scales: exact, every element written (the op's output is checked for NaN; inputs hold
    none), the pairs where the plan takes them; equal to its own second launch (deterministic)."""
    a, a_s, b, b_s = _inputs(m, n, k, "cuda", outliers=m % 2 == 1)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    torch.full((m * n,), float("nan"), dtype=torch.bfloat16, device="cuda")  # a freed NaN block the op may reuse
    out = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
    torch.cuda.synchronize()
    assert not out.isnan().any()
    variant = configs.select_recipe_256(m, n, k, sms).variant
    _assert_exact(out.cpu(), (a, a_s, b, b_s), (m, n, k, variant.key), variant.pairs)
    assert torch.equal(out, dg.fp8_gemm(a, a_s, b, b_s, backend="ptx"))


def _launch(variant, a, a_s, b, b_s, stream_k):
    """One direct launch of `variant` on 256-recipe operands into a NaN-poisoned output."""
    m, n = a.shape[0], b.shape[0]
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    kernels.launch(extension.load(variant), a, layouts.to_act_scale_layout(a_s), b, b_s.contiguous(), out, None,
                   16, configs.variant_l2_hints(m, variant), stream_k)
    torch.cuda.synchronize()
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("variant", configs.RECIPE_256_VARIANTS, ids=lambda v: v.key)
def test_gpu_every_pairs_variant(variant):
    """Each pairs variant launched directly into NaN-poisoned outputs: odd M (tails, a cluster partner's padding
    tile), N not a multiple of the tile, K from one pair up; exact, and within the rounding of bf16 of the 128
    kernel on the same operands (scales repeated per 128)."""
    twin = dataclasses.replace(variant, pairs=False)
    for m, n, k in ((1, 136, 256), (1, 7168, 512), (65, 264, 512), (300, 1032, 768), (513, 2112, 2048)):
        a, a_s, b, b_s = _inputs(m, n, k, "cuda", outliers=True)
        pairs = _launch(variant, a, a_s, b, b_s, stream_k=False)
        per128 = _launch(twin, a, a_s.repeat_interleave(2, dim=1), b, b_s.repeat_interleave(2, dim=1), stream_k=False)
        assert not pairs.isnan().any(), (variant.key, m, n, k)
        _assert_exact(pairs.cpu(), (a, a_s, b, b_s), (variant.key, m, n, k), pairs=True)
        if pairs.numel() >= 16384:
            assert ref.calc_diff(pairs, per128) < BAR, (variant.key, m, n, k)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["tail", "fill"])
@pytest.mark.parametrize("variant", [v for v in configs.RECIPE_256_VARIANTS if configs.stream_k_for(v)],
                         ids=lambda v: v.key)
def test_gpu_pairs_stream_k(variant, mode):
    """The pairs under stream-K, whose ranges are cut on pairs of K blocks (scheduler.cuh's KG): a tail (a part-filled
    last wave shared out; K of 2, 5 and 9 pairs: a tile never cut, or cut once) gives the bits of the same launch
    without stream-K (the tail's sums start from the head's, the order of an uncut tile); a fill (fewer units than
    clusters, each tile in pieces joined by its owner) is exact and reproducible. Every element written, the
    workspace's flags lowered again."""
    from test_gemm_kernel import _stream_k_fill_shapes, _stream_k_shapes
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shapes = (_stream_k_shapes(variant, cases=((1000, 1280), (4100, 2304), (2304, 256))) if mode == "tail"
              else _stream_k_fill_shapes(variant, ks=(7168, 512, 11264), granule=2))
    for m, n, k in shapes:
        a, a_s, b, b_s = _inputs(m, n, k, "cuda", outliers=m % 2 == 1)
        first = _launch(variant, a, a_s, b, b_s, stream_k=True)
        assert not first.isnan().any(), (variant.key, mode, m, n, k)
        expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
        assert ref.calc_diff(first, expected) < BAR, (variant.key, mode, m, n, k)
        again = _launch(variant, a, a_s, b, b_s, stream_k=True)
        assert torch.equal(first.view(torch.int16), again.view(torch.int16)), (variant.key, mode, m, n, k)
        if mode == "tail":
            uncut = _launch(variant, a, a_s, b, b_s, stream_k=False)
            assert torch.equal(first.view(torch.int16), uncut.view(torch.int16)), (variant.key, m, n, k)
        assert int(kernels.stream_k_workspace(a.device)[: sms * variant.math_wgs].count_nonzero()) == 0


@pytest.mark.gpu
def test_gpu_op_runs_the_pairs_stream_k_tail():
    """Through the op, a large-M problem whose plan has a stream-K tail (N = 2112: a part-filled last wave) runs its
    pairs twin with the tail: the bits of that variant launched without stream-K."""
    m, n, k = 4096, 2112, 7168
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    choice = configs.select_recipe_256(m, n, k, sms)
    assert choice.variant.pairs and choice.stream_k, choice
    a, a_s, b, b_s = _inputs(m, n, k, "cuda")
    torch.full((m * n,), float("nan"), dtype=torch.bfloat16, device="cuda")  # a freed NaN block the op may reuse
    out = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
    torch.cuda.synchronize()
    assert torch.equal(out.view(torch.int16), _launch(choice.variant, a, a_s, b, b_s, stream_k=False).view(torch.int16))
    expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
    assert ref.calc_diff(out, expected) < BAR


# Problems whose 256-recipe plan is not a pairs variant (select_recipe_256 falls back to select()'s pick): swapped
# decode tiles, split-K clusters, 64-row B-multicast pairs, 128-row tiles with dual accumulators.
FALLBACK_SHAPES = ((1, 7168, 2048), (13, 2112, 7168), (64, 2112, 7168), (128, 7168, 2048), (256, 7168, 4096),
                   (256, 2112, 7168), (512, 4096, 2048))


@pytest.mark.gpu
def test_gpu_fallback_plans_read_the_pair_scale_of_each_block():
    """Every non-pairs plan of FALLBACK_SHAPES launched on the 256-recipe scales (each K block reading column kb / 2)
    into NaN-poisoned outputs: bit-identical to the same launch on the scales repeated per 128, which the 128 kernels
    are tested on. A block reading a neighbour's scale differs in most outputs. Odd M (1, 13) and N = 2112 (a part
    tile at 64 and 128 columns) run row and column tails."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    seen = set()
    for m, n, k in FALLBACK_SHAPES:
        choice = configs.select_recipe_256(m, n, k, sms)
        assert not choice.variant.pairs, (m, n, k, choice.variant.key)
        seen.add(choice.variant.key)
        a, a_s, b, b_s = _inputs(m, n, k, "cuda", outliers=m % 2 == 1)
        outs = []
        for sa, sb in ((a_s, b_s), (a_s.repeat_interleave(2, dim=1), b_s.repeat_interleave(2, dim=1))):
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
            kernels.launch(extension.load(choice.variant), a, layouts.to_act_scale_layout(sa), b, sb.contiguous(), out,
                           None, choice.group_n, choice.l2_hints, choice.stream_k)
            outs.append(out)
        torch.cuda.synchronize()
        wide, per128 = outs
        assert not wide.isnan().any(), (m, n, k, choice.variant.key)
        assert torch.equal(wide, per128), (m, n, k, choice.variant.key)
        _assert_exact(wide.cpu(), (a, a_s, b, b_s), (m, n, k, choice.variant.key), pairs=False)
    assert len(seen) >= 5, seen  # the shapes cover several kinds of plan
