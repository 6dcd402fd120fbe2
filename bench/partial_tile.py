"""Developer tool: why does a part-filled last M-tile cost more than its rows (ptx/NOTES.md lead)?

For each variant and M, four launches of the same (N, K), cold L2, stream-K off, one process:
  full     M_full rows of random data (M_full: M rounded up to the tile)
  zeros    M_full rows whose rows >= M are zero (and their scales 1): the full tile's work on the part-tile's data
  part     M rows (A's tensor map ends at M: TMA zero-fills the tile's rows past it, the epilogue clips them)
  view     M rows as a view of an M_full-row allocation (part, with A's allocation of the full tile)
If part is far slower than zeros, the cost is in the tensor map's edge (TMA loads or stores past M), not the data.
Run once more under DEEPERGEMM_NVCC_DEFINES=DG_ABLATE_EPILOGUE (no stores, wrong results: this script checks no output)
to take the epilogue out, and under DEEPERGEMM_NVCC_DEFINES=DG_NO_TILE_SHIFT to time the last tile in place (by
default it moves up to end at the last row: producer.cuh kMovesLastTile; "part" then measures the moved tile).

    python bench/partial_tile.py --variants 128x128s6w,128x192s5p --n 36864 --k 7168 --m 160,192,224
"""
import argparse
import os

import torch

from gemm_case import GemmCase  # bench/gemm_case.py (puts this checkout on sys.path)
from deepergemm import configs, extension, layouts  # noqa: E402
from deepergemm import reference as ref  # noqa: E402
from deepergemm.benchmark.timing import time_steady  # noqa: E402


def case_of(a_full: torch.Tensor, a_s_full: torch.Tensor, b, b_s, rows: int, sms: int) -> GemmCase:
    a = a_full[:rows]
    a_s = layouts.to_act_scale_layout(a_s_full[:rows].contiguous())
    return GemmCase(a, a_s, b, b_s, torch.empty((rows, b.shape[0]), device="cuda", dtype=torch.bfloat16), sms,
                    torch.cuda.current_stream().cuda_stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="128x128s6w,128x192s5p,128x192s5pc2")
    parser.add_argument("--m", default="160,192,224")
    parser.add_argument("--n", type=int, default=36864)
    parser.add_argument("--k", type=int, default=7168)
    parser.add_argument("--launches", type=int, default=30)
    args = parser.parse_args()
    ablated = "DG_ABLATE_EPILOGUE" in os.environ.get("DEEPERGEMM_NVCC_DEFINES", "")
    variants = [configs.parse_key(k) for k in args.variants.split(",")]
    extension.prebuild(variants, extension.default_jobs())
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    b, b_s = ref.quantize_weight(torch.randn(args.n, args.k, device="cuda"))
    print(f"N={args.n} K={args.k}, stream-K off, cold L2, median of {args.launches}"
          f"{' (epilogue ablated: no stores)' if ablated else ''}; us")
    print(f"{'variant':16} {'M':>5} {'full':>8} {'zeros':>8} {'part':>8} {'view':>8}  part/full")
    for variant in variants:
        kernel = extension.load(variant)
        for m in (int(x) for x in args.m.split(",")):
            m_full = -(-m // variant.block_m) * variant.block_m
            x = torch.randn(m_full, args.k, device="cuda")
            a_full, a_s_full = ref.quantize_act(x)
            x[m:] = 0
            a_zero, a_s_zero = ref.quantize_act(x)
            a_s_zero[m:] = 1.0
            cases = {"full": case_of(a_full, a_s_full, b, b_s, m_full, sms),
                     "zeros": case_of(a_zero, a_s_zero, b, b_s, m_full, sms),
                     "part": case_of(a_full[:m].contiguous(), a_s_full[:m], b, b_s, m, sms),
                     "view": case_of(a_full, a_s_full, b, b_s, m, sms)}
            times = {}
            for name, case in cases.items():
                timing = time_steady(lambda c=case: c.launch(kernel, stream_k=False), launches=args.launches)
                times[name] = timing.median_us
            print(f"{variant.key:16} {m:5d} " + " ".join(f"{t:8.1f}" for t in times.values())
                  + f"  {times['part'] / times['full']:.3f}", flush=True)


if __name__ == "__main__":
    main()
