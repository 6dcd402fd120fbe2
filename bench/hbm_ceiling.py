"""What share of the HBM floor a decode GEMM can reach under the bench's timing (issue 25's decode target).

    python bench/hbm_ceiling.py [--pairs 36864x7168,7168x16384,24576x1536,4096x7168,7168x2048,2112x7168]
                                [--ms 1,32] [--launches 30]

For each weight of N x K fp8 (the bytes a decode GEMM must stream from HBM), timed the bench's way (a cold L2 before
every launch, CUDA events, median; deepergemm.benchmark.timing.time_steady):
  - `read`: a plain PyTorch reduction over the weight's bytes (amax of its int32 view): how fast a kernel that only
    reads those bytes gets, launch latency and the flush's aftermath included, so the practical ceiling;
  - `empty`: a one-element kernel: the fixed cost every timed launch carries;
  - ours (fp8_gemm, ptx) and cuBLAS (torch._scaled_mm) at each M of --ms on the same weight.
Printed: microseconds and GB/s (weight bytes / time) per row, and ours as a share of `read`.
"""
import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepergemm as dg  # noqa: E402
from deepergemm import configs  # noqa: E402
from deepergemm.benchmark.timing import time_steady  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default="36864x7168,7168x16384,24576x1536,4096x7168,7168x2048,2112x7168",
                   help="NxK weights, comma-separated")
    p.add_argument("--ms", default="1,32", help="token counts for the GEMMs, comma-separated")
    p.add_argument("--launches", type=int, default=30)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ms = [int(v) for v in args.ms.split(",")]
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, cold L2, median of {args.launches}")
    tiny = torch.zeros(1, device="cuda")
    empty_us = time_steady(lambda: tiny.add_(1), args.launches).median_us
    print(f"empty kernel: {empty_us:.1f} us")
    print(f"{'N x K':>12} {'MB':>6} {'read us':>8} {'read GB/s':>9} " +
          " ".join(f"{f'M={m} ours':>10} {'cuBLAS':>7} {'ours/read':>9}" for m in ms) + "  variants")
    for pair in args.pairs.split(","):
        n, k = (int(v) for v in pair.split("x"))
        b, b_s = dg.quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
        words = b.view(torch.int32)
        mb = b.numel() / 1e6
        read_us = time_steady(lambda: words.amax(), args.launches).median_us
        cells, keys = [], []
        for m in ms:
            a, a_s = dg.quantize_act(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
            ours = time_steady(lambda: dg.fp8_gemm(a, a_s, b, b_s, backend="ptx"), args.launches).median_us
            cublas = time_steady(lambda: dg.fp8_gemm(a, a_s, b, b_s, backend="cublas"), args.launches).median_us
            cells.append(f"{ours:>10.1f} {cublas:>7.1f} {read_us / ours:>9.2f}")
            keys.append(configs.select(m, n, k, sms).variant.key)
        print(f"{pair:>12} {mb:>6.1f} {read_us:>8.1f} {mb * 1e-3 / (read_us * 1e-6):>9.0f} " + " ".join(cells) +
              "  " + ", ".join(keys), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
