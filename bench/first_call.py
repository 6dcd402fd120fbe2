"""Developer tool: how long a new process waits for its first GEMM (issue 22's targets): from interpreter start to
the first dg.fp8_gemm result, split into `import torch`, `import deepergemm` + CUDA init + quantization, and the
first GEMM (which loads the host binding and the kernel unit, building what the cache lacks).

    python bench/first_call.py [--shape 64x7168x2048]

Run it with a warm cache (binding and unit built: the "prebuilt kernels" case) and with the unit missing
(DEEPERGEMM_KERNEL_DIR unset, the cache's kernels/ emptied: "first use of one new variant").
"""
import time

t0 = time.perf_counter()
import argparse  # noqa: E402

import torch  # noqa: E402

t1 = time.perf_counter()
import deepergemm as dg  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="64x7168x2048")
    args = parser.parse_args()
    m, n, k = (int(v) for v in args.shape.split("x"))
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
    a, a_s = dg.quantize_act(x)
    b, b_s = dg.quantize_weight(w)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    y = dg.fp8_gemm(a, a_s, b, b_s, backend="ptx")
    torch.cuda.synchronize()
    t3 = time.perf_counter()
    exact = dg.dequantize_act(a, a_s).double() @ dg.dequantize_weight(b, b_s).double().t()
    print(f"first call {args.shape}: import torch {t1 - t0:.2f} s, import deepergemm + CUDA init + quantize "
          f"{t2 - t1:.2f} s, first GEMM {t3 - t2:.2f} s (calc_diff {dg.calc_diff(y, exact):.2e}); "
          f"process so far {t3 - t0:.2f} s")


if __name__ == "__main__":
    main()
