"""What each small-M technique buys (issue 4), measured by switching it in the same process on the same inputs.

    python bench/ablation.py [--shapes small,decode] [--switches all|name,...] [--launches N] [--markdown]

Per shape: the ptx kernel as configured (the default), then once per switch with that one environment setting
changed (configs reads it per call, so one process compares them), and cuBLAS. Each configuration's output is
checked against the fp32 reference first (calc_diff <= --check-tol; a failure is reported, untimed, and makes
the exit status 1). Cells give time / default time (> 1: the switched configuration is slower, i.e. the
technique it turns off pays; for the opt-in ones, < 1: turning it on pays) and the variant it ran when that
differs from the default's; "=" where the switch changes nothing for the shape (same variant and settings), so
it is not timed again. PDL is not here: cold-L2 timing separates launches by design (bench/pdl_chain.py times
back-to-back GEMMs).
"""
from __future__ import annotations

import argparse
import functools
import os
import zlib
from contextlib import contextmanager

import torch

import deepergemm as dg
from deepergemm import configs, reference
from deepergemm.benchmark import sidebyside
from deepergemm.benchmark.gemm import MIN_LAUNCHES, measure_backend
from deepergemm.benchmark.report import gemm_bytes

# name -> (environment settings, what the default does that this switches)
SWITCHES: dict[str, tuple[dict[str, str], str]] = {
    "no-split-k": ({"DEEPERGEMM_SPLIT_K": "0"}, "split-K clusters fill the SMs at small M"),
    "no-stream-k": ({"DEEPERGEMM_STREAM_K": "0"}, "the stream-K tail evens out the last wave"),
    "no-l2-hints": ({"DEEPERGEMM_L2_HINTS": "0"}, "A kept (evict-last), B streamed (evict-first)"),
    "two-wgs": ({"DEEPERGEMM_SMALL_M_WGS": "2"}, "one math warpgroup takes a 64-row tile's columns"),
    "no-small-m-cluster": ({"DEEPERGEMM_SMALL_M_CLUSTER": "0"}, "64 < M <= 128: the two M-tiles multicast B"),
    "no-dual": ({"DEEPERGEMM_DUAL_ACC": "0"}, "two partial sets overlap the promotion with the next wgmmas"),
    "no-swap-ab": ({"DEEPERGEMM_SWAP_AB": "0"}, "swapped tiles at M <= 16 (out^T = B A^T)"),
    "swap-ab-64": ({"DEEPERGEMM_SWAP_AB": "1"}, "swapped tiles at M <= 16 only (not up to 64)"),
}


def parse_switches(spec: str) -> list[str]:
    if spec == "all":
        return list(SWITCHES)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in SWITCHES]
    if unknown or not names:
        raise ValueError(f"--switches: unknown {unknown or spec!r}; choose from all, {', '.join(SWITCHES)}")
    return names


@contextmanager
def environment(settings: dict[str, str]):
    """The settings in os.environ (and the switch snapshot) for the block, then the previous values back."""
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    configs.reload_switches()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        configs.reload_switches()


def configuration(m: int, n: int, k: int, num_sms: int, settings: dict[str, str]) -> configs.Choice:
    """What configs selects under the settings (a switch that changes nothing leaves the Choice equal)."""
    with environment(settings):
        return configs.select(m, n, k, num_sms)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/ablation.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,decode", help="subset names and/or MxNxK shapes (default small,decode)")
    p.add_argument("--switches", default="all", help=f"all, or some of: {', '.join(SWITCHES)}")
    p.add_argument("--launches", type=int, default=MIN_LAUNCHES, help=f"timed launches per cell (>= {MIN_LAUNCHES})")
    p.add_argument("--check-tol", type=float, default=2e-6, help="largest calc_diff vs the fp32 reference")
    p.add_argument("--hbm-tbps", type=float, default=3.0, help="HBM bandwidth for the achieved-bandwidth column")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    names: list[str] = []
    args, shapes = sidebyside.parse(build_parser(), argv, lambda a: names.extend(parse_switches(a.switches)))
    device = sidebyside.cuda_device("bench/ablation.py")
    if device is None:
        return 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    print(f"ablation on {torch.cuda.get_device_name(device)}: cells are time / default time; " +
          "; ".join(f"{name}: {SWITCHES[name][1]}" for name in names))
    sidebyside.print_header(["shape", "default", "us", "GB/s", "% of HBM", "vs cuBLAS"] + names, args.markdown)
    failed = False
    for shape in shapes:
        torch.manual_seed(args.seed + zlib.crc32(shape.label.encode()))
        a, a_s = dg.quantize_act(torch.randn(shape.m, shape.k, dtype=torch.bfloat16, device=device))
        b, b_s = dg.quantize_weight(torch.randn(shape.n, shape.k, dtype=torch.bfloat16, device=device))
        expected = reference.exact_fp32_matmul(dg.dequantize_act(a, a_s), dg.dequantize_weight(b, b_s))
        run = functools.partial(torch.ops.deepergemm.fp8_gemm, a, a_s, b, b_s, torch.bfloat16, None)
        default = configuration(shape.m, shape.n, shape.k, sms, {})
        base = measure_backend("ptx", functools.partial(run, "ptx"), expected, args, device)
        cublas = measure_backend("cublas", functools.partial(run, "cublas"), expected, args, device)
        if base.timing is None:
            print(f"{shape.label}: default FAILED ({base.error})")
            failed = True
            continue
        t0 = base.timing.median_us
        gbps = gemm_bytes(shape) / (t0 * 1e-6) / 1e9
        cells = [shape.label, default.variant.key, f"{t0:.1f}", f"{gbps:.0f}", f"{gbps / (args.hbm_tbps * 10):.0f}%",
                 f"{cublas.timing.median_us / t0:.2f}" if cublas.timing else "-"]
        for name in names:
            settings = SWITCHES[name][0]
            chosen = configuration(shape.m, shape.n, shape.k, sms, settings)
            if chosen == default:
                cells.append("=")
                continue
            with environment(settings):
                result = measure_backend("ptx", functools.partial(run, "ptx"), expected, args, device)
            if result.timing is None:
                cells.append(f"FAIL ({result.error})")
                failed = True
                continue
            label = "" if chosen.variant == default.variant else f" ({chosen.variant.key})"
            cells.append(f"{result.timing.median_us / t0:.3f}{label}")
        del expected
        sidebyside.print_row(cells, args.markdown)
    return 1 if failed else 0


if __name__ == "__main__":
    import sys

    sys.exit(main() or 0)
