"""Model benchmark: the linear layers and the MoE of one DeepSeek-V3-shaped decoder layer, step time and accuracy.

    python -m deepergemm model-bench [--prefill 4096] [--batches 1,8,32,64,128] [--paths bf16,cublas,deepergemm]
                                     [--launches 30] [--quick] [--no-graphs] [--markdown] [--out bench/out] [--tiny]

The layer (random weights drawn N(0, 1/K), pre-norm residual blocks as in DeepSeek-V3, RMSNorm without weights):
  attention projections  q_a 7168->1536, q_b 1536->128*192, kv_a 7168->576, kv_b 512->128*256, o_proj 16384->7168
                         (no attention kernel: o_proj reads q_nope + v of each token, so every projection feeds the
                         layer's output)
  dense MLP              SwiGLU 7168 -> 18432 -> 7168
  MoE                    router 7168 -> 256 (fp32, DeepSeek-V3's sigmoid scores, 8 groups, top-4 groups, top-8
                         experts, weights x2.5; the same router module in every path, so the same routing), 256
                         experts SwiGLU 7168 -> 2048 -> 7168, plus one shared expert of 2048
--tiny scales it down (hidden 256, 8 experts top-2, ...) so that the CPU reference path runs it in seconds.

Paths (the same weights; the FP8 ones quantized from the bf16 ones in 128x128 blocks, activations per 1x128):
  bf16        torch in bf16: F.linear; the experts as torch's grouped GEMM (F.grouped_mm) over the routed rows
              (one per expert where torch has none: counts read to the host)
  cublas      FP8: the linear layers through dg.linear(backend="cublas") (torch._scaled_mm with blockwise scales);
              the experts as one torch._scaled_mm per expert (cuBLAS has no block-scaled grouped GEMM), whose row
              counts are read to the host: every step when eager (one synchronization), once at capture under a
              CUDA graph (which then replays that routing only: fine here, where the input does not change)
  deepergemm  deepergemm.nn: FP8Linear, FP8MLP, FP8MoE (grouped GEMMs, no host synchronization)
  fused       (opt-in: --paths ...,fused) deepergemm with the dense MLP and the shared expert as
              FP8MLP(fused_swiglu=True) and the routed experts as FP8Experts(fused_swiglu=True): gate/up GEMM,
              SwiGLU and the down input's quantization in one kernel (grouped for the experts); "fused x
              deepergemm" lines under the table say what it buys per step

Each (phase, tokens) case times one layer step per path, eager and replayed from a CUDA graph (timing.time_steady:
cold L2, median of --launches), and measures accuracy against the bf16 path: calc_diff of the layer's output, and
of each block's output on the same input (the bf16 path's). A path that fails is reported and the others go on.
The JSON (model_<timestamp>.json) has every figure, the PNG the step times; --markdown prints the table for
bench/RESULTS.md. Run `python -m deepergemm warmup` first on a fresh machine (kernel builds in parallel).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import deepergemm as dg
from deepergemm import nn as dnn

from .. import cublas
from . import report
from .timing import capture_graph, time_steady

PATHS = ("bf16", "cublas", "deepergemm")  # the default set
OPTIONAL_PATHS = ("fused",)
MIN_LAUNCHES = 30
QUICK_LAUNCHES = 5
TINY_LAUNCHES = 3
ACCURACY_SLACK = 1.01  # "no worse than cuBLAS": the same exact math in another fp32 order, within 1%
BLOCKS = ("attention", "mlp", "moe")
TARGETS = {"decode_batch": 32, "decode_vs_bf16": 1.4, "decode_vs_cublas": 1.1, "prefill_vs_bf16": 1.5}


@dataclass(frozen=True)
class LayerShape:
    hidden: int = 7168
    q_lora: int = 1536
    heads: int = 128
    qk_nope: int = 128
    qk_rope: int = 64
    v_head: int = 128
    kv_lora: int = 512
    dense_inter: int = 18432
    experts: int = 256
    top_k: int = 8
    moe_inter: int = 2048
    shared_inter: int = 2048
    n_group: int = 8
    topk_group: int = 4
    routed_scaling: float = 2.5


DEEPSEEK_V3 = LayerShape()
TINY = LayerShape(hidden=256, q_lora=128, heads=2, kv_lora=128, dense_inter=384, experts=8, top_k=2, moe_inter=128,
                  shared_inter=128, n_group=4, topk_group=2)


# ----------------------------------------------------------------------------------------------
# the layer, one path's modules
# ----------------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)


class Layer(nn.Module):
    """One path's decoder layer: attention projections, dense MLP, MoE (see the module's docstring)."""

    def __init__(self, shape: LayerShape, q_a, q_b, kv_a, kv_b, o_proj, mlp, moe):
        super().__init__()
        self.shape = shape
        self.q_a, self.q_b, self.kv_a, self.kv_b, self.o_proj = q_a, q_b, kv_a, kv_b, o_proj
        self.mlp, self.moe = mlp, moe

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        s, t = self.shape, h.shape[0]
        q = self.q_b(rms_norm(self.q_a(h))).view(t, s.heads, s.qk_nope + s.qk_rope)[..., :s.qk_nope]
        kv = self.kv_b(rms_norm(self.kv_a(h)[:, :s.kv_lora])).view(t, s.heads, s.qk_nope + s.v_head)
        return self.o_proj((q + kv[..., s.qk_nope:]).reshape(t, s.heads * s.v_head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(rms_norm(x))
        x = x + self.mlp(rms_norm(x))
        return x + self.moe(rms_norm(x))


class Bf16Linear(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight)


class Bf16MLP(nn.Module):
    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = Bf16Linear(gate), Bf16Linear(up), Bf16Linear(down)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _tight_layout(router: dnn.TopKRouter, x: torch.Tensor):
    """Routing and a layout without padding (alignment 1: one row per choice), for the paths whose expert GEMMs
    need no aligned segments; and the routing weights."""
    ids, weights = router(x)
    layout = dg.build_contiguous_layout(ids, router.num_experts, alignment=1, max_rows=ids.numel())
    return layout, weights


def _host_spans(layout) -> list[tuple[int, int, int]]:
    """(expert, first row, rows) of every expert with rows, read to the host (a synchronization)."""
    starts, sizes = layout.group_starts.tolist(), layout.group_sizes.tolist()
    return [(e, start, size) for e, (start, size) in enumerate(zip(starts, sizes)) if size > 0]


class Bf16MoE(nn.Module):
    """The MoE in bf16 torch: F.grouped_mm over the routed rows (offsets read on the GPU), or a loop over the
    experts where torch has no grouped GEMM."""

    def __init__(self, router, gate_up: torch.Tensor, down: torch.Tensor, shared: Bf16MLP | None):
        super().__init__()
        self.router, self.shared = router, shared
        self.gate_up, self.down = gate_up, down
        self.grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)

    def _experts(self, a: torch.Tensor, w: torch.Tensor, layout) -> torch.Tensor:
        if self.grouped_mm is not None:
            ends = layout.group_starts + layout.group_sizes  # (int32)
            return self.grouped_mm(a, w.transpose(1, 2), offs=ends)
        out = a.new_zeros(a.shape[0], w.shape[1])
        for e, start, size in _host_spans(layout):
            out[start:start + size] = F.linear(a[start:start + size], w[e])
        return out

    def forward(self, x):
        layout, weights = _tight_layout(self.router, x)
        h = self._experts(dg.permute_tokens(x, layout), self.gate_up, layout)
        inter = h.shape[1] // 2
        y = self._experts(F.silu(h[:, :inter]) * h[:, inter:], self.down, layout)
        out = dg.unpermute_tokens(y, layout, weights)
        return out if self.shared is None else out + self.shared(x)


class CublasMoE(nn.Module):
    """The MoE through cuBLAS's blockwise GEMM: quantization and numerics as FP8Experts, one torch._scaled_mm per
    expert with rows, the row counts read to the host on every eager step. While a CUDA graph captures, it takes
    the counts of its last eager step (the capture's warm-up on the same input): the graph replays that routing."""

    def __init__(self, router, experts: dnn.FP8Experts, shared: dnn.FP8MLP | None):
        super().__init__()
        self.router, self.experts, self.shared = router, experts, shared
        self.last_spans: list | None = None

    def _spans(self, layout) -> list[tuple[int, int, int]]:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            if self.last_spans is None:
                raise RuntimeError("CublasMoE is captured without an eager step before it (its expert row counts)")
            return self.last_spans
        self.last_spans = _host_spans(layout)
        return self.last_spans

    def _gemm(self, a, a_s, w, w_s, spans, out_dtype):
        out = torch.empty(a.shape[0], w.shape[1], dtype=out_dtype, device=a.device)
        for e, start, size in spans:
            rows = slice(start, start + size)
            out[rows] = cublas.fp8_gemm_cublas(a[rows], a_s[rows], w[e], w_s[e], out_dtype, None)
        return out

    def forward(self, x):
        layout, weights = _tight_layout(self.router, x)
        spans = self._spans(layout)
        ex = self.experts
        out_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        q, s = dg.quantize_act(x)
        a, a_s = dg.permute_tokens(q, layout), dg.permute_tokens(s, layout)
        h = self._gemm(a, a_s, ex.gate_up_proj, ex.gate_up_proj_scale_inv, spans, out_dtype)
        inter = ex.intermediate_size
        q2, s2 = dg.quantize_act(F.silu(h[:, :inter].float()) * h[:, inter:])
        y = self._gemm(q2, s2, ex.down_proj, ex.down_proj_scale_inv, spans, out_dtype)
        out = dg.unpermute_tokens(y, layout, weights).to(x.dtype)
        return out if self.shared is None else out + self.shared(x)


def _fp8_copy(layer: dnn.FP8Linear, backend: str) -> dnn.FP8Linear:
    """The same FP8 weights (shared, not copied) behind another GEMM backend."""
    other = dnn.FP8Linear(layer.in_features, layer.out_features, device="meta", backend=backend)
    other.weight, other.weight_scale_inv = layer.weight, layer.weight_scale_inv
    return other


def _fp8_mlp(mlp: Bf16MLP, backend: str = "auto") -> dnn.FP8MLP:
    out = dnn.FP8MLP(mlp.gate_proj.weight.shape[1], mlp.gate_proj.weight.shape[0], device="meta", backend=backend)
    for name in ("gate_proj", "up_proj", "down_proj"):
        setattr(out, name, _fp8_from_bf16(getattr(mlp, name), backend))
    return out


def _fused_copy(mlp: dnn.FP8MLP) -> dnn.FP8MLP:
    """The same FP8 layers (shared) behind FP8MLP's fused SwiGLU path."""
    out = dnn.FP8MLP(mlp.gate_proj.in_features, mlp.gate_proj.out_features, device="meta", fused_swiglu=True)
    out.gate_proj, out.up_proj, out.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    return out


def _fused_experts(experts: dnn.FP8Experts) -> dnn.FP8Experts:
    """The same FP8 experts (weights shared) behind FP8Experts' fused SwiGLU path."""
    out = dnn.FP8Experts(experts.num_experts, experts.hidden_size, experts.intermediate_size, device="meta",
                         fused_swiglu=True)
    for name in ("gate_up_proj", "gate_up_proj_scale_inv", "down_proj", "down_proj_scale_inv"):
        setattr(out, name, getattr(experts, name))
    return out


def _fp8_from_bf16(layer: Bf16Linear, backend: str = "auto") -> dnn.FP8Linear:
    n, k = layer.weight.shape
    linear = nn.Linear(k, n, bias=False, device="meta")
    linear.weight = layer.weight
    return dnn.FP8Linear.from_linear(linear, backend=backend)


def build_paths(shape: LayerShape, names: list[str], device: torch.device, seed: int) -> dict[str, Layer]:
    """The layer of every named path, all from one set of random bf16 weights (seeded)."""
    torch.manual_seed(seed)
    s = shape

    def weight(*dims):  # N(0, 1/K), drawn in bf16 (no fp32 copy of the 22 GB of experts)
        return torch.randn(*dims, dtype=torch.bfloat16, device=device).mul_(dims[-1] ** -0.5)

    bf16_lin = {"q_a": weight(s.q_lora, s.hidden), "q_b": weight(s.heads * (s.qk_nope + s.qk_rope), s.q_lora),
                "kv_a": weight(s.kv_lora + s.qk_rope, s.hidden), "kv_b": weight(s.heads * (s.qk_nope + s.v_head),
                                                                                  s.kv_lora),
                "o_proj": weight(s.hidden, s.heads * s.v_head)}
    bf16_lin = {k: Bf16Linear(v) for k, v in bf16_lin.items()}
    dense = Bf16MLP(weight(s.dense_inter, s.hidden), weight(s.dense_inter, s.hidden), weight(s.hidden, s.dense_inter))
    shared = Bf16MLP(weight(s.shared_inter, s.hidden), weight(s.shared_inter, s.hidden),
                     weight(s.hidden, s.shared_inter)) if s.shared_inter else None
    gate_up, down = weight(s.experts, 2 * s.moe_inter, s.hidden), weight(s.experts, s.hidden, s.moe_inter)
    router = dnn.TopKRouter(s.hidden, s.experts, s.top_k, scoring="sigmoid", n_group=s.n_group,
                            topk_group=s.topk_group, routed_scaling_factor=s.routed_scaling, device=device)
    with torch.no_grad():
        router.e_score_correction_bias.normal_(std=0.01)  # DeepSeek-V3 trains one; any small values will do

    paths = {}
    if "bf16" in names:
        paths["bf16"] = Layer(s, **bf16_lin, mlp=dense, moe=Bf16MoE(router, gate_up, down, shared))
    if {"deepergemm", "cublas", "fused"} & set(names):
        fp8_lin = {k: _fp8_from_bf16(v) for k, v in bf16_lin.items()}
        fp8_dense = _fp8_mlp(dense)
        fp8_shared = _fp8_mlp(shared) if shared is not None else None
        experts = dnn.FP8Experts.from_weights(gate_up, down)

        def fp8_moe(routed, shared_experts):
            moe = dnn.FP8MoE(s.hidden, s.moe_inter, s.experts, s.top_k, shared_intermediate_size=s.shared_inter,
                             scoring="sigmoid", n_group=s.n_group, topk_group=s.topk_group,
                             routed_scaling_factor=s.routed_scaling, device="meta")
            moe.gate, moe.experts, moe.shared_experts = router, routed, shared_experts
            return moe

        if "deepergemm" in names:
            paths["deepergemm"] = Layer(s, **fp8_lin, mlp=fp8_dense, moe=fp8_moe(experts, fp8_shared))
        if "fused" in names:
            paths["fused"] = Layer(s, **fp8_lin, mlp=_fused_copy(fp8_dense),
                                   moe=fp8_moe(_fused_experts(experts),
                                               _fused_copy(fp8_shared) if fp8_shared is not None else None))
        if "cublas" in names:
            lin = {k: _fp8_copy(v, "cublas") for k, v in fp8_lin.items()}
            mlp = dnn.FP8MLP(s.hidden, s.dense_inter, device="meta")
            for name in ("gate_proj", "up_proj", "down_proj"):
                setattr(mlp, name, _fp8_copy(getattr(fp8_dense, name), "cublas"))
            cub_shared = None
            if fp8_shared is not None:
                cub_shared = dnn.FP8MLP(s.hidden, s.shared_inter, device="meta")
                for name in ("gate_proj", "up_proj", "down_proj"):
                    setattr(cub_shared, name, _fp8_copy(getattr(fp8_shared, name), "cublas"))
            paths["cublas"] = Layer(s, **lin, mlp=mlp, moe=CublasMoE(router, experts, cub_shared))
    return {name: paths[name] for name in names}


# ----------------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------------
@dataclass
class PathResult:
    eager_us: float | None = None
    graph_us: float | None = None
    eager_spread: float | None = None
    graph_spread: float | None = None
    graph_vs_eager: float | None = None  # calc_diff of the replayed output against the eager one
    diff: dict | None = None             # calc_diff vs the bf16 path: layer, attention, mlp, moe
    error: str | None = None


def _median_cpu_us(fn, launches: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(launches):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    times.sort()
    median = statistics.median(times)
    return median, (times[-1] - times[0]) / median if median else 0.0


def _time(fn, launches: int, device: torch.device) -> tuple[float, float]:
    if device.type != "cuda":
        return _median_cpu_us(fn, launches)
    t = time_steady(fn, launches, device=device)
    return t.median_us, t.spread


def _capture(layer: Layer, x: torch.Tensor):
    """(graph, static output) of one layer step on a static copy of x."""
    return capture_graph(layer, x.clone())


def block_inputs(reference: Layer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each block's input (before its RMSNorm) along the reference path."""
    x1 = x + reference.attention(rms_norm(x))
    x2 = x1 + reference.mlp(rms_norm(x1))
    return {"attention": x, "mlp": x1, "moe": x2}


def block_outputs(layer: Layer, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"attention": layer.attention(rms_norm(inputs["attention"])), "mlp": layer.mlp(rms_norm(inputs["mlp"])),
            "moe": layer.moe(rms_norm(inputs["moe"]))}


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def measure_case(paths: dict[str, Layer], tokens: int, args, device: torch.device, seed: int) -> dict[str, PathResult]:
    torch.manual_seed(seed + zlib.crc32(f"tokens {tokens}".encode()))
    x = torch.randn(tokens, next(iter(paths.values())).shape.hidden, dtype=torch.bfloat16, device=device)
    results = {name: PathResult() for name in paths}
    reference, inputs = {}, {}
    if "bf16" in paths:
        try:
            inputs = block_inputs(paths["bf16"], x)
            reference = {"layer": paths["bf16"](x), **block_outputs(paths["bf16"], inputs)}
        except Exception as exc:  # the others still get timed
            results["bf16"].error = _first_line(exc)
    for name, layer in paths.items():
        result = results[name]
        if result.error:
            continue
        try:
            eager_out = layer(x)
            if reference:
                outs = {"layer": eager_out, **block_outputs(layer, inputs)}
                result.diff = {k: dg.calc_diff(outs[k], reference[k]) for k in reference}
            result.eager_us, result.eager_spread = _time(lambda: layer(x), args.launches, device)
            if args.graphs and device.type == "cuda":
                graph, static_y = _capture(layer, x)
                graph.replay()
                result.graph_vs_eager = dg.calc_diff(static_y, eager_out)
                result.graph_us, result.graph_spread = _time(graph.replay, args.launches, device)
                del graph, static_y
        except Exception as exc:
            result.error = _first_line(exc)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def build_row(phase: str, tokens: int, results: dict[str, PathResult]) -> dict:
    """One case as a JSON-ready dict, with speed ratios (graph times when measured, else eager)."""
    figures = {name: asdict(r) for name, r in results.items()}
    for kind in ("graph", "eager"):
        for name, f in figures.items():
            for base in ("bf16", "cublas"):
                mine = f[f"{kind}_us"]
                theirs = figures.get(base, {}).get(f"{kind}_us")
                f[f"{kind}_vs_{base}"] = theirs / mine if mine and theirs else None
    return {"phase": phase, "tokens": tokens, "paths": figures}


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return report.MISSING if value is None else format(value, spec)


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["phase", "tokens", "path", "eager us", "graph us", "x bf16", "x cuBLAS", "diff layer", "diff attn",
              "diff mlp", "diff moe"]
    cells = []
    for row in rows:
        for name, f in row["paths"].items():
            key = "graph" if f["graph_us"] else "eager"
            diff = f["diff"] or {}
            line = [row["phase"], str(row["tokens"]), name, _fmt(f["eager_us"], ".0f"), _fmt(f["graph_us"], ".0f"),
                    _fmt(f[f"{key}_vs_bf16"], ".2f"), _fmt(f[f"{key}_vs_cublas"], ".2f")]
            line += [_fmt(diff.get(k) if name != "bf16" else None, ".2e") for k in ("layer", "attention", "mlp", "moe")]
            if f["error"]:
                line[3] = f"ERROR {f['error']}"
            cells.append(line)
    return header, cells


def render_table(rows: list[dict], markdown: bool = False) -> str:
    header, cells = table(rows)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*c) for c in cells])


def _ratio(rows, phase: str, tokens: int | None, path: str, base: str):
    for row in rows:
        if row["phase"] == phase and (tokens is None or row["tokens"] == tokens) and path in row["paths"]:
            f = row["paths"][path]
            return f[f"graph_vs_{base}"] if f["graph_us"] else f[f"eager_vs_{base}"]
    return None


def targets(rows: list[dict]) -> list[tuple[str, float | None, float, bool | None]]:
    """(what, measured, goal, met) for the issue's targets; met None where not measured."""
    b = TARGETS["decode_batch"]
    checks = [(f"decode batch {b}: deepergemm x bf16", _ratio(rows, "decode", b, "deepergemm", "bf16"),
               TARGETS["decode_vs_bf16"]),
              (f"decode batch {b}: deepergemm x cuBLAS", _ratio(rows, "decode", b, "deepergemm", "cublas"),
               TARGETS["decode_vs_cublas"]),
              ("prefill: deepergemm x bf16", _ratio(rows, "prefill", None, "deepergemm", "bf16"),
               TARGETS["prefill_vs_bf16"])]
    out = [(what, value, goal, None if value is None else value >= goal) for what, value, goal in checks]
    worst = None
    for row in rows:  # the blocks, on the same inputs (the layer's output also carries routing flips)
        ours, theirs = row["paths"].get("deepergemm", {}).get("diff"), row["paths"].get("cublas", {}).get("diff")
        if ours and theirs:
            ratio = max(ours[k] / theirs[k] if theirs[k] else (1.0 if ours[k] == 0 else float("inf"))
                        for k in BLOCKS)
            worst = ratio if worst is None else max(worst, ratio)
    out.append(("accuracy: worst block diff, deepergemm / cuBLAS", worst, ACCURACY_SLACK,
                None if worst is None else worst <= ACCURACY_SLACK))
    return out


def fused_gains(rows: list[dict]) -> list[tuple[str, int, float]]:
    """(phase, tokens, deepergemm's step time / fused's) where both ran (graph times when measured, else eager)."""
    out = []
    for row in rows:
        mine, base = row["paths"].get("fused"), row["paths"].get("deepergemm")
        if not mine or not base:
            continue
        kind = "graph" if mine["graph_us"] and base["graph_us"] else "eager"
        if mine[f"{kind}_us"] and base[f"{kind}_us"]:
            out.append((row["phase"], row["tokens"], base[f"{kind}_us"] / mine[f"{kind}_us"]))
    return out


def render_targets(rows: list[dict]) -> str:
    lines = []
    for what, value, goal, met in targets(rows):
        verdict = "not measured" if met is None else ("met" if met else "MISSED")
        sign = "<=" if what.startswith("accuracy") else ">="
        lines.append(f"{what}: {_fmt(value, '.3f')} (target {sign} {goal}): {verdict}")
    for phase, tokens, gain in fused_gains(rows):
        lines.append(f"{phase} {tokens}: fused x deepergemm (the layer step, fused SwiGLU MLPs): {gain:.3f}")
    return "\n".join(lines)


def write_plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    fig = Figure(figsize=(12, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_time, ax_ratio = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = list(rows[0]["paths"]) if rows else []
    for name in names:
        points = [(r["tokens"], r["paths"][name]) for r in rows if name in r["paths"]]
        for kind, style in (("graph", "-"), ("eager", ":")):
            xs = [t for t, f in points if f[f"{kind}_us"]]
            ax_time.plot(xs, [f[f"{kind}_us"] / 1e3 for _, f in points if f[f"{kind}_us"]], style, marker="o",
                         label=f"{name} ({kind})")
        if name != "bf16":
            xs = [t for t, f in points if f["graph_vs_bf16"] or f["eager_vs_bf16"]]
            ax_ratio.plot(xs, [f["graph_vs_bf16"] or f["eager_vs_bf16"] for _, f in points
                               if f["graph_vs_bf16"] or f["eager_vs_bf16"]], marker="o", label=f"{name} / bf16")
    ax_ratio.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    for ax, label in ((ax_time, "layer step, ms"), (ax_ratio, "speed vs bf16 (bf16 ms / path ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens (decode batch; the last point: prefill)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_time.set_yscale("log")
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated ints, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deepergemm model-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true",
                   help="a scaled-down layer (hidden 256, 8 experts top-2): runs on the CPU reference path too")
    p.add_argument("--prefill", type=int, default=None, help="prefill tokens, 0 to skip (default 4096; --tiny 64)")
    p.add_argument("--batches", default=None, help="decode batch sizes (default 1,8,32,64,128; --tiny 1,3)")
    p.add_argument("--paths", default=",".join(PATHS),
                   help=f"comma separated, from {', '.join(PATHS + OPTIONAL_PATHS)} (default {','.join(PATHS)})")
    p.add_argument("--launches", type=int, default=None,
                   help=f"timed steps per measurement, median reported (default {MIN_LAUNCHES}; at least "
                        f"{MIN_LAUNCHES} unless --quick or --tiny)")
    p.add_argument("--quick", action="store_true", help=f"smoke run: default {QUICK_LAUNCHES} launches")
    p.add_argument("--no-graphs", dest="graphs", action="store_false", help="eager timings only")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--seed", type=int, default=0, help="weights and inputs seed (default 0)")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="folder for model_<timestamp>.json and .png")
    p.add_argument("--markdown", action="store_true", help="print the table in Markdown (for bench/RESULTS.md)")
    return p


def parse_args(argv: list[str]):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.path_names = [p.strip() for p in args.paths.split(",") if p.strip()]
        unknown = [p for p in args.path_names if p not in PATHS + OPTIONAL_PATHS]
        if unknown or not args.path_names:
            raise ValueError(f"--paths must name some of {', '.join(PATHS + OPTIONAL_PATHS)}, got {args.paths!r}")
        args.batch_list = _ints(args.batches or ("1,3" if args.tiny else "1,8,32,64,128"), "--batches")
    except ValueError as exc:
        parser.error(str(exc))
    if args.prefill is None:
        args.prefill = 64 if args.tiny else 4096
    if args.prefill < 0:
        parser.error(f"--prefill must be >= 0, got {args.prefill}")
    if args.launches is None:
        args.launches = TINY_LAUNCHES if args.tiny else QUICK_LAUNCHES if args.quick else MIN_LAUNCHES
    if args.launches < 1 or (args.launches < MIN_LAUNCHES and not (args.quick or args.tiny)):
        parser.error(f"--launches must be at least {MIN_LAUNCHES} (or at least 1 with --quick or --tiny), got "
                     f"{args.launches}")
    if args.device not in (None, "cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("deepergemm model-bench: --device cuda, but no CUDA GPU is visible", file=sys.stderr)
        return 1
    if device.type == "cpu" and not args.tiny:
        print("deepergemm model-bench: the DeepSeek-V3-shaped layer needs a GPU (about 40 GB of weights); on the CPU "
              "pass --tiny (a scaled-down layer through the reference path)", file=sys.stderr)
        return 1
    names = list(args.path_names)
    if device.type == "cpu" and "cublas" in names:
        print("note: no cuBLAS path on the CPU (torch._scaled_mm needs a GPU): skipped")
        names.remove("cublas")
    if device.type == "cpu" and args.graphs:
        print("note: no CUDA graphs on the CPU: eager timings only")
    shape = TINY if args.tiny else DEEPSEEK_V3
    started = datetime.now().astimezone()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (reference path)"
    print(f"deepergemm model-bench on {where}, torch {torch.__version__}: {'tiny' if args.tiny else 'DeepSeek-V3'} "
          f"layer, paths {', '.join(names)}; median of {args.launches} steps", flush=True)
    with torch.inference_mode():
        paths = build_paths(shape, names, device, args.seed)
        cases = [("decode", b) for b in args.batch_list] + ([("prefill", args.prefill)] if args.prefill else [])
        rows = []
        for phase, tokens in cases:
            row = build_row(phase, tokens, measure_case(paths, tokens, args, device, args.seed))
            rows.append(row)
            print(f"[{len(rows)}/{len(cases)}] {phase} {tokens}: " + ", ".join(
                f"{n} {_fmt(f['graph_us'] or f['eager_us'], '.0f')} us" + (" ERROR" if f["error"] else "")
                for n, f in row["paths"].items()), flush=True)
    print()
    print(render_table(rows, markdown=args.markdown))
    print()
    print(render_targets(rows) if device.type == "cuda" else
          "(the issue's targets are judged on a Hopper GPU: these are CPU reference-path timings)")
    stamp = started.strftime("%Y%m%d-%H%M%S")
    payload = {"device": where, "torch": torch.__version__, "deepergemm": dg.__version__,
               "date": started.isoformat(timespec="seconds"), "argv": argv, "shape": asdict(shape),
               "args": {k: v for k, v in vars(args).items()}, "rows": rows,
               "targets": [dict(zip(("what", "value", "goal", "met"), t)) for t in targets(rows)]
               if device.type == "cuda" else None}
    from .gemm import git_commit

    payload["commit"] = git_commit()
    json_path = report.write_json(args.out / f"model_{stamp}.json", payload)
    print(f"\nwrote {json_path}")
    png = args.out / f"model_{stamp}.png"
    if write_plot(rows, png, f"one DeepSeek-V3 layer step ({'tiny' if args.tiny else 'full'}), {where}"):
        print(f"wrote {png}")
    else:
        print("note: matplotlib is not installed, so no plot (pip install matplotlib)")
    failed = [(row["phase"], row["tokens"], n, f["error"]) for row in rows for n, f in row["paths"].items()
              if f["error"]]
    for failure in failed:
        print("FAILED {} {} {}: {}".format(*failure), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
