"""Figures, tables, JSON and plot of the GEMM benchmark: pure Python, no GPU needed.

Figures of one shape (times in microseconds, from the median of the cold-L2 launches):
  TFLOPS    2*M*N*K / time
  bytes     what any kernel must move through HBM at least once: A fp8 (M*K) + B fp8 (N*K) + D bf16
            (2*M*N) + fp32 scales (M*K/128 for A, ceil(N/128)*K/128 for B)
  GB/s      bytes / time
  floor     bytes / HBM bandwidth (--hbm-tbps): no kernel starting from a cold L2 can be faster
  %floor    floor / time * 100: 100% means running at the HBM floor
  X/cuBLAS  cuBLAS time / X time (speed; > 1 is faster than cuBLAS), both measured in the same run
  DeepGEMM/cuBLAS  the same ratio for DeepGEMM, from design/ANCHORS.md (shapes.anchor_for)

A row is a JSON-ready dict (``build_row``); everything after it (summary, table, JSON, plot) reads
rows only, so a saved JSON file can be re-rendered.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..layouts import ceil_div
from ..reference import GROUP_K
from .shapes import Shape, anchor_for, is_large, is_small
from .timing import Timing

CUBLAS = "cublas"  # the baseline every other backend's ratio is taken against
BF16 = "bf16"      # torch.matmul in bf16: timed for context only (a different computation, not checked)
MISSING = "-"

# Subsets the footer summarizes: name -> (label, which rows belong).
SUBSETS: dict[str, tuple[str, Callable[[dict], bool]]] = {
    "all": ("all shapes", lambda row: True),
    "small": ("small M (<= 128)", lambda row: is_small(row_shape(row))),
    "large": ("large M (>= 4096)", lambda row: is_large(row_shape(row))),
}


@dataclass
class Measurement:
    """What the bench found for one backend on one shape."""
    backend: str
    calc_diff: float | None = None
    timing: Timing | None = None
    error: str | None = None  # why there is no timing: an exception, or calc_diff above the tolerance

    @property
    def status(self) -> str:
        """One of: ok (checked and timed), fail (calc_diff above the tolerance), error (it raised)."""
        if self.error is None and self.timing is not None:
            return "ok"
        return "fail" if self.calc_diff is not None else "error"


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def gemm_flops(shape: Shape) -> int:
    return 2 * shape.m * shape.n * shape.k


def gemm_bytes(shape: Shape) -> int:
    k_groups = shape.k // GROUP_K
    scales = 4 * k_groups * (shape.m + ceil_div(shape.n, GROUP_K))
    return shape.m * shape.k + shape.n * shape.k + 2 * shape.m * shape.n + scales


def floor_us(shape: Shape, hbm_tbps: float) -> float:
    return gemm_bytes(shape) / (hbm_tbps * 1e6)  # bytes / (TB/s * 1e12) seconds, in microseconds


def geomean(values: Iterable[float]) -> float | None:
    """Geometric mean of positive numbers; None for none."""
    values = list(values)
    if not values:
        return None
    if any(not v > 0 for v in values):
        raise ValueError(f"geomean needs positive values, got {values}")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _timing_figures(t: Timing | None) -> dict:
    keys = ("median_us", "min_us", "p20_us", "p80_us", "spread", "launches")
    if t is None:
        return dict.fromkeys(keys)
    return {"median_us": t.median_us, "min_us": t.min_us, "p20_us": t.p20_us, "p80_us": t.p80_us,
            "spread": t.spread, "launches": t.launches}


def _backend_figures(m: Measurement, flops: int, nbytes: int, floor: float) -> dict:
    ok = m.status == "ok"
    figures = {"status": m.status, "error": m.error, "calc_diff": m.calc_diff,
               **_timing_figures(m.timing if ok else None)}
    us = figures["median_us"]
    figures["tflops"] = flops / us / 1e6 if us else None
    figures["gbps"] = nbytes / us / 1e3 if us else None
    figures["floor_pct"] = 100 * floor / us if us else None
    return figures


def build_row(shape: Shape, measurements: Iterable[Measurement], hbm_tbps: float,
              bf16: Timing | None = None) -> dict:
    """All figures of one shape, as a JSON-ready dict."""
    flops, nbytes, floor = gemm_flops(shape), gemm_bytes(shape), floor_us(shape, hbm_tbps)
    backends = {m.backend: _backend_figures(m, flops, nbytes, floor) for m in measurements}
    anchor = anchor_for(shape)
    deepgemm_ratio = anchor.deepgemm_ratio if anchor else None
    cublas = backends.get(CUBLAS)
    cublas_us = cublas["median_us"] if cublas else None
    for name, figures in backends.items():
        ratio = cublas_us / figures["median_us"] if cublas_us and figures["median_us"] else None
        figures["vs_cublas"] = ratio
        comparable = name != CUBLAS and ratio is not None and deepgemm_ratio is not None
        figures["beats_deepgemm"] = ratio >= deepgemm_ratio if comparable else None
    bf16_figures = None
    if bf16 is not None:
        bf16_figures = {**_timing_figures(bf16), "tflops": flops / bf16.median_us / 1e6}
    return {
        "shape": shape.label, "m": shape.m, "n": shape.n, "k": shape.k,
        "flops": flops, "bytes": nbytes, "floor_us": floor,
        "backends": backends,
        BF16: bf16_figures,
        "deepgemm_vs_cublas": deepgemm_ratio,
        "anchor": asdict(anchor) if anchor else None,
    }


def row_shape(row: dict) -> Shape:
    return Shape(row["m"], row["n"], row["k"])


def backend_names(rows: Iterable[dict]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [name for name in row["backends"] if name not in names]
    return names


def ours(rows: Iterable[dict]) -> list[str]:
    """Backends compared with cuBLAS: every one but cuBLAS, when a cuBLAS column exists."""
    names = backend_names(rows)
    return [name for name in names if name != CUBLAS] if CUBLAS in names else []


def failures(rows: Iterable[dict]) -> list[str]:
    return [f"{row['shape']} {name}: {figures['error']}"
            for row in rows for name, figures in row["backends"].items() if figures["error"]]


# ----------------------------------------------------------------------------------------------
# summary: geometric means of the ratios, against DeepGEMM's over the same shapes
# ----------------------------------------------------------------------------------------------
def _subset_summary(rows: list[dict], backend: str) -> dict:
    measured = [row for row in rows if row["backends"].get(backend, {}).get("vs_cublas") is not None]
    anchored = [row for row in measured if row["deepgemm_vs_cublas"] is not None]
    ratio = lambda row: row["backends"][backend]["vs_cublas"]  # noqa: E731
    return {
        "shapes": len(measured),
        "geomean": geomean(map(ratio, measured)),
        "anchored": len(anchored),
        "geomean_anchored": geomean(map(ratio, anchored)),
        "deepgemm_geomean": geomean(row["deepgemm_vs_cublas"] for row in anchored),
        "beats": sum(bool(row["backends"][backend]["beats_deepgemm"]) for row in anchored),
    }


def summarize(rows: list[dict]) -> dict:
    """{backend: {subset: {shapes, geomean, anchored, geomean_anchored, deepgemm_geomean, beats}}}."""
    return {name: {subset: _subset_summary([row for row in rows if keep(row)], name)
                   for subset, (_, keep) in SUBSETS.items()}
            for name in ours(rows)}


def render_summary(summary: dict, markdown: bool = False) -> str:
    lines = []
    for name, subsets in summary.items():
        for subset, s in subsets.items():
            if not s["shapes"]:
                continue
            plural = "s" if s["shapes"] != 1 else ""
            line = f"{name}/cuBLAS geomean, {SUBSETS[subset][0]}: {s['geomean']:.3f} over {s['shapes']} shape{plural}"
            if s["anchored"] == 0:
                line += "; no DeepGEMM anchor for these shapes"
            else:
                if s["anchored"] != s["shapes"]:
                    line += f"; {s['geomean_anchored']:.3f} over the {s['anchored']} with an anchor"
                line += (f"; DeepGEMM/cuBLAS {s['deepgemm_geomean']:.3f} over the same {s['anchored']}; "
                         f"{name} >= DeepGEMM on {s['beats']}/{s['anchored']}")
            lines.append(line)
    if not lines:
        lines.append("no ratio vs cuBLAS: needs cuBLAS and at least one other backend passing")
    return "\n".join(f"- {line}" if markdown else line for line in lines)


# ----------------------------------------------------------------------------------------------
# table and progress line
# ----------------------------------------------------------------------------------------------
def _fmt(value, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _time_cell(figures: dict) -> str:
    return _fmt(figures["median_us"], ".1f") if figures["status"] == "ok" else figures["status"].upper()


def _yes_no(value: bool | None) -> str:
    return MISSING if value is None else ("yes" if value else "no")


def table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, cells) of the result table; columns follow the backends present in the rows."""
    names, compared = backend_names(rows), ours(rows)
    with_bf16 = any(row[BF16] for row in rows)
    header = ["shape", "floor us"]
    for name in names:
        header += [f"{name} us", f"{name} TFLOPS", f"{name} GB/s", f"{name} %floor", f"{name} diff"]
    if with_bf16:
        header += ["bf16 us", "bf16 TFLOPS"]
    header += [f"{name}/cuBLAS" for name in compared]
    if compared:
        header += ["DeepGEMM/cuBLAS"] + [f"{name} >= DeepGEMM" for name in compared]
    cells = []
    for row in rows:
        line = [row["shape"], _fmt(row["floor_us"], ".1f")]
        for name in names:
            f = row["backends"].get(name)
            if f is None:
                line += [MISSING] * 5
                continue
            line += [_time_cell(f), _fmt(f["tflops"], ".0f"), _fmt(f["gbps"], ".0f"),
                     _fmt(f["floor_pct"], ".0f"), _fmt(f["calc_diff"], ".1e")]
        if with_bf16:
            bf16 = row[BF16] or {}
            line += [_fmt(bf16.get("median_us"), ".1f"), _fmt(bf16.get("tflops"), ".0f")]
        line += [_fmt(row["backends"].get(name, {}).get("vs_cublas"), ".2f") for name in compared]
        if compared:
            line.append(_fmt(row["deepgemm_vs_cublas"], ".2f"))
            line += [_yes_no(row["backends"].get(name, {}).get("beats_deepgemm")) for name in compared]
        cells.append(line)
    return header, cells


def render_table(rows: list[dict], markdown: bool = False) -> str:
    header, cells = table(rows)
    if markdown:
        lines = [header, ["---"] * len(header), *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(header))]
    # shape left-aligned, numbers right-aligned
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                     for line in (header, *cells))


def progress_line(row: dict, index: int, total: int) -> str:
    parts = []
    for name, f in row["backends"].items():
        if f["status"] == "ok":
            parts.append(f"{name} {f['median_us']:.1f} us {f['tflops']:.0f} TFLOPS (diff {f['calc_diff']:.1e})")
        else:
            parts.append(f"{name} {_time_cell(f)}")
    if row[BF16]:
        parts.append(f"bf16 {row[BF16]['median_us']:.1f} us")
    deepgemm = row["deepgemm_vs_cublas"]
    for name in (n for n in row["backends"] if n != CUBLAS):
        ratio = row["backends"][name]["vs_cublas"]
        if ratio is not None:
            verdict = "" if deepgemm is None else \
                f" vs DeepGEMM {deepgemm:.2f}: {'beats' if ratio >= deepgemm else 'below'}"
            parts.append(f"{name}/cuBLAS {ratio:.2f}{verdict}")
    width = len(str(total))
    return f"[{index:>{width}}/{total}] {row['shape']:<16} " + " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# JSON and plot
# ----------------------------------------------------------------------------------------------
def _json_safe(value):
    """NaN/Inf (a NaN calc_diff) become null: strict JSON has no such numbers; the error text keeps them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path | str, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(payload), indent=1, allow_nan=False) + "\n")
    return path


def read_json(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def write_plot(rows: list[dict], path: Path | str, title: str = "") -> bool:
    """Bars of X/cuBLAS per shape for each compared backend, DeepGEMM's anchor ratio as markers.

    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    compared = ours(rows)
    xs = range(len(rows))
    fig = Figure(figsize=(max(8.0, 0.5 * len(rows) + 2), 5.5), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas directly: no pyplot, no global backend switch
    ax = fig.add_subplot()
    width = 0.8 / max(len(compared), 1)
    for i, name in enumerate(compared):
        ratios = [row["backends"].get(name, {}).get("vs_cublas") for row in rows]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [math.nan if r is None else r for r in ratios],
               width, label=f"{name} / cuBLAS")
    anchored = [(x, row["deepgemm_vs_cublas"]) for x, row in zip(xs, rows) if row["deepgemm_vs_cublas"]]
    if anchored:
        ax.scatter(*zip(*anchored), marker="D", color="black", zorder=3, label="DeepGEMM / cuBLAS (anchor)")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="cuBLAS")
    ax.set_xticks(list(xs), [row["shape"] for row in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("speed vs cuBLAS (cuBLAS us / backend us)")
    ax.set_title(title or "fp8 GEMM speed vs cuBLAS, cold L2")
    if not compared:
        ax.text(0.5, 0.9, "no backend besides cuBLAS was timed", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True


def write_roofline(rows: list[dict], path: Path | str, hbm_tbps: float, title: str = "") -> bool:
    """Achieved bandwidth (bytes of A + B + D + scales / time) and TFLOPS against M, one line per (N, K) pair
    with at least two M values and per timed backend (cuBLAS dashed), the HBM bandwidth as
    a line: where each backend leaves the memory roof. Returns False when matplotlib is not installed or
    no (N, K) pair has two M values (nothing to draw)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    series: dict[tuple[int, int], list[dict]] = {}
    for row in rows:
        series.setdefault((row["n"], row["k"]), []).append(row)
    series = {nk: sorted(rs, key=lambda r: r["m"]) for nk, rs in series.items() if len({r["m"] for r in rs}) > 1}
    if not series:
        return False
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_bw, ax_tf = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = ours(rows) + [CUBLAS]
    colors = {}
    for (n, k), rs in series.items():
        ms = [r["m"] for r in rs]
        for name in names:
            figs = [r["backends"].get(name, {}) for r in rs]
            style = "--" if name == CUBLAS else "-"
            for ax, key in ((ax_bw, "gbps"), (ax_tf, "tflops")):
                values = [f.get(key) if f.get(key) is not None else math.nan for f in figs]
                line, = ax.plot(ms, values, style, marker="o", markersize=3, color=colors.get((n, k)),
                                label=f"{name} N={n} K={k}")
                colors[(n, k)] = line.get_color()
    ax_bw.axhline(hbm_tbps * 1000, color="black", linewidth=1, label=f"HBM {hbm_tbps:.1f} TB/s")
    for ax, ylabel in ((ax_bw, "achieved GB/s (A + B + D + scales)"), (ax_tf, "TFLOPS")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_bw.legend(fontsize=6, ncol=2)
    fig.suptitle(title or "fp8 GEMM roofline: bandwidth and TFLOPS vs M (cuBLAS dashed)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return True
