"""The benchmark shapes and the anchor figures they are judged against (from design/ANCHORS.md).

Anchors were measured on one H100 80GB HBM3, 2026-11-24, torch 2.11.0+cu130, cold L2, median of 30
launches. Absolute times drift between machines and runs; the figure to beat is the ratio
``DeepGEMM / cuBLAS`` (speed), compared with our own ``ours / cuBLAS`` measured in one run.

Shape selection (``select_shapes``): a subset name ("all", "small" = M <= 128, "large" = M >= 4096, "decode" =
M in 1, 8, 16, 32, 64, 128 for each anchor (N, K) pair, "mid" = M in 256, 512, 1024, 2048 for each pair, "sweep" =
M = 1, 2, 4, ..., 16384 for each pair), "sweep:NxK[+NxK...]" (that M range for the pairs given),
or a comma-separated list mixing subset names and explicit shapes "MxNxK", e.g.
"64x2112x7168,128x4096x7168" or "small,256x7168x2048".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..layouts import N_ALIGN
from ..reference import GROUP_K

SMALL_M_MAX = 128   # M <= 128: memory-bound decode-like GEMMs
LARGE_M_MIN = 4096  # M >= 4096: compute-bound prefill/training GEMMs


@dataclass(frozen=True, order=True)
class Shape:
    m: int
    n: int
    k: int

    @property
    def label(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True)
class Anchor:
    """One row of the dense table in ANCHORS.md (times in microseconds)."""
    floor_us: float          # HBM floor: bytes that must move / 3.0 TB/s
    cublas_us: float
    deepgemm_us: float
    deepgemm_ratio: float    # DeepGEMM / cuBLAS speed = cublas_us / deepgemm_us, as published (2 decimals)
    deeper_us: float         # the 2025 DeeperGEMM fork (inexact numerics; not a target)
    deepgemm_tflops: float


@dataclass(frozen=True)
class GroupedAnchor:
    """One row of the grouped (MoE) table in ANCHORS.md: DeepGEMM only (torch has no grouped cuBLAS)."""
    kind: str                # "contiguous" or "masked"
    groups: int
    m_per_group: int
    n: int
    k: int
    deepgemm_us: float
    deepgemm_tflops: float


def _dense(table: str) -> dict[Shape, Anchor]:
    rows = {}
    for line in table.strip().splitlines():
        shape, *figures = line.split()
        m, n, k = (int(v) for v in shape.split("x"))
        rows[Shape(m, n, k)] = Anchor(*(float(f) for f in figures))
    return rows


# M x N x K | HBM floor us | cuBLAS us | DeepGEMM us | DeepGEMM/cuBLAS | DeeperGEMM us | DeepGEMM TFLOPS
DENSE_ANCHORS: dict[Shape, Anchor] = _dense("""
64x2112x7168     5.3   25.9   14.3  1.82   18.2  136
64x24576x1536   13.7   26.0   23.7  1.10   21.8  204
64x32768x512     7.0   15.8   14.6  1.08   14.6  147
64x7168x16384   39.8   61.0   55.9  1.09   50.8  269
64x4096x7168    10.1   28.3   20.4  1.39   19.8  185
64x7168x2048     5.2   13.8   12.7  1.09   13.6  148
128x2112x7168    5.5   26.2   14.8  1.78   18.3  263
128x24576x1536  14.8   26.0   24.9  1.04   23.2  388
128x32768x512    8.4   16.5   15.9  1.03   15.1  270
128x7168x16384  40.5   61.3   57.5  1.07   48.4  523
128x4096x7168   10.5   28.5   20.5  1.39   20.1  366
128x7168x2048    5.6   14.5   13.5  1.07   13.1  278
4096x2112x7168  20.9  117.3   99.3  1.18  127.2 1248
4096x24576x1536 81.9  266.2  242.1  1.10  314.9 1277
4096x32768x512  95.8  167.5  137.9  1.21  168.9  997
4096x7168x16384 81.8  733.0  653.5  1.12  772.1 1472
4096x4096x7168  31.1  192.6  174.8  1.10  202.0 1376
4096x7168x2048  27.4  108.2   97.2  1.11  154.7 1237
8192x2112x7168  36.8  217.7  225.7  0.96  230.5 1099
8192x24576x1536 151.1 529.4  470.0  1.13  622.4 1316
8192x32768x512  186.0 323.3  289.1  1.12  326.2  951
8192x7168x16384 124.4 1518.4 1314.0 1.16 1548.6 1464
8192x4096x7168  52.3  374.3  344.2  1.09  392.4 1398
8192x7168x2048  49.8  205.9  186.4  1.10  216.3 1291
""")

# Grouped GEMMs: the cases of the grouped benchmark (benchmark/grouped.py).
GROUPED_ANCHORS: tuple[GroupedAnchor, ...] = (
    GroupedAnchor("contiguous", 4, 8192, 4096, 7168, 1368.2, 1406),
    GroupedAnchor("contiguous", 4, 8192, 7168, 2048, 727.6, 1322),
    GroupedAnchor("contiguous", 8, 4096, 4096, 7168, 1373.0, 1401),
    GroupedAnchor("contiguous", 8, 4096, 7168, 2048, 726.1, 1325),
    GroupedAnchor("masked", 1, 1024, 4096, 7168, 54.9, 1096),
    GroupedAnchor("masked", 1, 1024, 7168, 2048, 38.4, 783),
    GroupedAnchor("masked", 2, 512, 4096, 7168, 59.6, 1009),
    GroupedAnchor("masked", 2, 512, 7168, 2048, 41.8, 719),
    GroupedAnchor("masked", 4, 256, 4096, 7168, 73.6, 817),
    GroupedAnchor("masked", 4, 256, 7168, 2048, 46.6, 645),
)

ALL_SHAPES: tuple[Shape, ...] = tuple(DENSE_ANCHORS)  # table order: M, then the six (N, K) pairs

# Decode sizes: the anchors' six (N, K) pairs at every M a serving batch commonly has (M = 64 and 128 are
# anchors; 1..32 are not: no DeepGEMM figure). With the large anchors they trace the roofline (report.py).
DECODE_MS = (1, 8, 16, 32, 64, 128)
NK_PAIRS: tuple[tuple[int, int], ...] = tuple(dict.fromkeys((s.n, s.k) for s in ALL_SHAPES))

MID_MS = (256, 512, 1024, 2048)               # between decode and prefill: where the tile choice is hardest
SWEEP_MS = tuple(2 ** i for i in range(15))   # 1, 2, 4, ..., 16384: the whole M range of one (N, K)

SUBSETS: dict[str, tuple[Shape, ...]] = {
    "all": ALL_SHAPES,
    "small": tuple(s for s in ALL_SHAPES if s.m <= SMALL_M_MAX),
    "large": tuple(s for s in ALL_SHAPES if s.m >= LARGE_M_MIN),
    "decode": tuple(Shape(m, n, k) for n, k in NK_PAIRS for m in DECODE_MS),
    "mid": tuple(Shape(m, n, k) for n, k in NK_PAIRS for m in MID_MS),
    "sweep": tuple(Shape(m, n, k) for n, k in NK_PAIRS for m in SWEEP_MS),
}


def sweep_shapes(spec: str) -> tuple[Shape, ...]:
    """"sweep:NxK[+NxK...]": M = 1, 2, 4, ..., 16384 for each (N, K) pair given."""
    pairs = spec.split(":", 1)[1].split("+")
    out = []
    for pair in pairs:
        shape = parse_shape(f"1x{pair.strip()}")
        out.extend(Shape(m, shape.n, shape.k) for m in SWEEP_MS)
    return tuple(out)

_SHAPE_RE = re.compile(r"^(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)$")


def anchor_for(shape: Shape) -> Anchor | None:
    return DENSE_ANCHORS.get(shape)


def parse_shape(text: str) -> Shape:
    """"MxNxK" -> Shape, checked against what fp8_gemm accepts (K % 128 == 0, N % 8 == 0)."""
    match = _SHAPE_RE.match(text.strip())
    if not match:
        raise ValueError(f"bad shape {text!r}: expected MxNxK with positive integers, e.g. 64x2112x7168, "
                         f"or a subset name ({', '.join(SUBSETS)})")
    m, n, k = (int(g) for g in match.groups())
    if min(m, n, k) <= 0:
        raise ValueError(f"bad shape {text!r}: M, N and K must be positive")
    if k % GROUP_K != 0:
        raise ValueError(f"bad shape {text!r}: K must be a multiple of {GROUP_K} (the scale group size)")
    if n % N_ALIGN != 0:
        raise ValueError(f"bad shape {text!r}: N must be a multiple of {N_ALIGN} (16-byte aligned output rows)")
    return Shape(m, n, k)


def select_shapes(spec: str) -> list[Shape]:
    """Subset names and/or explicit "MxNxK" shapes, comma separated -> shapes in order, duplicates dropped."""
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(f"bad shape list {spec!r}: empty item; use a subset name ({', '.join(SUBSETS)}) "
                         f"or comma-separated MxNxK shapes")
    shapes: list[Shape] = []
    for item in items:
        chosen = sweep_shapes(item) if item.lower().startswith("sweep:") else SUBSETS.get(item.lower())
        for shape in chosen if chosen is not None else (parse_shape(item),):
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def is_small(shape: Shape) -> bool:
    return shape.m <= SMALL_M_MAX


def is_large(shape: Shape) -> bool:
    return shape.m >= LARGE_M_MIN
