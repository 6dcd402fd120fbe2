"""Developer tool: launch one variant on one shape a few times (for ncu / nsys) and print the launch
geometry the torch profiler saw.

    python bench/launch_once.py --variant 128x128s5dc2 --shape 4096x7168x2048 [--launches 3]
    ncu --section SpeedOfLight --section WarpStateStats -k regex:fp8_gemm python bench/launch_once.py ...
"""
import argparse
import json
import pathlib
import tempfile


import torch

from gemm_case import make_case  # bench/gemm_case.py (puts this checkout on sys.path, also under ncu)
from deepergemm import configs, extension  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--group-n", type=int, default=16)
    parser.add_argument("--cublas", action="store_true", help="also launch cuBLAS once on the same inputs (after ours)")
    args = parser.parse_args()
    variant = configs.parse_key(args.variant)  # listed in configs.VARIANTS or not
    module = extension.load(variant)
    case = make_case(args.shape)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.launches):
            case.launch(module, args.group_n)
        if args.cublas:  # for ncu side by side: -k regex:'fp8_gemm|nvjet' -c 2
            case.launch_cublas()
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
