"""Quantizer bandwidth benchmark: `python -m deepergemm quant-bench [options]`.

For each shape RxK, times the Triton quantize_act on x (R, K) and quantize_weight on w (R, K)
against the eager-torch reference on the same GPU tensors, with a cold L2
(deepergemm.benchmark.timing). Every Triton output is first checked bit-exact against the
reference computed on the CPU (the contract; the GPU eager reference differs from it in the last
bit of some scales, see deepergemm.triton_kernels.quantize). GB/s counts the bytes that must move:
input read + fp8 written + scales written.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass

import torch

from .. import reference
from .timing import time_cold_l2

DEFAULT_SHAPES = "8192x7168"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_SHAPE_RE = re.compile(r"^(\d+)\s*[xX]\s*(\d+)$")
# (BLOCK_M, BLOCK_G, num_warps) with 8..64 elements per thread
_SWEEP = [(bm, bg, nw) for bm in (8, 16, 32, 64) for bg in (1, 2, 4) for nw in (1, 2, 4, 8)
          if 8 <= bm * bg * reference.GROUP_K // (nw * 32) <= 64]


@dataclass
class Row:
    kind: str          # "act" or "weight"
    shape: str
    dtype: str
    ue8m0: bool
    bytes: int
    triton_us: float
    triton_spread: float
    eager_us: float
    gbps: float
    hbm_pct: float
    speedup: float


def parse_shapes(spec: str) -> list[tuple[int, int]]:
    shapes = []
    for item in spec.split(","):
        match = _SHAPE_RE.match(item.strip())
        if not match:
            raise ValueError(f"bad shape {item!r}: expected RxK (rows x K), e.g. 8192x7168")
        rows, k = int(match.group(1)), int(match.group(2))
        if rows <= 0 or k <= 0 or k % reference.GROUP_K:
            raise ValueError(f"bad shape {item!r}: rows and K must be positive, K a multiple of {reference.GROUP_K}")
        shapes.append((rows, k))
    return shapes


def moved_bytes(x: torch.Tensor, scales: torch.Tensor) -> int:
    """Input read + fp8 output written (1 byte per element) + fp32 scales written."""
    return x.numel() * x.element_size() + x.numel() + scales.numel() * 4


def _bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact, except that any two NaNs match (NaN sign/payload differ between CPU and GPU)."""
    a, b = a.cpu(), b.cpu()
    nan_a, nan_b = a.float().isnan(), b.float().isnan()
    int_view = torch.uint8 if a.element_size() == 1 else torch.int32
    return torch.equal(nan_a, nan_b) and torch.equal(a.view(int_view)[~nan_a], b.view(int_view)[~nan_b])


def check_exact(kind: str, got: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, ue8m0: bool) -> None:
    ref_fn = reference.quantize_act if kind == "act" else reference.quantize_weight
    want = ref_fn(x.cpu(), ue8m0=ue8m0)
    for name, g, w in zip(("q", "scales"), got, want):
        if not _bitwise_equal(g, w):
            raise AssertionError(f"quantize_{kind}{tuple(x.shape)} {name} differs from the CPU reference")


def bench_one(kind: str, x: torch.Tensor, ue8m0: bool, hbm_tbps: float, launches: int) -> Row:
    from ..triton_kernels import quantize as tq

    triton_fn = tq.quantize_act if kind == "act" else tq.quantize_weight
    eager_fn = reference.quantize_act if kind == "act" else reference.quantize_weight
    out = triton_fn(x, ue8m0=ue8m0)
    check_exact(kind, out, x, ue8m0)
    nbytes = moved_bytes(x, out[1])
    fast = time_cold_l2(lambda: triton_fn(x, ue8m0=ue8m0), launches=launches, device=x.device)
    eager = time_cold_l2(lambda: eager_fn(x, ue8m0=ue8m0), launches=launches, device=x.device)
    gbps = nbytes / fast.median_us / 1e3
    return Row(kind, f"{x.shape[0]}x{x.shape[1]}", str(x.dtype).removeprefix("torch."), ue8m0, nbytes,
               fast.median_us, fast.spread, eager.median_us, gbps, 100 * gbps / (hbm_tbps * 1e3),
               eager.median_us / fast.median_us)


def sweep_act(x: torch.Tensor, ue8m0: bool, hbm_tbps: float, launches: int) -> None:
    """Time quantize_act under each tile configuration, to choose act_config's defaults."""
    from ..triton_kernels import quantize as tq

    default = tq.act_config(x.shape[0])
    results = []
    for cfg in _SWEEP:
        out = tq.launch_act(x, ue8m0, cfg)
        check_exact("act", out, x, ue8m0)
        t = time_cold_l2(lambda: tq.launch_act(x, ue8m0, cfg), launches=launches, device=x.device)
        results.append((t.median_us, cfg))
    nbytes = moved_bytes(x, out[1])
    print(f"quantize_act {tuple(x.shape)} sweep (BLOCK_M, BLOCK_G, num_warps), default {default}:")
    for us, cfg in sorted(results):
        gbps = nbytes / us / 1e3
        print(f"  {str(cfg):14} {us:8.1f} us {gbps:7.0f} GB/s {100 * gbps / (hbm_tbps * 1e3):5.1f}%"
              f"{'  <- default' if cfg == default else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepergemm quant-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help=f"comma-separated RxK shapes (rows x K), e.g. 8192x7168,128x7168,7168x2048 "
                             f"(default {DEFAULT_SHAPES})")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16", help="input dtype (default bf16)")
    parser.add_argument("--ue8m0", action="store_true", help="power-of-two (UE8M0) scales")
    parser.add_argument("--hbm-tbps", type=float, default=3.0, help="HBM bandwidth for the %% column (default 3.0)")
    parser.add_argument("--launches", type=int, default=30, help="timed launches per measurement (default 30)")
    parser.add_argument("--sweep", action="store_true", help="also time quantize_act's tile configurations")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        shapes = parse_shapes(args.shapes)
    except ValueError as e:
        parser.error(str(e))
    if not torch.cuda.is_available():
        print("quant-bench needs a CUDA GPU (the Triton quantizers run on CUDA only); none found.")
        return 1

    device = torch.device("cuda")
    dtype = _DTYPES[args.dtype]
    print(f"{torch.cuda.get_device_name()}, {args.dtype} input, {'UE8M0' if args.ue8m0 else 'fp32'} scales, "
          f"cold L2, median of {args.launches}; % of {args.hbm_tbps} TB/s")
    print(f"{'kernel':16} {'shape':>11} {'MB moved':>9} {'triton us':>10} {'spread':>7} {'GB/s':>7} "
          f"{'% HBM':>6} {'eager us':>9} {'speedup':>8}")
    rows = []
    for n_rows, k in shapes:
        x = torch.randn(n_rows, k, dtype=dtype, device=device)
        for kind in ("act", "weight"):
            try:
                row = bench_one(kind, x, args.ue8m0, args.hbm_tbps, args.launches)
            except AssertionError as e:  # a wrong kernel is not timed
                print(f"FAILED: {e}")
                return 1
            rows.append(row)
            print(f"{'quantize_' + kind:16} {row.shape:>11} {row.bytes / 1e6:9.1f} {row.triton_us:10.1f} "
                  f"{row.triton_spread:7.1%} {row.gbps:7.0f} {row.hbm_pct:5.1f}% {row.eager_us:9.1f} "
                  f"{row.speedup:7.1f}x")
        if args.sweep:
            sweep_act(x, args.ue8m0, args.hbm_tbps, args.launches)  # raises if a configuration is wrong
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "hbm_tbps": args.hbm_tbps,
                       "rows": [asdict(r) for r in rows]}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
