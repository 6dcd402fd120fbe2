"""Time every kernel variant on given shapes (developer tool, cold L2): which tile shape wins where.

    python bench/sweep_variants.py --shapes 4096x7168x2048,8192x7168x16384
"""
import argparse

import torch

from deepergemm import configs, extension, layouts
from deepergemm import reference as ref
from deepergemm.benchmark.timing import time_cold_l2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True)
    parser.add_argument("--variants", default="")
    parser.add_argument("--group-n", default="16")
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for spec in args.shapes.split(","):
        m, n, k = (int(x) for x in spec.split("x"))
        a, a_s = ref.quantize_act(torch.randn(m, k, device="cuda"))
        b, b_s = ref.quantize_weight(torch.randn(n, k, device="cuda"))
        a_s = layouts.to_act_scale_layout(a_s)
        out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
        picked = configs.select(m, n, k, sms).variant.key
        # Listed variants, or any keys given (also unlisted ones: experiments build them on the fly).
        chosen = [configs.parse_key(key) for key in args.variants.split(",")] if args.variants else configs.VARIANTS
        for v in chosen:
            mod = extension.load(v)
            for g in (int(x) for x in args.group_n.split(",")):
                def launch():
                    mod.fp8_gemm(a, a_s, b, b_s, out, out, 0, sms, g, torch.cuda.current_stream().cuda_stream)
                t = time_cold_l2(launch, launches=20)
                print(f"{spec:>18} {v.key:>12} g{g:<3} {t.median_us:8.1f} us {2*m*n*k/t.median_us/1e6:6.0f} TFLOPS"
                      f"{'  <- configs' if v.key == picked else ''}", flush=True)


if __name__ == "__main__":
    main()
