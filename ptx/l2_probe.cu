// Host side of the L2-side probe (deepergemm/l2_sides.py builds it apart from the GEMM; the kernel and its two
// modes are in l2_probe.cuh). Plain host code (no <regex>: it was seen to crash under torch 2.11's runtime).
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <cstdint>

#include "l2_probe.cuh"


// One CTA per entry of smid (ctas,) int32, on the caller's stream. rotate < 0: cycles (ctas, chunks), every CTA
// probes every chunk; rotate >= 0: cycles (chunks,), each chunk probed by one CTA (see the kernel). Cycles are
// uint32 stored as int32.
void l2_probe(const at::Tensor& buf, const at::Tensor& offsets, int64_t reps, at::Tensor& cycles, at::Tensor& smid,
              int64_t smem_bytes, int64_t rotate, int64_t stream) {
  TORCH_CHECK(buf.is_cuda() && offsets.is_cuda() && cycles.is_cuda() && smid.is_cuda(),
              "deepergemm l2_probe: every tensor must be on the GPU");
  TORCH_CHECK(buf.scalar_type() == at::kInt && offsets.scalar_type() == at::kLong && cycles.scalar_type() == at::kInt &&
                  smid.scalar_type() == at::kInt,
              "deepergemm l2_probe: bad dtypes (buf, cycles, smid int32; offsets int64)");
  TORCH_CHECK(offsets.is_contiguous() && cycles.is_contiguous() && smid.is_contiguous() && smid.numel() > 0,
              "deepergemm l2_probe: offsets, cycles and smid must be contiguous, smid not empty");
  if (rotate < 0) {
    TORCH_CHECK(cycles.dim() == 2 && cycles.size(0) == smid.numel() && cycles.size(1) == offsets.numel(),
                "deepergemm l2_probe: cycles must be (ctas, chunks) when rotate < 0");
  } else {
    TORCH_CHECK(cycles.dim() == 1 && cycles.size(0) == offsets.numel(),
                "deepergemm l2_probe: cycles must be (chunks,) when rotate >= 0");
  }
  TORCH_CHECK(reps > 0 && rotate < (int64_t{1} << 30), "deepergemm l2_probe: reps must be > 0, rotate < 2^30");
  cudaError_t err = cudaFuncSetAttribute(dg::l2_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
  TORCH_CHECK(err == cudaSuccess, "deepergemm l2_probe: ", cudaGetErrorString(err));
  dg::l2_probe_kernel<<<static_cast<unsigned>(smid.numel()), 32, static_cast<size_t>(smem_bytes),
                        reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const uint32_t*>(buf.data_ptr<int>()), offsets.data_ptr<int64_t>(),
      static_cast<int>(offsets.numel()), static_cast<int>(reps), static_cast<int>(rotate), 0u,
      reinterpret_cast<uint32_t*>(cycles.data_ptr<int>()), smid.data_ptr<int>());
  err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "deepergemm l2_probe: launch failed: ", cudaGetErrorString(err));
}
