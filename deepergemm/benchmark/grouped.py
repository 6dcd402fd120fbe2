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
import torch

import deepergemm as dg

from .. import configs, layouts, reference
from .shapes import GROUPED_ANCHORS, GroupedAnchor
from .timing import time_steady

MIN_LAUNCHES = 30


# The cases: ANCHORS.md's grouped table (shapes.GROUPED_ANCHORS; m_per_group is masked max_m = expected_m).
GroupedCase = GroupedAnchor
CASES = GROUPED_ANCHORS


def case_label(case: GroupedCase) -> str:
    return f"{case.kind} {case.groups}x{case.m_per_group}x{case.n}x{case.k}"


def select_cases(spec: str) -> list[GroupedCase]:
    if spec == "all":
        return list(CASES)
    if spec in ("contiguous", "masked"):
        return [c for c in CASES if c.kind == spec]
    raise ValueError(f"--cases must be all, contiguous or masked, got {spec!r}")


def group_sizes(case: GroupedCase, uneven: bool, generator: torch.Generator) -> list[int]:
    """Rows per group: equal, or mean * U(0.7, 1.3) (masked: at most max_m)."""
    if not uneven:
        return [case.m_per_group] * case.groups
    draw = (torch.rand(case.groups, generator=generator) * 0.6 + 0.7) * case.m_per_group
    sizes = [max(1, int(v)) for v in draw.tolist()]
    return [min(s, case.m_per_group) for s in sizes] if case.kind == "masked" else sizes


def case_inputs(case: GroupedCase, sizes: list[int], device: torch.device, backend: str = "ptx", variant=None):
    """(call, check) for one case: call() runs the op (or, given a configs.Variant, that grouped variant launched
    directly) into a fixed output, check() returns the worst calc_diff over the groups (after poisoning the
    output with NaN, so an unwritten element fails)."""
    k, n = case.k, case.n
    w = torch.randn(case.groups * n, k, device=device, dtype=torch.bfloat16)
    b, b_s = _quantize_groups(w, case.groups, n)
    counts = torch.tensor(sizes, dtype=torch.int32, device=device)
    if case.kind == "contiguous":
        align = dg.GROUPED_M_ALIGNMENT
        firsts = [sum(-(-s // align) * align for s in sizes[:g]) for g in range(case.groups + 1)]
        a, a_s = dg.quantize_act(torch.randn(firsts[-1], k, device=device, dtype=torch.bfloat16))
        out = torch.empty(firsts[-1], n, device=device, dtype=torch.bfloat16)

        def call():
            dg.m_grouped_fp8_gemm_contiguous(a, a_s, b, b_s, counts, out=out, backend=backend)
    else:
        max_m = case.m_per_group
        firsts = [g * max_m for g in range(case.groups)]
        a, a_s = dg.quantize_act(torch.randn(case.groups * max_m, k, device=device, dtype=torch.bfloat16))
        a3, a3_s = a.view(case.groups, max_m, k), a_s.reshape(case.groups, max_m, k // 128)
        out = torch.empty(case.groups * max_m, n, device=device, dtype=torch.bfloat16)

        def call():
            dg.m_grouped_fp8_gemm_masked(a3, a3_s, b, b_s, counts, max_m, out=out.view(case.groups, max_m, n),
                                         backend=backend)

    if variant is not None:  # the same problem, one variant: what select_grouped's choice is measured against
        stride = dg.GROUPED_M_ALIGNMENT if case.kind == "contiguous" else case.m_per_group
        scales = layouts.to_act_scale_layout(a_s)

        def call():  # (instead of the op)
            from .. import extension, kernels

            n_units = -(-(-(-n // variant.block_n)) // variant.cluster_n)
            kernels.launch(extension.load(variant), a, scales, b.view(case.groups * n, k),
                           b_s.view(-1, b_s.shape[-1]), out, None, min(16, n_units), group_rows=counts,
                           group_stride=stride)

    def check() -> float:
        out.fill_(float("nan"))
        call()
        worst = 0.0
        for g in range(case.groups):
            rows = slice(firsts[g], firsts[g] + sizes[g])
            if out[rows].isnan().any():  # (max() would drop calc_diff's NaN)
                return float("nan")
            want = reference.exact_fp32_matmul(reference.dequantize_act(a[rows], a_s[rows]),
                                               reference.dequantize_weight(b[g], b_s[g]))
            worst = max(worst, reference.calc_diff(out[rows], want))
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
    p.add_argument("--variants", default="auto",
                   help="auto (the op's choice), all (every grouped variant of the case's layout) or variant keys, "
                        "comma separated, e.g. 128x128s6wc2gc (each launched directly; for tuning select_grouped)")
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
    try:
        variants_for(args.variants, configs.GROUP_CONTIGUOUS)
    except ValueError as exc:
        build_parser().error(str(exc))
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)):
        print("grouped-bench needs a Hopper GPU (sm_90): the grouped kernels run nowhere else", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    sep = " | " if args.markdown else "  "
    header = ["case", "sizes", "variant", "calc_diff", "ours us", "ours TFLOPS", "DeepGEMM TFLOPS", "ours/DeepGEMM"]
    print(("| " if args.markdown else "") + sep.join(header) + (" |" if args.markdown else ""))
    if args.markdown:
        print("|" + "---|" * len(header))
    status = 0
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for case in cases:
        sizes = group_sizes(case, args.uneven, generator)
        grouping = configs.GROUP_CONTIGUOUS if case.kind == "contiguous" else configs.GROUP_MASKED
        auto = configs.select_grouped(grouping, max(1, sum(sizes) // case.groups) if case.kind == "contiguous"
                                      else case.m_per_group, case.groups, case.n, case.k, sms).variant
        for variant in variants_for(args.variants, grouping):
            call, check = case_inputs(case, sizes, device, variant=variant)
            diff = check()
            cells = [case_label(case), "equal" if not args.uneven else f"{min(sizes)}..{max(sizes)}",
                     f"auto: {auto.key}" if variant is None else variant.key + (" (auto)" if variant == auto else ""),
                     f"{diff:.2e}"]
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


def variants_for(spec: str, grouping: int) -> list:
    """--variants: [None] (the op's choice), every grouped variant of the layout, or the keys given (those of
    another layout are skipped)."""
    if spec == "auto":
        return [None]
    if spec == "all":
        return [v for v in configs.GROUPED_VARIANTS if v.grouping == grouping]
    chosen = [configs.parse_key(key.strip()) for key in spec.split(",")]
    if any(v.grouping == configs.GROUP_NONE for v in chosen):
        raise ValueError(f"--variants {spec!r}: grouped variant keys end in gc or gm")
    return [v for v in chosen if v.grouping == grouping]
