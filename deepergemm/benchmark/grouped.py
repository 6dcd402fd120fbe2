"""Grouped (MoE) GEMM benchmark: the ANCHORS.md grouped shapes, cold L2, against DeepGEMM's anchor TFLOPS.

    python -m deepergemm grouped-bench [--cases all|contiguous|masked] [--uneven] [--launches N] [--markdown]

cuBLAS in torch has no block-scaled grouped GEMM, so the comparison is with DeepGEMM's figures measured on
the anchor machine (absolute, not a same-process ratio: machines differ by a few percent), and with our own
plain fp8_gemm on one group's problem (a same-process ratio). Each case runs once through the op and every
group's rows are checked against the fp32 reference (calc_diff <= --check-tol); a failing case is reported,
left untimed, and makes the exit status 1. TFLOPS count the real rows only (2 * rows * N * K).
--uneven draws each group's rows from mean * U(0.7, 1.3) (a realistic routing) instead of equal sizes.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

import deepergemm as dg

from .. import reference
from .timing import time_steady

MIN_LAUNCHES = 30


@dataclass(frozen=True)
class GroupedCase:
    kind: str          # "contiguous" or "masked"
    groups: int
    m: int             # rows per group (masked: max_m = expected_m = m)
    n: int
    k: int
    deepgemm_us: float  # ANCHORS.md
    deepgemm_tflops: float

    @property
    def label(self) -> str:
        return f"{self.kind} {self.groups}x{self.m}x{self.n}x{self.k}"


# ANCHORS.md, "Grouped (MoE) GEMMs" (H100 80GB HBM3, 2026-11-24)
CASES = (
    GroupedCase("contiguous", 4, 8192, 4096, 7168, 1368.2, 1406),
    GroupedCase("contiguous", 4, 8192, 7168, 2048, 727.6, 1322),
    GroupedCase("contiguous", 8, 4096, 4096, 7168, 1373.0, 1401),
    GroupedCase("contiguous", 8, 4096, 7168, 2048, 726.1, 1325),
    GroupedCase("masked", 1, 1024, 4096, 7168, 54.9, 1096),
    GroupedCase("masked", 1, 1024, 7168, 2048, 38.4, 783),
    GroupedCase("masked", 2, 512, 4096, 7168, 59.6, 1009),
    GroupedCase("masked", 2, 512, 7168, 2048, 41.8, 719),
    GroupedCase("masked", 4, 256, 4096, 7168, 73.6, 817),
    GroupedCase("masked", 4, 256, 7168, 2048, 46.6, 645),
)


def select_cases(spec: str) -> list[GroupedCase]:
    if spec == "all":
        return list(CASES)
    if spec in ("contiguous", "masked"):
        return [c for c in CASES if c.kind == spec]
    raise ValueError(f"--cases must be all, contiguous or masked, got {spec!r}")


def group_sizes(case: GroupedCase, uneven: bool, generator: torch.Generator) -> list[int]:
    """Rows per group: equal, or mean * U(0.7, 1.3) (masked: at most max_m)."""
    if not uneven:
        return [case.m] * case.groups
    draw = (torch.rand(case.groups, generator=generator) * 0.6 + 0.7) * case.m
    sizes = [max(1, int(v)) for v in draw.tolist()]
    return [min(s, case.m) for s in sizes] if case.kind == "masked" else sizes


def case_inputs(case: GroupedCase, sizes: list[int], device: torch.device, backend: str = "ptx"):
    """(call, check) for one case: call() runs the op into a fixed output, check() returns the worst calc_diff
    over the groups (after poisoning the output with NaN, so an unwritten element fails)."""
    k, n = case.k, case.n
    w = torch.randn(case.groups * n, k, device=device, dtype=torch.bfloat16)
    b, b_s = _quantize_groups(w, case.groups, n)
    if case.kind == "contiguous":
        align = dg.GROUPED_M_ALIGNMENT
        rows = sum(-(-s // align) * align for s in sizes)
        a, a_s = dg.quantize_act(torch.randn(rows, k, device=device, dtype=torch.bfloat16))
        counts = torch.tensor(sizes, dtype=torch.int32, device=device)
        out = torch.empty(rows, n, device=device, dtype=torch.bfloat16)
        starts = [sum(-(-s // align) * align for s in sizes[:g]) for g in range(case.groups)]
        views = [(slice(starts[g], starts[g] + sizes[g]), a, a_s, out) for g in range(case.groups)]

        def call():
            dg.m_grouped_fp8_gemm_contiguous(a, a_s, b, b_s, counts, out=out, backend=backend)
    else:
        a, a_s = dg.quantize_act(torch.randn(case.groups * case.m, k, device=device, dtype=torch.bfloat16))
        a3, a3_s = a.view(case.groups, case.m, k), a_s.reshape(case.groups, case.m, k // 128)
        counts = torch.tensor(sizes, dtype=torch.int32, device=device)
        out = torch.empty(case.groups, case.m, n, device=device, dtype=torch.bfloat16)
        views = [(slice(g * case.m, g * case.m + sizes[g]), a, a_s, out.view(-1, n)) for g in range(case.groups)]

        def call():
            dg.m_grouped_fp8_gemm_masked(a3, a3_s, b, b_s, counts, case.m, out=out, backend=backend)

    def check() -> float:
        out.fill_(float("nan"))
        call()
        worst = 0.0
        for g, (rows, a2, s2, o2) in enumerate(views):
            want = reference.exact_fp32_matmul(reference.dequantize_act(a2[rows], s2[rows]),
                                               reference.dequantize_weight(b[g], b_s[g]))
            if o2[rows].isnan().any():  # (max() would drop calc_diff's NaN)
                return float("nan")
            worst = max(worst, reference.calc_diff(o2[rows], want))
        return worst

    return call, check


def _quantize_groups(w: torch.Tensor, groups: int, n: int):
    qs, ss = zip(*(dg.quantize_weight(w[g * n:(g + 1) * n]) for g in range(groups)))
    return torch.stack(qs), torch.stack(ss)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deepergemm grouped-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="all", help="all, contiguous or masked (default: all)")
    p.add_argument("--uneven", action="store_true", help="group sizes drawn around the mean (+-30%%)")
    p.add_argument("--launches", type=int, default=MIN_LAUNCHES, help=f"timed launches (default {MIN_LAUNCHES})")
    p.add_argument("--check-tol", type=float, default=reference.EXACT_TOL, help="largest calc_diff per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="Markdown table (for bench/RESULTS.md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv or [])
    try:
        cases = select_cases(args.cases)
    except ValueError as exc:
        build_parser().error(str(exc))
    if args.launches < 1:
        build_parser().error("--launches must be >= 1")
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        print("grouped-bench needs a Hopper GPU (sm_90): the grouped kernels run nowhere else", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    sep = " | " if args.markdown else "  "
    header = ["case", "sizes", "calc_diff", "ours us", "ours TFLOPS", "DeepGEMM TFLOPS", "ours/DeepGEMM"]
    print(("| " if args.markdown else "") + sep.join(header) + (" |" if args.markdown else ""))
    if args.markdown:
        print("|" + "---|" * len(header))
    status = 0
    for case in cases:
        sizes = group_sizes(case, args.uneven, generator)
        call, check = case_inputs(case, sizes, device)
        diff = check()
        cells = [case.label, "equal" if not args.uneven else f"{min(sizes)}..{max(sizes)}", f"{diff:.2e}"]
        if not diff <= args.check_tol:
            status = 1
            cells += ["FAIL", "-", f"{case.deepgemm_tflops:.0f}", "-"]
        else:
            timing = time_steady(call, args.launches, device=device)
            tflops = 2 * sum(sizes) * case.n * case.k / timing.median_us / 1e6
            cells += [f"{timing.median_us:.1f}", f"{tflops:.0f}", f"{case.deepgemm_tflops:.0f}",
                      f"{tflops / case.deepgemm_tflops:.3f}"]
        print(("| " if args.markdown else "") + sep.join(cells) + (" |" if args.markdown else ""), flush=True)
    return status
