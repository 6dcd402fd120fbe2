"""Where the grouped contiguous GEMM loses to the dense one (issue 25): each contiguous anchor case timed four ways
with the same tile (select_grouped's pick and its dense twin), cold L2, median of --launches, one process:

  dense all   one fp8_gemm launch on all the rows against one group's weight (the dense kernel, no groups)
  grouped 1   the grouped kernel on the same rows as a single group (the grouped kernel's own overhead)
  grouped G   the anchor case: G groups, each its own weight (adds G weights' traffic through L2)
  dense xG    G dense launches, one per group (what a user without a grouped kernel runs)

    python bench/grouped_gap.py [--launches 20]
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts
from deepergemm.benchmark.shapes import GROUPED_ANCHORS
from deepergemm.benchmark.timing import time_steady


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--launches", type=int, default=20)
    args = p.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(f"{torch.cuda.get_device_name(dev)}, {sms} SMs; us, cold L2, median of {args.launches}")
    print("| case | tile | dense all | grouped 1 | grouped G | dense xG | grouped 1 / dense all | grouped G / dense all |")
    print("|---|---|---|---|---|---|---|---|")
    for case in (c for c in GROUPED_ANCHORS if c.kind == "contiguous"):
        g, m, n, k = case.groups, case.m_per_group, case.n, case.k
        gv = configs.select_grouped(configs.GROUP_CONTIGUOUS, m, g, n, k, sms).variant
        dv = dataclasses.replace(gv, grouping=configs.GROUP_NONE)
        w = torch.randn(g * n, k, device=dev, dtype=torch.bfloat16)
        bs = [dg.quantize_weight(w[i * n:(i + 1) * n]) for i in range(g)]
        b, b_s = torch.cat([q for q, _ in bs]), torch.cat([s for _, s in bs])
        a, a_s = dg.quantize_act(torch.randn(g * m, k, device=dev, dtype=torch.bfloat16))
        scales = layouts.to_act_scale_layout(a_s)
        out = torch.empty(g * m, n, device=dev, dtype=torch.bfloat16)
        n_units = configs.ceil_div(configs.ceil_div(n, gv.block_n), gv.cluster_n)
        group_n = min(configs.DEFAULT_GROUP_N, n_units)
        dense, grouped = extension.load(dv), extension.load(gv)
        one_group = torch.tensor([g * m], dtype=torch.int32, device=dev)
        counts = torch.tensor([m] * g, dtype=torch.int32, device=dev)
        per_group = [(a[i * m:(i + 1) * m], layouts.to_act_scale_layout(a_s[i * m:(i + 1) * m])) for i in range(g)]
        b0, b0_s = bs[0]
        calls = {
            "dense all": lambda: kernels.launch(dense, a, scales, b0, b0_s, out, None, group_n),
            "grouped 1": lambda: kernels.launch(grouped, a, scales, b0, b0_s, out, None, group_n,
                                                group_rows=one_group, group_stride=dg.GROUPED_M_ALIGNMENT),
            "grouped G": lambda: kernels.launch(grouped, a, scales, b, b_s, out, None, group_n, group_rows=counts,
                                                group_stride=dg.GROUPED_M_ALIGNMENT),
            "dense xG": lambda: [kernels.launch(dense, ai, si, bs[i][0], bs[i][1], out[i * m:(i + 1) * m], None,
                                                group_n) for i, (ai, si) in enumerate(per_group)],
        }
        us = {name: time_steady(fn, args.launches, device=dev).median_us for name, fn in calls.items()}
        print(f"| {case.groups}x{m}x{n}x{k} | {gv.key} | " + " | ".join(f"{us[c]:.1f}" for c in calls)
              + f" | {us['grouped 1'] / us['dense all']:.3f} | {us['grouped G'] / us['dense all']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
