// L2-side placement and scheduling, runtime modes of the plain variants (deepergemm/l2_placement.py places B;
// configs.side0_n_tiles decides the schedule). Off unless the launch passes a slot table (GemmParams::b_slots) or
// claim counters (GemmParams::side_claims): the kernel then takes the branches below instead of the plain B
// producer and the plain cluster numbering.
#pragma once

#include <cstdint>

#include "config.cuh"
#include "params.h"
#include "producer.cuh"
#include "ptx.cuh"
#include "scheduler.cuh"
#include "smem.cuh"

namespace dg {

// The B producer with placed B: a whole warp (warp 2). A step's B slice is `boxes` loads of b_box_rows rows from
// pool slots found in the slot table; lane l looks up box l % boxes of step base + l / boxes (32 / boxes steps per
// batch: one table latency per batch, the next batch's looked up before this one is issued) and issues that load
// itself when the step comes. Lane 0 arms the stage's barrier first.
template <class C>
__device__ __forceinline__ void produce_placed_b(const SchedulerOf<C>& sched, const GemmParams& p, uint8_t* smem,
                                                 uint64_t* full, uint64_t* empty, const CUtensorMap* map_b, int lane) {
  using L = SmemLayout<C>;
  constexpr int kBSlice = C::kBlockN / C::kClusterM;  // this CTA's rows of the B tile (multicast to the pair)
  const int boxes = kBSlice / p.b_box_rows;  // <= 32: boxes are >= 8 rows
  const uint32_t per_batch = static_cast<uint32_t>(32 / boxes);
  const int my_step = lane / boxes, my_box = lane - my_step * boxes;
  const uint32_t steps = sched.num_steps();
  const uint16_t mask = same_n_block_mask(sched);
  const bool hinted = p.l2_b != kL2Normal;
  const uint64_t policy = l2_policy(p.l2_b);
  const int slab_mask = (1 << p.b_slab_shift) - 1;
  // the pool row of this lane's box in step base + my_step (-1: none)
  auto locate = [&](uint32_t base) {
    const uint32_t s = base + static_cast<uint32_t>(my_step);
    if (static_cast<uint32_t>(my_step) >= per_batch || s >= steps) return -1;
    const Step st = sched.step(s);
    const int row = st.n_block * C::kBlockN + sched.rank_m * kBSlice + my_box * p.b_box_rows;
    const int slot = ld_global_nc_s32(p.b_slots + st.k_block * p.b_slot_stride + (row >> p.b_slab_shift));
    return (slot << p.b_slab_shift) + (row & slab_mask);
  };
  uint8_t* dst = smem + L::kB + (sched.rank_m * kBSlice + my_box * p.b_box_rows) * kSwizzleBytes;
  RingPos<C::kStages> pos;
  int y = locate(0);
  for (uint32_t base = 0; base < steps; base += per_batch) {
    const int y_next = locate(base + per_batch);
    const uint32_t count = min(per_batch, steps - base);
    for (uint32_t j = 0; j < count; ++j, pos.advance()) {
      mbar_wait(&empty[pos.stage], pos.phase ^ 1);
      if (lane == 0) mbar_arrive_expect_tx(&full[pos.stage], L::kBBytes);
      __syncwarp();
      if (static_cast<uint32_t>(my_step) == j) {
        load_operand<(C::kClusterM > 1)>(dst + pos.stage * L::kBBytes, map_b, &full[pos.stage], 0, y, mask, hinted,
                                         policy);
      }
    }
    y = y_next;
  }
}

// L2-side-aware scheduling (scheduler.cuh's SideProblem). Thread 32 (warp 1) of the cluster's first CTA claims a
// slot before the cluster barrier: one of its own SM's side while that side has any left, else one of the other
// side (the counts of slots add up to the grid's clusters, so the second claim always succeeds), kept in its own
// shared memory; the barrier (a release arrive on this path) publishes it and every thread of the cluster reads it
// after (side_slot_of). Nothing is written into another CTA before the barrier: only then are they known to run.
__device__ __forceinline__ void claim_side_slot(const GemmParams& p, int clusters, int* slot_smem) {
  int side = p.sm_side[sm_id() & (kSmSideEntries - 1)] & 1;
  int rank = atomic_add_relaxed_gpu(&p.side_claims[side], 1);
  if (rank >= (side == 0 ? p.side0_clusters : clusters - p.side0_clusters)) {
    side ^= 1;
    rank = atomic_add_relaxed_gpu(&p.side_claims[side], 1);
  }
  slot_smem[0] = side;
  slot_smem[1] = rank;
}
// The other CTAs of a cluster copy the leader's slot into their own shared memory (one thread, then a CTA barrier),
// so every thread reads it locally (read straight from the leader into registers, the schedulers' values stayed
// live through the producer code: ptxas spilled in the split-K variants).
template <int CLUSTER>
__device__ __forceinline__ SideSlot side_slot_of(int* slot_smem) {
  if constexpr (CLUSTER > 1) {
    if (threadIdx.x == 0 && cluster_cta_rank() != 0) {
      ld_shared_cluster_v2_s32(map_shared_to_cta(smem_addr(slot_smem), 0), slot_smem[0], slot_smem[1]);
    }
    __syncthreads();
  }
  return SideSlot{slot_smem[0], slot_smem[1]};
}
// ...and after the barrier, off the claiming thread's path: count the cluster done claiming (release: its claim
// came first, through the barrier); the last one puts the counters back to zero for the next launch on the stream.
__device__ __forceinline__ void count_side_claim(const GemmParams& p, int clusters) {
  if (atomic_add_acq_rel_gpu(&p.side_claims[2], 1) == clusters - 1) {
    p.side_claims[0] = 0;
    p.side_claims[1] = 0;
    p.side_claims[2] = 0;
  }
}

}  // namespace dg
