import sys, torch
sys.path.insert(0, "tests")
from test_gemm_kernel import make_inputs, exact
import deepergemm as dg
from deepergemm import reference as ref
for seed in range(4):
    for (m,n,k) in [(65,136,384),(1,136,384),(65,256,384),(65,2056,384)]:
        torch.manual_seed(seed)
        a,a_s,b,b_s = make_inputs(m,n,k)
        e = exact(a,a_s,b,b_s)
        ours = dg.fp8_gemm(a,a_s,b,b_s,backend="ptx")
        cub = dg.fp8_gemm(a,a_s,b[:128],b_s[:1].contiguous(),backend="cublas")
        ours_self = dg.fp8_gemm(a,a_s,b[:128],b_s[:1].contiguous(),backend="ptx")
        print(seed, m,n,k, "ours all %.2e first128 %.2e rest %.2e | cublas first128 %.2e | ours on b[:128] %.2e equal %s" % (
            ref.calc_diff(ours,e), ref.calc_diff(ours[:,:128],e[:,:128]), ref.calc_diff(ours[:,128:],e[:,128:]),
            ref.calc_diff(cub,e[:,:128]), ref.calc_diff(ours_self,e[:,:128]), torch.equal(ours_self, ours[:,:128])), flush=True)
