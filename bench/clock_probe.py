"""Developer tool: the SM clock and power while one GEMM runs back to back (is a variant power-capped?).

    python bench/clock_probe.py --shape 4096x7168x16384 --variants 128x128s6wc2,256x128s4p --seconds 2

For cuBLAS and each variant in turn: launches for --seconds while nvidia-smi samples every 50 ms; prints
the median SM clock, power and TFLOPS of each phase (TFLOPS per GHz compares work per clock).
"""
import argparse
import statistics
import subprocess
import time

import torch

from gemm_case import make_case  # bench/gemm_case.py (puts this checkout on sys.path)
from deepergemm import configs, extension  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="4096x7168x16384")
    parser.add_argument("--variants", default="128x128s6wc2")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    m, n, k = (int(x) for x in args.shape.split("x"))
    case = make_case(args.shape)
    phases = [("cublas", case.launch_cublas)]
    for key in args.variants.split(","):
        module = extension.load(configs.parse_key(key))
        phases.append((key, lambda module=module: case.launch(module)))
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    t0 = time.time()
    spans = []
    for name, fn in phases:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        start, launches = time.time(), 0
        ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ev0.record()
        while time.time() - start < args.seconds:
            for _ in range(20):
                fn()
            launches += 20
            torch.cuda.synchronize()
        ev1.record()
        torch.cuda.synchronize()
        spans.append((name, start + 0.3, time.time(), ev0.elapsed_time(ev1) / launches))
        time.sleep(0.5)
    smi.terminate()
    samples = []  # nvidia-smi gives no timestamps here: spread its lines evenly over the run
    lines = [l for l in smi.communicate()[0].splitlines() if l.strip()]
    t_end = time.time()
    for i, line in enumerate(lines):
        clock, power = (float(v) for v in line.split(","))
        samples.append((t0 + (t_end - t0) * i / max(1, len(lines) - 1), clock, power))
    flops = 2 * m * n * k
    for name, begin, end, ms in spans:
        inside = [(c, p) for t, c, p in samples if begin <= t <= end]
        clock = statistics.median(c for c, _ in inside) if inside else float("nan")
        power = statistics.median(p for _, p in inside) if inside else float("nan")
        tflops = flops / ms / 1e9
        print(f"{args.shape} {name:>16}: {ms * 1e3:8.1f} us  {tflops:6.0f} TFLOPS  SM clock {clock:6.0f} MHz  "
              f"power {power:5.0f} W  {tflops / clock * 1e3:6.0f} TFLOPS/GHz  ({len(inside)} samples)", flush=True)


if __name__ == "__main__":
    main()
