"""The L2-side pattern of memory at fine strides (developer tool, issue 24): the detection probes 4 KiB chunks, and
placement needs to know at what granularity lines alternate between the two L2 partitions. Probes one 2 MiB-
aligned buffer at several strides from every SM and saves the raw cycles, the SM ids and the buffer's offset in its
2 MiB page to one file for offline analysis; prints, per stride, how many chunks one SM's near/far split assigns to
each side and how often neighbours differ.
"""
from __future__ import annotations

import argparse
import sys

import torch

from deepergemm import l2_sides

PAGE = 2 << 20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="l2_fine.pt")
    p.add_argument("--strides", default="128,512,4096", help="bytes between probed chunks")
    p.add_argument("--span", type=int, default=256 << 10, help="bytes probed per stride (default 256 KiB)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    raw = torch.zeros((PAGE + 2 * args.span) // 4, dtype=torch.int32, device=device)
    skip = (-raw.data_ptr()) % PAGE  # start at a 2 MiB boundary: the page offset of every chunk is then known
    buf = raw[skip // 4:]
    result = {"page_offset": 0, "smid": None, "cycles": {}}
    for stride in (int(s) for s in args.strides.split(",")):
        chunks = args.span // stride
        cycles, smid = l2_sides.measure(device, chunks=chunks, stride=stride, buf=buf)
        result["cycles"][stride], result["smid"] = cycles, smid
        # one SM's view: chunks above its median latency are far
        view = cycles[0].float()
        far = view > view.median()
        flips = int((far[1:] != far[:-1]).sum())
        print(f"stride {stride} B, {chunks} chunks: SM {smid[0]} sees {int(far.sum())} far / {chunks - int(far.sum())} "
              f"near, latency {int(view.min())}..{int(view.max())} cycles, side changes between neighbours: {flips}")
    torch.save(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
