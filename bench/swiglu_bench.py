"""SwiGLU fused into the gate/up GEMM (issue 27): the fused op against the unfused sequence it replaces, on the GPU.

    python bench/swiglu_bench.py [--m 32,128,4096] [--shapes 7168x18432,7168x2048] [--launches 50] [--ue8m0]

Shapes are HIDDENxINTERMEDIATE: the gate/up weight is (2 * INTERMEDIATE, HIDDEN), interleaved per 128 rows
(dg.prepare_gate_up). Defaults: DeepSeek-V3's dense MLP (7168 -> 2 x 18432: w_gate_up 36864 x 7168) and one routed
expert (7168 -> 2 x 2048). Per shape and M: the unfused `fp8_gemm` (bf16) + `swiglu` (Triton) + `quantize_act`
(Triton), and the fused `fp8_gemm_swiglu`, both with the ptx backend, each timed with a cold L2 before every launch
(CUDA events, median of --launches; deepergemm.benchmark.timing). Before timing the two results are compared bit for
bit (q and scales); a mismatch is printed (where the bf16 GEMM's pick splits K or runs a stream-K tail its sums may
differ in order from the fused kernel's, so rare last-bit differences are possible there: run with
DEEPERGEMM_SPLIT_K=0 DEEPERGEMM_STREAM_K=0 to compare without them). Also printed: the bf16 GEMM alone, and the
variants each path runs.
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


def _inputs(m: int, hidden: int, inter: int):
    x = torch.randn(m, hidden, device="cuda", dtype=torch.bfloat16)
    gate, gate_s = dg.quantize_weight(torch.randn(inter, hidden, device="cuda", dtype=torch.bfloat16))
    up, up_s = dg.quantize_weight(torch.randn(inter, hidden, device="cuda", dtype=torch.bfloat16))
    a, a_s = dg.quantize_act(x)
    w, w_s = dg.prepare_gate_up(gate, gate_s, up, up_s)
    return a, a_s, w, w_s


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="32,128,4096")
    parser.add_argument("--shapes", default="7168x18432,7168x2048", help="HIDDENxINTERMEDIATE, comma-separated")
    parser.add_argument("--launches", type=int, default=50)
    parser.add_argument("--ue8m0", action="store_true")
    args = parser.parse_args(argv)
    ms = [int(v) for v in args.m.split(",")]
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    sms = kernels.sm_count(torch.cuda.current_device())
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, ue8m0={args.ue8m0}, cold L2, "
          f"median of {args.launches}")
    print(f"{'M':>5} {'hidden':>6} {'inter':>6}  {'bf16 GEMM':>10} {'unfused':>10} {'fused':>10} "
          f"{'fused/unfused':>13} {'fused/gemm':>10}  bits  variants (bf16 GEMM | fused)")
    for hidden, inter in shapes:
        for m in ms:
            a, a_s, w, w_s = _inputs(m, hidden, inter)

            def gemm():
                return dg.fp8_gemm(a, a_s, w, w_s, backend="ptx")

            def unfused():
                return dg.quantize_act(dg.swiglu(gemm()), ue8m0=args.ue8m0)

            def fused():
                return dg.fp8_gemm_swiglu(a, a_s, w, w_s, ue8m0=args.ue8m0, backend="ptx")

            with torch.no_grad():
                want, got = unfused(), fused()
                torch.cuda.synchronize()
                same = _same(want[0], got[0]) and _same(want[1], got[1])
                t_gemm = time_steady(gemm, args.launches)
                t_unfused = time_steady(unfused, args.launches)
                t_fused = time_steady(fused, args.launches)
            n, k = 2 * inter, hidden
            plain = configs.select(m, n, k, sms).variant.key
            fused_key = configs.select_swiglu(m, n, k, sms).variant.key
            print(f"{m:>5} {hidden:>6} {inter:>6}  {t_gemm.median_us:>8.1f}us {t_unfused.median_us:>8.1f}us "
                  f"{t_fused.median_us:>8.1f}us {t_fused.median_us / t_unfused.median_us:>13.3f} "
                  f"{t_fused.median_us / t_gemm.median_us:>10.3f}  {'same' if same else 'DIFF'}  {plain} | {fused_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
