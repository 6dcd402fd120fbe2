"""Developer tool: run a DG_TRACE build (DEEPERGEMM_NVCC_DEFINES=DG_TRACE) of a 256-row variant and print
where CTA 0's tensor cores idle, from the clock64 events its math warpgroups log per step:
  0 slab 0 queued, 1 slab 0 done, 5 slab 0 promoted, 2 slab 1 queued, 3 next step acquired,
  4 slab 1 done, 6 slab 1 promoted (then the next step's slab 0 is queued: event 0 of step s + 1)
(and when the A producer found each stage free). The tensor cores run the groups in issue order
WG0.s0, WG1.s0, WG0.s1, WG1.s1, ...: a group starts at max(its queue time, the previous group's end).

    DEEPERGEMM_NVCC_DEFINES=DG_TRACE python bench/trace_case.py --variant 256x128s4pc1x2 --shape 4096x7168x16384
"""
import argparse
import statistics

import torch

from gemm_case import make_case
from deepergemm import configs, extension

STEPS, EVENTS = 320, 8  # dg::kTraceSteps, dg::kTraceEvents


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="256x128s4pc1x2")
    parser.add_argument("--shape", default="4096x7168x16384")
    parser.add_argument("--skip", type=int, default=8, help="steps left out at the start (warm-up)")
    args = parser.parse_args()
    module = extension.load(configs.parse_key(args.variant))
    case = make_case(args.shape)
    log = torch.zeros(STEPS * 2 * EVENTS + STEPS + 64, dtype=torch.int32, device="cuda")
    for _ in range(3):  # the last launch's log is read (warm clocks, warm L2 for the tensor maps)
        log.zero_()
        case.launch(module, trace_log=log)
        torch.cuda.synchronize()
    raw = log.cpu().to(torch.int64) & 0xFFFFFFFF  # 32-bit SM clock: unwrap against the first event
    base = int(raw[2 * EVENTS])  # step 0's slab-0 done of warpgroup 0
    raw = torch.where(raw == 0, raw, (raw - base) % (1 << 32) + 1_000_000)
    ev = raw[: STEPS * 2 * EVENTS].view(STEPS, 2, EVENTS).tolist()
    prod = raw[STEPS * 2 * EVENTS: STEPS * 2 * EVENTS + STEPS].tolist()
    # groups in tensor-core order: (queued, done) per (step, slab, wg)
    groups = []
    for s in range(1, STEPS - 1):
        for slab in (0, 1):
            for wg in (0, 1):
                q = ev[s][wg][0 if slab == 0 else 2]
                d = ev[s][wg][1 if slab == 0 else 4]
                if q and d:
                    groups.append((s, slab, wg, q, d))
    idle, busy, rows = [], [], []
    end = None
    for s, slab, wg, q, d in groups:
        if s < args.skip:
            end = d
            continue
        start = q if end is None else max(q, end)
        if end is not None:
            idle.append(max(0, q - end))
        busy.append(d - start)
        rows.append((s, slab, wg, q - (end or q), d - start))
        end = d
    print(f"{args.variant} {args.shape}: {len(busy)} groups of 4 wgmmas (CTA 0)")
    print(f"  run time per group: median {statistics.median(busy):.0f} clk, mean {statistics.mean(busy):.0f} "
          f"(m64n128k32 x4 at the tensor cores' peak: 256)")
    print(f"  gap before a group (queued after the previous ended): median {statistics.median(idle):.0f}, "
          f"mean {statistics.mean(idle):.0f} clk, {sum(1 for x in idle if x > 0)}/{len(idle)} groups")
    per_step = [ev[s + 1][0][0] - ev[s][0][0] for s in range(args.skip, STEPS - 2) if ev[s + 1][0][0] and ev[s][0][0]]
    print(f"  WG0 slab 0 queued to the next one: median {statistics.median(per_step):.0f} clk per step (ideal 1024)")
    # per-event latencies of warpgroup 0
    for wg in (0, 1):
        def lat(a, b, wg=wg):
            xs = [ev[s][wg][b] - ev[s][wg][a] for s in range(args.skip, STEPS - 1) if ev[s][wg][a] and ev[s][wg][b]]
            return statistics.median(xs) if xs else float("nan")
        print(f"  WG{wg} medians: s0 queued->done {lat(0, 1):.0f}, promote s0 {lat(1, 5):.0f}, turn + issue s1 "
              f"{lat(5, 2):.0f}, s1 queued->acquired {lat(2, 3):.0f}, acquired->s1 done {lat(3, 4):.0f}, "
              f"release + promote s1 {lat(4, 6):.0f}")
    nxt = [ev[s + 1][0][0] - ev[s][0][6] for s in range(args.skip, STEPS - 2) if ev[s + 1][0][0] and ev[s][0][6]]
    print(f"  WG0 slab 1 promoted -> next slab 0 queued (turn + issue): median {statistics.median(nxt):.0f}")
    lead = [ev[s - 1][0][3] - prod[s] for s in range(args.skip, STEPS - 1) if prod[s] and ev[s - 1][0][3]]
    if lead:
        print(f"  A producer issued step s's loads -> WG0 acquired step s: median {statistics.median(lead):.0f} clk, "
              f"min {min(lead)}")
    print("  first 24 groups (step, slab, wg, gap, run):")
    for r in rows[:24]:
        print("   ", r)


if __name__ == "__main__":
    main()
