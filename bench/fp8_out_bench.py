"""fp8 output from the GEMM (issue 27): the fused op against the unfused sequence it replaces, on the GPU.

    python bench/fp8_out_bench.py [--m 32,128,4096] [--nk 7168x2048,4096x7168,18432x7168] [--launches 50] [--ue8m0]

Per shape: the unfused `fp8_gemm(..., out_dtype=torch.bfloat16)` then `quantize_act`, and the fused
`fp8_gemm(..., out_dtype=torch.float8_e4m3fn)` (both with the ptx backend), each timed with a cold L2 before every
launch (CUDA events, median of --launches; deepergemm.benchmark.timing). Before timing, the two results are compared
bit for bit (q and scales); a mismatch is printed (with split-K or stream-K picked for the bf16 GEMM, the sums can
differ in order from the fused variant's, so rare last-bit differences are possible there). Also printed: the
variants each path runs, and the fused op's time alone against the bf16 GEMM's alone.
"""
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepergemm as dg  # noqa: E402
from deepergemm import configs  # noqa: E402
from fused_epilogue import measure_row, pairs, parser, print_header  # noqa: E402


def _inputs(m: int, n: int, k: int):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    a, a_s = dg.quantize_act(x)
    b, b_s = dg.quantize_weight(w)
    return a, a_s, b, b_s


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nk", default="7168x2048,4096x7168,18432x7168", help="NxK pairs, comma-separated")
    args = p.parse_args(argv)
    sms = print_header(args, f"{'M':>5} {'N':>6} {'K':>6}", "bf16 | fp8")
    for n, k in pairs(args.nk):
        for m in (int(v) for v in args.m.split(",")):
            a, a_s, b, b_s = _inputs(m, n, k)

            def gemm():
                return dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.bfloat16, backend="ptx")

            def unfused():
                return dg.quantize_act(gemm(), ue8m0=args.ue8m0)

            def fused():
                return dg.fp8_gemm(a, a_s, b, b_s, out_dtype=torch.float8_e4m3fn, backend="ptx", ue8m0=args.ue8m0)

            variants = f"{configs.select(m, n, k, sms).variant.key} | {configs.select_fp8_out(m, n, k, sms).variant.key}"
            measure_row(f"{m:>5} {n:>6} {k:>6}", gemm, unfused, fused, args.launches, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
