"""Cold-L2 GPU timing: the one way deepergemm measures a kernel.

Before each timed launch a >= 1 GiB buffer is zeroed (larger than any Hopper L2: 50 MB on H100,
60 MB on H200), so every launch reads its inputs from HBM; CUDA events bracket the launch alone;
the median of many launches is reported, with the spread, so noise is visible. After the flush the GPU
spins (HOST_SLACK_CYCLES) while the host enqueues the launch: a backend whose Python launch path takes
longer than the flush (ours once did, ~0.1-0.3 ms on the device machine) must not be timed idling for the
host between the start event and its kernel (a bench measured 128 us for a 15 us GEMM). The device machines
sometimes stall for a stretch of launches (1-1.5 ms each, for ours and cuBLAS alike, never twice in a
row for one shape): time_steady repeats a measurement whose spread says it caught one, and keeps the
steadiest of at most three.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

import torch

FLUSH_BYTES = 1 << 30
HOST_SLACK_CYCLES = 2_000_000  # ~1.1 ms of GPU clock: covers the host's enqueue of start event, launch, end event
_flush_buffers: dict[torch.device, torch.Tensor] = {}


@dataclass
class Timing:
    median_us: float
    min_us: float
    p20_us: float
    p80_us: float
    launches: int

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the run-to-run noise of this measurement."""
        return (self.p80_us - self.p20_us) / self.median_us if self.median_us else 0.0


def _flush_buffer(device: torch.device) -> torch.Tensor:
    buf = _flush_buffers.get(device)
    if buf is None:
        buf = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        _flush_buffers[device] = buf
    return buf


def time_cold_l2(fn: Callable[[], object], launches: int = 30, warmup: int = 3,
                 device: torch.device | str | None = None) -> Timing:
    """Median time of fn() in microseconds with a cold L2 before every launch."""
    if launches < 1:
        raise ValueError(f"launches must be >= 1, got {launches}")
    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    flush = _flush_buffer(device)
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(launches)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(launches)]
    for i in range(launches):
        flush.zero_()
        torch.cuda._sleep(HOST_SLACK_CYCLES)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    times = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    return Timing(median_us=statistics.median(times), min_us=times[0], p20_us=q[0], p80_us=q[3],
                  launches=launches)


SPREAD_RETRY = 0.5   # a measurement whose p20..p80 span exceeds half its median caught a stall
MAX_ATTEMPTS = 3


def steadiest(timings: list[Timing]) -> Timing:
    """The measurement with the smallest spread (the first of equals)."""
    if not timings:
        raise ValueError("no timings to choose from")
    return min(timings, key=lambda t: t.spread)


def time_steady(fn: Callable[[], object], launches: int = 30, device: torch.device | str | None = None,
                attempts: int = MAX_ATTEMPTS, spread_limit: float = SPREAD_RETRY) -> Timing:
    """time_cold_l2, repeated (up to `attempts` in all) while the spread exceeds spread_limit; the steadiest."""
    timings = [time_cold_l2(fn, launches, device=device)]
    while timings[-1].spread > spread_limit and len(timings) < attempts:
        timings.append(time_cold_l2(fn, launches, device=device))
    return steadiest(timings)


def capture_graph(fn, *static, warmups: int = 2):
    """(graph, output) of fn(*static) captured in a CUDA graph, after `warmups` calls on a side stream (first-call
    work such as plans, workspaces and builds stays out of the graph). Replays read and write the same tensors."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmups):
            fn(*static)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    return graph, out
