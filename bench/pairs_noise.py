"""The per-element accumulation noise of the 256-recipe pairs variants and of their 128-recipe twins, over many
random draws at the shapes of tests/test_recipe256.py (outlier data): the largest error per element, in units of
2^-12 of the sum of the terms' magnitudes (|A| @ |B|^T) after half a bf16 ulp of the output is taken off. This is
what the tests' per-element bound (_assert_exact) has to hold with margin: a scale on the wrong K block misses by
9-25x the 128 recipe's bound. Developer tool (GPU): python bench/pairs_noise.py [--draws 20]."""
import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_recipe256 import _inputs, _launch  # noqa: E402

from deepergemm import configs  # noqa: E402
from deepergemm import reference as ref  # noqa: E402

SHAPES = ((1, 136, 256), (1, 7168, 512), (65, 264, 512), (300, 1032, 768), (513, 2112, 2048))


def noise(out, a, a_s, b, b_s):
    """max over elements of (|out - exact| - |exact| * 2^-9) / (magnitude * 2^-12), in float64 on the GPU."""
    x = ref.dequantize_act(a, a_s).double()
    w = ref.dequantize_weight(b, b_s).double()
    exact, magnitude = x @ w.t(), x.abs() @ w.abs().t()
    excess = (out.double() - exact).abs() - exact.abs() * 2.0 ** -9
    return (excess / (magnitude * 2.0 ** -12)).max().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    print(f"{'variant':18s} {'pairs max':>10s} {'128 twin max':>13s}  (units of 2^-12 of |A|@|B|^T, "
          f"{args.draws} draws x {len(SHAPES)} shapes)")
    for variant in configs.RECIPE_256_VARIANTS:
        twin = dataclasses.replace(variant, pairs=False)
        worst_pairs = worst_twin = 0.0
        for _ in range(args.draws):
            for m, n, k in SHAPES:
                a, a_s, b, b_s = _inputs(m, n, k, "cuda", outliers=True)
                pairs = _launch(variant, a, a_s, b, b_s, stream_k=False)
                a_s2, b_s2 = a_s.repeat_interleave(2, dim=1), b_s.repeat_interleave(2, dim=1)
                per128 = _launch(twin, a, a_s2, b, b_s2, stream_k=False)
                worst_pairs = max(worst_pairs, noise(pairs, a, a_s, b, b_s))
                worst_twin = max(worst_twin, noise(per128, a, a_s2, b, b_s2))
        print(f"{variant.key:18s} {worst_pairs:10.3f} {worst_twin:13.3f}", flush=True)


if __name__ == "__main__":
    main()
