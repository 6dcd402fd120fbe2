"""One small GEMM per tested variant, for compute-sanitizer (developer tool):

    compute-sanitizer --tool memcheck python bench/sanitize_case.py [KEY,KEY,...]

K gives every variant more steps than stages, so each ring of stages wraps at least once (the reuse of a
stage, its StepMeta slot included, is what racecheck must see ordered by the empty barrier).
"""
import sys

import torch

# bench/gemm_case.py puts this checkout on sys.path (the sanitizer's python may not see an editable install)
from gemm_case import make_case
from deepergemm import configs, extension  # noqa: E402

keys = sys.argv[1].split(",") if len(sys.argv) > 1 else None
variants = [configs.parse_key(key) for key in keys] if keys else configs.TESTED_VARIANTS
for variant in variants:
    case = make_case(f"200x264x{128 * (variant.stages + 3)}")  # M and N tails, the ring wraps
    case.launch(extension.load(variant))
    torch.cuda.synchronize()
    print(variant.key, "ok", flush=True)
