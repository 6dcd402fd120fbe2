"""Developer tool: where does a variant disagree with the reference? Prints bad (row, col) positions.

    python bench/debug_case.py --variant 128x96s7p --shape 7x392x1152 [--no-spread]
"""
import argparse
import sys

import torch

sys.path.insert(0, "tests")
from test_gemm_kernel import exact, make_inputs, run_variant  # noqa: E402

from deepergemm import configs  # noqa: E402
from deepergemm import reference as ref  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", required=True)
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--no-spread", action="store_true")
    args = parser.parse_args()
    for spec in args.shapes.split(","):
        m, n, k = (int(x) for x in spec.split("x"))
        torch.manual_seed(0)
        a, a_s, b, b_s = make_inputs(m, n, k, spread=not args.no_spread)
        expected = exact(a, a_s, b, b_s)
        for key in args.variants.split(","):
            v = configs.parse_key(key)
            out = run_variant(v, a, a_s, b, b_s).float()
            err = (out - expected).abs()
            bad = err > expected.abs() * 2**-7 + 1e-30
            idx = bad.nonzero().tolist()
            print(f"{spec} {key}: calc_diff {ref.calc_diff(out, expected):.2e} bad {len(idx)} "
                  f"cols {sorted({c for _, c in idx})[:40]} rows {sorted({r for r, _ in idx})[:20]}", flush=True)
            for r, c in idx[:3]:
                print(f"    ({r},{c}) out {out[r, c].item():.6g} expected {expected[r, c].item():.6g}")


if __name__ == "__main__":
    main()
