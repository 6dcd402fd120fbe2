"""Developer tool: what one call of torch.ops.deepergemm.fp8_gemm costs the host, against the GPU time of
the same GEMM (warm L2, so the kernel is as short as it gets). A decode step's GEMM runs ~15 us on the
GPU: a Python launch path that takes longer leaves the GPU waiting unless the caller uses CUDA graphs.

    python bench/host_overhead.py [--shapes 64x2112x7168,128x7168x2048] [--calls 500]

Prints per shape and backend: host us per call (calls queued back to back, wall clock over many), GPU us per
call (CUDA graph replays of the same calls), and which of the two bounds an eager loop.
"""
import argparse
import time

import torch

from gemm_case import make_case  # noqa: F401  (puts this checkout on sys.path)
import deepergemm as dg  # noqa: E402


def per_call_us(fn, calls: int) -> float:
    """Host time per call: the GPU is kept busy (a spin) meanwhile, so no call waits for it; calls stay below
    the launch queue's depth (~1000), where the host would block on the GPU."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU clock
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def graph_us(fn, calls: int) -> float:
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # warm: builds, workspaces
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="64x2112x7168,128x7168x2048,4096x7168x2048")
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    for label in args.shapes.split(","):
        m, n, k = (int(v) for v in label.split("x"))
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
        a, a_s = dg.quantize_act(x)
        b, b_s = dg.quantize_weight(w)
        for backend in ("ptx", "cublas"):
            def fn(backend=backend):
                return torch.ops.deepergemm.fp8_gemm(a, a_s, b, b_s, torch.bfloat16, None, backend)
            host = per_call_us(fn, args.calls)
            gpu = graph_us(fn, args.calls)
            bound = "host" if host > gpu else "GPU"
            print(f"{label:>16} {backend:>6}: host {host:7.1f} us/call, GPU {gpu:7.1f} us/call -> eager loop {bound}-bound",
                  flush=True)


if __name__ == "__main__":
    main()
