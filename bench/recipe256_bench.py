"""The 256-K recipe's kernels against the 128 recipe's (issue 27; developer tool, GPU): accuracy and speed of one
promotion per 256 of K (the tensor cores summing 256 products instead of 128) on the same operands.

    python bench/recipe256_bench.py [--variants 128x128s6p,256x128s4pc1x2] [--shapes 4096x7168x7168,...]
    python bench/recipe256_bench.py --op [--shapes large,mid]       (the public op, as users call it)

Inputs are quantized by the 256 recipe (1x256 activation groups, 128x256 weight blocks: deepergemm.reference). Per
shape and variant, two launches of the same product: the 128 recipe's variant with the scales repeated per 128 of K
(exact: every pair of K blocks carries one scale), and its pairs twin (key letter "r": promotion per pair, the scales
as they are). Each row: calc_diff against the fp32 GEMM of the dequantized inputs (the exactness bar is 2e-6), on
N(0, 1) data and on data with outlier channels, and the median time (cold L2, CUDA events) of both.
--op: fp8_gemm (backend ptx, its own plan: configs.select_recipe_256) on the 256 recipe's scales against fp8_gemm on
the same scales repeated per 128 (the 128 recipe's kernel and plan) and torch._scaled_mm on those, per shape.
"""
import argparse
import dataclasses
import math
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from deepergemm import configs, extension, kernels, layouts  # noqa: E402
from deepergemm import reference as ref  # noqa: E402
from deepergemm.benchmark.timing import time_cold_l2  # noqa: E402


def recipe_256_inputs(m: int, n: int, k: int, outliers: bool, device: str = "cuda"):
    """fp8 operands quantized per 1x256 / 128x256, their scales in the kernel's layouts, and the exact reference."""
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    if outliers:  # a few activation channels 50x larger: the groups that hold them quantize the rest coarsely
        x[:, torch.randperm(k, device=device)[: max(1, k // 512)]] *= 50
    a, a_s = ref.quantize_act(x.bfloat16(), group_k=256)
    b, b_s = ref.quantize_weight(w.bfloat16(), block_k=256)
    expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
    return a, a_s, b, b_s.contiguous(), expected


def op_bench(shapes: str, launches: int) -> None:
    import deepergemm as dg
    from deepergemm import cublas
    from deepergemm.benchmark.shapes import select_shapes

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name()}, fp8_gemm on the 256 recipe's scales vs the same scales per 128, cold L2, "
          f"median of {launches}")
    print("| shape | plan (256) | us 128 recipe | us 256 recipe | 256 / 128 speedup | us cuBLAS | 256 recipe / cuBLAS | "
          "calc_diff 256 |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for s in select_shapes(shapes):
        if s.k % 256:
            continue
        a, a_s, b, b_s, expected = recipe_256_inputs(s.m, s.n, s.k, False)
        a_s = layouts.to_act_scale_layout(a_s)
        a_s128 = layouts.to_act_scale_layout(a_s.repeat_interleave(2, dim=1))
        b_s128 = b_s.repeat_interleave(2, dim=1).contiguous()
        out = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
        diff = ref.calc_diff(out, expected)
        t256 = time_cold_l2(lambda: dg.fp8_gemm(a, a_s, b, b_s, backend="ptx"), launches).median_us
        t128 = time_cold_l2(lambda: dg.fp8_gemm(a, a_s128, b, b_s128, backend="ptx"), launches).median_us
        tcb = (time_cold_l2(lambda: dg.fp8_gemm(a, a_s128, b, b_s128, backend="cublas"), launches).median_us
               if cublas.supports(s.n, s.k) else float("nan"))
        ratios.append(t128 / t256)
        plan = configs.select_recipe_256(s.m, s.n, s.k, sms).variant.key
        print(f"| {s.m}x{s.n}x{s.k} | {plan} | {t128:.1f} | {t256:.1f} | {t128 / t256:.3f} | {tcb:.1f} | "
              f"{tcb / t256:.3f} | {diff:.2e} |", flush=True)
    print(f"geomean 256 / 128 speedup: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} over {len(ratios)} shapes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="128x128s6p,128x128s6pc2,256x128s4p,256x128s4pc1x2",
                   help="one-partial-set variants (letter p) of the 128 recipe; each runs beside its pairs twin (r)")
    p.add_argument("--shapes", default="4096x7168x7168,4096x4096x16384,8192x7168x2048,4096x24576x1536,2048x7168x4096")
    p.add_argument("--launches", type=int, default=30)
    p.add_argument("--op", action="store_true", help="time the public op (shapes: subset names or MxNxK)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    if args.op:
        op_bench(args.shapes if args.shapes != p.get_default("shapes") else "large,mid", args.launches)
        return 0
    pairs = []
    for key in args.variants.split(","):
        v = configs.parse_key(key)
        if v.acc_mode != 0 or v.splits != 1:
            p.error(f"--variants: each must be an unsplit one-partial-set variant (letter p), got {key}")
        pairs.append((v, dataclasses.replace(v, pairs=True)))
    extension.build_kernels([v for pair in pairs for v in pair])
    print(f"{torch.cuda.get_device_name()}, inputs of the 256 recipe, cold L2, median of {args.launches}")
    print(f"| variant | shape | data | calc_diff 128 | calc_diff pairs | us 128 | us pairs | pairs speedup |")
    print("|---|---|---|---|---|---|---|---|")
    speedups = []
    for v128, vpairs in pairs:
        k128, kpairs = extension.load(v128), extension.load(vpairs)
        for label in args.shapes.split(","):
            m, n, k = (int(t) for t in label.split("x"))
            if k % 256:
                p.error(f"K must be a multiple of 256, got {label}")
            for outliers in (False, True):
                a, a_s, b, b_s, expected = recipe_256_inputs(m, n, k, outliers)
                a_s128 = layouts.to_act_scale_layout(a_s.repeat_interleave(2, dim=1).contiguous())
                b_s128 = b_s.repeat_interleave(2, dim=1).contiguous()
                a_s256 = layouts.to_act_scale_layout(a_s)
                row = []
                for kernel, variant, sa, sb in ((k128, v128, a_s128, b_s128), (kpairs, vpairs, a_s256, b_s)):
                    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)

                    def run(kernel=kernel, variant=variant, sa=sa, sb=sb, out=out):
                        kernels.launch(kernel, a, sa, b, sb, out, None, 16, configs.variant_l2_hints(m, variant), False)

                    run()
                    torch.cuda.synchronize()
                    diff = ref.calc_diff(out, expected) if not out.isnan().any() else float("nan")
                    row.append((diff, time_cold_l2(run, args.launches).median_us))
                (d128, t128), (dp, tp) = row
                if not outliers:
                    speedups.append(t128 / tp)
                print(f"| {vpairs.key} | {label} | {'outliers' if outliers else 'N(0,1)'} | {d128:.2e} | {dp:.2e} | "
                      f"{t128:.1f} | {tp:.1f} | {t128 / tp:.3f} |", flush=True)
    print(f"geomean speedup of the pairs (N(0,1) rows): {math.exp(sum(map(math.log, speedups)) / len(speedups)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
