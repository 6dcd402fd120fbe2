"""Developer tool: where a launch's time goes, CTA by CTA, from a DG_LIFETRACE build (ptx/fp8_gemm.cuh):
launch and start skew, barrier setup, the wait for the first stage, the K loop, the store drain and
the exit sync. Cold L2 before each launch, as the bench.

    DEEPERGEMM_NVCC_DEFINES=DG_LIFETRACE python bench/lifetrace_case.py --variant 64x32s16dk2 --shape 64x2112x7168
"""
import argparse
import statistics

import torch

from gemm_case import make_case
from deepergemm import configs, extension
from deepergemm.benchmark.timing import _flush_buffer

EVENTS = 16  # dg::kLifeEvents
PHASES = [("setup (barrier init, sync)", 1, 2), ("first stage full", 2, 3), ("K loop + stores", 3, 4),
          ("stores drain", 4, 5), ("exit sync", 5, 6),
          # stream-K (CTAs with a head / a tail only)
          ("first data -> head flag up", 3, 8), ("first data -> tail/join wait", 3, 9), ("tail/join wait", 9, 10),
          ("tail wait end -> promotion", 10, 11), ("tail promotion -> loop end", 11, 4)]


def quantiles(xs: list[float]) -> str:
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    return f"min {xs[0]:8.0f}  p50 {q(0.5):8.0f}  p90 {q(0.9):8.0f}  max {xs[-1]:8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--stream-k", type=int, choices=(0, 1), default=None, help="default: as configs would")
    args = parser.parse_args()
    module = extension.load(configs.parse_key(args.variant))
    case = make_case(args.shape)
    log = torch.zeros(1024 * EVENTS, dtype=torch.int64, device="cuda")
    flush = _flush_buffer(torch.device("cuda"))
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    event_us, span_us, skew_us, tail_us, ghz, life_ns = [], [], [], [], [], []
    phases = {name: [] for name, _, _ in PHASES}
    for i in range(args.launches + 2):
        log.zero_()
        flush.zero_()
        start.record()
        case.launch(module, trace_log=log, stream_k=args.stream_k)
        stop.record()
        torch.cuda.synchronize()
        if i < 2:
            continue
        rows = [r for r in log.view(-1, EVENTS).tolist() if r[0]]
        if not rows or any(0 in r[:8] for r in rows):
            raise SystemExit("no or incomplete stamps: is this a DEEPERGEMM_NVCC_DEFINES=DG_LIFETRACE build?")
        entry, exit_ = min(r[0] for r in rows), max(r[7] for r in rows)
        event_us.append(start.elapsed_time(stop) * 1e3)
        span_us.append((exit_ - entry) / 1e3)
        skew_us.append((max(r[0] for r in rows) - entry) / 1e3)
        tail_us.append((exit_ - min(r[7] for r in rows)) / 1e3)
        ghz += [(r[6] - r[1]) / (r[7] - r[0]) for r in rows if r[7] > r[0]]
        life_ns += [r[7] - r[0] for r in rows]
        for name, a, b in PHASES:
            phases[name] += [r[b] - r[a] for r in rows if r[a] and r[b]]
    print(f"{args.variant} {args.shape}: {len(rows)} CTAs, {args.launches} cold-L2 launches"
          f"{'' if args.stream_k is None else f', stream-K {args.stream_k}'}")
    print(f"  CUDA events per launch     median {statistics.median(event_us):7.2f} us")
    print(f"  first entry -> last exit   median {statistics.median(span_us):7.2f} us (globaltimer)")
    print(f"  CTA start skew             median {statistics.median(skew_us):7.2f} us; first -> last exit "
          f"{statistics.median(tail_us):.2f} us")
    print(f"  SM clock (clock64 / globaltimer) median {statistics.median(ghz):.2f} GHz")
    print(f"  per CTA, entry -> exit ns  {quantiles(life_ns)}")
    print("  per CTA, clocks:")
    for name, _, _ in PHASES:
        if phases[name]:
            print(f"    {name:28s} {quantiles(phases[name])}  ({len(phases[name])} samples)")


if __name__ == "__main__":
    main()
