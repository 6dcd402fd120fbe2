"""Command line: `python -m deepergemm [run|bench|quant-bench|grouped-bench|model-bench|build|warmup|info] ...`.

run (the default): on a Hopper GPU, check and benchmark the real kernels against cuBLAS (the bench
table); on any other machine, run the reference path on a small problem and say what a GPU adds.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

import deepergemm as dg
from deepergemm import reference

_CPU_DEMO_SHAPE = (64, 512, 1024)  # M, N, K: small enough for a laptop, large enough to mean something


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def describe_machine() -> str:
    if not torch.cuda.is_available():
        return f"torch {torch.__version__}, no CUDA GPU"
    cap = torch.cuda.get_device_capability()
    return (f"torch {torch.__version__}, {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}, "
            f"{torch.cuda.get_device_properties(0).multi_processor_count} SMs)")


def run_reference_demo(m: int, n: int, k: int) -> float:
    """Quantize, multiply through the public API, check against the float64 product; return calc_diff."""
    x = torch.randn(m, k, dtype=torch.bfloat16)
    w = torch.randn(n, k, dtype=torch.bfloat16)
    w_q, w_s = dg.quantize_weight(w)
    start = time.perf_counter()
    y = dg.linear(x, w_q, w_s)
    elapsed = time.perf_counter() - start
    a_q, a_s = dg.quantize_act(x)
    exact = dg.dequantize_act(a_q, a_s).double() @ dg.dequantize_weight(w_q, w_s).double().t()
    diff = reference.calc_diff(y, exact)
    print(f"deepergemm.linear {m}x{n}x{k} (bf16 in, fp8 1x128/128x128 quantization, bf16 out) "
          f"on the CPU reference path: {elapsed * 1e3:.1f} ms, calc_diff vs float64 = {diff:.2e}")
    print(f"quantization error vs the unquantized bf16 product: calc_diff = "
          f"{reference.calc_diff(y, x.double() @ w.double().t()):.2e} (fp8 e4m3 keeps 3 mantissa bits)")
    return diff


def cmd_run(args) -> int:
    print(f"deepergemm {dg.__version__}: {describe_machine()}")
    if _hopper():
        from deepergemm.benchmark import gemm

        return gemm.main(args.rest or []) or 0
    diff = run_reference_demo(*_CPU_DEMO_SHAPE)
    print("No Hopper (sm_90) GPU here, so the inline-PTX kernel, the Triton quantizers and the cuBLAS "
          "comparison did not run.\nOn an H100/H200 this command builds the kernels, checks every "
          "output against the fp32 reference and prints the benchmark table against torch._scaled_mm.")
    return 0 if diff < 1e-5 else 1


def cmd_bench(args) -> int:
    from deepergemm.benchmark import gemm

    return gemm.main(args.rest) or 0


def cmd_quant_bench(args) -> int:
    from deepergemm.benchmark import quantize

    return quantize.main(args.rest) or 0


def cmd_grouped_bench(args) -> int:
    from deepergemm.benchmark import grouped

    return grouped.main(args.rest) or 0


def cmd_model_bench(args) -> int:
    from deepergemm.benchmark import model

    return model.main(args.rest) or 0


def cmd_l2_bench(args) -> int:
    from deepergemm.benchmark import l2sides

    return l2sides.main(args.rest) or 0


def cmd_warmup(args) -> int:
    from deepergemm import extension

    return extension.warmup_main(args.rest) or 0


def cmd_build(args) -> int:
    from deepergemm import extension

    return extension.build_main(args.rest) or 0


def cmd_info(args) -> int:
    print(f"deepergemm {dg.__version__}: {describe_machine()}")
    if torch.cuda.is_available():
        print(f"fp8_gemm backend='auto' resolves to: {dg.ops.resolve_backend('auto', torch.device('cuda'))}")
    return 0


COMMANDS = {
    "run": (cmd_run, "default: GPU bench on Hopper, reference demo elsewhere"),
    "bench": (cmd_bench, "GEMM benchmark vs cuBLAS (options: bench --help)"),
    "quant-bench": (cmd_quant_bench, "quantizer bandwidth benchmark"),
    "grouped-bench": (cmd_grouped_bench, "grouped (MoE) GEMM benchmark vs DeepGEMM's anchors (grouped-bench --help)"),
    "model-bench": (cmd_model_bench, "one DeepSeek-V3 layer's linears and MoE: bf16 vs cuBLAS vs ours, eager and "
                                     "CUDA graphs (model-bench --help; --tiny on the CPU)"),
    "l2-bench": (cmd_l2_bench, "B placed by L2 side vs plain vs cuBLAS (l2-bench --help)"),
    "build": (cmd_build, "compile kernel units with nvcc, no GPU needed (build --help: --variants, --out DIR)"),
    "warmup": (cmd_warmup, "on a Hopper GPU: build in parallel and load the binding and every kernel variant"),
    "info": (cmd_info, "machine and backend"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m deepergemm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="run", choices=sorted(COMMANDS),
                        help="; ".join(f"{k}: {v[1]}" for k, v in COMMANDS.items()))
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the command")
    args = parser.parse_args(argv)
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    sys.exit(main())
