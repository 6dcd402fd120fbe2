"""Which half of the L2 each SM sits next to, and where memory lives: detection for L2-side-aware placement.

The H100's L2 is two partitions. A hit in the far partition crosses between them: it takes longer and costs
crossbar bandwidth. ``detect()`` times L2 hits from every SM to chunks of one buffer (ptx/l2_probe.cu, a kernel
unit built like the GEMM's and launched through the host binding) and classifies the result (``classify``, plain Python, CPU-tested):

* SM sides: each SM's latencies over the chunks, minus its own median, form a pattern; SMs of one side share
  it and SMs of the other see its inverse (near and far swap). The sign of the leading eigenvector of the
  SMs' correlation matrix splits them in two; side 0 is the side of the lowest SM id.
* Chunk sides: a chunk is on side s when the SMs of side s reach it faster.
* Granularity: the largest power-of-two block (a multiple of the probe stride) within which every probed
  chunk is on one side; when the side changes at every probe, the granularity is at most the stride.
* Undecided: when the two sides' latencies are not apart by several times the noise, or an SM agrees with its
  side's chunk pattern on too few chunks, ``L2Sides.decided`` is False with the reason, and nothing changes
  (placement stays off). Repeated probes of each chunk (``reps`` dependent loads, the fastest of ``rounds``
  runs) keep single noisy loads out.

Results are cached per device (name and UUID) in $DEEPERGEMM_CACHE_DIR/l2_sides.json. The thresholds below are
checked against H100 data (bench/data/l2_cycles_h100.pt, tests/test_l2_sides.py; repeatability in bench/RESULTS.md).
The probe kernel's second mode (each chunk timed once, by one SM) is how deepergemm/l2_placement.py measures
the memory it places weights in.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field

import torch

MIN_SEPARATION = 6.0    # the sides' mean latency gap, in units of the pooled noise of one chunk's mean
# An SM must see at least this share of chunks near/far as its side does. On the H100 the worst SM agrees on
# 84-86% of 512 chunks (median 90%: an SM's own latencies are not two-valued), and the split is the same run after
# run even when the worst is 84%; 70% of 512 chunks is still 9 standard deviations from a coin, while an SM that
# sees a pattern of its own sits near 50%.
MIN_AGREEMENT = 0.70
PROBE_STRIDE = 4096     # bytes between probed chunks
PROBE_CHUNKS = 512      # chunks probed (2 MiB at 4 KiB: one large page, so the pattern is the physical one)
PROBE_REPS = 16         # dependent loads per chunk and SM
PROBE_ROUNDS = 3        # whole probes; the fastest time per (SM, chunk) is kept


@dataclass
class L2Sides:
    decided: bool
    reason: str                                     # why not decided, or a one-line summary
    sm_side: dict[int, int] = field(default_factory=dict)   # SM id -> 0 or 1
    chunk_side: list[int] = field(default_factory=list)     # probed chunk -> 0 or 1
    stride_bytes: int = PROBE_STRIDE
    granularity_bytes: int = 0                      # side blocks (0: undecided)
    near_cycles: float = 0.0                        # mean L2 hit latency on one's own side...
    far_cycles: float = 0.0                         # ...and across
    seconds: float = 0.0                            # how long detection took (measuring included, building not)

    @property
    def sms_per_side(self) -> tuple[int, int]:
        sides = list(self.sm_side.values())
        return sides.count(0), sides.count(1)


def _granularity(chunk_side: list[int], stride: int) -> int:
    """The largest power-of-two number of probes (times the stride) whose aligned blocks are all one side."""
    n, block = len(chunk_side), 1
    while block * 2 <= n and all(len(set(chunk_side[i:i + block * 2])) == 1 for i in range(0, n, block * 2)):
        block *= 2
    return block * stride


@contextlib.contextmanager
def _one_cpu_thread():
    """torch's CPU ops on one thread, restored after: the SMs x SMs math below needs no thread pool, and a pool whose
    threads compete with other busy threads of the process made it 10-500x slower (on the device, under pytest after
    the Triton and torch.compile tests: eigh of 132 x 132 took 0.97 s instead of 2 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def classify(cycles: torch.Tensor, smid: list[int], stride: int = PROBE_STRIDE) -> L2Sides:
    """cycles (CTAs, chunks): L2 hit latency from each CTA's SM (smid[cta]) to each probed chunk, `stride`
    bytes apart. CTAs on one SM are averaged. (On one CPU thread: _one_cpu_thread.)"""
    with _one_cpu_thread():
        return _classify(cycles, smid, stride)


def _classify(cycles: torch.Tensor, smid: list[int], stride: int) -> L2Sides:
    lat = cycles.double()
    ids = sorted(set(smid))
    if len(ids) < 2 or lat.shape[1] < 8:
        return L2Sides(False, f"too few SMs ({len(ids)}) or chunks ({lat.shape[1]}) probed")
    rows = torch.stack([lat[[i for i, s in enumerate(smid) if s == sm]].mean(0) for sm in ids])
    z = rows - rows.median(dim=1, keepdim=True).values       # each SM's pattern, its own offset removed
    centered = z - z.mean(dim=1, keepdim=True)
    norms = centered.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        return L2Sides(False, "some SM sees every chunk at the same latency: no side pattern")
    unit = centered / norms
    corr = unit @ unit.T
    vec = torch.linalg.eigh(corr).eigenvectors[:, -1]       # the leading pattern of the SMs
    side = (vec > 0).long()
    if side[0] == 1:                                         # side 0: the lowest SM id's side
        side = 1 - side
    if side.sum() in (0, len(ids)):
        return L2Sides(False, "every SM falls on one side: no second L2 side seen")
    g0, g1 = z[side == 0], z[side == 1]
    gap = g0.mean(0) - g1.mean(0)                            # < 0: side 0 reaches the chunk faster
    chunk_side = (gap > 0).long()
    noise = torch.cat([g0 - g0.mean(0), g1 - g1.mean(0)]).std()
    spread = float(noise) * math.sqrt(1 / len(g0) + 1 / len(g1))
    separation = float(gap.abs().median()) / max(spread, 1e-9)
    # each SM: on how many chunks does it see near/far as its side does (its own latency vs its median)
    own_near = z < 0
    expect_near = (chunk_side.unsqueeze(0) == side.unsqueeze(1))
    agreement = (own_near == expect_near).double().mean(1)
    near = float(torch.where(expect_near, rows, torch.nan).nanmean())
    far = float(torch.where(~expect_near, rows, torch.nan).nanmean())
    result = L2Sides(False, "", {sm: int(s) for sm, s in zip(ids, side.tolist())}, chunk_side.tolist(), stride,
                     _granularity(chunk_side.tolist(), stride), near, far)
    if separation < MIN_SEPARATION:
        result.reason = (f"the sides are {separation:.1f} noise units apart (need {MIN_SEPARATION}): "
                         f"near {near:.0f} vs far {far:.0f} cycles")
        return result
    worst = int(agreement.argmin())
    if float(agreement[worst]) < MIN_AGREEMENT:
        result.reason = (f"SM {ids[worst]} agrees with its side on {float(agreement[worst]):.0%} of the chunks "
                         f"(need {MIN_AGREEMENT:.0%})")
        return result
    a, b = result.sms_per_side
    result.decided = True
    result.reason = (f"{a} + {b} SMs, near {near:.0f} / far {far:.0f} cycles, side blocks of "
                     f"{result.granularity_bytes} bytes{' or less' if result.granularity_bytes == stride else ''}")
    return result


# ----------------------------------------------------------------------------------------------
# measuring on the GPU
# ----------------------------------------------------------------------------------------------
class _Probe:
    """The probe kernel (ptx/l2_probe.cuh), a kernel unit of its own launched through the host binding."""

    def __init__(self, probe_id: int):
        self.id = probe_id

    def l2_probe(self, buf, offsets, reps: int, cycles, smid, smem_bytes: int, rotate: int) -> None:
        """One CTA per entry of smid, on the current stream (see deepergemm_native::l2_probe)."""
        torch.ops.deepergemm_native.l2_probe(self.id, buf, offsets, reps, cycles, smid, smem_bytes, rotate)


_probe: _Probe | None = None


def _load() -> _Probe:
    """The probe, built (nvcc, a few seconds) or found, and loaded."""
    global _probe
    if _probe is None:
        from . import extension

        _probe = _Probe(extension.load_probe())
    return _probe


# rotate < 0: every CTA probes every chunk (detection, below); rotate >= 0: each chunk once (l2_placement).
ALL_CHUNKS = -1  # the probe's rotate for "every CTA probes every chunk"


def one_cta_per_sm_smem(props) -> int:
    """Dynamic shared memory that keeps two probe CTAs off one SM (more than half of what one CTA may take)."""
    return getattr(props, "shared_memory_per_block_optin", 232448) // 2 + 1024


def measure(device: torch.device, chunks: int = PROBE_CHUNKS, stride: int = PROBE_STRIDE, reps: int = PROBE_REPS,
            rounds: int = PROBE_ROUNDS, buf: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int]]:
    """(cycles (SMs, chunks) on the CPU, smid per CTA): the fastest of `rounds` probes, one CTA per SM, over `buf`
    (int32, at least chunks * stride bytes; a fresh zeroed one by default)."""
    module = _load()
    props = torch.cuda.get_device_properties(device)
    if buf is None:
        buf = torch.zeros(chunks * stride // 4, dtype=torch.int32, device=device)
    elif buf.dtype != torch.int32 or buf.numel() * 4 < chunks * stride:
        raise ValueError(f"buf must be int32 with at least chunks * stride = {chunks * stride} bytes")
    offsets = torch.arange(chunks, dtype=torch.int64, device=device) * (stride // 4)
    cycles = torch.empty(props.multi_processor_count, chunks, dtype=torch.int32, device=device)
    smid = torch.empty(props.multi_processor_count, dtype=torch.int32, device=device)
    smem = one_cta_per_sm_smem(props)
    best = None
    for _ in range(rounds):
        with torch.cuda.device(device):
            module.l2_probe(buf, offsets, reps, cycles, smid, smem, ALL_CHUNKS)
        best = cycles.clone() if best is None else torch.minimum(best, cycles)
    torch.cuda.synchronize(device)
    return best.cpu(), smid.cpu().tolist()


def _cache_key(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    return f"{props.name}|{getattr(props, 'uuid', device.index)}"


def detect(device: torch.device | None = None, refresh: bool = False) -> L2Sides:
    """The L2 sides of a GPU, measured once per device and cached (see the module's docstring)."""
    from .extension import cache_root

    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    path = cache_root() / "l2_sides.json"
    key = _cache_key(device)
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key in cache and not refresh:
        entry = cache[key]
        entry["sm_side"] = {int(k): v for k, v in entry["sm_side"].items()}
        return L2Sides(**entry)
    _load()  # (a first build takes seconds: not part of the detection's time)
    start = time.perf_counter()
    cycles, smid = measure(device)
    result = classify(cycles, smid)
    result.seconds = time.perf_counter() - start
    cache[key] = asdict(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1))
    return result
