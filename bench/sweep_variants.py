"""Time kernel variants side by side with cuBLAS on given shapes (developer tool, cold L2): which tile
shape wins where, and by how much. Every variant's output is checked first (NaN-poisoned, calc_diff
against the fp32 reference of the dequantized inputs); a failing variant is reported and not timed.

    python bench/sweep_variants.py --shapes large --variants listed,128x160s5pc2 [--json out.json]

--variants: keys such as 128x128s6dc2 (also ones not in configs.VARIANTS: they are built here),
"listed" (every variant configs.py can select) and "auto" (what configs.select picks for the shape).
All variants are built first, in parallel.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deepergemm import configs, cublas, extension, kernels, layouts  # noqa: E402
from deepergemm import reference as ref  # noqa: E402
from deepergemm.benchmark.shapes import anchor_for, select_shapes  # noqa: E402
from deepergemm.benchmark.timing import time_cold_l2  # noqa: E402


def parse_variants(spec: str) -> tuple[list[configs.Variant], bool]:
    variants, auto = [], False
    for key in filter(None, (k.strip() for k in spec.split(","))):
        if key == "listed":
            variants += configs.VARIANTS
        elif key == "auto":
            auto = True
        else:
            variants.append(configs.parse_key(key))
    for v in variants:
        if v.smem_bytes > configs.SMEM_LIMIT:
            raise SystemExit(f"{v.key}: {v.smem_bytes} B of shared memory > {configs.SMEM_LIMIT}")
    return list(dict.fromkeys(variants)), auto


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="all")
    parser.add_argument("--variants", default="auto,listed")
    parser.add_argument("--group-n", default=str(configs.DEFAULT_GROUP_N))
    parser.add_argument("--l2-hints", default="auto",
                        help="comma list of L2 hint codes (A priority | B priority << 2; 0 = none) or auto (configs')")
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--stream-k", default="auto",
                        help="stream-K tail: auto (where configs would), 0, 1, or 0,1 to time both")
    parser.add_argument("--jobs", type=int, default=extension.default_jobs())
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--no-check", action="store_true",
                        help="time variants whose output is wrong too (ablation builds: DEEPERGEMM_NVCC_DEFINES)")
    args = parser.parse_args()
    variants, auto = parse_variants(args.variants)
    shapes = select_shapes(args.shapes)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    picks = {s: configs.select(s.m, s.n, s.k, sms).variant for s in shapes}
    extension.prebuild(list(dict.fromkeys(variants + (list(picks.values()) if auto else []))), args.jobs)
    rows, failures = [], 0
    for shape in shapes:
        m, n, k = shape.m, shape.n, shape.k
        x, w = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
        a, a_s = ref.quantize_act(x)
        b, b_s = ref.quantize_weight(w)
        a_s_k = layouts.to_act_scale_layout(a_s)
        expected = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
        # cuBLAS gets the scales in the M-major layout too (as dg.quantize_act returns them and the bench
        # passes them): with row-major scales the backend's layout copy (2-3 us) would be timed as well.
        # cuBLAS only where it is right (cublas.supports: N % 16 == 0, K >= 512 past N = 128): other shapes for ours alone
        cublas_us = (time_cold_l2(lambda: torch.ops.deepergemm.fp8_gemm(a, a_s_k, b, b_s, torch.bfloat16, None, "cublas"),
                                  args.launches).median_us if cublas.supports(n, k) else float("nan"))
        anchor = anchor_for(shape)
        print(f"{shape.label:>16} cuBLAS {cublas_us:8.1f} us  (DeepGEMM/cuBLAS {anchor.deepgemm_ratio if anchor else '-'})",
              flush=True)
        tried = variants + ([picks[shape]] if auto and picks[shape] not in variants else [])
        for v in tried:
            mod = extension.load(v)
            hints = [configs.variant_l2_hints(m, v) if h == "auto" else int(h) for h in args.l2_hints.split(",")]
            sk_options = [configs.stream_k_pays(m, n, k, v, sms) if x == "auto" else x == "1" for x in args.stream_k.split(",")]
            for g, h, stream_k in ((g, h, sk) for g in (int(x) for x in args.group_n.split(","))
                                   for h in dict.fromkeys(hints) for sk in sk_options):
                out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
                tag = f"g{g}" + (f"h{h}" if len(set(hints)) > 1 else "") + (f"sk{int(stream_k)}" if len(sk_options) > 1 else "")

                def launch():
                    kernels.launch(mod, a, a_s_k, b, b_s, out, None, g, h, stream_k)

                launch()
                torch.cuda.synchronize()
                unwritten = int(out.isnan().sum())
                diff = ref.calc_diff(out.float().nan_to_num(0), expected)
                row = {"shape": shape.label, "variant": v.key, "group_n": g, "l2_hints": h, "stream_k": stream_k,
                       "cublas_us": cublas_us,
                       "calc_diff": diff, "unwritten": unwritten, "auto": v == picks[shape]}
                if (unwritten or not diff <= 2e-6) and not args.no_check:
                    failures += 1
                    print(f"{'':>16} {v.key:>13} {tag:<5} FAIL calc_diff {diff:.2e}, {unwritten} unwritten", flush=True)
                else:
                    us = time_cold_l2(launch, args.launches).median_us
                    row.update(us=us, tflops=2 * m * n * k / us / 1e6, ratio=cublas_us / us)
                    print(f"{'':>16} {v.key:>13} {tag:<5} {us:8.1f} us {row['tflops']:6.0f} TFLOPS "
                          f"{row['ratio']:5.2f}x cuBLAS{'  <- configs' if row['auto'] else ''}"
                          f"{f'  (WRONG: calc_diff {diff:.1e})' if unwritten or not diff <= 2e-6 else ''}", flush=True)
                rows.append(row)
        del expected
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
