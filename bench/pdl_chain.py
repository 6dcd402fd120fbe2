"""Developer tool: what programmatic dependent launch (DEEPERGEMM_PDL) buys in a decode-like stream of
kernels: per step, quantize the activation (Triton) and multiply it with the next layer's weight (our GEMM),
`--layers` layers back to back with no host work in between, weights cycling through more than L2 holds so
B streams from HBM as it does in serving. Times the whole chain with CUDA events (median of --repeats), with
PDL off and on in alternation, in one process, and checks that both give the same bits. Each timed chain is queued
behind a GPU spin long enough that the host has queued all of it first (else launch gaps, host time, would be
timed: most likely what made an earlier form's 39-97 us per layer at decode sizes, where a layer's kernels take
under 20 us); the host's queueing time is printed too, to check.

    python bench/pdl_chain.py [--shapes 64x7168x2048,8x4096x7168] [--layers 32] [--repeats 20]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import deepergemm as dg  # noqa: E402


def chain(x, weights):
    for w, w_s in weights:
        a, a_s = dg.quantize_act(x)
        x = dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")[:, : x.shape[1]]  # N >= K: the next layer's input
    return x


def time_chain(x, weights, repeats, sleep_cycles):
    """Median GPU time of the chain (CUDA events), each repeat queued whole behind a GPU spin of `sleep_cycles`, so
    that no host work is timed. Returns (us, output, the host's median queueing us, the spin's cycles): a spin that
    ended before the host had queued the chain (the host slower than the GPU, as at decode sizes) would time the
    host instead, so it doubles the spin and starts over."""
    times, host = [], []
    while len(times) < repeats:
        spun, start, end = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        torch.cuda._sleep(sleep_cycles)  # the host queues the whole chain while the GPU spins
        spun.record()
        start.record()
        t0 = time.perf_counter()
        out = chain(x, weights)
        end.record()
        host_us = (time.perf_counter() - t0) * 1e6
        if spun.query():  # the spin was over before the chain was queued: launch gaps would be timed
            torch.cuda.synchronize()
            sleep_cycles *= 2
            times.clear()
            host.clear()
            continue
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
        host.append(host_us)
    return statistics.median(times), out, statistics.median(host), sleep_cycles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes",
                        default="1x7168x2048,8x7168x2048,64x7168x2048,128x7168x2048,32x24576x1536,4096x7168x2048",
                        help="MxNxK per layer (N >= K: each layer's output feeds the next)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("| shape | layers | PDL off us/layer | PDL on us/layer | on/off | host us/layer |\n|---|---|---|---|---|---|")
    sleep_cycles = 20_000_000  # about 10 ms (doubled while the host is slower: time_chain)
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
            us, out, host_us, sleep_cycles = time_chain(x, weights, args.repeats, sleep_cycles)
            results.setdefault(flag, []).append((us, out, host_us))
        off, on = (min(r[0] for r in results[f]) for f in ("0", "1"))
        same = all(torch.equal(r[1].view(torch.int16), results["0"][0][1].view(torch.int16))
                   for f in ("0", "1") for r in results[f])
        host = max(r[2] for f in ("0", "1") for r in results[f])
        print(f"| {spec} | {args.layers} | {off / args.layers:.2f} | {on / args.layers:.2f} | {on / off:.3f} | "
              f"{host / args.layers:.1f} |" + ("" if same else " RESULTS DIFFER"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
