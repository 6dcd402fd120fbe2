"""Quick GPU smoke check of every kernel variant (developer tool): a few odd shapes each, NaN-poisoned
outputs, calc_diff against the dequantized fp32 reference, and one timing per variant.

    python bench/smoke.py [--variants KEY,KEY] [--shapes MxNxK,...]
"""
import argparse
import sys
import time

import torch

from deepergemm import configs, extension, layouts
from deepergemm import reference as ref
from deepergemm.benchmark.timing import time_cold_l2


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default="")
    parser.add_argument("--shapes", default="1x8x128,65x136x384,129x2056x256,1000x264x640,4096x7168x2048")
    args = parser.parse_args()
    variants = [v for v in configs.VARIANTS if not args.variants or v.key in args.variants.split(",")]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    failures = 0
    for v in variants:
        t0 = time.perf_counter()
        mod = extension.load(v)
        print(f"{v.key}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        for spec in args.shapes.split(","):
            m, n, k = (int(x) for x in spec.split("x"))
            a, a_s = ref.quantize_act(torch.randn(m, k, device="cuda"))
            b, b_s = ref.quantize_weight(torch.randn(n, k, device="cuda"))
            a_s = layouts.to_act_scale_layout(a_s)
            out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)

            def launch():
                mod.fp8_gemm(a, a_s, b, b_s, out, out, 0, sms, 16, torch.cuda.current_stream().cuda_stream)

            launch()
            torch.cuda.synchronize()
            expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
            unwritten = int(out.isnan().sum())
            diff = ref.calc_diff(out.float().nan_to_num(0), expected)
            us = time_cold_l2(launch, launches=10).median_us if m * n * k >= 2**30 else float("nan")
            ok = unwritten == 0 and diff <= 2e-6
            failures += not ok
            print(f"  {spec:>18}: calc_diff {diff:.2e} unwritten {unwritten} {us:8.1f} us "
                  f"{2 * m * n * k / us / 1e6 if us == us else 0:7.0f} TFLOPS {'ok' if ok else 'FAIL'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
