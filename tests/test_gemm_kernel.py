"""The inline-PTX GEMM on the GPU: exactness, every output written, determinism, every variant.

Inputs are fresh N(0,1) per test, scaled per 1x128 (A) and per 128x128 block (B) by magnitudes spanning
1e-3..1e3 so the scales differ wildly; outputs are poisoned with NaN before each launch.
"""
import pytest
import torch

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts
from deepergemm import reference as ref
from deepergemm.benchmark.shapes import ALL_SHAPES

pytestmark = pytest.mark.gpu
ODD_M = (1, 7, 65, 129, 1000)
ODD_N = (8, 136, 2056)
ODD_K = (128, 384, 18432)


def _spread(rows: int, cols: int, row_block: int) -> torch.Tensor:
    """Magnitudes 10**U(-3, 3), constant over row_block x 128 blocks."""
    exps = torch.empty(-(-rows // row_block), cols // 128, device="cuda").uniform_(-3, 3)
    mags = torch.pow(10.0, exps).repeat_interleave(row_block, 0)[:rows].repeat_interleave(128, 1)
    return mags


def make_inputs(m, n, k, spread=True):
    x = torch.randn(m, k, device="cuda")
    w = torch.randn(n, k, device="cuda")
    if spread:
        x = x * _spread(m, k, 1)
        w = w * _spread(n, k, 128)
    a, a_s = dg.quantize_act(x.bfloat16())
    b, b_s = dg.quantize_weight(w.bfloat16())
    return a, a_s, b, b_s


def exact(a, a_s, b, b_s):
    return ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))


def run_variant(variant, a, a_s, b, b_s, out_dtype=torch.bfloat16, bias=None, group_n=16, l2_hints=None,
                stream_k=None):
    """Launch one variant directly into a NaN-poisoned output (L2 hints: configs' choice unless given)."""
    m, n = a.shape[0], b.shape[0]
    l2_hints = configs.variant_l2_hints(m, variant) if l2_hints is None else l2_hints
    variant.check_k(a.shape[1])  # the rule Python enforces before any launch (the binding's check aborts)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=out_dtype)
    bias_kind = {None: 0, torch.float32: 1, torch.bfloat16: 2}[None if bias is None else bias.dtype]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    kernels.launch(extension.load(variant), a, layouts.to_act_scale_layout(a_s), b, b_s, out, bias, group_n, l2_hints,
                   configs.stream_k_pays(m, n, a.shape[1], variant, sms) if stream_k is None else stream_k)
    torch.cuda.synchronize()
    return out


def check(out, expected, what):
    """calc_diff against the fp32 reference within reference.exactness_bound (2e-6, or the bf16 rounding floor
    when a handful of outputs carry the whole norm: tiny outputs such as 1x8x128, or inputs with scales
    spread over 1e-3..1e3, where even the exact result rounded once to bf16 can land above 2e-6; on such inputs
    our calc_diff was measured equal to cuBLAS's on the columns cuBLAS can compute), and every element written."""
    assert not out.isnan().any(), f"{what}: {int(out.isnan().sum())} output elements not written"
    diff = ref.calc_diff(out, expected)
    bound = ref.exactness_bound(expected, out.dtype)
    assert diff <= bound, f"{what}: calc_diff {diff:.3e} > {bound:.3e}"


def test_auto_backend_is_ptx_on_hopper():
    assert kernels.available(torch.device("cuda"))
    assert dg.ops.resolve_backend("auto", torch.device("cuda")) == "ptx"


@pytest.mark.parametrize("variant", configs.TESTED_VARIANTS, ids=lambda v: v.key)
def test_every_variant_exact_on_odd_shapes(variant):
    # (300, 200, 256): an odd number of M-tiles, so a 2-CTA cluster pairs the last tile with a padding one;
    # N = 8, 136, 200: the partner's half of the last B tile lies wholly out of bounds. (300, 264, 384):
    # odd tile counts along M and N, so a 2x2 cluster has padding tiles in both directions.
    # (65, 136, 384) with 2 K splits: ranges of 1 and 2 K blocks.
    for m, n, k in ((1, 8, 128), (65, 136, 384), (129, 2056, 256), (1000, 264, 640), (7, 392, 1152),
                    (300, 200, 256), (300, 264, 384)):
        if k < 128 * variant.splits:
            continue  # split-K variants need a K block per split (test_split_k_needs_a_k_block_per_split)
        a, a_s, b, b_s = make_inputs(m, n, k)
        check(run_variant(variant, a, a_s, b, b_s), exact(a, a_s, b, b_s), f"{variant.key} {m}x{n}x{k}")


@pytest.mark.parametrize("key", ("128x128s6w", "256x128s4p", "64x64s13dm1", "128x192s5pc2", "128x128s6dc1x2"))
def test_part_filled_last_m_tile_gives_the_full_tiles_bits(key):
    # Every row of a part-filled last M-tile must come out as it does from a problem whose tiles are all full: the
    # same A rows inside a larger A, bit for bit. That tile is moved up to end at the last row (its start rounded up
    # to 16 rows; producer.cuh kMovesLastTile; in place under DG_NO_TILE_SHIFT): it computes the rows it shares with
    # the tile before again and stores only its own. M = 161, 130: rounded starts, the shared rows ending between two
    # warps' rows; 2x1 clusters pair the last tile with a padding tile at M = 300 (three M-tiles of 128).
    variant = configs.parse_key(key)
    n, k = 392, 640
    for m in (variant.block_m + 1, variant.block_m + 33, 161, 130, 300):
        m_full = -(-m // variant.block_m) * variant.block_m
        a, a_s, b, b_s = make_inputs(m_full, n, k)
        full = run_variant(variant, a, a_s, b, b_s, stream_k=False)
        part = run_variant(variant, a[:m].contiguous(), a_s[:m].contiguous(), b, b_s, stream_k=False)
        check(part, exact(a[:m], a_s[:m], b, b_s), f"{key} {m}x{n}x{k}")
        assert torch.equal(part.view(torch.int16), full[:m].view(torch.int16)), f"{key} M = {m}: rows differ"


def test_split_k_needs_a_k_block_per_split():
    variant = next(v for v in configs.TESTED_VARIANTS if v.splits > 1)
    a, a_s, b, b_s = make_inputs(64, 128, 128 * (variant.splits - 1))
    with pytest.raises(ValueError, match="splits K in 2 and needs K >= 256"):
        run_variant(variant, a, a_s, b, b_s)


def test_split_k_is_deterministic_and_equals_exact_on_a_persistent_grid():
    # more tiles than resident clusters: every split pair runs several tiles (the slot hand-off's phases)
    variant = next(v for v in configs.TESTED_VARIANTS if v.splits > 1)
    a, a_s, b, b_s = make_inputs(1000, 4104, 1152)
    first = run_variant(variant, a, a_s, b, b_s)
    check(first, exact(a, a_s, b, b_s), variant.key)
    assert torch.equal(first.view(torch.int16), run_variant(variant, a, a_s, b, b_s).view(torch.int16))


@pytest.mark.parametrize("m", ODD_M)
def test_odd_shapes_through_the_op(m):
    for n in ODD_N:
        for k in ODD_K:
            a, a_s, b, b_s = make_inputs(m, n, k)
            check(dg.fp8_gemm(a, a_s, b, b_s, backend="ptx"), exact(a, a_s, b, b_s), f"{m}x{n}x{k}")


@pytest.mark.parametrize("shape", ALL_SHAPES, ids=str)
def test_anchor_shapes_exact_and_deterministic(shape):
    a, a_s, b, b_s = make_inputs(shape.m, shape.n, shape.k, spread=False)
    choice = configs.select(shape.m, shape.n, shape.k, torch.cuda.get_device_properties(0).multi_processor_count)
    first = run_variant(choice.variant, a, a_s, b, b_s, group_n=choice.group_n)
    check(first, exact(a, a_s, b, b_s), str(shape))
    again = run_variant(choice.variant, a, a_s, b, b_s, group_n=choice.group_n)
    assert torch.equal(first.view(torch.int16), again.view(torch.int16)), f"{shape}: results differ run to run"


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias_dtype", [None, torch.float32, torch.bfloat16, torch.float16])
def test_bias_and_output_dtype(out_dtype, bias_dtype):
    m, n, k = 130, 272, 512
    a, a_s, b, b_s = make_inputs(m, n, k, spread=False)  # the epilogue is under test, not the promotion
    bias = None if bias_dtype is None else (torch.randn(n, device="cuda") * 100).to(bias_dtype)
    expected = exact(a, a_s, b, b_s) + (0 if bias is None else bias.float())
    out = dg.fp8_gemm(a, a_s, b, b_s, out_dtype=out_dtype, bias=bias, backend="ptx")
    assert out.dtype == out_dtype
    check(out, expected, f"out {out_dtype}, bias {bias_dtype}")
    if out_dtype == torch.float32:
        assert ref.calc_diff(out, expected) < 1e-7, "fp32 output is rounded to bf16 (which alone gives ~1e-6)"


def test_fp32_output_every_element_written():
    # K = 640: five K blocks, enough for every variant's splits (4 at most) and uneven between them
    a, a_s, b, b_s = make_inputs(65, 136, 640)
    assert all(640 // 128 >= v.splits for v in configs.TESTED_VARIANTS)
    for variant in configs.TESTED_VARIANTS:
        check(run_variant(variant, a, a_s, b, b_s, out_dtype=torch.float32), exact(a, a_s, b, b_s), variant.key)


def test_group_n_rasterization_does_not_change_results():
    # (without stream-K: where it cuts a tile's K range depends on the tile's place in the raster order)
    a, a_s, b, b_s = make_inputs(1000, 2056, 384)
    variant = configs.find_variant(128, 128, True, cluster=(2, 1))
    outs = [run_variant(variant, a, a_s, b, b_s, group_n=g, stream_k=False) for g in (1, 3, 16, 100)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    check(outs[0], exact(a, a_s, b, b_s), "group_n")


def test_l2_hints_do_not_change_results():
    """The L2 eviction priorities (every combination of A's and B's) only move data in L2: same bits."""
    a, a_s, b, b_s = make_inputs(65, 2056, 640)
    for variant in (configs.find_variant(64, 64, True), configs.find_variant(128, 128, True, cluster=(2, 1))):
        outs = [run_variant(variant, a, a_s, b, b_s, l2_hints=h) for h in (0, 1, 2, 4, 6, 9, 10)]
        assert all(torch.equal(outs[0], o) for o in outs[1:]), variant.key
        check(outs[0], exact(a, a_s, b, b_s), f"{variant.key} l2 hints")


STREAM_K_VARIANTS = [v for v in configs.TESTED_VARIANTS if configs.stream_k_for(v)]


def _stream_k_shapes(variant, cases=((1000, 384), (4100, 1152), (2304, 128))):
    """Shapes whose units leave the last wave part-filled (so the launch takes the stream-K tail): (M, K) cases
    with K of 3, 9 and 1 K blocks by default (a tile cut at most once, or not at all with one block), odd M and N
    tails, and several waves."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    clusters = sms // variant.cluster
    out = []
    for m, k in cases:
        m_units = -(-m // (variant.block_m * variant.cluster_m))
        n_units = clusters * 3 // (2 * m_units) + 1  # about 1.5 waves: the tail is cut
        while (m_units * n_units) % clusters == 0:
            n_units += 1
        n = n_units * variant.block_n * variant.cluster_n - 8
        units, _ = configs.waves_for(m, n, variant.block_m, variant.block_n, sms, (variant.cluster_m, variant.cluster_n))
        assert units == m_units * n_units and units > clusters and units % clusters, (m, n, units, clusters)
        out.append((m, n, k))
    return out


def _stream_k_fill_shapes(variant, ks=(7168, 384, 5760), granule=1):
    """Shapes with fewer units than clusters (so a stream-K launch is a fill, every tile cut among clusters running
    at once), at the three K of `ks` (by default 56, 3 and 45 blocks): about half the clusters' units (tiles in two
    or three pieces), a few units short of the clusters (ranges of one or two blocks, pieces of one block), and
    three units (each tile in dozens of pieces); odd M and N tails. granule: the K blocks a range is cut in
    multiples of (2 for the 256-K recipe's pairs)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    clusters = sms // variant.cluster
    out = []
    for m, k, units in zip((300, 130, 70), ks, (clusters // 2, clusters - 3, 3)):
        m_units = -(-m // (variant.block_m * variant.cluster_m))
        n_units = max(1, units // m_units)
        n = n_units * variant.block_n * variant.cluster_n - 24
        units, _ = configs.waves_for(m, n, variant.block_m, variant.block_n, sms, (variant.cluster_m, variant.cluster_n))
        assert units < clusters and units * (k // (128 * granule)) >= clusters, (m, n, k, units, clusters)
        out.append((m, n, k))
    return out


@pytest.mark.parametrize("mode", ["tail", "fill"])
@pytest.mark.parametrize("variant", STREAM_K_VARIANTS, ids=lambda v: v.key)
def test_stream_k_exact_deterministic_and_flags_left_at_zero(variant, mode):
    """Stream-K (ptx/scheduler.cuh), a tail (a part-filled last wave shared out) or a fill (fewer units than
    clusters: each tile's owner joins the pieces of the clusters before it after its last K block): exact, bitwise
    reproducible, every element written, and every flag a piece raised lowered again by its owner (the next launch
    starts clean)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for m, n, k in _stream_k_shapes(variant) if mode == "tail" else _stream_k_fill_shapes(variant):
        a, a_s, b, b_s = make_inputs(m, n, k)
        expected = exact(a, a_s, b, b_s)
        first = run_variant(variant, a, a_s, b, b_s, stream_k=True)
        check(first, expected, f"{variant.key} {m}x{n}x{k} stream-K {mode}")
        for _ in range(2):
            again = run_variant(variant, a, a_s, b, b_s, stream_k=True)
            assert torch.equal(first.view(torch.int16), again.view(torch.int16)), \
                f"{variant.key} {m}x{n}x{k}: stream-K {mode} not reproducible"
        check(run_variant(variant, a, a_s, b, b_s, stream_k=False), expected, f"{variant.key} {m}x{n}x{k}")
        workspace = kernels.stream_k_workspace(a.device)
        torch.cuda.synchronize()
        assert int(workspace[: sms * variant.math_wgs].count_nonzero()) == 0


def test_stream_k_through_the_op_and_a_cuda_graph():
    """The op picks the stream-K tail for a large-M shape with a part-filled last wave; inside a captured
    CUDA graph it gets a workspace of its own, and replays stay exact and reproducible."""
    m, n, k = 4096, 2112, 6144  # (a tail needs K >= STREAM_K_MIN_K)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert configs.select(m, n, k, sms).stream_k
    a, a_s, b, b_s = make_inputs(m, n, k, spread=False)
    eager = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
    check(eager, exact(a, a_s, b, b_s), "op stream-K")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
    for _ in range(2):
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out.view(torch.int16), eager.view(torch.int16))


def test_programmatic_dependent_launch_keeps_results(monkeypatch):
    """DEEPERGEMM_PDL=1: each GEMM may start while the previous kernel of the stream finishes; it waits for
    that kernel before touching global memory. A chain where each GEMM reads what the kernel before it wrote
    (quantize -> GEMM -> quantize -> GEMM ..., also into reused allocator blocks) gives the same bits as without
    PDL, eagerly and replayed from a CUDA graph."""
    a, a_s, b, b_s = make_inputs(200, 1024, 1024, spread=False)

    def chain():
        y = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
        for _ in range(6):
            q, s = dg.quantize_act(y)
            y = dg.fp8_gemm(q, s, b, b_s, backend="ptx") * 0.03
        return y

    monkeypatch.setenv("DEEPERGEMM_PDL", "0")
    want = chain()
    monkeypatch.setenv("DEEPERGEMM_PDL", "1")
    for _ in range(3):
        assert torch.equal(chain().view(torch.int16), want.view(torch.int16))
    chain()  # warm-up before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = chain()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static.view(torch.int16), want.view(torch.int16))


def test_programmatic_dependent_launch_back_to_back_gemms(monkeypatch):
    """GEMMs launched with PDL right after each other, so each is released early by the one before: the second
    reads the first's output (as its bias) and must wait for it; stream-K GEMMs share their workspace flags, which
    each launch must find at zero."""
    a, a_s, b, b_s = make_inputs(4096, 2112, 6144, spread=False)  # the stream-K tail (see the test above)

    def pair():
        y = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
        z = dg.fp8_gemm(a, a_s, b, b_s, bias=y[17], backend="ptx")  # a row of y: read in place, no copy kernel
        return y, z, dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")

    monkeypatch.setenv("DEEPERGEMM_PDL", "0")
    want = pair()
    monkeypatch.setenv("DEEPERGEMM_PDL", "1")
    for _ in range(5):
        got = pair()
        assert all(torch.equal(g.view(torch.int16), w.view(torch.int16)) for g, w in zip(got, want))


@pytest.mark.parametrize("m", (1, 7, 16, 33, 64))
def test_swapped_small_m_exact_with_bias_and_both_outputs(monkeypatch, m):
    """DEEPERGEMM_SWAP_AB=1: the op picks a swapped tile (out^T = B A^T, transposed stores) for M <= 64; each
    picked variant is exact into NaN-poisoned bf16 and fp32 outputs with a bias (per row of B there), and the op
    matches the unswapped kernel to bf16 rounding and is reproducible."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for n, k in ((2112, 7168), (264, 384), (4096, 1024)):
        monkeypatch.setenv("DEEPERGEMM_SWAP_AB", "1")
        variant = configs.select(m, n, k, sms).variant
        assert variant.swapped, (m, n, k, variant.key)
        a, a_s, b, b_s = make_inputs(m, n, k)
        expected = exact(a, a_s, b, b_s)
        for bias_dtype in (torch.float32, torch.bfloat16):
            bias = torch.randn(n, device="cuda").to(bias_dtype)
            for out_dtype in (torch.bfloat16, torch.float32):
                out = run_variant(variant, a, a_s, b, b_s, out_dtype, bias)
                check(out, expected + bias.float(), f"{variant.key} {m}x{n}x{k} {out_dtype} bias {bias_dtype}")
        swapped = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
        again = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
        assert torch.equal(swapped.view(torch.int16), again.view(torch.int16)), f"{m}x{n}x{k}: not reproducible"
        monkeypatch.setenv("DEEPERGEMM_SWAP_AB", "0")
        plain = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
        assert ref.calc_diff(swapped, plain) < 1e-5, f"{m}x{n}x{k}: swapped and plain differ"
