"""What bench/fp8_out_bench.py and bench/swiglu_bench.py share: one fused GEMM epilogue against the unfused
sequence it replaces, compared bit for bit, then each of (the bf16 GEMM alone, unfused, fused) timed with a cold L2
(CUDA events, median of --launches; deepergemm.benchmark.timing), one printed row per shape."""
import argparse

import torch

from deepergemm import kernels
from deepergemm.benchmark.timing import time_steady


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--m", default="32,128,4096", help="rows of A, comma-separated")
    p.add_argument("--launches", type=int, default=50)
    p.add_argument("--ue8m0", action="store_true", help="power-of-two scales")
    return p


def pairs(text: str) -> list[tuple[int, int]]:
    """'7168x2048,4096x7168' -> [(7168, 2048), (4096, 7168)]"""
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]


def print_header(args, shape_columns: str, variants: str) -> int:
    """Prints the device line and the table's header; returns the SM count."""
    sms = kernels.sm_count(torch.cuda.current_device())
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, ue8m0={args.ue8m0}, cold L2, "
          f"median of {args.launches}")
    print(f"{shape_columns}  {'bf16 GEMM':>10} {'unfused':>10} {'fused':>10} {'fused/unfused':>13} {'fused/gemm':>10}"
          f"  bits  variants ({variants})")
    return sms


def same_bits(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))


def measure_row(shape_cells: str, gemm, unfused, fused, launches: int, variants: str,
                rows: torch.Tensor | None = None) -> None:
    """Compares unfused() and fused() (each a (q, scales) pair) bit for bit (on `rows` only, a mask, where the other
    rows are unspecified), times the three, prints the row."""
    with torch.no_grad():
        want, got = unfused(), fused()
        torch.cuda.synchronize()
        if rows is not None:
            want, got = [t[rows] for t in want], [t[rows] for t in got]
        same = same_bits(want[0], got[0]) and same_bits(want[1], got[1])
        t_gemm, t_unfused, t_fused = (time_steady(fn, launches).median_us for fn in (gemm, unfused, fused))
    print(f"{shape_cells}  {t_gemm:>8.1f}us {t_unfused:>8.1f}us {t_fused:>8.1f}us {t_fused / t_unfused:>13.3f} "
          f"{t_fused / t_gemm:>10.3f}  {'same' if same else 'DIFF'}  {variants}")
