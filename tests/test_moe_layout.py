"""MoE contiguous layout (deepergemm.moe) and its Triton kernels (deepergemm.triton_kernels.moe_layout).

CPU: the pure-torch path against a plain Python loop, the round trip permute -> unpermute against the
direct sum, max_rows drops, the rows bound, the input rules; the Triton kernels in Triton's interpreter
against the pure-torch path bit for bit (no fp8 arithmetic here, so the interpreter can be trusted), and
their PTX for sm_90. GPU: the CUDA path against the CPU path, and a CUDA-graph capture replayed with new
routings.
"""
import os

import pytest
import torch

from deepergemm import moe
from deepergemm.layouts import GROUPED_M_ALIGNMENT, round_up

triton = pytest.importorskip("triton")
from deepergemm.triton_kernels import moe_layout as ml  # noqa: E402

SHAPES = [(t, topk, e) for t in (1, 7, 1000) for topk in (1, 2, 8) for e in (1, 4, 33)]


# ----------------------------------------------------------------------------------------------
# inputs and references
# ----------------------------------------------------------------------------------------------
def _routing(t, topk, num_experts, drop=False, dtype=torch.int32):
    """Random choices (repeats within a token allowed) over a random half of the experts, so the others
    get none; with drop, about a fifth of the choices are -1 or outside [0, E) (int64: far outside)."""
    used = torch.randperm(num_experts)[: max(1, num_experts // 2)]
    ids = used[torch.randint(0, len(used), (t, topk))].to(dtype)
    if drop:
        bad = [-1, -1, -7, num_experts, num_experts + 3, 2**31 - 1] + ([2**40, -(2**40)] if dtype == torch.int64 else [])
        mask = torch.rand(t, topk) < 0.2
        ids[mask] = torch.tensor(bad, dtype=dtype)[torch.randint(0, len(bad), (int(mask.sum()),))]
    return ids


def _loop_layout(ids, num_experts, alignment, max_rows=None):
    """The layout's definition, one choice at a time: (row_of, group_sizes, group_starts, rows) as lists."""
    members = [[] for _ in range(num_experts)]
    for t, choices in enumerate(ids.tolist()):
        for k, e in enumerate(choices):
            if 0 <= e < num_experts:
                members[e].append((t, k))
    starts, total = [], 0
    for m in members:
        starts.append(total)
        total += round_up(len(m), alignment)
    rows = total if max_rows is None else max_rows
    row_of = [[-1] * ids.shape[1] for _ in range(ids.shape[0])]
    sizes = [0] * num_experts
    for e, m in enumerate(members):
        for i, (t, k) in enumerate(m):
            if starts[e] + i < rows:
                row_of[t][k] = starts[e] + i
                sizes[e] += 1
    return row_of, sizes, [min(s, rows) for s in starts], rows


def _check_layout(layout, ids, num_experts, alignment, max_rows=None):
    row_of, sizes, starts, rows = _loop_layout(ids, num_experts, alignment, max_rows)
    assert layout.rows == rows and (layout.alignment, layout.num_experts) == (alignment, num_experts)
    for name, want in (("row_of", row_of), ("group_sizes", sizes), ("group_starts", starts)):
        got = getattr(layout, name)
        assert got.dtype == torch.int32 and got.tolist() == want, name
    # group_starts is what the grouped GEMM computes from group_sizes alone
    spans = [round_up(s, alignment) for s in sizes]
    assert starts == [min(sum(spans[:e]), rows) for e in range(num_experts)]
    # token_of inverts row_of
    token_of = [-1] * rows
    for t, choices in enumerate(row_of):
        for r in choices:
            if r >= 0:
                token_of[r] = t
    assert layout.token_of.dtype == torch.int32 and layout.token_of.tolist() == token_of


def _direct_sum(x, row_of, weights=None):
    """sum_k w[t, k] * x[t] over the kept choices, k in order, fp32: what permute -> unpermute must give."""
    acc = torch.zeros(x.shape, dtype=torch.float32)
    for k in range(row_of.shape[1]):
        v = x.float() if weights is None else x.float() * weights[:, k, None].float()
        acc = acc + torch.where(row_of[:, k, None] >= 0, v, 0.0)
    return acc.to(x.dtype)


def _bits(t):
    return t.cpu().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _assert_same(got, want, what):
    """Same shape, dtype and bits (NaN payloads included)."""
    assert (got.shape, got.dtype) == (want.shape, want.dtype), f"{what}: {got.shape} {got.dtype} vs {want.shape} {want.dtype}"
    differ = _bits(got) != _bits(want)
    assert not differ.any(), f"{what}: {int(differ.sum())} of {got.numel()} elements differ, first at {differ.nonzero()[0].tolist()}"


def _assert_same_layout(got, want, what):
    assert (got.rows, got.alignment, got.num_experts) == (want.rows, want.alignment, want.num_experts), what
    for name in ("row_of", "token_of", "group_sizes", "group_starts"):
        _assert_same(getattr(got, name), getattr(want, name), f"{what}: {name}")


# ----------------------------------------------------------------------------------------------
# CPU: the layout
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,topk,num_experts", SHAPES)
def test_layout_matches_loop(t, topk, num_experts):
    ids = _routing(t, topk, num_experts)
    layout = moe.build_contiguous_layout(ids, num_experts)
    _check_layout(layout, ids, num_experts, GROUPED_M_ALIGNMENT)
    assert layout.rows % GROUPED_M_ALIGNMENT == 0 and (layout.num_tokens, layout.topk) == (t, topk)
    assert layout.rows <= moe.contiguous_rows_bound(t, topk, num_experts)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("alignment", [1, 8, 128])
@pytest.mark.parametrize("t,topk,num_experts", [(7, 2, 4), (1000, 8, 33), (300, 1, 1)])
def test_dropped_ids(t, topk, num_experts, alignment, dtype):
    ids = _routing(t, topk, num_experts, drop=True, dtype=dtype)
    layout = moe.build_contiguous_layout(ids, num_experts, alignment)
    _check_layout(layout, ids, num_experts, alignment)
    assert ((layout.row_of == -1) == ((ids < 0) | (ids >= num_experts))).all()


def test_all_dropped_and_empty():
    for ids in (torch.full((5, 2), -1), torch.empty(0, 4, dtype=torch.int32), torch.empty(3, 0, dtype=torch.int32)):
        layout = moe.build_contiguous_layout(ids, 4)
        _check_layout(layout, ids, 4, GROUPED_M_ALIGNMENT)
        assert layout.rows == 0
        y = moe.unpermute_tokens(moe.permute_tokens(torch.randn(ids.shape[0], 16), layout), layout)
        assert y.shape == (ids.shape[0], 16) and (y == 0).all()


def test_stable_order_within_an_expert():
    ids = torch.tensor([[2, 0], [0, 2], [2, 2], [1, 0]])
    layout = moe.build_contiguous_layout(ids, 3, alignment=4)
    # expert 0: choices (0,1), (1,0), (3,1); expert 1: (3,0); expert 2: (0,0), (1,1), (2,0), (2,1)
    assert layout.row_of.tolist() == [[8, 0], [1, 9], [10, 11], [4, 2]]
    assert layout.group_sizes.tolist() == [3, 1, 4] and layout.group_starts.tolist() == [0, 4, 8]
    assert layout.token_of.tolist() == [0, 1, 3, -1, 3, -1, -1, -1, 0, 1, 2, 2]


@pytest.mark.parametrize("t,topk,num_experts", [(7, 2, 4), (1000, 8, 33), (1, 8, 1)])
def test_max_rows_drops_past_the_end(t, topk, num_experts):
    ids = _routing(t, topk, num_experts, drop=True)
    exact = moe.build_contiguous_layout(ids, num_experts).rows
    x, w = torch.randn(t, 64), torch.rand(t, topk)
    for max_rows in sorted({0, 1, 127, max(exact - 128, 0), max(exact - 1, 0), exact, exact + 300}):
        layout = moe.build_contiguous_layout(ids, num_experts, max_rows=max_rows)
        _check_layout(layout, ids, num_experts, GROUPED_M_ALIGNMENT, max_rows)
        assert (layout.row_of < max_rows).all() and int(layout.group_sizes.sum()) == int((layout.row_of >= 0).sum())
        x_perm = moe.permute_tokens(x, layout)
        assert x_perm.shape == (max_rows, 64)
        assert torch.equal(moe.unpermute_tokens(x_perm, layout, w), _direct_sum(x, layout.row_of, w))


@pytest.mark.parametrize("alignment", [1, 3, 128])
@pytest.mark.parametrize("t,topk,num_experts", [(1, 1, 4), (7, 2, 4), (1000, 8, 33), (5, 8, 256), (3, 2, 1)])
def test_rows_bound_is_sufficient_and_attained(t, topk, num_experts, alignment):
    bound = moe.contiguous_rows_bound(t, topk, num_experts, alignment)
    assert bound % alignment == 0 and bound <= round_up(t * topk + num_experts * (alignment - 1), alignment)
    for _ in range(5):
        ids = _routing(t, topk, num_experts)
        assert moe.build_contiguous_layout(ids, num_experts, alignment).rows <= bound
    # the worst routing: one choice for each of min(E, T * topk) experts, all the others to expert 0
    n = t * topk
    worst = torch.zeros(n, dtype=torch.int32)
    worst[: min(num_experts, n)] = torch.arange(min(num_experts, n))
    assert moe.build_contiguous_layout(worst.view(t, topk), num_experts, alignment).rows == bound
    assert moe.contiguous_rows_bound(0, topk, num_experts, alignment) == 0


# ----------------------------------------------------------------------------------------------
# CPU: permute and unpermute
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t,topk,num_experts", SHAPES)
def test_round_trip_is_the_weighted_sum(t, topk, num_experts):
    ids = _routing(t, topk, num_experts, drop=True)
    layout = moe.build_contiguous_layout(ids, num_experts)
    x = torch.randn(t, 256)
    w = torch.rand(t, topk)
    w[layout.row_of < 0] = float("nan")  # a dropped choice adds 0, whatever its weight
    x_perm = moe.permute_tokens(x, layout)
    assert x_perm.shape == (layout.rows, 256) and x_perm.dtype == x.dtype
    used = layout.token_of >= 0
    assert torch.equal(x_perm[used], x[layout.token_of[used].long()])
    assert (x_perm[~used] == 0).all() and int(used.sum()) == int(layout.group_sizes.sum())
    y = moe.unpermute_tokens(x_perm, layout, w)
    assert not y.isnan().any()
    assert torch.equal(y, _direct_sum(x, layout.row_of, w))
    assert torch.equal(moe.unpermute_tokens(x_perm, layout), _direct_sum(x, layout.row_of))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn])
def test_dtypes_and_strides(dtype):
    """Rows are moved as bits (NaN, fp8 too), from any row stride; unpermute rounds once to y_perm's dtype."""
    ids = _routing(50, 4, 8, drop=True)
    layout = moe.build_contiguous_layout(ids, 8, alignment=16)
    x = torch.randn(50, 512)
    x[3, 200] = float("nan")
    x = x.to(dtype)[:, 128:384]  # row stride 512
    x_perm = moe.permute_tokens(x, layout)
    kept = layout.row_of >= 0
    tokens = torch.arange(50)[:, None].expand(50, 4)[kept]
    _assert_same(x_perm[layout.row_of[kept].long()], x[tokens], "permuted rows")
    if dtype != torch.float8_e4m3fn:
        w = torch.rand(50, 4, dtype=torch.bfloat16)
        _assert_same(moe.unpermute_tokens(x_perm, layout, w), _direct_sum(x, layout.row_of, w), "unpermute")


# ----------------------------------------------------------------------------------------------
# CPU: input rules
# ----------------------------------------------------------------------------------------------
def test_rejects_bad_inputs():
    ids = torch.randint(0, 4, (6, 2))
    layout = moe.build_contiguous_layout(ids, 4)
    build = moe.build_contiguous_layout
    cases = [
        (lambda: build([[0, 1]], 4), TypeError, "topk_ids must be a torch.Tensor, got list"),
        (lambda: build(ids.float(), 4), TypeError, "topk_ids must have dtype torch.int32 or torch.int64, got torch.float32"),
        (lambda: build(ids[0], 4), ValueError, r"topk_ids must be 2-D \(T, topk\), got shape \(2,\)"),
        (lambda: build(ids, 0), ValueError, "num_experts must be >= 1, got 0"),
        (lambda: build(ids, 4.0), TypeError, "num_experts must be an int, got float"),
        (lambda: build(ids, 4, alignment=0), ValueError, "alignment must be >= 1, got 0"),
        (lambda: build(ids, 4, max_rows=-1), ValueError, "max_rows must be >= 0, got -1"),
        (lambda: build(ids, 4, max_rows=True), TypeError, "max_rows must be an int, got bool"),
        (lambda: build(ids, 4, max_rows=2**31), ValueError, "rows must fit in int32"),
        (lambda: moe.contiguous_rows_bound(-1, 2, 4), ValueError, "num_tokens must be >= 0, got -1"),
        (lambda: moe.permute_tokens(torch.ones(6, 8, dtype=torch.int32), layout), TypeError,
         "x must have a floating-point dtype, got torch.int32"),
        (lambda: moe.permute_tokens(torch.randn(6, 8, 2), layout), ValueError, r"x must be 2-D \(T, K\)"),
        (lambda: moe.permute_tokens(torch.randn(5, 8), layout), ValueError,
         r"x.shape\[0\] \(T=5\) must equal the layout's tokens \(layout.row_of.shape\[0\] = 6\)"),
        (lambda: moe.permute_tokens(torch.randn(6, 8), {"rows": 4}), TypeError,
         "layout must be a ContiguousLayout .* got dict"),
        (lambda: moe.permute_tokens(torch.randn(6, 8, device="meta"), layout), ValueError,
         "all tensors must be on one device: x is on meta, layout is on cpu"),
        (lambda: moe.unpermute_tokens(torch.randn(layout.rows + 1, 8), layout), ValueError,
         rf"y_perm.shape\[0\] must equal layout.rows \({layout.rows}\), got shape \({layout.rows + 1}, 8\)"),
        (lambda: moe.unpermute_tokens(torch.randn(layout.rows, 8).double(), layout), TypeError,
         "y_perm must have dtype torch.bfloat16 or torch.float16 or torch.float32, got torch.float64"),
        (lambda: moe.unpermute_tokens(torch.randn(layout.rows, 8), layout, torch.rand(6, 3)), ValueError,
         r"topk_weights must have shape \(T, topk\) = \(6, 2\), got \(6, 3\)"),
        (lambda: moe.unpermute_tokens(torch.randn(layout.rows, 8), layout, torch.ones(6, 2, dtype=torch.int64)),
         TypeError, "topk_weights must have dtype"),
        (lambda: moe.unpermute_tokens(torch.randn(layout.rows, 8), layout, torch.rand(6, 2, device="meta")),
         ValueError, "all tensors must be on one device: y_perm is on cpu, topk_weights is on meta"),
    ]
    for fn, error, match in cases:
        with pytest.raises(error, match=match):
            fn()


def test_launchers_need_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="ids must be a CUDA tensor"):
        ml.count_experts(torch.zeros(4, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="x must be a CUDA tensor"):
        ml.permute(torch.randn(4, 8), torch.zeros(4, dtype=torch.int32))


# ----------------------------------------------------------------------------------------------
# CPU: PTX for sm_90, compiled without a GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiles real kernels")
def test_ptx_instructions():
    from test_quantize import _ptx

    for ids in ("i32", "i64"):
        _ptx(ml._count_kernel, {"ids_ptr": ids, "counts_ptr": "i32"},
             {"CHUNK_SIZE": ml.CHUNK, "EXPERT_TILE": ml._EXPERT_TILE}, 4, set())
        _ptx(ml._place_kernel, {"ids_ptr": ids, "base_ptr": "i32", "row_of_ptr": "i32", "token_of_ptr": "i32"},
             {"CHUNK_SIZE": ml.CHUNK}, 4, set())
    ptx = _ptx(ml._permute_kernel, {"x_ptr": "i16", "out_ptr": "i16", "token_of_ptr": "i32"}, {"BLOCK": 8192}, 4,
               {"width", "stride_x", "stride_out"})
    assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx, "row copies should be 16 bytes wide"
    ptx = _ptx(ml._unpermute_kernel, {"y_ptr": "bf16", "out_ptr": "bf16", "row_of_ptr": "i32", "w_ptr": "fp32"},
               {"HAS_WEIGHTS": True, "BLOCK": 4096}, 4, {"width", "stride_y", "stride_out"})
    assert "fma" not in ptx, "w * y + acc must round twice, like the CPU path"
    assert "cvt.rn.bf16" in ptx, "the bf16 output must be rounded to nearest even, like torch's cast"
    assert "ld.global.v4.b32" in ptx, "row loads should be 16 bytes wide"


# ----------------------------------------------------------------------------------------------
# CPU: the Triton kernels in Triton's interpreter
# ----------------------------------------------------------------------------------------------
def interpreter_cases():
    """Run in a subprocess with TRITON_INTERPRET=1 (read when triton is imported): the Triton path on CPU
    tensors against the pure-torch path, bit for bit. bf16 sums come through the launcher's fp32 hook, cast
    by torch: the Triton 3.9 interpreter's own fp32 -> bf16 cast truncates (the GPU's rounds to nearest even,
    which test_ptx_instructions checks)."""
    cases = [(0, 2, 4, 128, None), (1, 1, 1, 128, None), (7, 2, 4, 128, None), (128, 1, 3, 1, None),
             (129, 2, 5, 8, None), (150, 8, 33, 128, None), (150, 8, 33, 16, 500), (40, 4, 6, 128, 256)]
    x_dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn)
    y_dtypes = (torch.bfloat16, torch.float32, torch.float16)
    for i, (t, topk, num_experts, alignment, max_rows) in enumerate(cases):
        for dtype in (torch.int32, torch.int64):
            what = f"T={t} topk={topk} E={num_experts} alignment={alignment} max_rows={max_rows} {dtype}"
            ids = _routing(t, topk, num_experts, drop=True, dtype=dtype)
            layout = moe.build_contiguous_layout(ids, num_experts, alignment, max_rows)
            _assert_same_layout(moe._build(ids, num_experts, alignment, max_rows, triton=True), layout, what)
        # the data movers: a different dtype (and weights) in each case, to keep the interpreter's time short
        x = torch.randn(t, 160)[:, 16:144].to(x_dtypes[i % 4])  # row stride 160
        _assert_same(moe._permute_triton(x, layout.token_of), moe.permute_tokens(x, layout), f"permute {what} {x.dtype}")
        y = torch.randn(layout.rows, 72).to(y_dtypes[i % 3])
        w = (None, torch.rand(t, topk), torch.rand(t, topk).bfloat16())[i // 3 % 3]
        if w is not None:
            w[layout.row_of < 0] = float("inf")
        want = moe.unpermute_tokens(y, layout, w)
        about = f"unpermute {what} {y.dtype} weights={None if w is None else w.dtype}"
        if y.dtype == torch.bfloat16:
            _assert_same(ml.unpermute(y, layout.row_of, w, out_dtype=torch.float32).to(y.dtype), want, about)
        else:
            _assert_same(moe._unpermute_triton(y, layout.row_of, w), want, about)
    print("interpreter OK")


@pytest.mark.slow  # (a subprocess in Triton's interpreter: ~16 s on 2 cores)
def test_interpreter_matches_torch(run_interpreted):
    run_interpreted("test_moe_layout")


# ----------------------------------------------------------------------------------------------
# GPU: the CUDA path against the CPU path
# ----------------------------------------------------------------------------------------------
def _check_cuda_against_cpu(ids, num_experts, alignment=GROUPED_M_ALIGNMENT, max_rows=None, k=512):
    what = f"{tuple(ids.shape)} {ids.dtype} E={num_experts} alignment={alignment} max_rows={max_rows}"
    want = moe.build_contiguous_layout(ids, num_experts, alignment, max_rows)
    got = moe.build_contiguous_layout(ids.cuda(), num_experts, alignment, max_rows)
    assert got.row_of.is_cuda and got.token_of.is_cuda and got.group_sizes.is_cuda
    _assert_same_layout(got, want, what)
    t, topk = ids.shape
    for dtype in (torch.bfloat16, torch.float32, torch.float8_e4m3fn):
        x = torch.randn(t, k).to(dtype)
        _assert_same(moe.permute_tokens(x.cuda(), got), moe.permute_tokens(x, want), f"permute {what} {dtype}")
    y = torch.randn(want.rows, k).bfloat16()
    for w in (None, torch.rand(t, topk), torch.rand(t, topk).bfloat16()):
        _assert_same(moe.unpermute_tokens(y.cuda(), got, None if w is None else w.cuda()),
                     moe.unpermute_tokens(y, want, w), f"unpermute {what}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("t,topk,num_experts", SHAPES + [(4096, 8, 256), (16384, 8, 256)])
def test_cuda_matches_cpu(t, topk, num_experts, dtype):
    _check_cuda_against_cpu(_routing(t, topk, num_experts, drop=True, dtype=dtype), num_experts)


@pytest.mark.gpu
def test_cuda_max_rows_alignment_and_strides():
    ids = _routing(1000, 8, 33, drop=True)
    for alignment, max_rows in ((128, 0), (128, 1000), (64, 4096), (1, None), (3, 7777)):
        _check_cuda_against_cpu(ids, 33, alignment, max_rows, k=136)
    layout = moe.build_contiguous_layout(ids.cuda(), 33)
    x = torch.randn(1000, 1024, device="cuda").bfloat16()[:, 256:768]
    _assert_same(moe.permute_tokens(x, layout), moe.permute_tokens(x.cpu(), moe.build_contiguous_layout(ids, 33)),
                 "strided permute")


@pytest.mark.gpu
def test_cuda_graph_replay_with_new_routings():
    """build(max_rows=bound) + permute + unpermute capture (no host synchronization) and replay with new ids."""
    t, topk, num_experts, k = 256, 8, 33, 1024
    bound = moe.contiguous_rows_bound(t, topk, num_experts)
    ids = _routing(t, topk, num_experts, drop=True).cuda()
    x = torch.randn(t, k, device="cuda").bfloat16()
    w = torch.rand(t, topk, device="cuda")

    def step():
        layout = moe.build_contiguous_layout(ids, num_experts, max_rows=bound)
        x_perm = moe.permute_tokens(x, layout)
        return layout, x_perm, moe.unpermute_tokens(x_perm, layout, w)

    stream = torch.cuda.Stream()  # warm up (compile) on a side stream, as torch.cuda.graph's docs advise
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        layout, x_perm, y = step()
    for _ in range(3):
        ids.copy_(_routing(t, topk, num_experts, drop=True))
        x.copy_(torch.randn(t, k).bfloat16())
        w.copy_(torch.rand(t, topk))
        graph.replay()
        want = moe.build_contiguous_layout(ids.cpu(), num_experts, max_rows=bound)
        _assert_same_layout(layout, want, "graph replay: layout")
        _assert_same(x_perm, moe.permute_tokens(x.cpu(), want), "graph replay: permute")
        _assert_same(y, moe.unpermute_tokens(x_perm.cpu(), want, w.cpu()), "graph replay: unpermute")
        assert torch.equal(y.cpu(), _direct_sum(x.cpu(), want.row_of, w.cpu()))


@pytest.mark.gpu
def test_cuda_is_deterministic():
    ids = _routing(8192, 8, 256, drop=True).cuda()
    y_perm = torch.randn(moe.contiguous_rows_bound(8192, 8, 256), 256, device="cuda").bfloat16()
    w = torch.rand(8192, 8, device="cuda")
    first = None
    for _ in range(3):
        layout = moe.build_contiguous_layout(ids, 256, max_rows=y_perm.shape[0])
        outs = (layout.row_of, layout.token_of, moe.unpermute_tokens(y_perm, layout, w))
        if first is None:
            first = outs
        for got, want in zip(outs, first):
            _assert_same(got, want, "repeat")
