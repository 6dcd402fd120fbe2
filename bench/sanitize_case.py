"""One small GEMM per tested variant, for compute-sanitizer (developer tool):

    compute-sanitizer --tool memcheck python bench/sanitize_case.py [KEY,KEY,...]

K gives every variant more steps than stages, so each ring of stages wraps at least once (the reuse of a
stage, its StepMeta slot included, is what racecheck must see ordered by the empty barrier).
"""
import pathlib
import sys

import torch

# the sanitizer's child python may not see an editable install: import from this checkout
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from deepergemm import configs, extension, layouts
from deepergemm import reference as ref

keys = sys.argv[1].split(",") if len(sys.argv) > 1 else None
variants = [configs.parse_key(key) for key in keys] if keys else configs.TESTED_VARIANTS
for variant in variants:
    m, n, k = 200, 264, 128 * (variant.stages + 3)  # M and N tails, the ring wraps
    a, a_s = ref.quantize_act(torch.randn(m, k, device="cuda"))
    b, b_s = ref.quantize_weight(torch.randn(n, k, device="cuda"))
    out = torch.empty((m, n), device="cuda", dtype=torch.bfloat16)
    extension.load(variant).fp8_gemm(a, layouts.to_act_scale_layout(a_s), b, b_s, out, out, 0, 132, 16,
                                     torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    print(variant.key, "ok", flush=True)
