// One kernel variant as a unit of its own: the GEMM kernel instantiated for one configuration, compiled by nvcc to a
// cubin (deepergemm/extension.py: `nvcc -cubin`, no host code, no torch headers) and loaded by the host binding
// (binding.cpp) with the driver API. The DG_* macros name KernelConfig's parameters (configs.KERNEL_CONFIG_MACROS,
// configs.Variant.compile_defines); the DG_EXPECT_* macros are what configs.py computed for it, checked here so that Python's launch geometry
// and the kernel's can never disagree.
#include "fp8_gemm.cuh"

#if !defined(DG_BLOCK_M) || !defined(DG_FP8_OUT) || !defined(DG_EXPECT_SMEM_BYTES)
#error "compile with configs.Variant.compile_defines(): -DDG_BLOCK_M=.. -DDG_BLOCK_N=.. ... (deepergemm/extension.py)"
#endif

namespace {
using Config = dg::KernelConfig<DG_BLOCK_M, DG_BLOCK_N, DG_STAGES, DG_ACC, DG_CLUSTER_M, DG_CLUSTER_N, DG_SPLIT_K,
                                DG_MATH_WGS, DG_GROUPING, DG_SWAPPED, DG_FP8_OUT>;
static_assert(dg::SmemLayout<Config>::kDynamicBytes == DG_EXPECT_SMEM_BYTES,
              "configs.Variant.smem_bytes disagrees with dg::SmemLayout");
static_assert(Config::kThreads == DG_EXPECT_THREADS, "configs.Variant.threads disagrees with dg::KernelConfig");
static_assert(Config::kEpiN == DG_EXPECT_EPI_N, "configs.Variant.epi_n disagrees with dg::KernelConfig::kEpiN");
}  // namespace

// The unit's only kernel: the binding finds it by enumerating the library's kernels.
template __global__ void dg::fp8_gemm_kernel<Config>(const __grid_constant__ CUtensorMap,
                                                     const __grid_constant__ CUtensorMap,
                                                     const __grid_constant__ CUtensorMap,
                                                     const __grid_constant__ CUtensorMap, const dg::GemmParams);
