"""Grouped SwiGLU (issue 27): the experts' fused gate/up GEMM + SwiGLU + quantization against the steps it replaces.

    python bench/grouped_swiglu_bench.py [--m 1,32,128,512,4096] [--shapes 7168x2048x256x8,2048x768x128x8]
                                         [--launches 50] [--ue8m0] [--masked | --block]

Shapes are HIDDENxINTERMEDIATExEXPERTSxTOPK (defaults: DeepSeek-V3's routed experts, Qwen3-30B-A3B's); --m gives
the token counts. Each of M tokens picks TOPK distinct experts at random; the rows are laid out contiguously
(dg.build_contiguous_layout with max_rows = contiguous_rows_bound, as deepergemm.nn.FP8Experts does). Per shape and
M: the grouped bf16 GEMM alone (gate/up weight (EXPERTS, 2 * INTERMEDIATE, HIDDEN), gate rows then up rows); the
unfused steps (that GEMM, its halves interleaved per 128, dg.swiglu, dg.quantize_act); the fused
m_grouped_fp8_gemm_contiguous_swiglu. All ptx, each timed with a cold L2 before every launch (CUDA events, median
of --launches); before timing, fused and unfused are compared bit for bit on the routed rows (the other rows are
unspecified). --masked: the masked layout instead (each expert's tokens in its first rows of max_m: DeepEP's
low-latency decode), m_grouped_fp8_gemm_masked_swiglu against the masked bf16 GEMM and the same steps. --block: the
whole experts block instead, FP8Experts.forward with fused_swiglu=True against its unfused forward (torch SiLU on the
chosen rows, quantize, copy back), and calc_diff between their outputs (they round SwiGLU differently: not
bit-identical).
"""
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import deepergemm as dg  # noqa: E402
from deepergemm import configs, layouts  # noqa: E402
from deepergemm import nn as dnn  # noqa: E402
from deepergemm.benchmark.timing import time_steady  # noqa: E402
from fused_epilogue import measure_row, parser, print_header  # noqa: E402


def _routing(m: int, experts: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.rand(m, experts, device="cuda").topk(top_k, dim=1).indices.to(torch.int32)
    return ids, torch.rand(m, top_k, device="cuda")


def _real_rows(layout) -> torch.Tensor:
    """(layout.rows,) bool: the rows a routed choice lands on (the grouped outputs' specified rows)."""
    chosen = layout.row_of.reshape(-1)
    rows = torch.zeros(layout.rows, dtype=torch.bool, device=chosen.device)
    rows[chosen[chosen >= 0].long()] = True
    return rows


def _shapes(text: str) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]


def _block_row(m, hidden, inter, experts, top_k, launches) -> None:
    gate_up = torch.randn(experts, 2 * inter, hidden, device="cuda", dtype=torch.bfloat16).mul_(hidden ** -0.5)
    down = torch.randn(experts, hidden, inter, device="cuda", dtype=torch.bfloat16).mul_(inter ** -0.5)
    block = dnn.FP8Experts.from_weights(gate_up, down)  # (one copy of the weights: the flag switches paths)
    del gate_up, down
    x = torch.randn(m, hidden, device="cuda", dtype=torch.bfloat16)
    ids, weights = _routing(m, experts, top_k)

    def run(fused: bool) -> torch.Tensor:
        block.fused_swiglu = fused
        return block(x, ids, weights)

    with torch.no_grad():
        diff = dg.calc_diff(run(False).float(), run(True).float())
        t_unfused, t_fused = (time_steady(lambda f=f: run(f), launches).median_us for f in (False, True))
    print(f"{m:>5} {hidden:>6} {inter:>6} {experts:>4}x{top_k:<2}  {t_unfused:>8.1f}us {t_fused:>8.1f}us "
          f"{t_fused / t_unfused:>13.3f}  calc_diff {diff:.2e}")


def _weights(experts: int, inter: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    w, w_s = dg.quantize_weight(torch.randn(experts * 2 * inter, hidden, device="cuda", dtype=torch.bfloat16))
    return w.view(experts, 2 * inter, hidden), w_s.view(experts, -1, hidden // 128)


def _contiguous_row(m, hidden, inter, experts, top_k, args, sms) -> None:
    ids, _ = _routing(m, experts, top_k)
    layout = dg.build_contiguous_layout(ids, experts, max_rows=dg.contiguous_rows_bound(m, top_k, experts))
    a, a_s = dg.quantize_act(dg.permute_tokens(torch.randn(m, hidden, device="cuda"), layout))
    w, w_s = _weights(experts, inter, hidden)

    def gemm():
        return dg.m_grouped_fp8_gemm_contiguous(a, a_s, w, w_s, layout, backend="ptx")

    def unfused():
        return dg.quantize_act(dg.swiglu(layouts.interleave_halves(gemm())), ue8m0=args.ue8m0)

    def fused():
        return dg.m_grouped_fp8_gemm_contiguous_swiglu(a, a_s, w, w_s, layout, ue8m0=args.ue8m0, backend="ptx")

    rows_per_group = max(1, -(-layout.rows // experts))  # (the binding's hint)
    problem = (configs.GROUP_CONTIGUOUS, rows_per_group, experts, 2 * inter, hidden, sms)
    variants = f"{configs.select_grouped(*problem).variant.key} | {configs.select_grouped_swiglu(*problem).variant.key}"
    measure_row(f"{m:>5} {hidden:>6} {inter:>6} {experts:>4}x{top_k:<2}", gemm, unfused, fused, args.launches,
                variants, rows=_real_rows(layout))


def _masked_row(m, hidden, inter, experts, top_k, args, sms) -> None:
    """The masked layout (decode, DeepEP's low-latency dispatch): each expert's routed tokens in its first rows of
    max_m = the most any expert got, rounded up to 64."""
    ids, _ = _routing(m, experts, top_k)
    masked_m = torch.bincount(ids.flatten().long(), minlength=experts).to(torch.int32)
    max_m = -(-max(1, int(masked_m.max())) // 64) * 64
    a, a_s = dg.quantize_act(torch.randn(experts * max_m, hidden, device="cuda"))
    a3, a3_s = a.view(experts, max_m, hidden), a_s.reshape(experts, max_m, hidden // 128)
    w, w_s = _weights(experts, inter, hidden)
    expected_m = max(1, -(-m * top_k // experts))

    def gemm():
        return dg.m_grouped_fp8_gemm_masked(a3, a3_s, w, w_s, masked_m, expected_m, backend="ptx")

    def unfused():
        y = gemm().view(experts * max_m, 2 * inter)
        return dg.quantize_act(dg.swiglu(layouts.interleave_halves(y)), ue8m0=args.ue8m0)

    def fused():
        q, s = dg.m_grouped_fp8_gemm_masked_swiglu(a3, a3_s, w, w_s, masked_m, expected_m, ue8m0=args.ue8m0,
                                                   backend="ptx")
        return q.view(experts * max_m, inter), s.view(experts * max_m, inter // 128)

    rows = torch.arange(max_m, device="cuda")[None, :] < masked_m[:, None]
    problem = (configs.GROUP_MASKED, min(expected_m, max_m), experts, 2 * inter, hidden, sms)
    variants = f"{configs.select_grouped(*problem).variant.key} | {configs.select_grouped_swiglu(*problem).variant.key}"
    measure_row(f"{m:>5} {hidden:>6} {inter:>6} {experts:>4}x{top_k:<2}", gemm, unfused, fused, args.launches,
                variants, rows=rows.flatten())


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.set_defaults(m="1,32,128,512,4096")
    p.add_argument("--shapes", default="7168x2048x256x8,2048x768x128x8",
                   help="HIDDENxINTERxEXPERTSxTOPK, comma-separated")
    p.add_argument("--block", action="store_true", help="time FP8Experts' forward, fused_swiglu on and off")
    p.add_argument("--masked", action="store_true", help="the masked layout (decode) instead of the contiguous one")
    args = p.parse_args(argv)
    columns = f"{'M':>5} {'hidden':>6} {'inter':>6} {'E x k':>7}"
    if args.block:
        print(f"{torch.cuda.get_device_name()}, cold L2, median of {args.launches}: FP8Experts forward")
        print(f"{columns}  {'unfused':>10} {'fused':>10} {'fused/unfused':>13}")
    else:
        sms = print_header(args, columns, f"grouped {'masked' if args.masked else 'contiguous'} bf16 GEMM | fused")
    for hidden, inter, experts, top_k in _shapes(args.shapes):
        for m in (int(v) for v in args.m.split(",")):
            if args.block:
                _block_row(m, hidden, inter, experts, top_k, args.launches)
            else:
                (_masked_row if args.masked else _contiguous_row)(m, hidden, inter, experts, top_k, args, sms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
