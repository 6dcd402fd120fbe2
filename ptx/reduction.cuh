// A tile's end when more than one CTA computed it (MathWarpgroup members; mainloop.cuh declares them):
//   split-K clusters (kSplitK > 1): the other ranks' partial sums go to slots in rank 0's shared memory, rank 0 adds
//     them to its own in rank order (a fixed order: deterministic) and stores the tile;
//   the stream-K tail (scheduler.cuh; GemmParams::sk_units): a tile cut between two clusters has its head's partial
//     sums handed on through a workspace slot in global memory, which the tail's owner starts its sums from;
//   the stream-K fill: a tile's pieces run at once in consecutive clusters; the owner adds the others' slots to its
//     sums after its last K block (stream_k_join), in cluster order.
// Each thread moves its own accumulators (coalesced), so element (i, thread) is the same output element in every
// rank or cluster. Register quads move with each pair swapped ({1, 0, 3, 2}): an aligned register quad would
// otherwise tie each total to its partial's register bank, and every promotion FFMA would read two operands from
// one bank.
#pragma once

#include <cstdint>

#include "mainloop.cuh"

namespace dg {

// Stream-K runs in the one-partial-set loops of plain variants, the 256-K recipe's pairs included (their ranges cut
// on pairs: SchedulerOf's KG); the two-set loops never start a tile's sums from a slot.
template <class C>
constexpr bool kStreamKBuilt = C::kSplitK == 1 && (C::kAcc == kAccSingle || C::kAcc == kAccPairs) && !C::kGrouped;

// A tile's sums start at zero, or for a stream-K tail from the previous cluster's head (loaded straight into them:
// the loads' latency hides behind the step's wgmmas until its promotion needs them).
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::start_sums(float (&total)[kRegs], const StepScales& first, int slab) {
  if (kStreamKBuilt<C> && first.first_of_tail) {
    if (slab == 0) stream_k_wait();
    const float* slot = stream_k_slot(sched.cluster - 1) + slab * kRegs * (128 * C::kMathWGs);
#pragma unroll
    for (int i = 0; i < kRegs; i += 4) {
      ld_global_cg_v4_f32(slot + i * (128 * C::kMathWGs), total[i + 1], total[i], total[i + 3], total[i + 2]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
  }
}

// Before a tile's store (sc: its last step): a stream-K head writes its (slab 0) partial sums to the workspace and
// stores nothing: it returns an empty row range (the epilogue runs the same code path either way; a path that
// skipped the epilogue made ptxas spill the totals); a fill's owner adds the other pieces first. Returns where the
// tile's stored rows end. (A fill's owner piece is its cluster's last work: the join is compiled into the last step's
// store alone, kLast, where no next step's wgmmas hold registers.)
template <class C>
template <bool kLast>
__device__ __forceinline__ int MathWarpgroup<C>::stored_row_end(float (&total)[kRegs], const StepScales& sc) {
  if (kStreamKBuilt<C> && sc.fixup - 1 == kFixContribute) {
    stream_k_write(total, 0);
    if constexpr (C::kSlabs == 1) stream_k_publish();
    return sc.row0;
  }
  if (kLast && fill_owner(sc)) stream_k_join(total, 0);
  return row_end_of(sc);
}
// ...and slab 1 of 256-row tiles (after slab 0): the flag covers both.
template <class C>
template <bool kLast>
__device__ __forceinline__ void MathWarpgroup<C>::stream_k_head_slab1(float (&total1)[kRegs], const StepScales& sc) {
  if (kStreamKBuilt<C> && sc.fixup - 1 == kFixContribute) {
    stream_k_write(total1, 1);
    stream_k_publish();
  }
  if (kLast && fill_owner(sc)) stream_k_join(total1, 1);
}

// sc (a tile's last step here) ends a stream-K fill's owner piece.
template <class C>
__device__ __forceinline__ bool MathWarpgroup<C>::fill_owner(const StepScales& sc) const {
  return kStreamKBuilt<C> && sc.fixup - 1 == kFixOwn && sched.sk_fill;
}

// Stream-K fill, the owner after its last K block: add slab `slab` of the pieces of clusters join_first() .. this
// one - 1, in that order (slab 0 first waits for all their flags, which cover both slabs, and lowers them for the
// next launch).
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::stream_k_join(float (&total)[kRegs], int slab) {
  const int first = sched.join_first();
  if (slab == 0) {
    if (tid == 0) {
      if (wg == 0) life_stamp(p.trace_log, kLifeTailWait);
      for (int c = first; c < sched.cluster; ++c) {
        int* flag = stream_k_flag(c);
        while (flag_acquire_gpu(flag) == 0) {
        }
        flag_store_relaxed_gpu(flag, 0);
      }
      if (wg == 0) life_stamp(p.trace_log, kLifeTailGo);
    }
    named_barrier_sync(kStreamKBarrier + wg, 128);
  }
  for (int c = first; c < sched.cluster; ++c) {
    const float* slot = stream_k_slot(c) + slab * kRegs * (128 * C::kMathWGs);
#pragma unroll
    for (int i = 0; i < kRegs; i += 4) {
      float v0, v1, v2, v3;
      ld_global_cg_v4_f32(slot + i * (128 * C::kMathWGs), v0, v1, v2, v3);
      total[i + 1] += v0;
      total[i] += v1;
      total[i + 3] += v2;
      total[i + 2] += v3;
    }
  }
}

// A cluster's slot holds the partial sums of the tile head it did, one BM x BN fp32 block per CTA: thread t's
// elements 4q..4q+3 are contiguous, at (slab * kRegs + 4q) * threads + 4t.
template <class C>
__device__ __forceinline__ int MathWarpgroup<C>::stream_k_slot_index(int cluster) const {  // this CTA's slot (and flags)
  return (sched.slot_base + cluster) * C::kMulticast + sched.rank_m + C::kClusterM * sched.rank_n;
}
template <class C>
__device__ __forceinline__ float* MathWarpgroup<C>::stream_k_slot(int cluster) const {
  const int slot = stream_k_slot_index(cluster);
  return opaque_ptr(p.sk_partials + static_cast<int64_t>(slot) * (C::kBlockM * C::kBlockN) + (wg * 128 + tid) * 4);
}
template <class C>
__device__ __forceinline__ int* MathWarpgroup<C>::stream_k_flag(int cluster) const {
  return p.sk_flags + stream_k_slot_index(cluster) * C::kMathWGs + wg;
}
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::stream_k_write(const float (&total)[kRegs], int slab) {
  float* slot = stream_k_slot(sched.cluster) + slab * kRegs * (128 * C::kMathWGs);
#pragma unroll
  for (int i = 0; i < kRegs; i += 4) {
    st_global_v4_f32(slot + i * (128 * C::kMathWGs), total[i + 1], total[i], total[i + 3], total[i + 2]);
  }
}
// Every thread of this warpgroup has written its part: raise the warpgroup's flag.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::stream_k_publish() {
  named_barrier_sync(kStreamKBarrier + wg, 128);
  if (tid == 0) flag_release_gpu(stream_k_flag(sched.cluster), 1);
  if (wg == 0 && tid == 0) life_stamp(p.trace_log, kLifeHeadPublished);
}
// Wait for the previous cluster's warpgroup to have published its head (its first work), and lower its flag for
// the next launch.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::stream_k_wait() {
  if (tid == 0) {
    if (wg == 0) life_stamp(p.trace_log, kLifeTailWait);
    int* flag = stream_k_flag(sched.cluster - 1);
    while (flag_acquire_gpu(flag) == 0) {
    }
    flag_store_relaxed_gpu(flag, 0);
    if (wg == 0) life_stamp(p.trace_log, kLifeTailGo);
  }
  named_barrier_sync(kStreamKBarrier + wg, 128);
}

// A finished tile: stored, or with split-K joined first (st.shared::cluster into rank 0's slots; rank 0 adds them in
// rank order and stores the tile). Once per tile.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::finish_tile(float (&total)[kRegs], int row0, int n_block, int row_end) {
  if constexpr (C::kSplitK > 1) {
    constexpr uint32_t kMathThreads = 128 * C::kMathWGs;
    const uint32_t thread = wg * 128 + tid;  // of the kMathThreads math threads
    const uint32_t slots = smem_addr(smem + L::kRed);
    if (sched.rank_k != 0) {
      mbar_wait<true>(&red[1], red_phase ^ 1);  // rank 0 has read this slot's previous tile
      const uint32_t mine = map_shared_to_cta(slots + (sched.rank_k - 1) * L::kRedSlotBytes, 0);
#pragma unroll
      for (int i = 0; i < kRegs; i += 4) {
        st_shared_cluster_v4_f32(mine + ((i / 4) * kMathThreads + thread) * 16, total[i + 1], total[i], total[i + 3],
                                 total[i + 2]);
      }
      mbar_arrive_cluster<true>(&red[0], 0);
    } else {
      mbar_wait<true>(&red[0], red_phase);
#pragma unroll
      for (int r = 1; r < C::kSplitK; ++r) {
#pragma unroll
        for (int i = 0; i < kRegs; i += 4) {
          const uint4 v = ld_shared_v4(slots + (r - 1) * L::kRedSlotBytes + ((i / 4) * kMathThreads + thread) * 16);
          total[i] += __uint_as_float(v.y);
          total[i + 1] += __uint_as_float(v.x);
          total[i + 2] += __uint_as_float(v.w);
          total[i + 3] += __uint_as_float(v.z);
        }
      }
#pragma unroll
      for (int r = 1; r < C::kSplitK; ++r) mbar_arrive_cluster<true>(&red[1], r);
      epilogue(total, row0, n_block, 0, row_end);
    }
    red_phase ^= 1;
  } else {
    epilogue(total, row0, n_block, 0, row_end);
  }
}

}  // namespace dg
