"""fp8 output from the GEMM (issue 27): the fused op against the unfused sequence it replaces, on the GPU.

    python bench/fp8_out_bench.py [--m 32,128,4096] [--nk 7168x2048,4096x7168,18432x7168] [--launches 50] [--ue8m0]

Per shape: the unfused `fp8_gemm(..., out_dtype=torch.bfloat16)` then `quantize_act`, and the fused
`fp8_gemm(..., out_dtype=torch.float8_e4m3fn)` (both with the ptx backend), each timed with a cold L2 before every
launch (CUDA events, median of --launches; deepergemm.benchmark.timing). Before timing, the two results are compared
bit for bit (q and scales); a mismatch is printed (with split-K or stream-K picked for the bf16 GEMM, the sums can
differ in order from the fused variant's, so rare last-bit differences are possible there). Also printed: the
variants each path runs, and the fused op's time alone against the bf16 GEMM's alone.
"""
import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepergemm as dg  # noqa: E402
from deepergemm import configs, kernels  # noqa: E402
from deepergemm.benchmark.timing import time_steady  # noqa: E402


def _inputs(m: int, n: int, k: int):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    a, a_s = dg.quantize_act(x)
    b, b_s = dg.quantize_weight(w)
    return a, a_s, b, b_s


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="32,128,4096")
    parser.add_argument("--nk", default="7168x2048,4096x7168,18432x7168")
    parser.add_argument("--launches", type=int, default=50)
    parser.add_argument("--ue8m0", action="store_true")
    args = parser.parse_args(argv)
    ms = [int(v) for v in args.m.split(",")]
    nks = [tuple(int(v) for v in s.split("x")) for s in args.nk.split(",")]
    sms = kernels.sm_count(torch.cuda.current_device())
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, ue8m0={args.ue8m0}, cold L2, "
          f"median of {args.launches}")
    header = (f"{'M':>5} {'N':>6} {'K':>6}  {'bf16 GEMM':>10} {'+quant':>10} {'fused':>10} {'fused/unfused':>13} "
              f"{'fused/gemm':>10}  bits  variants (bf16 | fp8)")
    print(header)
    for n, k in nks:
        for m in ms:
            a, a_s, b, b_s = _inputs(m, n, k)

            def gemm():
                return dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.bfloat16, backend="ptx")

            def unfused():
                return dg.quantize_act(gemm(), ue8m0=args.ue8m0)

            def fused():
                return dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float8_e4m3fn, backend="ptx", ue8m0=args.ue8m0)

            with torch.no_grad():
                want, got = unfused(), fused()
                torch.cuda.synchronize()
                same = _same(want[0], got[0]) and _same(want[1], got[1])
                t_gemm = time_steady(gemm, args.launches)
                t_unfused = time_steady(unfused, args.launches)
                t_fused = time_steady(fused, args.launches)
            plain = configs.select(m, n, k, sms).variant.key
            fp8 = configs.select_fp8_out(m, n, k, sms).variant.key
            print(f"{m:>5} {n:>6} {k:>6}  {t_gemm.median_us:>8.1f}us {t_unfused.median_us:>8.1f}us "
                  f"{t_fused.median_us:>8.1f}us {t_fused.median_us / t_unfused.median_us:>13.3f} "
                  f"{t_fused.median_us / t_gemm.median_us:>10.3f}  {'same' if same else 'DIFF'}  {plain} | {fp8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
