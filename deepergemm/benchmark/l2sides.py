"""L2-side placement benchmark (issue 5): the same GEMM with B plain, placed by L2 side, and placed with the
side-aware schedule, next to cuBLAS, cold L2, one process, the same inputs.

    python -m deepergemm l2-bench [--shapes all|small|large|decode|MxNxK,...] [--launches N] [--markdown]

Prints the detection (SMs per side, latencies, granularity; deepergemm.l2_sides) and, per shape, the time of
  plain    fp8_gemm(a, a_s, b, b_s)                      (B as the user's tensor)
  placed   the placed B with the usual tile order         (the pool's loads alone: placement's cost)
  sides    the placed B with the side-aware schedule      (what prepare_weight gives: the gain)
  cublas   torch._scaled_mm, the baseline of ANCHORS.md
with sides / plain (the gain: > 1 is faster), placement's cost (`prepare ms`: prepare_weight's wall time, measuring
the pool included; `pool/B`: the pool's bytes over B's), and the output of each checked against the fp32 reference first
(calc_diff <= --check-tol; a failing column is reported, untimed, and makes the exit status 1). Where the
detection is undecided, or prepare_weight does not place a weight, it says why and times nothing for it.
"""
from __future__ import annotations

import argparse
import functools
import time
import zlib

import torch

import deepergemm as dg

from .. import configs, l2_sides, reference
from . import sidebyside
from .gemm import MIN_LAUNCHES, measure_backend

COLUMNS = ("plain", "placed", "sides", "cublas")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deepergemm l2-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="all", help="subset names and/or MxNxK shapes (default: all)")
    p.add_argument("--launches", type=int, default=MIN_LAUNCHES, help=f"timed launches per column (>= {MIN_LAUNCHES})")
    p.add_argument("--check-tol", type=float, default=2e-6, help="largest calc_diff vs the fp32 reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="Markdown table (for bench/RESULTS.md)")
    return p


def _columns(a, a_s, b, b_s, prepared) -> dict[str, functools.partial]:
    op = torch.ops.deepergemm
    placed = functools.partial(op.fp8_gemm_placed, a, a_s, prepared.pool, prepared.slots, prepared.scales,
                               prepared.n, prepared.slab_rows, prepared.split_rows, torch.bfloat16, None, None)
    return {
        "plain": functools.partial(op.fp8_gemm, a, a_s, b, b_s, torch.bfloat16, None, "ptx"),
        "placed": functools.partial(placed, False, "ptx"),
        "sides": functools.partial(placed, True, "ptx"),
        "cublas": functools.partial(op.fp8_gemm, a, a_s, b, b_s, torch.bfloat16, None, "cublas"),
    }


def main(argv: list[str] | None = None) -> int:
    args, shapes = sidebyside.parse(build_parser(), argv)
    device = sidebyside.cuda_device("l2-bench")
    if device is None:
        return 2
    sides = l2_sides.detect(device)
    a_count, b_count = sides.sms_per_side
    print(f"L2 sides of {torch.cuda.get_device_name(device)}: {'decided' if sides.decided else 'UNDECIDED'}: "
          f"{sides.reason} (SMs {a_count} + {b_count}, detection {sides.seconds:.2f} s)")
    if not sides.decided:
        return 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    sidebyside.print_header(["shape", "variant", "side 0 tiles"] + [f"{c} us" for c in COLUMNS] +
                            ["sides/plain", "placed/plain", "sides vs cuBLAS", "prepare ms", "pool/B"], args.markdown)
    failed = False
    for shape in shapes:
        torch.manual_seed(args.seed + zlib.crc32(shape.label.encode()))
        x = torch.randn(shape.m, shape.k, dtype=torch.bfloat16, device=device)
        w = torch.randn(shape.n, shape.k, dtype=torch.bfloat16, device=device)
        a, a_s = dg.quantize_act(x)
        b, b_s = dg.quantize_weight(w)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        prepared = dg.prepare_weight(b, b_s, sides=sides)
        torch.cuda.synchronize(device)
        prepare_ms = (time.perf_counter() - start) * 1e3
        if not prepared.placed:
            print(f"{shape.label}: not placed ({prepare_ms:.1f} ms to find out): {prepared.reason}")
            continue
        expected = reference.exact_fp32_matmul(dg.dequantize_act(a, a_s), dg.dequantize_weight(b, b_s))
        variant = configs.select(shape.m, shape.n, shape.k, sms, swap_ok=False).variant
        side0 = configs.side0_n_tiles(variant, shape.n, prepared.split_rows)
        results = {name: measure_backend(name, fn, expected, args, device)
                   for name, fn in _columns(a, a_s, b, b_s, prepared).items()}
        del expected
        cells = [shape.label, variant.key, "off" if side0 is None else str(side0)]
        for name in COLUMNS:
            r = results[name]
            cells.append(f"{r.timing.median_us:.1f}" if r.timing else f"FAIL ({r.error})")
            failed |= r.timing is None
        t = {name: r.timing.median_us for name, r in results.items() if r.timing}
        ratio = lambda num, den: f"{t[den] / t[num]:.3f}" if num in t and den in t else "-"  # noqa: E731
        cells += [ratio("sides", "plain"), ratio("placed", "plain"), ratio("sides", "cublas"), f"{prepare_ms:.1f}",
                  f"{prepared.pool.numel() / b.numel():.2f}"]
        sidebyside.print_row(cells, args.markdown)
        del prepared
    return 1 if failed else 0
