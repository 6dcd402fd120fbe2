"""One small GEMM per tested variant, for compute-sanitizer (developer tool):

    compute-sanitizer --tool memcheck python bench/sanitize_case.py [KEY,KEY,...]

K gives every variant more steps than stages, so each ring of stages wraps at least once (the reuse of a
stage, its StepMeta slot included, is what racecheck must see ordered by the empty barrier). Variants that
can run the stream-K tail run a second shape with it: about 1.5 waves of units, K = 3 blocks.
"""
import sys

import torch

# bench/gemm_case.py puts this checkout on sys.path (the sanitizer's python may not see an editable install)
from gemm_case import make_case
from deepergemm import configs, extension  # noqa: E402

keys = sys.argv[1].split(",") if len(sys.argv) > 1 else None
variants = [configs.parse_key(key) for key in keys] if keys else configs.TESTED_VARIANTS
sms = torch.cuda.get_device_properties(0).multi_processor_count
for variant in variants:
    module = extension.load(variant)
    case = make_case(f"200x264x{128 * (variant.stages + 3)}")  # M and N tails, the ring wraps
    case.launch(module)
    if variant.spans_three_scale_blocks:  # tiles starting 96 or 112 columns into a scale block (N-tiles 2, 5)
        make_case(f"200x2056x{128 * (variant.stages + 3)}").launch(module)
    if configs.stream_k_for(variant):
        m_units = -(-1000 // (variant.block_m * variant.cluster_m))
        n_units = sms // variant.cluster * 3 // (2 * m_units) + 1
        make_case(f"1000x{n_units * variant.block_n * variant.cluster_n - 8}x384").launch(module, stream_k=True)
    torch.cuda.synchronize()
    print(variant.key, "ok", flush=True)
