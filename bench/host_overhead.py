"""Developer tool: what one GEMM call costs the host, ours against cuBLAS (torch._scaled_mm with blockwise scales
called directly, the way a framework calls it), and whether an eager loop is host- or GPU-bound.

    python bench/host_overhead.py [--shapes 64x7168x2048,...] [--calls 400] [--loop 64] [--profile PATH]

Per shape and path:
  host us/call   calls queued back to back while the GPU is kept busy (so no call waits for it), wall clock
  GPU us/call    CUDA-graph replays of the same calls (warm L2: the kernel as short as it gets)
  eager us/GEMM  a loop of --loop GEMMs through the path, synchronized once at the end (wall clock per GEMM):
                 max(host, GPU) in practice, what a decode step without CUDA graphs sees
Paths: "ours" = torch.ops.deepergemm.fp8_gemm(..., backend="ptx") (the C++ op), "dg.fp8_gemm" = the public Python
wrapper around it, "cuBLAS" = torch._scaled_mm with the scales already in its layouts; and the calls a layer makes
besides: "dg.quantize_act" of the bf16 activation (a Triton launch) and "dg.linear" (quantize_act + GEMM in one
call), each also with DEEPERGEMM_TRITON_FAST_LAUNCH=1 ("..., fast launch": the Triton kernels launched through
the cached compiled kernel instead of JITFunction.run). The ratio columns are against the cuBLAS GEMM alone.
--profile PATH: instead, cProfile of PATH's calls (one path name, first shape), the 25 functions with the most own
time (where the host time of a call goes).
(bench/first_call.py times a new process's first GEMM.)
"""
import argparse
import contextlib
import os
import statistics
import time

import torch

from gemm_case import make_case  # noqa: F401  (puts this checkout on sys.path)
import deepergemm as dg  # noqa: E402
from deepergemm import configs  # noqa: E402

FAST_LAUNCH = ", fast launch"  # rows timed with DEEPERGEMM_TRITON_FAST_LAUNCH=1


def per_call_us(fn, calls: int) -> float:
    """Host time per call: the GPU is kept busy (a spin) meanwhile, so no call waits for it; calls stay below
    the launch queue's depth (~1000), where the host would block on the GPU. Median of 5 rounds."""
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU clock
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return statistics.median(rounds)


def graph_us(fn, calls: int) -> float:
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm: plans, workspaces
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(20):
                fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = max(1, calls // 20)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (reps * 20)


def eager_loop_us(fn, gemms: int) -> float:
    """Wall clock per GEMM of a loop of `gemms` GEMMs with one synchronization at the end (median of 7)."""
    fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(gemms):
            fn()
        torch.cuda.synchronize()
        rounds.append((time.perf_counter() - start) / gemms * 1e6)
    return statistics.median(rounds)


def paths(m: int, n: int, k: int):
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    a, a_s = dg.quantize_act(x)
    b, b_s = dg.quantize_weight(w)
    m_pad = -(-m // 4) * 4
    a_c, a_s_c = a, a_s
    if m_pad != m:  # cuBLASLt's blockwise scales want M % 4 == 0 (deepergemm.cublas pads the same way)
        a_c = torch.nn.functional.pad(a.view(torch.uint8), (0, 0, 0, m_pad - m)).view(a.dtype)
        a_s_c = torch.nn.functional.pad(a_s, (0, 0, 0, m_pad - m), value=1.0)
    scale_a = a_s_c.t().contiguous().t()  # (M, K/128) M-major with stride M
    scale_b = b_s.contiguous().t()        # (K/128, N/128)
    b_t = b.t()
    op = torch.ops.deepergemm.fp8_gemm.default
    return {
        "ours": lambda: op(a, a_s, b, b_s, torch.bfloat16, None, "ptx"),
        "dg.fp8_gemm": lambda: dg.fp8_gemm(a, a_s, b, b_s, backend="ptx"),
        "cuBLAS": lambda: torch._scaled_mm(a_c, b_t, scale_a=scale_a, scale_b=scale_b, out_dtype=torch.bfloat16),
        "dg.quantize_act": lambda: dg.quantize_act(x),
        "dg.linear": lambda: dg.linear(x, b, b_s, backend="ptx"),
        "dg.quantize_act" + FAST_LAUNCH: lambda: dg.quantize_act(x),
        "dg.linear" + FAST_LAUNCH: lambda: dg.linear(x, b, b_s, backend="ptx"),
    }


@contextlib.contextmanager
def switch(name: str, value: str | None):
    """The environment switch set (None: left as it is) for the block, the snapshot reloaded around it."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    configs.reload_switches()
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old
        configs.reload_switches()


def path_switches(name: str):
    """The switch a path's row is timed under: the fast launch on for the "..., fast launch" rows."""
    return switch("DEEPERGEMM_TRITON_FAST_LAUNCH", "1" if name.endswith(FAST_LAUNCH) else None)


def profile(name: str, m: int, n: int, k: int, calls: int) -> None:
    import cProfile
    import pstats

    fn = paths(m, n, k)[name]
    with path_switches(name):
        fn()
        torch.cuda.synchronize()
        torch.cuda._sleep(400_000_000)
        with cProfile.Profile() as prof:
            for _ in range(calls):
                fn()
        torch.cuda.synchronize()
    print(f"== cProfile of {name} at {m}x{n}x{k}, {calls} calls (times include the profiler's own cost)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="64x7168x2048,1x7168x2048,64x2112x7168,128x7168x2048,4096x7168x2048")
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--loop", type=int, default=64, help="GEMMs per eager loop")
    parser.add_argument("--profile", default=None, help="a path's name: cProfile its calls instead")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.profile:
        profile(args.profile, *(int(v) for v in args.shapes.split(",")[0].split("x")), args.calls)
        return
    print("| shape | path | host us/call | GPU us/call | eager us/GEMM | host / cuBLAS host | eager / cuBLAS eager |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for label in args.shapes.split(","):
        m, n, k = (int(v) for v in label.split("x"))
        rows = {}
        for name, fn in paths(m, n, k).items():
            with path_switches(name):
                rows[name] = (per_call_us(fn, args.calls), graph_us(fn, args.calls), eager_loop_us(fn, args.loop))
        base = rows["cuBLAS"]
        for name, (host, gpu, eager) in rows.items():
            print(f"| {label} | {name} | {host:.1f} | {gpu:.1f} | {eager:.1f} | {host / base[0]:.2f} | "
                  f"{eager / base[2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
