"""GEMMs with B placed by L2 side (deepergemm/l2_placement.py, issue 5): the op and the public API on the CPU
(through the reference), configs' side split, and on the GPU (marked) the kernel's placed-B loads and its
side-aware scheduler for every tested variant, with synthetic placements and SM-side tables (correctness
must not depend on where the clusters land or where the memory really lives)."""
import pytest
import torch

import deepergemm as dg
from deepergemm import configs, l2_placement
from deepergemm import reference as ref


def _weight(n, k, device="cpu"):
    w = torch.randn(n, k, device=device)
    return dg.quantize_weight(w.bfloat16())


def _act(m, k, device="cpu"):
    return dg.quantize_act(torch.randn(m, k, device=device).bfloat16())


def _slot_sides(n, k, slab_rows, spare=1.3, mixed=0.05):
    """Random slot sides with some unusable (mixed) slots, enough of each side for (n, k)."""
    need = -(-n // slab_rows) * (k // 128) + 1
    total = int(2 * need * spare) + 16
    sides = torch.randint(0, 2, (total,), dtype=torch.int8)
    sides[torch.rand(total) < mixed] = -1
    return sides


def _placed(w, w_s, slab_rows=32, split_rows=None):
    n, k = w.shape
    split = split_rows if split_rows is not None else n // 256 * 128
    return l2_placement.place(w, w_s, _slot_sides(n, k, slab_rows), slab_rows, split)


# ----------------------------------------------------------------------------------------------
# CPU: the op, the public API, configs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m,n,k,slab_rows", [(1, 264, 128, 32), (77, 512, 384, 16), (130, 2112, 256, 32),
                                             (3, 1000, 256, 128), (9, 2112, 128, 256)])
def test_placed_gemm_equals_the_plain_gemm_on_cpu(m, n, k, slab_rows):
    w, w_s = _weight(n, k)
    a, a_s = _act(m, k)
    prepared = _placed(w, w_s, slab_rows)
    assert prepared.placed
    want = dg.fp8_gemm(a, a_s, w, w_s)
    got = dg.fp8_gemm(a, a_s, prepared)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    x = torch.randn(3, m, k).bfloat16()
    bias = torch.randn(n)
    assert torch.equal(dg.linear(x, prepared, bias=bias).float(), dg.linear(x, w, w_s, bias=bias).float())


def test_unplaced_prepared_weight_runs_the_plain_path(monkeypatch):
    monkeypatch.setenv("DEEPERGEMM_L2_SIDES", "0")
    w, w_s = _weight(256, 256)
    prepared = dg.prepare_weight(w, w_s)
    assert not prepared.placed and "DEEPERGEMM_L2_SIDES" in prepared.reason
    a, a_s = _act(5, 256)
    assert torch.equal(dg.fp8_gemm(a, a_s, prepared).float(), dg.fp8_gemm(a, a_s, w, w_s).float())


def test_placed_gemm_under_torch_compile():
    w, w_s = _weight(384, 256)
    prepared = _placed(w, w_s)
    x = torch.randn(9, 256).bfloat16()

    @torch.compile(fullgraph=True, backend="eager")
    def layer(x):
        return dg.linear(x, prepared)

    assert torch.equal(layer(x).float(), dg.linear(x, w, w_s).float())


def test_prepared_weight_errors():
    w, w_s = _weight(256, 256)
    prepared = _placed(w, w_s)
    a, a_s = _act(4, 256)
    with pytest.raises(ValueError, match="b_scales: a PreparedWeight carries its own scales"):
        dg.fp8_gemm(a, a_s, prepared, w_s)
    with pytest.raises(ValueError, match="b_scales is required"):
        dg.fp8_gemm(a, a_s, w)
    with pytest.raises(ValueError, match=r"x.shape\[-1\]"):
        dg.linear(torch.randn(2, 128).bfloat16(), prepared)


def _op_args(prepared, a, a_s):
    return [a, a_s, prepared.pool, prepared.slots, prepared.scales, prepared.n, prepared.slab_rows,
            prepared.split_rows]


@pytest.mark.parametrize("change,match", [
    (lambda args: args.__setitem__(6, 12), "slab_rows must be one of"),
    (lambda args: args.__setitem__(2, args[2].view(torch.int8)), "pool"),
    (lambda args: args.__setitem__(2, args[2][:, :64]), r"pool must be a contiguous \(slots \* slab_rows, 128\)"),
    (lambda args: args.__setitem__(3, args[3][:, :4].contiguous()), "slots must cover"),
    (lambda args: args.__setitem__(3, args[3].long()), "slots"),
    (lambda args: args.__setitem__(7, 10_000), "split_rows must lie in"),
    (lambda args: args.__setitem__(0, args[0][:, :128]), r"K = 128 \* slots.shape\[0\]"),
    (lambda args: args.__setitem__(4, args[4][:1]), "b_scales must have shape"),
])
def test_placed_op_names_the_bad_argument(change, match):
    w, w_s = _weight(256, 256)
    a, a_s = _act(4, 256)
    args = _op_args(_placed(w, w_s), a, a_s)
    change(args)
    with pytest.raises((ValueError, TypeError), match=match):
        torch.ops.deepergemm.fp8_gemm_placed(*args)


def test_placed_op_checks_the_sm_side_table():
    w, w_s = _weight(256, 256)
    a, a_s = _act(4, 256)
    args = _op_args(_placed(w, w_s), a, a_s)
    with pytest.raises(ValueError, match=r"sm_side must have shape \(256,\)"):
        torch.ops.deepergemm.fp8_gemm_placed(*args, torch.bfloat16, None, torch.zeros(132, dtype=torch.uint8))


def test_side_split_follows_the_rows_and_refuses_skew():
    v = configs.find_variant(64, 32, True)
    # 2112 rows, side 0 below 1024: 32 of 66 tiles
    assert configs.side0_n_tiles(v, 2112, 1024) == 32
    v128 = configs.find_variant(128, 128, False, (2, 1))
    assert configs.side0_n_tiles(v128, 7168, 3584) == 28
    assert configs.side0_n_tiles(v128, 7168, 0) is None and configs.side0_n_tiles(v128, 7168, 7168) is None
    assert configs.side0_n_tiles(v128, 128, 64) is None        # one N-tile: nothing to split
    assert configs.side0_n_tiles(v128, 384, 128) == 1          # 1 of 3 tiles for a third of the rows
    v1x2 = configs.find_variant(256, 128, False, (1, 2))
    assert configs.side0_n_tiles(v1x2, 1024, 512) == 4          # whole cluster N-units (of 2 tiles)
    assert configs.side0_n_tiles(v1x2, 768, 256) == 2
    assert configs.side0_n_tiles(v1x2, 384, 256) is None        # 1 of 2 units (0.5) for 2/3 of the rows: skewed
    assert configs.side0_n_tiles(v1x2, 384, 128) is None        # no whole unit below the split
    for variant in configs.TESTED_VARIANTS:
        for n, split in ((2112, 1024), (7168, 3584), (4096, 2048), (576, 256)):
            t0 = configs.side0_n_tiles(variant, n, split)
            if t0 is not None:
                n_tiles = -(-n // variant.block_n)
                assert 0 < t0 < n_tiles and t0 % variant.cluster_n == 0


# ----------------------------------------------------------------------------------------------
# GPU: every variant's placed loads and side scheduling
# ----------------------------------------------------------------------------------------------
PLAIN_VARIANTS = [v for v in configs.TESTED_VARIANTS if v.grouping == configs.GROUP_NONE and not v.swapped]


def _sm_tables(device):
    g = torch.Generator().manual_seed(5)
    return {
        "all side 0": torch.zeros(256, dtype=torch.uint8),
        "all side 1": torch.ones(256, dtype=torch.uint8),
        "alternating": (torch.arange(256) % 2).to(torch.uint8),
        "random": torch.randint(0, 2, (256,), generator=g).to(torch.uint8),
    }


def _launch(variant, a, a_s, b, b_s, n, stream_k, placed=None, sides=None):
    from deepergemm import extension, kernels, layouts

    m = a.shape[0]
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    kernels.launch(extension.load(variant), a, layouts.to_act_scale_layout(a_s), b, b_s, out, None, 16,
                   configs.l2_hints_for(m, variant.block_m, variant.cluster_m), stream_k, placed=placed, sides=sides)
    torch.cuda.synchronize()
    return out


def _side0(variant, n):
    n_units = -(-n // (variant.block_n * variant.cluster_n))
    return max(1, n_units // 2) * variant.cluster_n if n_units >= 2 else None


@pytest.mark.gpu
@pytest.mark.parametrize("variant", PLAIN_VARIANTS, ids=lambda v: v.key)
def test_every_variant_with_placed_b_and_side_scheduling(variant):
    from deepergemm import kernels

    for m, n, k, slab_rows in ((77, 1000, 384, 32), (1, 2112, 768, 16), (300, 264, 1152, 8), (5, 1000, 256, 128),
                               (130, 2112, 512, 256)):
        if k // 128 < variant.splits:
            continue
        a, a_s = _act(m, k, "cuda")
        w, w_s = _weight(n, k, "cuda")
        split = max(128, n // 256 * 128) // slab_rows * slab_rows if slab_rows > 128 else max(128, n // 256 * 128)
        prepared = _placed(w, w_s, slab_rows, split_rows=split)
        placed = kernels.PlacedB(prepared.slots, slab_rows, n)
        expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(w, w_s))
        for stream_k in (False, True):
            plain = _launch(variant, a, a_s, w, w_s, n, stream_k)
            got = _launch(variant, a, a_s, prepared.pool, w_s, n, stream_k, placed=placed)
            what = f"{variant.key} {m}x{n}x{k} slab {slab_rows} stream-K {stream_k}"
            assert not got.isnan().any(), f"{what}: placed B left outputs unwritten"
            assert torch.equal(got.view(torch.int16), plain.view(torch.int16)), f"{what}: placed B differs"
            side0 = _side0(variant, n)
            if side0 is None:
                continue
            for name, table in _sm_tables("cuda").items():
                sides = kernels.SideSchedule(table.cuda(), side0)
                once = _launch(variant, a, a_s, prepared.pool, w_s, n, stream_k, placed=placed, sides=sides)
                assert not once.isnan().any(), f"{what}, SM sides {name}: outputs unwritten"
                assert ref.calc_diff(once, expected) <= ref.EXACT_TOL, f"{what}, SM sides {name}: not exact"
                if not stream_k:  # whole tiles: the same sums in the same order as the plain schedule
                    assert torch.equal(once.view(torch.int16), plain.view(torch.int16)), f"{what}, {name}"
                again = _launch(variant, a, a_s, prepared.pool, w_s, n, stream_k, placed=placed, sides=sides)
                assert torch.equal(once.view(torch.int16), again.view(torch.int16)), f"{what}, {name}: not reproducible"
                claims = kernels.side_claims(a.device)
                assert int(claims[:3].count_nonzero()) == 0, f"{what}, {name}: claim counters left at {claims.tolist()}"


@pytest.mark.gpu
def test_placed_gemm_through_the_op_in_a_cuda_graph():
    m, n, k = 64, 7168, 2048
    a, a_s = _act(m, k, "cuda")
    w, w_s = _weight(n, k, "cuda")
    prepared = _placed(w, w_s, 32, split_rows=3584)
    table = torch.randint(0, 2, (256,), dtype=torch.uint8, device="cuda")
    args = (a, a_s, prepared.pool, prepared.slots, prepared.scales, n, 32, 3584, torch.bfloat16, None, table, True,
            "ptx")
    eager = torch.ops.deepergemm.fp8_gemm_placed(*args)
    assert torch.equal(eager.view(torch.int16), dg.fp8_gemm(a, a_s, w, w_s, backend="ptx").view(torch.int16))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.ops.deepergemm.fp8_gemm_placed(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = torch.ops.deepergemm.fp8_gemm_placed(*args)
    for _ in range(3):
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out.view(torch.int16), eager.view(torch.int16))


@pytest.mark.gpu
def test_prepare_weight_on_the_gpu_runs_exact():
    """The real detection and pool: placed (or a stated reason), and the GEMM equals the plain one."""
    n, k = 2112, 7168
    w, w_s = _weight(n, k, "cuda")
    prepared = dg.prepare_weight(w, w_s)
    print(f"prepare_weight: placed={prepared.placed}: {prepared.reason}")
    assert prepared.placed or prepared.reason
    a, a_s = _act(32, k, "cuda")
    got = dg.fp8_gemm(a, a_s, prepared, backend="ptx")
    want = dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")
    assert ref.calc_diff(got, want) <= ref.EXACT_TOL and not got.isnan().any()


@pytest.mark.gpu
def test_side_aware_gemms_back_to_back_with_programmatic_dependent_launch(monkeypatch):
    """Side-aware GEMMs released early by the one before (PDL): each must find the slot counters at zero (the
    previous launch's last claimer resets them) and the second reads the first's output as its bias."""
    n, k = 2112, 1024
    w, w_s = _weight(n, k, "cuda")
    prepared = _placed(w, w_s, 32, split_rows=1024)
    prepared.sm_side = torch.randint(0, 2, (256,), dtype=torch.uint8, device="cuda")
    outs = {}
    for m in (16, 300):
        a, a_s = _act(m, k, "cuda")

        def chain():
            y = dg.fp8_gemm(a, a_s, prepared, backend="ptx")
            z = dg.fp8_gemm(a, a_s, prepared, bias=y[0], backend="ptx")
            return y, z, dg.fp8_gemm(a, a_s, prepared, backend="ptx")

        monkeypatch.setenv("DEEPERGEMM_PDL", "0")
        want = chain()
        monkeypatch.setenv("DEEPERGEMM_PDL", "1")
        for _ in range(5):
            got = chain()
            assert all(torch.equal(g.view(torch.int16), v.view(torch.int16)) for g, v in zip(got, want)), m
        torch.cuda.synchronize()
        from deepergemm import kernels

        assert int(kernels.side_claims(a.device)[:3].count_nonzero()) == 0
        outs[m] = want[0]
    assert all(not o.isnan().any() for o in outs.values())
