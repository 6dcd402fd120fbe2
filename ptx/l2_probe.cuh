// L2-side probe kernel (deepergemm/l2_sides.py; launched by ptx/l2_probe.cu): how long an L2 hit takes from
// each SM to each probed chunk of a buffer. The H100's L2 is two partitions; a hit in the far one crosses
// between them and takes longer, so the latencies tell which partition (side) each SM sits next to and where
// each chunk of memory lives.
#pragma once

#include <cstdint>

#include "ptx.cuh"

namespace dg {

// One CTA per SM (a dynamic shared-memory request of more than half an SM keeps two apart), thread 0 timing:
// per chunk, one load brings the line into L2, then `reps` loads that each depend on the last (the buffer
// holds zeros, so the address stays the chunk's) give the cycles per L2 hit.
__global__ void l2_probe_kernel(const uint32_t* buf, const int64_t* offsets, int chunks, int reps, uint32_t* cycles,
                                int* smid) {
  if (threadIdx.x != 0) return;
  uint32_t sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  smid[blockIdx.x] = static_cast<int>(sm);
  for (int c = 0; c < chunks; ++c) {
    const uint32_t* p = buf + offsets[c];
    uint32_t v = ld_global_cg_u32(p);  // (.cg: cached in L2 only, the L1 never answers)
    uint64_t t0, t1;
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(t0) : "r"(v));  // after the first load has landed
    for (int r = 0; r < reps; ++r) v = ld_global_cg_u32(p + v);
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(t1) : "r"(v));  // after the last
    cycles[static_cast<int64_t>(blockIdx.x) * chunks + c] = static_cast<uint32_t>((t1 - t0) / reps);
  }
}

}  // namespace dg
