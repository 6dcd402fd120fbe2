"""Developer tool: launch one variant on one shape a few times (for ncu / nsys) and print the launch
geometry the torch profiler saw.

    python bench/launch_once.py --variant 128x128s5dc2 --shape 4096x7168x2048 [--launches 3]
    ncu --section SpeedOfLight --section WarpStateStats -k regex:fp8_gemm python bench/launch_once.py ...
"""
import argparse
import json
import pathlib
import tempfile

import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # also under ncu, whose python may lack the install
from deepergemm import configs, cublas, extension, layouts
from deepergemm import reference as ref


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--group-n", type=int, default=16)
    parser.add_argument("--cublas", action="store_true", help="also launch cuBLAS once on the same inputs (after ours)")
    args = parser.parse_args()
    m, n, k = (int(x) for x in args.shape.split("x"))
    variant = configs.parse_key(args.variant)  # listed in configs.VARIANTS or not
    module = extension.load(variant)
    a, a_s = ref.quantize_act(torch.randn(m, k, device="cuda"))
    b, b_s = ref.quantize_weight(torch.randn(n, k, device="cuda"))
    a_s = layouts.to_act_scale_layout(a_s)
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    stream = torch.cuda.current_stream().cuda_stream
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.launches):
            module.fp8_gemm(a, a_s, b, b_s, out, out, 0, sms, args.group_n, stream)
        if args.cublas:  # for ncu side by side: -k regex:'fp8_gemm|gemm' -c 2
            cublas.fp8_gemm_cublas(a, a_s, b, b_s, torch.bfloat16, None)
        torch.cuda.synchronize()
    trace = pathlib.Path(tempfile.mkdtemp()) / "trace.json"
    prof.export_chrome_trace(str(trace))
    for event in json.loads(trace.read_text())["traceEvents"]:
        if event.get("cat") == "kernel" and "fp8_gemm" in event.get("name", ""):
            extra = event.get("args", {})
            print(f"{variant.key} {args.shape}: {event['dur']:.1f} us, grid {extra.get('grid')}, "
                  f"block {extra.get('block')}, cluster {extra.get('cluster', '?')}, smem {extra.get('shared memory')}",
                  flush=True)

if __name__ == "__main__":
    main()
