"""Which (M, N, K) torch._scaled_mm takes with blockwise scales on this GPU (developer tool).

cuBLASLt refuses some small blockwise problems with CUBLAS_STATUS_NOT_SUPPORTED; this prints, per shape,
whether torch._scaled_mm (on our layouts, past the backend's rules) ran and its calc_diff against the exact reference, so the backend's
rules (deepergemm/cublas.py) follow what the library does rather than a guess.
"""
from __future__ import annotations

import itertools
import sys

import torch

import deepergemm as dg
from deepergemm import cublas
from deepergemm import reference as ref


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a GPU", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for m, n, k in itertools.product((4, 64), (128, 256, 384, 1024), range(128, 1152, 128)):
        a, a_s = dg.quantize_act(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
        b, b_s = dg.quantize_weight(torch.randn(n, k, device="cuda", dtype=torch.bfloat16))
        try:
            out = cublas.scaled_mm_blockwise(a, a_s, b, b_s, torch.bfloat16, None)  # cuBLAS itself, past our rules
            torch.cuda.synchronize()
            want = ref.exact_fp32_matmul(ref.dequantize_act(a, a_s), ref.dequantize_weight(b, b_s))
            diff = ref.calc_diff(out, want)
            result = f"{'ok   ' if diff <= ref.exactness_bound(want, out.dtype) else 'WRONG'} calc_diff {diff:.2e}"
        except RuntimeError as e:
            result = "refused: " + str(e).split(" when calling")[0][:80]
        print(f"{m}x{n}x{k}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
