"""SwiGLU fused into the gate/up GEMM (issue 27): the fused op against the unfused sequence it replaces, on the GPU.

    python bench/swiglu_bench.py [--m 32,128,4096] [--shapes 7168x18432,7168x2048] [--launches 50] [--ue8m0] [--block]

Shapes are HIDDENxINTERMEDIATE: the gate/up weight is (2 * INTERMEDIATE, HIDDEN), interleaved per 128 rows
(dg.prepare_gate_up). Defaults: DeepSeek-V3's dense MLP (7168 -> 2 x 18432: w_gate_up 36864 x 7168) and one routed
expert (7168 -> 2 x 2048). Per shape and M: the unfused `fp8_gemm` (bf16) + `swiglu` (Triton) + `quantize_act`
(Triton), and the fused `fp8_gemm_swiglu`, both with the ptx backend, each timed with a cold L2 before every launch
(CUDA events, median of --launches; deepergemm.benchmark.timing). Before timing the two results are compared bit for
bit (q and scales); a mismatch is printed (where the bf16 GEMM's pick splits K or runs a stream-K tail its sums may
differ in order from the fused kernel's, so rare last-bit differences are possible there: run with
DEEPERGEMM_SPLIT_K=0 DEEPERGEMM_STREAM_K=0 to compare without them). Also printed: the bf16 GEMM alone, and the
variants each path runs. --block: the whole MLP block, the down projection (HIDDEN x INTERMEDIATE, bf16 output)
after each path (the outputs y are compared bit for bit; the "bf16 GEMM" column stays the gate/up GEMM alone).
"""
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepergemm as dg  # noqa: E402
from deepergemm import configs  # noqa: E402
from fused_epilogue import measure_row, pairs, parser, print_header  # noqa: E402


def _inputs(m: int, hidden: int, inter: int):
    x = torch.randn(m, hidden, device="cuda", dtype=torch.bfloat16)
    gate, gate_s = dg.quantize_weight(torch.randn(inter, hidden, device="cuda", dtype=torch.bfloat16))
    up, up_s = dg.quantize_weight(torch.randn(inter, hidden, device="cuda", dtype=torch.bfloat16))
    a, a_s = dg.quantize_act(x)
    w, w_s = dg.prepare_gate_up(gate, gate_s, up, up_s)
    return a, a_s, w, w_s


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--shapes", default="7168x18432,7168x2048", help="HIDDENxINTERMEDIATE, comma-separated")
    p.add_argument("--block", action="store_true", help="time the MLP block: the down projection after each path")
    args = p.parse_args(argv)
    sms = print_header(args, f"{'M':>5} {'hidden':>6} {'inter':>6}", "bf16 GEMM | fused")
    for hidden, inter in pairs(args.shapes):
        for m in (int(v) for v in args.m.split(",")):
            a, a_s, w, w_s = _inputs(m, hidden, inter)

            def gemm():
                return dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")

            def unfused():
                return dg.quantize_act(dg.swiglu(gemm()), ue8m0=args.ue8m0)

            def fused():
                return dg.fp8_gemm_swiglu(a, a_s, w, w_s, ue8m0=args.ue8m0, backend="ptx")

            if args.block:  # (y, y): measure_row compares pairs
                down, down_s = dg.quantize_weight(torch.randn(hidden, inter, device="cuda", dtype=torch.bfloat16))
                gate_up_unfused, gate_up_fused = unfused, fused

                def unfused():
                    y = dg.fp8_gemm(*gate_up_unfused(), down, down_s, backend="ptx")
                    return y, y

                def fused():
                    y = dg.fp8_gemm(*gate_up_fused(), down, down_s, backend="ptx")
                    return y, y

            n, k = 2 * inter, hidden
            variants = f"{configs.select(m, n, k, sms).variant.key} | {configs.select_swiglu(m, n, k, sms).variant.key}"
            measure_row(f"{m:>5} {hidden:>6} {inter:>6}", gemm, unfused, fused, args.launches, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
