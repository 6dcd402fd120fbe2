"""python -m deepergemm model-bench: the tiny layer end to end on the CPU reference path, the report's figures
and targets from made-up rows, the options; on a GPU (marked), every path eager and under CUDA graphs."""
import json

import pytest
import torch

from deepergemm.benchmark import model


def _row(phase, tokens, bf16, cublas, ours, diffs=(1e-3, 1e-3)):
    results = {"bf16": model.PathResult(eager_us=bf16 * 3, graph_us=bf16),
               "cublas": model.PathResult(eager_us=cublas * 3, graph_us=cublas,
                                          diff=dict.fromkeys(("layer", *model.BLOCKS), diffs[0])),
               "deepergemm": model.PathResult(eager_us=ours * 3, graph_us=ours,
                                              diff=dict.fromkeys(("layer", *model.BLOCKS), diffs[1]))}
    return model.build_row(phase, tokens, results)


def test_ratios_and_targets_from_rows():
    rows = [_row("decode", 32, 3000.0, 2300.0, 2000.0), _row("prefill", 4096, 30000.0, 25000.0, 18000.0)]
    ours = rows[0]["paths"]["deepergemm"]
    assert ours["graph_vs_bf16"] == pytest.approx(1.5) and ours["graph_vs_cublas"] == pytest.approx(1.15)
    assert ours["eager_vs_bf16"] == pytest.approx(1.5)
    met = {what: ok for what, _, _, ok in model.targets(rows)}
    assert list(met.values()) == [True, True, True, True]
    slow = [_row("decode", 32, 3000.0, 2100.0, 2200.0, diffs=(1e-3, 1.1e-3))]
    verdicts = [(None if v is None else round(v, 3), ok) for _, v, _, ok in model.targets(slow)]
    assert verdicts == [(1.364, False), (0.955, False), (None, None), (1.1, False)]  # (no prefill measured)
    text = model.render_targets(slow)
    assert "MISSED" in text and "not measured" in text
    header, cells = model.table(rows)
    assert header[:5] == ["phase", "tokens", "path", "eager us", "graph us"] and len(cells) == 6
    assert cells[2][5:7] == ["1.50", "1.15"] and cells[0][7] == "-"  # bf16 has no diff against itself
    assert model.render_table(rows, markdown=True).startswith("| phase | tokens | path |")


def test_options():
    args = model.parse_args(["--tiny"])
    assert (args.prefill, args.batch_list, args.launches, args.path_names) == (64, [1, 3], 3, list(model.PATHS))
    args = model.parse_args([])
    assert (args.prefill, args.batch_list, args.launches) == (4096, [1, 8, 32, 64, 128], 30)
    for bad in (["--paths", "bf16,fast"], ["--batches", "0"], ["--launches", "5"], ["--prefill", "-1"]):
        with pytest.raises(SystemExit):
            model.parse_args(bad)
    assert model.parse_args(["--quick"]).launches == 5
    if not torch.cuda.is_available():
        assert model.main([]) == 1  # the full layer needs a GPU


def test_tiny_layer_end_to_end_on_the_cpu(tmp_path, capsys):
    status = model.main(["--tiny", "--batches", "1,3", "--prefill", "16", "--launches", "1", "--device", "cpu",
                         "--out", str(tmp_path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "no cuBLAS path on the CPU" in out and "deepergemm" in out
    payload = json.loads(next(tmp_path.glob("model_*.json")).read_text())
    assert [(r["phase"], r["tokens"]) for r in payload["rows"]] == [("decode", 1), ("decode", 3), ("prefill", 16)]
    for row in payload["rows"]:
        ours = row["paths"]["deepergemm"]
        assert ours["error"] is None and ours["eager_us"] > 0 and ours["graph_us"] is None
        # FP8 against bf16: the quantization error of e4m3 (3 mantissa bits), per block on the same inputs
        assert all(1e-5 < ours["diff"][block] < 1e-2 for block in model.BLOCKS), ours["diff"]
    assert payload["shape"]["experts"] == 8 and payload["targets"] is None


def test_tiny_paths_agree_with_each_other():
    """The FP8 path's blocks against the bf16 path's on the same input: the MoE routes alike (one router)."""
    with torch.inference_mode():
        paths = model.build_paths(model.TINY, ["bf16", "deepergemm"], torch.device("cpu"), seed=3)
        x = torch.randn(9, model.TINY.hidden, dtype=torch.bfloat16)
        inputs = model.block_inputs(paths["bf16"], x)
        ours, theirs = (model.block_outputs(paths[p], inputs) for p in ("deepergemm", "bf16"))
        assert paths["deepergemm"].moe.gate is paths["bf16"].moe.router
        for block in model.BLOCKS:
            assert torch.dist(ours[block].float(), theirs[block].float()) / theirs[block].float().norm() < 0.1, block


def test_tiny_fused_path_on_the_cpu(tmp_path):
    """The opt-in fused path (FP8MLP(fused_swiglu=True) for the dense MLP and the shared expert) through the reference
    path: its blocks as accurate as the unfused deepergemm path's (the SwiGLU rounds differently: fp32 then bf16,
    against bf16 after each of silu and the product), its attention block the same layers'."""
    status = model.main(["--tiny", "--batches", "3", "--prefill", "0", "--launches", "1", "--device", "cpu",
                         "--paths", "bf16,deepergemm,fused", "--out", str(tmp_path)])
    assert status == 0
    payload = json.loads(next(tmp_path.glob("model_*.json")).read_text())
    (row,) = payload["rows"]
    ours, fused = row["paths"]["deepergemm"]["diff"], row["paths"]["fused"]["diff"]
    assert fused["attention"] == ours["attention"]
    for block in ("mlp", "moe"):
        assert 1e-5 < fused[block] < 1e-2 and fused[block] < 1.5 * ours[block], (block, fused, ours)


def test_fused_gains_and_the_paths_rule():
    rows = [{"phase": "decode", "tokens": 32, "paths": {"deepergemm": {"graph_us": 90.0, "eager_us": 120.0},
                                                        "fused": {"graph_us": 60.0, "eager_us": 100.0}}},
            {"phase": "prefill", "tokens": 64, "paths": {"deepergemm": {"graph_us": None, "eager_us": 50.0},
                                                         "fused": {"graph_us": None, "eager_us": 40.0}}},
            {"phase": "decode", "tokens": 1, "paths": {"deepergemm": {"graph_us": 10.0, "eager_us": 10.0}}}]
    assert model.fused_gains(rows) == [("decode", 32, 1.5), ("prefill", 64, 1.25)]
    assert "fused" not in model.parse_args([]).path_names  # opt-in
    assert model.parse_args(["--paths", "deepergemm,fused"]).path_names == ["deepergemm", "fused"]


@pytest.mark.gpu
def test_gpu_tiny_layer_eager_and_graphs(tmp_path):
    """bf16, deepergemm and fused paths of the tiny layer on the GPU. No cuBLAS path: the tiny layer's K of 128 and 256
    is where torch._scaled_mm's blockwise recipe refuses (CUBLAS_STATUS_NOT_SUPPORTED) or, for N > 128, returns
    wrong results (bench/cublas_shapes.py; H100, torch 2.11), so the cuBLAS backend refuses those shapes."""
    status = model.main(["--tiny", "--launches", "2", "--paths", "bf16,deepergemm,fused", "--out", str(tmp_path)])
    payload = json.loads(next(tmp_path.glob("model_*.json")).read_text())
    for row in payload["rows"]:
        for name, f in row["paths"].items():
            assert f["error"] is None, (row["tokens"], name, f["error"])
            assert f["graph_us"] > 0 and f["graph_vs_eager"] < 1e-6, (row["tokens"], name)
        for name in ("deepergemm", "fused"):
            # FP8 against bf16: e4m3's quantization error, per block on the same inputs
            assert all(1e-5 < row["paths"][name]["diff"][b] < 1e-2 for b in model.BLOCKS), (name, row["paths"][name])
    assert status == 0
