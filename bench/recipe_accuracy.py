"""What a quantization recipe costs in accuracy (issue 27's "report honestly"), on the CPU: the exact product of the
quantized inputs (float64 of the dequantized fp8 values, rounded once to bf16) against the bf16 inputs' product,
per recipe and kind of data:

    python bench/recipe_accuracy.py [--shape 512x4096x7168] [--seed 0]

Recipes: "128" = activations per 1x128, weights per 128x128 (DeepSeek-V3's); "256" = 1x256 and 128x256 (half the
promotions in a GEMM that promotes once per scale group); both with fp32 scales, and "128 ue8m0" = 128 with scales
rounded up to powers of two. Data: N(0, 1) activations and weights; "outlier channels": the same with 1% of the K
channels of the activations scaled by 100 (the large-activation channels of LLMs). The kernel's own error comes on
top of this (calc_diff ~1.4e-6 against the quantized inputs' exact product for the 128 recipe).
"""
import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from deepergemm import reference as ref  # noqa: E402

RECIPES = {"128": dict(group_k=128, ue8m0=False), "256": dict(group_k=256, ue8m0=False),
           "128 ue8m0": dict(group_k=128, ue8m0=True)}


def inputs(m: int, n: int, k: int, kind: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen) * 0.02
    if kind == "outlier channels":
        channels = torch.randperm(k, generator=gen)[: max(1, k // 100)]
        x[:, channels] *= 100
    return x.bfloat16(), w.bfloat16()


def recipe_error(x: torch.Tensor, w: torch.Tensor, group_k: int, ue8m0: bool) -> float:
    """calc_diff of the recipe's exact output (bf16) against the bf16 inputs' product (float64)."""
    a, a_s = ref.quantize_act(x, ue8m0=ue8m0, group_k=group_k)
    b, b_s = ref.quantize_weight(w, ue8m0=ue8m0, block_k=group_k)
    quantized = (ref.dequantize_act(a, a_s).double() @ ref.dequantize_weight(b, b_s).double().t()).bfloat16()
    return ref.calc_diff(quantized, x.double() @ w.double().t())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="512x4096x7168")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    m, n, k = (int(v) for v in args.shape.split("x"))
    print(f"calc_diff against the bf16 product, {args.shape}, seed {args.seed}")
    print("| data | " + " | ".join(RECIPES) + " |")
    print("|---|" + "---:|" * len(RECIPES))
    for kind in ("N(0,1)", "outlier channels"):
        gen = torch.Generator().manual_seed(args.seed)
        x, w = inputs(m, n, k, kind, gen)
        cells = [f"{recipe_error(x, w, **recipe):.2e}" for recipe in RECIPES.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
