"""One small GEMM per selectable variant, for compute-sanitizer (developer tool):

    compute-sanitizer --tool memcheck python bench/sanitize_case.py
"""
import pathlib
import sys

import torch

# the sanitizer's child python may not see an editable install: import from this checkout
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from deepergemm import configs, extension, layouts
from deepergemm import reference as ref

for variant in configs.TESTED_VARIANTS:
    m, n, k = 200, 264, 640  # M and N tails, several k-blocks, ring wrap for 5-stage variants
    a, a_s = ref.quantize_act(torch.randn(m, k, device="cuda"))
    b, b_s = ref.quantize_weight(torch.randn(n, k, device="cuda"))
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    extension.load(variant).fp8_gemm(a, layouts.to_act_scale_layout(a_s), b, b_s, out, out, 0, 132, 16,
                                     torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    print(variant.key, "ok", flush=True)
