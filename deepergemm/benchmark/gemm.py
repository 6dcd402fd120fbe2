"""GEMM benchmark: deepergemm's fp8_gemm backends side by side with cuBLAS, cold L2, one process.

    python -m deepergemm bench [--shapes all|small|large|decode|MxNxK,...] [--backends ptx,cublas] [--markdown]

For each shape: N(0,1) bf16 inputs x (M, K) and w (N, K), quantized through the public API
(1x128 activation groups, 128x128 weight blocks). Each backend runs once and its bf16 output is
checked against the fp32 GEMM of the dequantized inputs (TF32 off): calc_diff must be at most
--check-tol, for cuBLAS too. A backend that fails is reported, left untimed, and makes the exit
status 1. Passing backends are timed with benchmark.timing.time_steady (a 1 GiB buffer zeroed
before each launch, CUDA events, median of --launches; repeated, at most three times, while the spread
shows a stall of the machine), and so is bf16 torch.matmul(x, w.t()) for
context. The table gives ours / cuBLAS next to DeepGEMM / cuBLAS from design/ANCHORS.md (the
figure to beat); gemm_<timestamp>.json and .png (and _roofline.png: bandwidth and TFLOPS against M for each
(N, K) pair timed at several M, e.g. --shapes all,decode) go to --out.

Backends: the names of deepergemm.ops.BACKENDS, and "deepergemm" for backend="auto". All of them
go through torch.ops.deepergemm.fp8_gemm, cuBLAS included (backend="cublas" is
torch._scaled_mm with blockwise scales, the baseline of ANCHORS.md), so every column pays the same
dispatch; the cold-L2 flush before each launch keeps that host time off the GPU timeline.
"""
from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import zlib
from datetime import datetime
from pathlib import Path

import torch

import deepergemm as dg

from .. import ops, reference
from . import report
from .report import Measurement
from .shapes import Shape, select_shapes
from .timing import time_steady

MIN_LAUNCHES = 30    # below this the median is too noisy to compare with the anchors
QUICK_LAUNCHES = 5   # --quick default: a smoke run, not figures to report
BACKEND_ALIASES = {"deepergemm": "auto"}  # CLI name -> fp8_gemm backend=
BACKEND_CHOICES = tuple(ops.BACKENDS) + tuple(BACKEND_ALIASES)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deepergemm bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="all",
                   help="subset names (all, small, large, decode) and/or MxNxK shapes, comma separated (default: all)")
    p.add_argument("--launches", type=int, default=None,
                   help=f"timed launches per measurement, median reported (default {MIN_LAUNCHES}; "
                        f"at least {MIN_LAUNCHES} unless --quick)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: allows fewer than {MIN_LAUNCHES} launches (default {QUICK_LAUNCHES}); "
                        "not for reported figures")
    p.add_argument("--backends", default="ptx,cublas",
                   help=f"comma separated, from {', '.join(BACKEND_CHOICES)} ('deepergemm' = backend='auto'); "
                        "default: ptx,cublas")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="skip the bf16 torch.matmul timing")
    p.add_argument("--out", type=Path, default=Path("bench/out"),
                   help="folder for gemm_<timestamp>.json and .png (default: bench/out)")
    p.add_argument("--hbm-tbps", type=float, default=3.0,
                   help="HBM bandwidth in TB/s for the floor (default 3.0, as in ANCHORS.md)")
    p.add_argument("--check-tol", type=float, default=2e-6,
                   help="largest calc_diff vs the fp32 reference a backend may have, cuBLAS included "
                        "(default 2e-6; an exact kernel gives about 1.4e-6)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--markdown", action="store_true", help="print the table in Markdown (for bench/RESULTS.md)")
    return p


def parse_backends(spec: str) -> list[str]:
    names = []
    for name in (item.strip() for item in spec.split(",")):
        if name not in BACKEND_CHOICES:
            raise ValueError(f"unknown backend {name!r} in --backends {spec!r}; "
                             f"choose from {', '.join(BACKEND_CHOICES)}")
        if name not in names:
            names.append(name)
    return names


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[Shape], list[str]]:
    """Options, shapes and backend names; bad input exits through argparse with the reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shapes = select_shapes(args.shapes)
        backends = parse_backends(args.backends)
    except ValueError as exc:
        parser.error(str(exc))
    if args.launches is None:
        args.launches = QUICK_LAUNCHES if args.quick else MIN_LAUNCHES
    if args.launches < 1 or (args.launches < MIN_LAUNCHES and not args.quick):
        parser.error(f"--launches must be at least {MIN_LAUNCHES} (or at least 1 with --quick), got {args.launches}")
    if not args.hbm_tbps > 0:
        parser.error(f"--hbm-tbps must be positive, got {args.hbm_tbps}")
    if not args.check_tol >= 0:
        parser.error(f"--check-tol must be >= 0, got {args.check_tol}")
    return args, shapes, backends


def bench_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def git_commit() -> str:
    """The checkout's commit; $DEEPERGEMM_COMMIT where the tree has no .git (a copy on a GPU machine)."""
    if os.environ.get("DEEPERGEMM_COMMIT"):
        return os.environ["DEEPERGEMM_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def usable_backends(names: list[str], device: torch.device) -> list[str]:
    """Drop ptx where it cannot run (with a note); say what 'auto' resolves to."""
    kept = []
    for name in names:
        backend = BACKEND_ALIASES.get(name, name)
        if backend == "ptx" and not ops.ptx_backend_available(device):
            print(f"note: skipping backend 'ptx': the inline-PTX kernel is not available on "
                  f"{torch.cuda.get_device_name(device)} in this build")
            continue
        if backend == "auto":
            try:
                print(f"note: '{name}' (backend='auto') resolves to {ops.resolve_backend('auto', device)!r} here")
            except ValueError as exc:  # a bad DEEPERGEMM_BACKEND: the run itself reports it as an error
                print(f"note: '{name}': {exc}")
        kept.append(name)
    return kept


def prebuild_selected(shapes: list[Shape], backends: list[str], device: torch.device) -> None:
    """Build every kernel variant the shapes will select (and the host binding) before timing anything, all in
    parallel: nothing builds one variant after another while the table waits."""
    if not any(BACKEND_ALIASES.get(name, name) in ("ptx", "auto") for name in backends):
        return
    if not ops.ptx_backend_available(device):
        return
    from .. import configs, extension, kernels

    sms = kernels.sm_count(device.index)
    variants = [configs.select(s.m, s.n, s.k, sms).variant for s in shapes]
    try:
        extension.prebuild(variants)
    except extension.BuildError as exc:  # the shapes report it as their error
        print(f"note: {exc}", file=sys.stderr)


def measure_backend(name: str, fn, expected: torch.Tensor, args, device: torch.device) -> Measurement:
    """Check one backend's output against the reference, then time it (only if it passed)."""
    try:
        diff = dg.calc_diff(fn(), expected)
        if not diff <= args.check_tol:  # NaN fails too
            return Measurement(name, calc_diff=diff,
                               error=f"calc_diff {diff:.2e} > tolerance {args.check_tol:.1e} (not timed)")
        return Measurement(name, calc_diff=diff, timing=time_steady(fn, args.launches, device=device))
    except Exception as exc:  # a crashing backend is a result to report, not a reason to lose the others
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return Measurement(name, error=f"{type(exc).__name__}: {first_line}")


def measure_shape(shape: Shape, backends: list[str], args, device: torch.device) -> dict:
    # inputs depend on (seed, shape) only: a shape's figures do not depend on which shapes ran before
    torch.manual_seed(args.seed + zlib.crc32(shape.label.encode()))
    x = torch.randn(shape.m, shape.k, dtype=torch.bfloat16, device=device)
    w = torch.randn(shape.n, shape.k, dtype=torch.bfloat16, device=device)
    a, a_s = dg.quantize_act(x)
    b, b_s = dg.quantize_weight(w)
    expected = reference.exact_fp32_matmul(dg.dequantize_act(a, a_s), dg.dequantize_weight(b, b_s))
    measurements = []
    for name in backends:
        fn = functools.partial(torch.ops.deepergemm.fp8_gemm, a, a_s, b, b_s, torch.bfloat16, None,
                               BACKEND_ALIASES.get(name, name))
        measurements.append(measure_backend(name, fn, expected, args, device))
    del expected  # up to 1 GiB (8192x32768 fp32): not needed for the bf16 timing
    bf16 = time_steady(lambda: torch.matmul(x, w.t()), args.launches, device=device) if args.bf16 else None
    return report.build_row(shape, measurements, args.hbm_tbps, bf16)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]  # str(): callers may pass Paths
    args, shapes, backends = parse_args(argv)
    if not torch.cuda.is_available():
        print(f"deepergemm bench: no CUDA GPU is visible (torch {torch.__version__}), so there is nothing "
              "to time. Run it on an NVIDIA Hopper GPU (H100/H200); on this machine `python -m deepergemm` "
              "runs the CPU reference demo instead.", file=sys.stderr)
        return 1
    device = bench_device()
    device_name = torch.cuda.get_device_name(device)
    backends = usable_backends(backends, device)
    prebuild_selected(shapes, backends, device)
    started = datetime.now().astimezone()
    print(f"deepergemm GEMM bench on {device_name}, torch {torch.__version__}: {len(shapes)} shapes, "
          f"backends {', '.join(backends) or 'none'}{', bf16 matmul' if args.bf16 else ''}; "
          f"median of {args.launches} cold-L2 launches; calc_diff <= {args.check_tol:.1e} required", flush=True)

    rows = []
    for index, shape in enumerate(shapes, 1):
        row = measure_shape(shape, backends, args, device)
        torch.cuda.empty_cache()  # hand the last shape's buffers back before the next (large) one
        rows.append(row)
        print(report.progress_line(row, index, len(shapes)), flush=True)
        for failure in report.failures([row]):
            print(f"  FAILED {failure}", flush=True)

    summary, failed = report.summarize(rows), report.failures(rows)
    print()
    print(report.render_table(rows, markdown=args.markdown))
    print()
    print(report.render_summary(summary, markdown=args.markdown))

    stamp = started.strftime("%Y%m%d-%H%M%S")
    payload = {
        "device": device_name, "capability": "sm_%d%d" % torch.cuda.get_device_capability(device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "deepergemm": dg.__version__,
        "date": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "argv": argv, "args": vars(args), "backends": backends,
        "rows": rows, "summary": summary, "failures": failed,
    }
    json_path = report.write_json(args.out / f"gemm_{stamp}.json", payload)
    print(f"\nwrote {json_path}")
    png_path = args.out / f"gemm_{stamp}.png"
    if report.write_plot(rows, png_path, title=f"fp8 GEMM speed vs cuBLAS, {device_name}, {payload['date']}"):
        print(f"wrote {png_path}")
        roofline_path = args.out / f"gemm_{stamp}_roofline.png"
        if report.write_roofline(rows, roofline_path, args.hbm_tbps,
                                 title=f"fp8 GEMM roofline, {device_name}, {payload['date']} (cuBLAS dashed)"):
            print(f"wrote {roofline_path}")
    else:
        print("note: matplotlib is not installed, so no plot (pip install matplotlib)")

    if failed:
        print(f"\n{len(failed)} FAILED check(s), excluded from the timings:", file=sys.stderr)
        for failure in failed:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
