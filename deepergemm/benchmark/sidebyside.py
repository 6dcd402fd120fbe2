"""What the side-by-side benches (l2-bench, bench/ablation.py) share: their common options' checks, the GPU they
need, and one table line per shape as it is measured (text, or Markdown for bench/RESULTS.md)."""
from __future__ import annotations

import argparse

import torch

from .gemm import MIN_LAUNCHES
from .shapes import Shape, select_shapes


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, extra=None) -> tuple[argparse.Namespace,
                                                                                        list[Shape]]:
    """Options and shapes (--shapes, --launches >= MIN_LAUNCHES); `extra(args)` may raise ValueError too. Bad
    input exits through argparse with the reason."""
    args = parser.parse_args(argv)
    try:
        shapes = select_shapes(args.shapes)
        if extra is not None:
            extra(args)
    except ValueError as exc:
        parser.error(str(exc))
    if args.launches < MIN_LAUNCHES:
        parser.error(f"--launches must be at least {MIN_LAUNCHES}, got {args.launches}")
    return args, shapes


def cuda_device(command: str) -> torch.device | None:
    """The current GPU, or None after saying that `command` needs one."""
    if not torch.cuda.is_available():
        print(f"{command} needs a CUDA GPU")
        return None
    return torch.device("cuda", torch.cuda.current_device())


def print_row(cells: list[str], markdown: bool) -> None:
    bar = "|" if markdown else ""
    print(bar + bar.join(f" {c} " for c in cells) + bar, flush=True)


def print_header(header: list[str], markdown: bool) -> None:
    print_row(header, markdown)
    if markdown:
        print("|" + "|".join("---" for _ in header) + "|")
