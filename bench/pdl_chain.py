"""Developer tool: what programmatic dependent launch (DEEPERGEMM_PDL) buys in a decode-like stream of
kernels: per step, quantize the activation (Triton) and multiply it with the next layer's weight (our GEMM),
`--layers` layers back to back with no host work in between, weights cycling through more than L2 holds so
B streams from HBM as it does in serving. Times the whole chain with CUDA events (median of --repeats), with
PDL off and on in alternation, in one process, and checks that both give the same bits.

    python bench/pdl_chain.py [--shapes 64x7168x2048,8x4096x7168] [--layers 32] [--repeats 20]
"""
import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import deepergemm as dg  # noqa: E402


def chain(x, weights):
    for w, w_s in weights:
        a, a_s = dg.quantize_act(x)
        x = dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")[:, : x.shape[1]]  # N >= K: the next layer's input
    return x


def time_chain(x, weights, repeats):
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # the host queues the whole chain while the GPU spins: no launch gaps timed
        start.record()
        out = chain(x, weights)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="64x7168x2048,8x7168x2048,128x4096x7168,1x4096x7168",
                        help="MxNxK per layer (N >= K: each layer's output feeds the next)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("| shape | layers | PDL off us/layer | PDL on us/layer | on/off |\n|---|---|---|---|---|")
    for spec in args.shapes.split(","):
        m, n, k = (int(v) for v in spec.split("x"))
        if n < k:
            raise SystemExit(f"{spec}: N must be >= K (each layer's output feeds the next)")
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        weights = [dg.quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.03)
                   for _ in range(args.layers)]
        results = {}
        for flag in ("0", "1", "0", "1"):  # alternate: drift of the machine shows as a difference between pairs
            os.environ["DEEPERGEMM_PDL"] = flag
            dg.configs.reload_switches()  # (the switches are read once; the binding re-plans)
            chain(x, weights)  # builds, warms up
            us, out = time_chain(x, weights, args.repeats)
            results.setdefault(flag, []).append((us, out))
        off, on = (min(r[0] for r in results[f]) for f in ("0", "1"))
        same = all(torch.equal(r[1].view(torch.int16), results["0"][0][1].view(torch.int16))
                   for f in ("0", "1") for r in results[f])
        print(f"| {spec} | {args.layers} | {off / args.layers:.2f} | {on / args.layers:.2f} | {on / off:.3f} |"
              + ("" if same else " RESULTS DIFFER"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
