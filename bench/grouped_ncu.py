"""Developer tool (issue 25): one launch of the dense kernel and one of the grouped contiguous kernel (a single group)
on the same rows, weight and tile, for `ncu -k regex:fp8_gemm -c 2` to compare the two kernels' profiles.

    ncu --set full -k regex:fp8_gemm -c 2 python bench/grouped_ncu.py [--shape 8192x4096x7168]
"""
import argparse
import dataclasses

import torch

import deepergemm as dg
from deepergemm import configs, extension, kernels, layouts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", default="8192x4096x7168")
    args = p.parse_args()
    m, n, k = (int(x) for x in args.shape.split("x"))
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    gv = configs.select_grouped(configs.GROUP_CONTIGUOUS, m, 1, n, k, sms).variant
    dv = dataclasses.replace(gv, grouping=configs.GROUP_NONE)
    b, b_s = dg.quantize_weight(torch.randn(n, k, device=dev, dtype=torch.bfloat16))
    a, a_s = dg.quantize_act(torch.randn(m, k, device=dev, dtype=torch.bfloat16))
    scales = layouts.to_act_scale_layout(a_s)
    out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
    group_n = min(configs.DEFAULT_GROUP_N, configs.ceil_div(configs.ceil_div(n, gv.block_n), gv.cluster_n))
    dense, grouped = extension.load(dv), extension.load(gv)
    rows = torch.tensor([m], dtype=torch.int32, device=dev)
    print(f"dense {dv.key}, grouped {gv.key}, {args.shape}")
    kernels.launch(dense, a, scales, b, b_s, out, None, group_n)
    kernels.launch(grouped, a, scales, b, b_s, out, None, group_n, group_rows=rows, group_stride=dg.GROUPED_M_ALIGNMENT)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
