// The FP8 block-scaled GEMM: out (M, N) = (A * sa) @ (B * sb)^T, A (M, K) and B (N, K) fp8 e4m3 K-major, sa per
// 1x128 (M-major fp32), sb per 128x128 block, fp32 accumulation, bf16 or fp32 out (+ bias), or
// (fp8-output units) the bf16-rounded output quantized per 1x128 group with its scales.
//
// One persistent CTA per SM, in clusters (KernelConfig::kCluster CTAs). This file only sets the CTA up and hands
// the threads their roles:
//   warpgroup 0       producer.cuh: TMA loads into the ring of stages, and the steps' metadata
//                     (sides.cuh: the B loads of an L2-placed B)
//   warpgroups 1, 2   mainloop.cuh: wgmma, promotion.cuh, epilogue.cuh, reduction.cuh
// Which tiles a CTA runs, in which order: scheduler.cuh (grouped.cuh for grouped GEMMs). The one configuration
// type: config.cuh; the shared-memory layout: smem.cuh; what host and device share: params.h.
#pragma once

#include <cstdint>

#include "config.cuh"
#include "epilogue.cuh"
#include "grouped.cuh"
#include "mainloop.cuh"
#include "params.h"
#include "producer.cuh"
#include "ptx.cuh"
#include "reduction.cuh"
#include "scheduler.cuh"
#include "sides.cuh"
#include "smem.cuh"
#include "trace.cuh"

namespace dg {

constexpr int kProducerRegs = 40;  // setmaxnreg: the producer warpgroup gives its registers up...
constexpr int kMathRegs = 232;     // ...to the math warpgroups

// map_out: the bf16 output's TMA map (unused with fp32 or fp8 output and by swapped tiles, which store from registers).
template <class C>
__global__ void __launch_bounds__(C::kThreads, 1)
    fp8_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                    const __grid_constant__ CUtensorMap map_sa, const __grid_constant__ CUtensorMap map_out,
                    const GemmParams p) {
  using L = SmemLayout<C>;
  extern __shared__ uint8_t smem_raw[];
  // 128B-swizzled tiles need 1024-byte alignment; the dynamic allocation only promises 16.
  uint8_t* smem = smem_raw + ((kSwizzleAtomBytes - (smem_addr(smem_raw) % kSwizzleAtomBytes)) % kSwizzleAtomBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBarriers);
  uint64_t* empty = full + C::kStages;

  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    life_stamp(p.trace_log, kLifeEntryNs, true);
    life_stamp(p.trace_log, kLifeEntry);
    prefetch_tensor_map(&map_a);
    prefetch_tensor_map(&map_b);
    prefetch_tensor_map(&map_sa);
    if (!C::kSwapped && !C::kFp8Out && !p.out_fp32) prefetch_tensor_map(&map_out);
#pragma unroll
    for (int i = 0; i < C::kStages; ++i) {
      mbar_init(&full[i], kFullArrivals);
      mbar_init(&empty[i], C::kMathWarps * C::kMulticast);  // one arrive per math warp of every CTA sharing the stage
    }
    if constexpr (C::kSplitK > 1) {
      uint64_t* red = reinterpret_cast<uint64_t*>(smem + L::kRedBarriers);
      mbar_init(&red[0], (C::kSplitK - 1) * C::kMathWGs * 128);  // every math thread of the other ranks, per tile
      mbar_init(&red[1], C::kMathWGs * 128);                      // every math thread of rank 0, per tile
    }
    fence_barrier_init();
  }
  // Programmatic dependent launch (a launch attribute the host sets on request; without it the wait returns at
  // once): everything above overlaps the previous kernel's tail; nothing below touches global memory before that
  // kernel is done (it may write our inputs, or still read memory our output reuses). With p.pdl the next kernel,
  // if launched with PDL too, may be scheduled from here on (it waits for this one in its own griddepcontrol.wait);
  // without it, not before this kernel ends, whoever launches it.
  griddepcontrol_wait();
  if (p.pdl) griddepcontrol_launch_dependents();
  constexpr bool kSidesBuilt = !C::kGrouped;  // (placed B and L2 sides: plain variants; the host checks)
  int* side_slot = reinterpret_cast<int*>(smem + L::kSideSlot);
  const int clusters = static_cast<int>(gridDim.x) / C::kCluster;
  const bool by_side = kSidesBuilt && p.side_claims != nullptr;
  const bool side_leader = C::kCluster == 1 || cluster_cta_rank() == 0;
  // (warp 1 claims: warp 0 may still be initialising the barriers, which overlaps the atomics)
  if (by_side && threadIdx.x == 32 && side_leader) claim_side_slot(p, clusters, side_slot);
  int* group_table = reinterpret_cast<int*>(smem + L::kGroupTable);
  if constexpr (C::kGrouped) {
    if (threadIdx.x / 32 == 1) build_group_table<C>(p, group_table, threadIdx.x % 32);
    if constexpr (C::kCluster > 1) __syncthreads();  // the cluster barrier below arrives relaxed: no release
  }
  // The partner's barriers must be initialised before its first multicast or remote arrive.
  if constexpr (C::kCluster == 1) {
    __syncthreads();
  } else if (by_side) {
    cluster_sync();  // (releases the claimed slot too)
  } else {
    cluster_sync_after_barrier_init();
  }
  if (threadIdx.x == 0) life_stamp(p.trace_log, kLifeInit);

  const GroupTable groups = group_table_at(group_table, p.groups);
  const int n_tiles = (kernel_cols<C>(p) + C::kBlockN - 1) / C::kBlockN;
  SideProblem sp{0, n_tiles, static_cast<int>(blockIdx.x) / C::kCluster, clusters, p.sk_units, 0};
  if (by_side) {
    sp = side_problem(side_slot_of<C::kCluster>(side_slot), n_tiles, p.side0_n_tiles, clusters, p.side0_clusters,
                      p.sk_units, p.side1_sk_units);
    if (threadIdx.x == 97 && side_leader) count_side_claim(p, clusters);  // (warp 3, lane 1: otherwise idle)
  }
  const int m_tiles = C::kGrouped ? groups.m_tiles() : (kernel_rows<C>(p) + C::kBlockM - 1) / C::kBlockM;
  const SchedulerOf<C> sched(m_tiles, sp.n_tiles, p.k_blocks, p.group_n,
                             C::kCluster == 1 ? 0 : static_cast<int>(cluster_cta_rank()), sp.cluster, sp.clusters,
                             sp.sk_units, sp.n_first, sp.slot_base);
  if (wg == 0) {
    if constexpr (C::kMathWGs > 1) setmaxnreg_dec<kProducerRegs>();  // (256 threads: registers enough for all)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 1) {
      publish_step_meta<C>(sched, p, groups, smem, full, empty, lane);
    } else if (kSidesBuilt && warp == 2 && p.b_slots != nullptr) {  // placed B
      produce_placed_b<C>(sched, p, smem, full, empty, &map_b, lane);
    } else if (lane == 0) {  // producers: warps 0, 2 and 3
      if (warp == 0) produce_operand<C, kLoadA>(sched, p, groups, smem, full, empty, &map_a);
      if (warp == 2) produce_operand<C, kLoadB>(sched, p, groups, smem, full, empty, &map_b);
      if (warp == 3) produce_operand<C, kLoadSA>(sched, p, groups, smem, full, empty, &map_sa);
    }
  } else {
    if constexpr (C::kMathWGs > 1) setmaxnreg_inc<kMathRegs>();
    // The warpgroup index through a shuffle: ptxas then treats it (and the A descriptors built from it) as
    // warp-uniform and keeps them in uniform registers (no R2UR between the wgmmas).
    MathWarpgroup<C> math(p, sched, &map_out, smem, full, empty, reinterpret_cast<uint64_t*>(smem + L::kRedBarriers),
                          __shfl_sync(0xffffffffu, wg - 1, 0));
    math.run();
  }
  // No CTA leaves while its partner may still multicast into it or arrive on its barriers.
  if constexpr (C::kCluster > 1) cluster_sync();
  if (threadIdx.x == 128) {
    life_stamp(p.trace_log, kLifeExit);
    life_stamp(p.trace_log, kLifeExitNs, true);
  }
}

}  // namespace dg
