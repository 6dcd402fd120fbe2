"""The GEMM benchmark: report figures/table/JSON/plot (CPU), shape and option parsing, and one GPU run."""
import math
import os

import pytest
import torch

import deepergemm as dg
from deepergemm import reference
from deepergemm.benchmark import gemm, report, shapes
from deepergemm.benchmark.report import Measurement
from deepergemm.benchmark.shapes import Shape
from deepergemm.benchmark.timing import Timing

S_SMALL = Shape(64, 2112, 7168)     # anchor: DeepGEMM/cuBLAS 1.82
S_LARGE = Shape(4096, 2112, 7168)   # anchor: 1.18
S_FREE = Shape(129, 256, 1024)      # no anchor, neither small nor large


def _timing(us: float) -> Timing:
    return Timing(median_us=us, min_us=us - 0.2, p20_us=us - 0.1, p80_us=us + 0.2, launches=30)


def _row(shape, cublas_us, ptx_us, bf16_us=None):
    measured = [Measurement("ptx", calc_diff=1.4e-6, timing=_timing(ptx_us)),
                Measurement("cublas", calc_diff=1.3e-6, timing=_timing(cublas_us))]
    return report.build_row(shape, measured, 3.0, _timing(bf16_us) if bf16_us else None)


@pytest.fixture
def rows():
    return [_row(S_SMALL, 25.9, 14.3, bf16_us=40.0), _row(S_LARGE, 117.3, 90.0), _row(S_FREE, 10.0, 5.0)]


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def test_geomean():
    assert report.geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert report.geomean([2.0, 8.0, 4.0]) == pytest.approx(4.0)
    assert report.geomean(x for x in [3.0]) == pytest.approx(3.0)
    assert report.geomean([]) is None
    with pytest.raises(ValueError):
        report.geomean([1.0, 0.0])


def test_row_figures_by_hand():
    row = _row(S_SMALL, 25.9, 14.3, bf16_us=40.0)
    flops = 2 * 64 * 2112 * 7168
    nbytes = 64 * 7168 + 2112 * 7168 + 2 * 64 * 2112 + 4 * 56 * (64 + 17)  # A, B, D, A and B scales
    assert (row["flops"], row["bytes"]) == (1_937_768_448, 15_886_048) == (flops, nbytes)
    assert row["floor_us"] == pytest.approx(15_886_048 / 3e6)  # 5.295 us at 3.0 TB/s
    ptx, cublas = row["backends"]["ptx"], row["backends"]["cublas"]
    assert ptx["status"] == "ok" and ptx["median_us"] == 14.3 and ptx["calc_diff"] == 1.4e-6
    assert ptx["tflops"] == pytest.approx(135.508, rel=1e-5)
    assert ptx["gbps"] == pytest.approx(1110.91, rel=1e-5)
    assert ptx["floor_pct"] == pytest.approx(37.030, rel=1e-4)
    assert ptx["vs_cublas"] == pytest.approx(25.9 / 14.3)  # 1.811 < DeepGEMM's 1.82
    assert row["deepgemm_vs_cublas"] == 1.82 and ptx["beats_deepgemm"] is False
    assert cublas["vs_cublas"] == 1.0 and cublas["beats_deepgemm"] is None
    assert row["bf16"]["tflops"] == pytest.approx(flops / 40.0 / 1e6)
    assert row["anchor"]["cublas_us"] == 25.9
    assert _row(S_LARGE, 117.3, 90.0)["backends"]["ptx"]["beats_deepgemm"] is True  # 1.303 >= 1.18


def test_floor_matches_every_anchor():
    for shape, anchor in shapes.DENSE_ANCHORS.items():
        assert report.floor_us(shape, 3.0) == pytest.approx(anchor.floor_us, abs=0.051), shape


def test_failed_backend_has_no_timing_and_no_ratio():
    measured = [Measurement("ptx", calc_diff=3e-2, error="calc_diff 3.00e-02 > tolerance 2.0e-06 (not timed)"),
                Measurement("cublas", error="RuntimeError: boom"),
                Measurement("deepergemm", calc_diff=1.4e-6, timing=_timing(12.0))]
    row = report.build_row(S_SMALL, measured, 3.0)
    ptx, cublas, auto = (row["backends"][n] for n in ("ptx", "cublas", "deepergemm"))
    assert (ptx["status"], cublas["status"], auto["status"]) == ("fail", "error", "ok")
    assert ptx["median_us"] is None and ptx["tflops"] is None and ptx["vs_cublas"] is None
    assert auto["vs_cublas"] is None  # no cuBLAS time to compare with
    assert report.failures([row]) == ["64x2112x7168 ptx: calc_diff 3.00e-02 > tolerance 2.0e-06 (not timed)",
                                      "64x2112x7168 cublas: RuntimeError: boom"]
    header, cells = report.table([row])
    cells = dict(zip(header, cells[0]))
    assert (cells["ptx us"], cells["ptx diff"], cells["cublas us"], cells["deepergemm us"]) == \
        ("FAIL", "3.0e-02", "ERROR", "12.0")
    assert "FAIL" in report.progress_line(row, 1, 1)


# ----------------------------------------------------------------------------------------------
# summary and rendering
# ----------------------------------------------------------------------------------------------
def test_summary(rows):
    r_small, r_large, r_free = 25.9 / 14.3, 117.3 / 90.0, 2.0
    summary = report.summarize(rows)
    assert list(summary) == ["ptx"]
    every, small, large = (summary["ptx"][k] for k in ("all", "small", "large"))
    assert every["shapes"] == 3 and every["anchored"] == 2 and every["beats"] == 1
    assert every["geomean"] == pytest.approx((r_small * r_large * r_free) ** (1 / 3))
    assert every["geomean_anchored"] == pytest.approx(math.sqrt(r_small * r_large))
    assert every["deepgemm_geomean"] == pytest.approx(math.sqrt(1.82 * 1.18))
    assert (small["shapes"], small["beats"]) == (1, 0) and small["geomean"] == pytest.approx(r_small)
    assert small["deepgemm_geomean"] == pytest.approx(1.82)
    assert (large["shapes"], large["beats"]) == (1, 1) and large["deepgemm_geomean"] == pytest.approx(1.18)
    text = report.render_summary(summary)
    assert f"ptx/cuBLAS geomean, all shapes: {every['geomean']:.3f} over 3 shapes" in text
    assert "ptx >= DeepGEMM on 1/2" in text and "small M (<= 128)" in text


def test_summary_without_cublas_has_no_ratios():
    row = report.build_row(S_SMALL, [Measurement("ptx", calc_diff=1e-6, timing=_timing(14.0))], 3.0)
    assert report.summarize([row]) == {}
    assert "no ratio vs cuBLAS" in report.render_summary({})


def test_markdown_table(rows):
    text = report.render_table(rows, markdown=True)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows) and all(line.startswith("| ") and line.endswith(" |") for line in lines)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:7] == ["shape", "floor us", "ptx us", "ptx TFLOPS", "ptx GB/s", "ptx %floor", "ptx diff"]
    assert header[-3:] == ["ptx/cuBLAS", "DeepGEMM/cuBLAS", "ptx >= DeepGEMM"]
    assert "bf16 us" in header
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    cell = dict(zip(header, first))
    assert cell["shape"] == "64x2112x7168" and cell["floor us"] == "5.3"
    assert (cell["ptx us"], cell["ptx TFLOPS"], cell["ptx GB/s"], cell["ptx %floor"], cell["ptx diff"]) == \
        ("14.3", "136", "1111", "37", "1.4e-06")
    assert (cell["cublas us"], cell["bf16 us"], cell["ptx/cuBLAS"], cell["DeepGEMM/cuBLAS"]) == \
        ("25.9", "40.0", "1.81", "1.82")
    assert cell["ptx >= DeepGEMM"] == "no"
    free = dict(zip(header, [c.strip() for c in lines[4].strip("|").split("|")]))
    assert (free["DeepGEMM/cuBLAS"], free["ptx >= DeepGEMM"], free["bf16 us"]) == ("-", "-", "-")
    assert report.render_summary(report.summarize(rows), markdown=True).startswith("- ptx/cuBLAS")


def test_text_table_is_aligned(rows):
    lines = report.render_table(rows).splitlines()
    assert lines[0].startswith("shape") and lines[1].startswith("64x2112x7168")
    assert len({len(line) for line in lines}) == 1  # numbers right-aligned to one width


def test_progress_line(rows):
    line = report.progress_line(rows[0], 3, 24)
    assert line.startswith("[ 3/24] 64x2112x7168")
    assert "ptx 14.3 us 136 TFLOPS (diff 1.4e-06)" in line and "bf16 40.0 us" in line
    assert "ptx/cuBLAS 1.81 vs DeepGEMM 1.82: below" in line


# ----------------------------------------------------------------------------------------------
# JSON and plot
# ----------------------------------------------------------------------------------------------
def test_json_round_trip(rows, tmp_path):
    payload = {"device": "test", "args": {"out": tmp_path}, "rows": rows, "summary": report.summarize(rows)}
    path = report.write_json(tmp_path / "sub" / "gemm.json", payload)
    back = report.read_json(path)
    assert back["args"]["out"] == str(tmp_path)
    assert back["rows"] == rows and back["summary"] == payload["summary"]
    assert report.render_table(back["rows"]) == report.render_table(rows)  # a saved run re-renders


def test_json_nan_becomes_null(tmp_path):
    row = report.build_row(S_SMALL, [Measurement("ptx", calc_diff=float("nan"), error="calc_diff nan")], 3.0)
    back = report.read_json(report.write_json(tmp_path / "g.json", {"rows": [row]}))
    figures = back["rows"][0]["backends"]["ptx"]
    assert figures["calc_diff"] is None and figures["status"] == "fail" and figures["error"] == "calc_diff nan"


def test_plot(rows, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "gemm.png"
    assert report.write_plot(rows, path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    only_cublas = [report.build_row(S_SMALL, [Measurement("cublas", calc_diff=1e-6, timing=_timing(25.0))], 3.0)]
    assert report.write_plot(only_cublas, tmp_path / "cublas.png")


def test_roofline_plot(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [report.build_row(shapes.Shape(m, 2112, 7168),
                             [Measurement("ptx", calc_diff=1e-6, timing=_timing(10.0 + m / 100)),
                              Measurement("cublas", calc_diff=1e-6, timing=_timing(25.0 + m / 50))], 3.0)
            for m in (1, 64, 4096)]
    path = tmp_path / "roofline.png"
    assert report.write_roofline(rows, path, 3.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.write_roofline(rows[:1], tmp_path / "one.png", 3.0)  # one M per (N, K): no line to draw
    assert not (tmp_path / "one.png").exists()


def test_mid_and_sweep_subsets_cover_the_m_range():
    mid = shapes.select_shapes("mid")
    pairs = {(s.n, s.k) for s in shapes.SUBSETS["all"]}
    assert {(s.n, s.k) for s in mid} == pairs and sorted({s.m for s in mid}) == [256, 512, 1024, 2048]
    assert len(mid) == 4 * len(pairs)
    sweep = shapes.select_shapes("sweep:7168x2048+2112x7168")
    assert [s.m for s in sweep[:15]] == [2 ** i for i in range(15)] and len(sweep) == 30
    assert {(s.n, s.k) for s in sweep} == {(7168, 2048), (2112, 7168)}
    assert len(shapes.select_shapes("sweep")) == 15 * len(pairs)
    with pytest.raises(ValueError, match="K must be a multiple of 128"):
        shapes.select_shapes("sweep:7168x100")


def test_decode_subset_spans_m_for_every_anchor_pair():
    decode = shapes.select_shapes("decode")
    pairs = {(s.n, s.k) for s in shapes.ALL_SHAPES}
    assert len(pairs) == 6 and {(s.n, s.k) for s in decode} == pairs
    assert all(sorted(s.m for s in decode if (s.n, s.k) == nk) == [1, 8, 16, 32, 64, 128] for nk in pairs)
    assert {s for s in decode if s.m >= 64} == set(shapes.SUBSETS["small"])  # the small anchors are in it


# ----------------------------------------------------------------------------------------------
# shapes and options
# ----------------------------------------------------------------------------------------------
def test_select_shapes():
    assert shapes.select_shapes("all") == list(shapes.ALL_SHAPES) and len(shapes.ALL_SHAPES) == 24
    small, large = shapes.select_shapes("small"), shapes.select_shapes("LARGE")
    assert len(small) == len(large) == 12
    assert all(s.m <= 128 for s in small) and all(s.m >= 4096 for s in large)
    assert shapes.select_shapes(" 64x2112x7168 , 129x256x1024") == [S_SMALL, S_FREE]
    assert shapes.select_shapes("small,64x2112x7168") == small  # duplicates dropped, order kept
    assert shapes.parse_shape("8 X 16 x 256") == Shape(8, 16, 256)


@pytest.mark.parametrize("spec,message", [
    ("64x2112", "expected MxNxK"), ("huge", "expected MxNxK"), ("0x8x128", "positive"),
    ("64x8x100", "multiple of 128"), ("64x12x128", "multiple of 8"), ("", "empty item"), ("small,,large", "empty item"),
])
def test_select_shapes_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        shapes.select_shapes(spec)


def test_parse_args_defaults():
    args, chosen, backends = gemm.parse_args([])
    assert chosen == list(shapes.ALL_SHAPES) and backends == ["ptx", "cublas"]
    assert (args.launches, args.bf16, args.hbm_tbps, args.check_tol) == (30, True, 3.0, 2e-6)
    assert str(args.out) == "bench/out"
    args, _, backends = gemm.parse_args(["--quick", "--backends", "deepergemm,cublas,cublas", "--no-bf16"])
    assert (args.launches, args.bf16, backends) == (gemm.QUICK_LAUNCHES, False, ["deepergemm", "cublas"])


@pytest.mark.parametrize("argv,message", [
    (["--launches", "29"], "at least 30"), (["--quick", "--launches", "0"], "at least 30"),
    (["--backends", "ptx,foo"], "unknown backend 'foo'"), (["--shapes", "64x12x128"], "multiple of 8"),
    (["--hbm-tbps", "0"], "positive"),
])
def test_bad_options_exit_with_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        gemm.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_main_without_cuda_returns_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gemm.main(["--shapes", "small", "--out", tmp_path]) == 1
    err = capsys.readouterr().err
    assert "no CUDA GPU is visible" in err and "Hopper" in err
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# the whole main() on the CPU, GPU parts faked: the control flow, output files and exit status
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA calls answered on the CPU; "cublas" runs the reference; time = a figure per backend."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake H100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(gemm, "bench_device", lambda: torch.device("cpu"))
    monkeypatch.setitem(gemm.BACKEND_ALIASES, "cublas", "reference")
    times = iter([20.0, 10.0, 30.0] * 10)  # per shape: deepergemm, cublas, bf16
    monkeypatch.setattr(gemm, "time_steady", lambda fn, launches, device=None: (fn(), _timing(next(times)))[1])


def test_main_end_to_end_on_fake_gpu(fake_gpu, tmp_path, capsys):
    argv = ["--shapes", "64x256x1024,8x128x256", "--backends", "ptx,deepergemm,cublas", "--quick", "--out", tmp_path]
    assert gemm.main(argv) == 0
    out = capsys.readouterr().out
    assert "skipping backend 'ptx'" in out and "[1/2] 64x256x1024" in out and "[2/2] 8x128x256" in out
    assert "deepergemm/cuBLAS geomean, all shapes: 0.500 over 2 shapes" in out
    (json_path,) = tmp_path.glob("gemm_*.json")
    data = report.read_json(json_path)
    assert data["device"] == "Fake H100" and data["backends"] == ["deepergemm", "cublas"]
    assert data["args"]["launches"] == gemm.QUICK_LAUNCHES and data["commit"] and data["date"]
    assert [row["shape"] for row in data["rows"]] == ["64x256x1024", "8x128x256"]
    for row in data["rows"]:
        assert row["backends"]["deepergemm"]["calc_diff"] < 2e-6 and row["bf16"]["median_us"] == 30.0
        assert row["backends"]["deepergemm"]["vs_cublas"] == pytest.approx(0.5)
    assert data["failures"] == [] and data["summary"]["deepergemm"]["all"]["shapes"] == 2
    if _has_matplotlib():
        assert json_path.with_suffix(".png").exists()


def test_main_reports_failed_check(fake_gpu, tmp_path, capsys):
    # a zero tolerance fails every backend: bf16 rounding alone gives calc_diff ~1e-6
    argv = ["--shapes", "64x256x1024", "--backends", "cublas", "--check-tol", "0", "--out", tmp_path]
    assert gemm.main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED 64x256x1024 cublas: calc_diff" in captured.out and "FAILED check(s)" in captured.err
    (json_path,) = tmp_path.glob("gemm_*.json")
    row = report.read_json(json_path)["rows"][0]
    assert row["backends"]["cublas"]["status"] == "fail" and row["backends"]["cublas"]["median_us"] is None


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_bench_cublas(tmp_path, capsys):
    rc = gemm.main(["--shapes", "64x2112x7168,129x256x1024", "--launches", "30", "--backends", "cublas",
                    "--out", tmp_path])
    out = capsys.readouterr().out
    assert rc == 0, out
    (json_path,) = tmp_path.glob("gemm_*.json")
    data = report.read_json(json_path)
    assert data["device"] == torch.cuda.get_device_name() and data["torch"] == torch.__version__
    assert data["failures"] == [] and data["args"]["launches"] == 30
    assert [row["shape"] for row in data["rows"]] == ["64x2112x7168", "129x256x1024"]
    for row in data["rows"]:
        cublas = row["backends"]["cublas"]
        assert cublas["status"] == "ok" and 0 <= cublas["calc_diff"] <= 2e-6
        assert cublas["median_us"] > 0 and cublas["launches"] == 30 and cublas["tflops"] > 0
        assert row["bf16"]["median_us"] > 0
    assert data["rows"][0]["deepgemm_vs_cublas"] == 1.82 and data["rows"][1]["anchor"] is None
    if _has_matplotlib():
        assert json_path.with_suffix(".png").exists()


def test_steadiest_timing_wins_and_stalls_are_retried(monkeypatch):
    from deepergemm.benchmark import timing
    stalled = Timing(median_us=488.7, min_us=52.0, p20_us=53.0, p80_us=1560.6, launches=30)
    steady = Timing(median_us=53.3, min_us=52.0, p20_us=52.8, p80_us=54.0, launches=30)
    assert timing.steadiest([stalled, steady]) is steady
    with pytest.raises(ValueError):
        timing.steadiest([])
    runs = iter([stalled, stalled, steady, stalled])
    calls = []

    def fake_time(fn, launches, device=None):
        calls.append(launches)
        return next(runs)

    monkeypatch.setattr(timing, "time_cold_l2", fake_time)
    assert timing.time_steady(lambda: None, 30) is steady  # third attempt
    assert calls == [30, 30, 30]
    calls.clear()
    runs = iter([steady, stalled])
    assert timing.time_steady(lambda: None, 30) is steady and calls == [30]  # steady at once: no repeat
    calls.clear()
    runs = iter([stalled] * 5)
    assert timing.time_steady(lambda: None, 30) is stalled and calls == [30, 30, 30]  # gives up after three


def _bench_script(name: str):
    """A developer script of bench/ (not part of the package), imported from its file (with bench/ on sys.path, as
    when it runs as a script: some import their siblings)."""
    import importlib.util
    import pathlib
    import sys

    bench = pathlib.Path(__file__).resolve().parents[1] / "bench"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(bench))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


def test_ablation_switches_parse_and_restore_the_environment(monkeypatch):
    ablation = _bench_script("ablation")

    assert ablation.parse_switches("all") == list(ablation.SWITCHES)
    assert ablation.parse_switches("swap-ab-64, no-split-k") == ["swap-ab-64", "no-split-k"]
    with pytest.raises(ValueError, match="unknown"):
        ablation.parse_switches("no-such-switch")
    monkeypatch.setenv("DEEPERGEMM_SPLIT_K", "1")
    monkeypatch.delenv("DEEPERGEMM_SWAP_AB", raising=False)
    with ablation.environment({"DEEPERGEMM_SPLIT_K": "0", "DEEPERGEMM_SWAP_AB": "1"}):
        assert os.environ["DEEPERGEMM_SPLIT_K"] == "0" and os.environ["DEEPERGEMM_SWAP_AB"] == "1"
    assert os.environ["DEEPERGEMM_SPLIT_K"] == "1" and "DEEPERGEMM_SWAP_AB" not in os.environ


def test_ablation_configuration_tells_which_switches_apply(monkeypatch):
    """A switch that does not change the selection for a shape is not timed again ("=")."""
    ablation = _bench_script("ablation")

    for name in ("DEEPERGEMM_SPLIT_K", "DEEPERGEMM_SWAP_AB", "DEEPERGEMM_VARIANT", "DEEPERGEMM_L2_HINTS"):
        monkeypatch.delenv(name, raising=False)
    default = ablation.configuration(64, 2112, 7168, 132, {})
    assert default.variant.splits > 1  # the decode pick splits K
    switch = lambda name: ablation.SWITCHES[name][0]  # noqa: E731
    assert ablation.configuration(64, 2112, 7168, 132, switch("no-split-k")) != default
    assert not default.variant.swapped
    assert ablation.configuration(64, 2112, 7168, 132, switch("swap-ab-64")).variant.swapped
    assert ablation.configuration(128, 2112, 7168, 132, switch("swap-ab-64")) == \
        ablation.configuration(128, 2112, 7168, 132, {})                   # M > 64: nothing to swap
    assert ablation.configuration(8, 2112, 7168, 132, {}).variant.swapped  # M <= 16: swapped by default...
    assert not ablation.configuration(8, 2112, 7168, 132, switch("no-swap-ab")).variant.swapped  # ...unless off
    large = ablation.configuration(4096, 7168, 7168, 132, {})
    assert ablation.configuration(4096, 7168, 7168, 132, switch("no-split-k")) == large
    assert ablation.configuration(4096, 7168, 7168, 132, switch("no-l2-hints")) == large  # large M: no hints anyway


def test_compare_benches_flags_a_shape_that_moved(tmp_path):
    import pathlib
    import subprocess
    import sys

    head = "| shape | ptx us | cublas us |\n| --- | --- | --- |\n"
    (tmp_path / "a.log").write_text(head + "| 64x2112x7168 | 14.8 | 25.4 |\n| 4096x7168x2048 | 100.0 | 110.0 |\n")
    (tmp_path / "b.log").write_text(head + "| 64x2112x7168 | 14.9 | 25.4 |\n| 4096x7168x2048 | 104.0 | 110.1 |\n")
    tool = pathlib.Path(__file__).resolve().parents[1] / "bench" / "compare_benches.py"
    done = subprocess.run([sys.executable, str(tool), str(tmp_path / "a.log"), str(tmp_path / "b.log")],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "moved: 4096x7168x2048" in done.stdout and "64x2112x7168 after" not in done.stdout
    assert "1 of 2 shapes moved" in done.stdout


def test_fused_epilogue_rows_compare_bits_and_time_three_paths(monkeypatch, capsys):
    """bench/fused_epilogue.py (the fp8-output and SwiGLU benches' shared row): bits compared first, then the three
    timings, one row; a one-bit difference in the scales reads DIFF."""
    fe = _bench_script("fused_epilogue")
    assert fe.pairs("7168x2048,4096x7168") == [(7168, 2048), (4096, 7168)]
    times = iter([10.0, 14.0, 11.0, 10.0, 14.0, 11.0])
    monkeypatch.setattr(fe, "time_steady", lambda fn, launches: type("T", (), {"median_us": next(times)})())
    monkeypatch.setattr(fe.torch.cuda, "synchronize", lambda: None)
    q = torch.randn(4, 256).to(torch.float8_e4m3fn)
    s = torch.rand(4, 2)
    other = s.clone()
    other[1, 1] = torch.nextafter(other[1, 1], torch.tensor(2.0))
    fe.measure_row("shape", lambda: None, lambda: (q, s), lambda: (q.clone(), s.clone()), 5, "a | b")
    fe.measure_row("shape", lambda: None, lambda: (q, s), lambda: (q, other), 5, "a | b")
    first, second = capsys.readouterr().out.splitlines()
    assert "same" in first and "0.786" in first and "1.100" in first and first.endswith("a | b")
    assert "DIFF" in second
    # rows: only the masked rows are compared (grouped outputs leave the others unspecified)
    times = iter([10.0, 14.0, 11.0, 10.0, 14.0, 11.0])
    rows = torch.tensor([True, False, True, True])
    fe.measure_row("shape", lambda: None, lambda: (q, s), lambda: (q, other), 5, "a | b", rows=rows)
    fe.measure_row("shape", lambda: None, lambda: (q, s), lambda: (q, other), 5, "a | b", rows=~rows)
    first, second = capsys.readouterr().out.splitlines()
    assert "same" in first and "DIFF" in second


def test_grouped_swiglu_bench_shapes_and_routed_rows():
    gs = _bench_script("grouped_swiglu_bench")
    assert gs._shapes("7168x2048x256x8,2048x768x128x8") == [(7168, 2048, 256, 8), (2048, 768, 128, 8)]
    ids = torch.tensor([[0, 2], [2, 1], [0, 1]], dtype=torch.int32)
    layout = dg.build_contiguous_layout(ids, 3, max_rows=dg.contiguous_rows_bound(3, 2, 3))
    rows = gs._real_rows(layout)
    assert rows.shape == (layout.rows,) and rows.sum() == 6
    starts = [0, 128, 256]  # two rows per expert, each segment aligned to 128
    assert rows.nonzero().flatten().tolist() == [r for s in starts for r in (s, s + 1)]


def test_recipe256_bench_inputs_repeated_per_128_give_the_same_product():
    """bench/recipe256_bench.py's setup: 256-recipe operands (scales per 256 of K) whose scales, repeated per 128 of
    K, give the 128 recipe's kernel exactly the 256 recipe's product, so only the promotion differs between the
    two kernels it times."""
    rb = _bench_script("recipe256_bench")
    a, a_s, b, b_s, expected = rb.recipe_256_inputs(5, 136, 512, True, device="cpu")
    assert a_s.shape == (5, 2) and b_s.shape == (2, 2)
    a_s128, b_s128 = a_s.repeat_interleave(2, dim=1), b_s.repeat_interleave(2, dim=1)
    assert not torch.equal(a_s128[:, 1], a_s128[:, 2])
    again = reference.exact_fp32_matmul(reference.dequantize_act(a, a_s128), reference.dequantize_weight(b, b_s128))
    assert torch.equal(again, expected)
