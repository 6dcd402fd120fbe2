// Host side of the L2-side probe (deepergemm/l2_sides.py builds it apart from the GEMM; the kernel is in
// l2_probe.cuh). Plain host code (no <regex>: it was seen to crash under torch 2.11's runtime).
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <cstdint>

#include "l2_probe.cuh"


// cycles (ctas, chunks) uint32 as int32, smid (ctas,) int32: filled for `ctas` CTAs on the caller's stream.
void l2_probe(const at::Tensor& buf, const at::Tensor& offsets, int64_t reps, at::Tensor& cycles, at::Tensor& smid,
              int64_t smem_bytes, int64_t stream) {
  TORCH_CHECK(buf.is_cuda() && buf.scalar_type() == at::kInt && offsets.scalar_type() == at::kLong &&
                  cycles.scalar_type() == at::kInt && smid.scalar_type() == at::kInt && cycles.dim() == 2 &&
                  cycles.size(0) == smid.numel() && cycles.size(1) == offsets.numel(),
              "deepergemm l2_probe: bad arguments");
  cudaError_t err = cudaFuncSetAttribute(dg::l2_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
  TORCH_CHECK(err == cudaSuccess, "deepergemm l2_probe: ", cudaGetErrorString(err));
  dg::l2_probe_kernel<<<static_cast<unsigned>(smid.numel()), 32, static_cast<size_t>(smem_bytes),
                    reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<const uint32_t*>(buf.data_ptr<int>()), offsets.data_ptr<int64_t>(),
      static_cast<int>(offsets.numel()), static_cast<int>(reps), reinterpret_cast<uint32_t*>(cycles.data_ptr<int>()),
      smid.data_ptr<int>());
  err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "deepergemm l2_probe: launch failed: ", cudaGetErrorString(err));
}
