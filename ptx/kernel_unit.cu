// One kernel variant as a unit of its own: the GEMM kernel instantiated for the variant's template arguments,
// compiled by nvcc to a cubin (deepergemm/extension.py: `nvcc -cubin`, no host code, no torch headers) and
// loaded by the host binding (binding.cpp) with the driver API. The variant comes in as -D macros from
// configs.Variant.compile_defines(); the DG_EXPECT_* macros are what configs.py computed for it, checked here so
// that Python's launch geometry and the kernel's can never disagree.
#include "fp8_gemm.cuh"

#if !defined(DG_BM) || !defined(DG_EXPECT_SMEM_BYTES)
#error "compile with configs.Variant.compile_defines(): -DDG_BM=.. -DDG_BN=.. ... -DDG_EXPECT_SMEM_BYTES=.."
#endif

namespace {
using Traits = dg::GemmTraits<DG_BM, DG_BN, DG_STAGES, DG_SPLIT_K, DG_MATH_WGS, DG_GROUPED>;
static_assert(Traits::Layout::kDynamicBytes == DG_EXPECT_SMEM_BYTES,
              "configs.Variant.smem_bytes disagrees with dg::SmemLayout");
static_assert(Traits::kThreads == DG_EXPECT_THREADS, "configs.Variant.threads disagrees with dg::GemmTraits");
static_assert(Traits::kEpiN == DG_EXPECT_EPI_N, "configs.Variant.epi_n disagrees with dg::GemmTraits::kEpiN");
static_assert(dg::kProducers == DG_EXPECT_PRODUCERS, "the binding is told a different producer count");
}  // namespace

// The unit's only kernel: the binding finds it by enumerating the library's kernels.
template __global__ void dg::fp8_gemm_kernel<DG_BM, DG_BN, DG_STAGES, DG_ACC, DG_CLUSTER_M, DG_CLUSTER_N, DG_SPLIT_K,
                                             DG_MATH_WGS, DG_GROUPED, DG_SWAP>(
    const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap, const __grid_constant__ CUtensorMap,
    const __grid_constant__ CUtensorMap, const dg::GemmParams);
