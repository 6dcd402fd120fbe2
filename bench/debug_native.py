"""Developer tool: the host binding's ops one at a time on a small problem, each step announced before it runs,
so a crash (run under cuda-gdb for a backtrace) shows which call broke."""
import sys

import torch

import deepergemm as dg
from deepergemm import extension


def step(what, fn):
    print(f"-> {what}", flush=True)
    out = fn()
    print(f"   ok: {out if not isinstance(out, torch.Tensor) else tuple(out.shape)}", flush=True)
    return out


def main() -> None:
    step("load_binding", extension.load_binding)
    step("loaded_variants", lambda: torch.ops.deepergemm_native.loaded_variants())
    step("configure", lambda: torch.ops.deepergemm_native.configure("auto"))
    x = torch.randn(64, 512, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    a, a_s = dg.quantize_act(x)
    b, b_s = dg.quantize_weight(w)
    for backend in sys.argv[1:] or ["reference", "cublas", "ptx"]:
        y = step(f"fp8_gemm backend={backend}", lambda: torch.ops.deepergemm.fp8_gemm(a, a_s, b, b_s, torch.bfloat16,
                                                                                     None, backend))
        torch.cuda.synchronize()
        exact = dg.dequantize_act(a, a_s).double() @ dg.dequantize_weight(b, b_s).double().t()
        print(f"   calc_diff {dg.calc_diff(y, exact):.2e}", flush=True)


if __name__ == "__main__":
    main()
