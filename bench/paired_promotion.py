"""The 256-K recipe's risk, measured before building it (issue 27; developer tool, GPU): what one promotion per 256 of
K (the tensor cores summing 256 products instead of 128) costs in accuracy, and what half the promotions buy.

    python bench/paired_promotion.py [--variants 128x128s6pc2,256x128s4pc1x2] [--shapes 4096x7168x7168,...] [--launches 30]
    DEEPERGEMM_NVCC_DEFINES=DG_EXPERIMENT_PROMOTE_PAIRS python bench/paired_promotion.py   (the experiment)

Inputs are quantized by the 256 recipe (1x256 activation groups, 128x256 weight blocks: deepergemm.reference), and
their scales repeated per 128 of K, so the usual kernel computes the same product exactly (promotion per 128). Built
with DG_EXPERIMENT_PROMOTE_PAIRS (ptx/mainloop.cuh: run_single and run_two_slabs_pairs; single-accumulator and 256-row variants), the kernel
promotes once per pair of K blocks instead. Per shape: calc_diff against the fp32 GEMM of the dequantized inputs
(the exactness bar is 2e-6), on N(0, 1) data and on data with outlier channels, and the kernel's median time
(cold L2). Run it once without and once with the define and compare the rows (split-K and stream-K stay off: no
cut may fall inside a pair).
"""
import argparse
import os
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from deepergemm import configs, extension, kernels, layouts  # noqa: E402
from deepergemm import reference as ref  # noqa: E402
from deepergemm.benchmark.timing import time_steady  # noqa: E402

DEFINE = "DG_EXPERIMENT_PROMOTE_PAIRS"


def recipe_256_inputs(m: int, n: int, k: int, outliers: bool, device: str = "cuda"):
    """fp8 operands quantized per 1x256 / 128x256, with their scales repeated per 128 of K (the kernel's layout)."""
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    if outliers:  # a few activation channels 50x larger: the groups that hold them quantize the rest coarsely
        x[:, torch.randperm(k, device=device)[: max(1, k // 512)]] *= 50
    a, a_s = ref.quantize_act(x.bfloat16(), group_k=256)
    b, b_s = ref.quantize_weight(w.bfloat16(), block_k=256)
    expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
    a_s128 = layouts.to_act_scale_layout(a_s.repeat_interleave(2, dim=1).contiguous())
    return a, a_s128, b, b_s.repeat_interleave(2, dim=1).contiguous(), expected


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="128x128s6pc2,256x128s4pc1x2",
                   help="single-accumulator or 256-row (two-slab), unsplit variant keys")
    p.add_argument("--shapes", default="4096x7168x7168,4096x4096x16384,128x7168x16384,4096x2112x7168")
    p.add_argument("--launches", type=int, default=30)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    variants = [configs.parse_key(key) for key in args.variants.split(",")]
    for variant in variants:
        if not (variant.acc_mode == 0 or variant.block_m == 256) or variant.splits != 1:
            p.error(f"--variants: each must be a single-accumulator or 256-row, unsplit variant, got {variant.key}")
    pairs = DEFINE in os.environ.get("DEEPERGEMM_NVCC_DEFINES", "").split()
    print(f"{torch.cuda.get_device_name()}, promotion per {'256 (pairs)' if pairs else '128'} of K, "
          f"inputs of the 256 recipe, cold L2, median of {args.launches}")
    print(f"{'variant':>16} {'shape':>18} {'data':>9} {'calc_diff':>10} {'us':>8}")
    for variant in variants:
        kernel = extension.load(variant)
        for label in args.shapes.split(","):
            m, n, k = (int(v) for v in label.split("x"))
            if k % 256:
                p.error(f"K must be a multiple of 256 (pairs of K blocks), got {label}")
            for outliers in (False, True):
                a, a_s, b, b_s, expected = recipe_256_inputs(m, n, k, outliers)
                out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)

                def run():
                    kernels.launch(kernel, a, a_s, b, b_s, out, None, 16, configs.variant_l2_hints(m, variant), False)

                run()
                torch.cuda.synchronize()
                diff = ref.calc_diff(out, expected) if not out.isnan().any() else float("nan")
                t = time_steady(run, args.launches).median_us
                print(f"{variant.key:>16} {label:>18} {'outliers' if outliers else 'N(0,1)':>9} {diff:>10.2e} {t:>8.1f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
