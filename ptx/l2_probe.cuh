// L2-side probe kernel (deepergemm/l2_sides.py and l2_placement.py; launched by ptx/l2_probe.cu): how long an
// L2 hit takes from an SM to a probed chunk of a buffer. The H100's L2 is two partitions; a hit in the far one
// crosses between them and takes longer, so the latencies tell which partition (side) each SM sits next to and
// where each chunk of memory lives.
#pragma once

#include <cstdint>

#include "ptx.cuh"

namespace dg {

// One CTA per SM (a dynamic shared-memory request of more than half an SM keeps two apart), thread 0 timing:
// per chunk, one load brings the line into L2, then `reps` loads that each depend on the last give the cycles
// per L2 hit. Two modes:
//   rotate < 0  (detection): every CTA probes every chunk, cycles[block * chunks + c], each SM's view of all.
//   rotate >= 0 (placement): chunk c is probed only by the CTA b with (c + rotate) % gridDim.x == b and its
//               time goes to cycles[c] (1-D), so every chunk is timed once per launch; a different `rotate`
//               hands each chunk to another SM.
// `zero` is always 0: the chain adds `v & zero`, so it stays at the chunk's address whatever the buffer holds
// (placement probes memory full of weights), and being a kernel argument the compiler cannot fold it away, so
// each load still waits for the last.

// The SM clock, read once `v` has arrived: the read is predicated on `v & zero == 0` (true at run time, unknown to
// the compiler), so it cannot issue before the load that produced v, and v is used: without a use, ptxas deletes
// the whole chain of loads (their results fed only an inline-asm operand that the PTX never reads), and the probe
// timed nothing (every latency 0).
__device__ __forceinline__ uint64_t clock_after(uint32_t v, uint32_t zero) {
  uint64_t t;
  asm volatile(
      "{\n .reg .pred p;\n .reg .b32 m;\n and.b32 m, %1, %2;\n setp.eq.u32 p, m, 0;\n mov.u64 %0, 0;\n"
      " @p mov.u64 %0, %%clock64;\n}"
      : "=l"(t)
      : "r"(v), "r"(zero)
      : "memory");
  return t;
}

__global__ void l2_probe_kernel(const uint32_t* buf, const int64_t* offsets, int chunks, int reps, int rotate,
                                uint32_t zero, uint32_t* cycles, int* smid) {
  if (threadIdx.x != 0) return;
  uint32_t sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  smid[blockIdx.x] = static_cast<int>(sm);
  const int ctas = static_cast<int>(gridDim.x);
  const int block = static_cast<int>(blockIdx.x);
  const bool strided = rotate >= 0;
  const int first = strided ? (block - rotate % ctas + ctas) % ctas : 0;
  const int step = strided ? ctas : 1;
  for (int c = first; c < chunks; c += step) {
    const uint32_t* p = buf + offsets[c];
    uint32_t v = ld_global_cg_u32(p);  // (.cg: cached in L2 only, the L1 never answers)
    const uint64_t t0 = clock_after(v, zero);  // after the first load has landed
    for (int r = 0; r < reps; ++r) v = ld_global_cg_u32(p + (v & zero));
    const uint64_t t1 = clock_after(v, zero);  // after the last
    const int64_t slot = strided ? c : static_cast<int64_t>(block) * chunks + c;
    cycles[slot] = static_cast<uint32_t>((t1 - t0) / reps);
  }
}

}  // namespace dg
