// The math warpgroups (warpgroups 1 and 2, or 1 alone on 64-row tiles): per stage (128 of K) four wgmma m64nNk32
// into a partial accumulator set, then the promotion (promotion.cuh) into the tile's totals; at a tile's end its
// epilogue (epilogue.cuh), after the split-K join or the stream-K hand-off (reduction.cuh). One main loop per
// accumulation mode (KernelConfig::kAcc), each straight-line in its steady state (a merge of paths with a partial
// set in flight makes ptxas insert a wgmma wait, warning C7517) with its own tail:
//   run_two_slabs   256-row tiles: slab 0 then slab 1 of each stage through one partial set
//   run_single      one partial set: issue step s, wait for it, promote it
//   run_dual_wait   two sets: wait for step s, issue s+1 into the other set, promote s while s+1 runs
//   run_dual_ahead  two sets, two steps in flight: issue s+1, wait for s, promote s
//   run_*_pairs     the 256-K recipe: a pair of K blocks summed in one partial set, promoted once
// With two sets (or two slabs) the next wgmmas are queued before a promotion, so the tensor cores never wait on
// the promotion, nor on the epilogue.
#pragma once

#include <cstdint>

#include "config.cuh"
#include "params.h"
#include "producer.cuh"
#include "promotion.cuh"
#include "ptx.cuh"
#include "scheduler.cuh"
#include "smem.cuh"
#include "trace.cuh"

namespace dg {

constexpr uint32_t kStreamKBarrier = 3;  // named barrier 3 + w: math warpgroup w's stream-K handshake
constexpr uint32_t kSwigluFull = 5;      // SwiGLU: the up warpgroup's tile is in the staging buffer...
constexpr uint32_t kSwigluFree = 6;      // ...and the gate warpgroup has read it

template <class C>
struct MathWarpgroup {
  using L = SmemLayout<C>;
  static constexpr int kRegs = C::kRegs;

  const GemmParams& p;
  const SchedulerOf<C>& sched;
  const CUtensorMap* map_out;  // bf16 output, box 16 rows (one warp's) x kEpiN columns
  uint8_t* smem;
  uint64_t* full;
  uint64_t* empty;
  uint32_t empty_remote[C::kMulticast];  // the empty barriers' base in cluster CTA r's window (mapped once)
  int wg;          // 0 or 1
  int tid;         // thread in the warpgroup
  int warp, lane;
  uint64_t* red;   // split-K: [0] the slots in rank 0 are full, [1] this rank's slot in rank 0 is free
  uint32_t red_phase = 0;  // parity of the tiles finished so far (split-K hand-offs)
  int row_base;    // first tile row of this warpgroup (A rows, epilogue rows)
  int col_base;    // first tile column of this warpgroup
  RingPos<C::kStages> pos;  // where the next issued step's operands are
#ifdef DG_LIFETRACE
  bool first_data_logged = false;
#endif

  __device__ __forceinline__ MathWarpgroup(const GemmParams& params, const SchedulerOf<C>& s, const CUtensorMap* out_map,
                                           uint8_t* sm, uint64_t* f, uint64_t* e, uint64_t* reduction, int math_wg)
      : p(params), sched(s), map_out(out_map), smem(sm), full(f), empty(e), red(reduction), wg(math_wg) {
    tid = threadIdx.x % 128;
    warp = tid / 32;
    lane = tid % 32;
    if constexpr (C::kMulticast > 1) {
#pragma unroll
      for (uint32_t r = 0; r < C::kMulticast; ++r) empty_remote[r] = map_shared_to_cta(smem_addr(empty), r);
    }
    row_base = C::kBlockM >= 128 ? 64 * wg : 0;
    col_base = C::kBlockM >= 128 ? 0 : C::kWgN * wg;
  }

  // DG_TRACE: event e of step s (CTA 0, one thread of each warpgroup).
  __device__ __forceinline__ void trace(uint32_t s, int e) const {
#ifdef DG_TRACE
    if (blockIdx.x == 0 && tid == 0 && s < kTraceSteps) trace_clock(p.trace_log, (s * 2 + wg) * kTraceEvents + e);
#endif
  }

  // Where the tile's stored rows end: its group's end (grouped), else the problem's (from the parameters: one
  // register fewer per StepScales in the loops).
  __device__ __forceinline__ int row_end_of(const StepScales& sc) const {
    return C::kGrouped ? sc.row_end : kernel_rows<C>(p);
  }

  // ---- steps (this file) ----
  __device__ __forceinline__ void acquire(StepScales& sc);
  template <bool kOnto = false>  // kOnto: add to acc instead of overwriting it (a pair's second K block)
  __device__ __forceinline__ void issue_slab(float (&acc)[kRegs], const StepScales& sc, int slab);
  __device__ __forceinline__ void issue(float (&acc)[kRegs], StepScales& sc) {
    acquire(sc);
    issue_slab(acc, sc, 0);
  }
  __device__ __forceinline__ void release(const StepScales& sc);
  template <bool kLast = false>  // kLast: this CTA's last step (only there can a stream-K fill's owner join its tile)
  __device__ __forceinline__ void promote_step(float (&acc)[kRegs], float (&total)[kRegs], const StepScales& sc);
  __device__ __forceinline__ void finish_if_last(float (&total)[kRegs], const StepScales& sc, const StepScales& next);
  __device__ __forceinline__ void run();
  __device__ __forceinline__ void run_two_slabs(uint32_t steps);
  template <bool kLast = false>
  __device__ __forceinline__ void store_slabs(float (&total)[kRegs], float (&total1)[kRegs], const StepScales& sc);
  __device__ __forceinline__ void run_two_slabs_pairs(uint32_t steps);
  __device__ __forceinline__ void run_single(uint32_t steps);
  __device__ __forceinline__ void run_single_pairs(uint32_t steps);
  __device__ __forceinline__ void run_dual_wait(uint32_t steps);
  __device__ __forceinline__ void run_dual_ahead(uint32_t steps);

  // ---- a tile's end: split-K join and stream-K hand-offs (reduction.cuh) ----
  __device__ __forceinline__ void start_sums(float (&total)[kRegs], const StepScales& first, int slab);
  template <bool kLast = false>
  __device__ __forceinline__ int stored_row_end(float (&total)[kRegs], const StepScales& sc);
  template <bool kLast = false>
  __device__ __forceinline__ void stream_k_head_slab1(float (&total1)[kRegs], const StepScales& sc);
  __device__ __forceinline__ bool fill_owner(const StepScales& sc) const;
  __device__ __forceinline__ void stream_k_join(float (&total)[kRegs], int slab);
  __device__ __forceinline__ int stream_k_slot_index(int cluster) const;
  __device__ __forceinline__ float* stream_k_slot(int cluster) const;
  __device__ __forceinline__ int* stream_k_flag(int cluster) const;
  __device__ __forceinline__ void stream_k_write(const float (&total)[kRegs], int slab);
  __device__ __forceinline__ void stream_k_publish();
  __device__ __forceinline__ void stream_k_wait();
  __device__ __forceinline__ void finish_tile(float (&total)[kRegs], int row0, int n_block, int row_end);

  // ---- stores (epilogue.cuh) ----
  __device__ __forceinline__ float bias_at(int col) const;
  __device__ __forceinline__ void epilogue(float (&total)[kRegs], int row0, int n_block, int slab, int row_end);
  __device__ __forceinline__ void epilogue_fp32(float (&total)[kRegs], int m0, int n0, int row_begin, int row_end);
  __device__ __forceinline__ void epilogue_rows_from_registers(float (&total)[kRegs], int warp_m, int n0,
                                                               int row_end);
  __device__ __forceinline__ void epilogue_transposed(float (&total)[kRegs], int m0, int col0);
  __device__ __forceinline__ void epilogue_fp8(float (&total)[kRegs], int m0, int n0, int row_begin, int row_end);
  __device__ __forceinline__ void epilogue_swiglu(float (&total)[kRegs], int m0, int n_block, int row_begin,
                                                  int row_end);
};

// Wait for the next step's stage; note its tile and, per slab, the products of the A and B scales that its
// promotion multiplies by.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::acquire(StepScales& sc) {
  const uint32_t stage = pos.stage;
  mbar_wait(&full[stage], pos.phase);
#ifdef DG_LIFETRACE
  if (wg == 0 && tid == 0 && !first_data_logged) life_stamp(p.trace_log, kLifeFirstData), first_data_logged = true;
#endif
  pos.advance();
  sc.stage = stage;
  const uint32_t meta = smem_addr(smem + L::kMeta + stage * L::kMetaSlot);
  const uint4 tile = ld_shared_v4(meta + 4 * kMaxScaleBlocks);  // StepMeta's row0, n_block, row_end, flags
  sc.row0 = static_cast<int>(tile.x);
  sc.n_block = static_cast<int>(tile.y);
  if constexpr (C::kGrouped) sc.row_end = static_cast<int>(tile.z);  // (plain: row_end_of reads it from p)
  sc.fixup = static_cast<int>(tile.w & kMetaFixupMask);
  sc.first_of_tail = (tile.w & kMetaFirstOfTail) != 0;
  if constexpr (C::kSwapped) {  // one B scale for the tile's rows, one token scale per column
    const float sb = ld_shared_f32(meta);
    const uint32_t sa_addr = smem_addr(smem + L::kSA + stage * L::kSASlot) + (col_base + 2 * (lane % 4)) * 4;
#pragma unroll
    for (int j = 0; j < C::kGroups8; ++j) {  // (the pair's two token scales are adjacent: one 8-byte load)
      float lo, hi;
      ld_shared_v2_f32(sa_addr + 8 * j * 4, lo, hi);
      sc.cs[2 * j] = sb * lo;
      sc.cs[2 * j + 1] = sb * hi;
    }
    return;
  }
  const int n_tile = sc.n_block * C::kBlockN, n0 = n_tile + col_base;
  const int j = n0 / kBlockK - n_tile / kBlockK;  // which of the tile's scale blocks this warpgroup starts in
  const float sb_lo = ld_shared_f32(meta + 4 * j);
  const float sb_hi = ld_shared_f32(meta + 4 * (j + 1));
  const float sb_h = C::kThreeScaleBlocks ? ld_shared_f32(meta + 4 * (j + 2)) : 0.f;
  sc.sb_switch = (n0 / kBlockK + 1) * kBlockK - n0;
#pragma unroll
  for (int slab = 0; slab < C::kSlabs; ++slab) {
    const uint32_t sa_addr =
        smem_addr(smem + L::kSA + stage * L::kSASlot) + (row_base + 128 * slab + warp * 16 + lane / 4) * 4;
    const float sa_lo = ld_shared_f32(sa_addr), sa_hi = ld_shared_f32(sa_addr + 8 * 4);
    sc.f_lo[slab] = sa_lo * sb_lo;
    sc.f_hi[slab] = sa_hi * sb_lo;
    sc.g_lo[slab] = sa_lo * sb_hi;
    sc.g_hi[slab] = sa_hi * sb_hi;
    if constexpr (C::kThreeScaleBlocks) {
      sc.h_lo[slab] = sa_lo * sb_h;
      sc.h_hi[slab] = sa_hi * sb_h;
    }
  }
}

// Issue slab `slab`'s four k32 wgmmas (stage sc.stage) into acc, one commit group.
template <class C>
template <bool kOnto>
__device__ __forceinline__ void MathWarpgroup<C>::issue_slab(float (&acc)[kRegs], const StepScales& sc, int slab) {
  const uint32_t stage = sc.stage;
  const int rows = row_base + 128 * slab;
#ifdef DG_SLAB_SKIP
  // A 64-row slab wholly past the tile's last row (a group's or the problem's) has nothing to store: no wgmmas.
  // (Its partial set keeps the previous slab's sums, which its promotion adds to totals that are never stored.)
  if (__shfl_sync(0xffffffffu, sc.row0 + rows >= row_end_of(sc), 0)) return;
#endif
  const uint64_t desc_a = smem_desc_kmajor_sw128(smem_addr(smem + L::kA + stage * L::kABytes + rows * kSwizzleBytes));
  const uint64_t desc_b =
      smem_desc_kmajor_sw128(smem_addr(smem + L::kB + stage * L::kBBytes + col_base * kSwizzleBytes));
#pragma unroll
  for (int i = 0; i < kRegs; ++i) fence_operand(acc[i]);
  wgmma_fence();
#pragma unroll
  for (int k = 0; k < kBlockK / 32; ++k) {
    Wgmma<C::kWgN>::mma(acc, desc_a + k * kDescK32Step, desc_b + k * kDescK32Step, kOnto ? 1 : k);
  }
  wgmma_commit();  // no operand fence here: touching acc before the wait would make ptxas serialize
}

// The step's wgmmas have completed: free its stage in every CTA of the cluster (each one's producer multicasts into
// it; lane 0 arrives on each CTA's barrier at the address mapped once in the constructor). Done as soon as
// possible: the producer refills the stage only after this.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::release(const StepScales& sc) {
  __syncwarp();
  if (lane == 0) {
    if constexpr (C::kMulticast == 1) {
      mbar_arrive(&empty[sc.stage]);
    } else {
#pragma unroll
      for (uint32_t r = 0; r < C::kMulticast; ++r) mbar_arrive_remote(empty_remote[r] + sc.stage * 8);
    }
  }
}

// Promote a completed step's partial sums into total, and finish the tile if it was the tile's last K block
// (one-slab tiles; 256-row tiles finish both slabs in run_two_slabs). (Also the last step of the one-set loop: no
// tile follows.)
template <class C>
template <bool kLast>
__device__ __forceinline__ void MathWarpgroup<C>::promote_step(float (&acc)[kRegs], float (&total)[kRegs],
                                                               const StepScales& sc) {
  promote<C>(acc, total, sc, 0);
  if (sc.fixup) {
    finish_tile(total, sc.row0, sc.n_block, stored_row_end<kLast>(total, sc));
#pragma unroll
    for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
  }
}

// After a step's promotion: if it was its tile's last K block (of this CTA's part), finish the tile (store it, or
// hand its partial sums on) and start the sums of the tile whose first step is `next`.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::finish_if_last(float (&total)[kRegs], const StepScales& sc,
                                                                 const StepScales& next) {
  if (sc.fixup) {
    finish_tile(total, sc.row0, sc.n_block, stored_row_end(total, sc));
    start_sums(total, next, 0);
  }
}

template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run() {
  const uint32_t steps = sched.num_steps();
  if (steps == 0) return;
  if constexpr (C::kSwiglu) {  // the staging buffer starts free: the up warpgroup's first wait passes
    if (wg == 0) named_barrier_arrive(kSwigluFree, 256);
  }
  if constexpr (C::kSlabs > 1) {
    if constexpr (C::kPairs) {
      run_two_slabs_pairs(steps);
    } else {
      run_two_slabs(steps);
    }
  } else if constexpr (C::kPairs) {
    run_single_pairs(steps);
  } else if constexpr (C::kAcc == kAccSingle) {
    run_single(steps);
  } else if constexpr (C::kAcc == kAccDualWait) {
    run_dual_wait(steps);
  } else {
    run_dual_ahead(steps);
  }
  if constexpr (C::kSwiglu) {  // the up warpgroup waits for the last tile's read (matching the gate's first arrive)
    if (wg == 1) named_barrier_sync(kSwigluFree, 256);
  }
  if (wg == 0 && tid == 0) life_stamp(p.trace_log, kLifeLoopEnd);
  if (lane == 0) bulk_wait_group<0>();  // this warp's last TMA stores have finished before the CTA exits
  if (wg == 0 && tid == 0) life_stamp(p.trace_log, kLifeDrained);
}

// A 256-row tile's end: both slabs stored (or, stream-K, slab 1's head handed on first).
template <class C>
template <bool kLast>
__device__ __forceinline__ void MathWarpgroup<C>::store_slabs(float (&total)[kRegs], float (&total1)[kRegs],
                                                               const StepScales& sc) {
  const int row_end = stored_row_end<kLast>(total, sc);
  stream_k_head_slab1<kLast>(total1, sc);
  epilogue(total, sc.row0, sc.n_block, 0, row_end);
  epilogue(total1, sc.row0, sc.n_block, 1, row_end);
}

// 256-row tiles: per stage, slab 0 then slab 1 through the one partial set (the registers hold two totals, no
// second partial); the other math warpgroup's wgmmas fill the tensor cores meanwhile. The next step's slab 0 is
// issued before a finished tile's stores, so they overlap its wgmmas. Straight-line steady state, the last step
// after it. Each acquire comes before the wait for the wgmmas in flight: off the path from their completion to the
// next issue, where only the promotion should be.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run_two_slabs(uint32_t steps) {
  float total[kRegs], total1[kRegs], acc0[kRegs];
#pragma unroll
  for (int i = 0; i < kRegs; ++i) total[i] = total1[i] = 0.f;
  auto store_tile = [&](const StepScales& sc) { store_slabs(total, total1, sc); };
  StepScales sc0, next;
  acquire(sc0);
  issue_slab(acc0, sc0, 0);
  start_sums(total, sc0, 0);
  start_sums(total1, sc0, 1);
  for (uint32_t s = 0; s + 1 < steps; ++s) {  // entry: slab 0 of step sc0 in flight
    wgmma_wait<0>();
    trace(s, 1);
    promote<C>(acc0, total, sc0, 0);
    trace(s, 5);
#ifdef DG_LIFETRACE
    if (sc0.first_of_tail && wg == 0 && tid == 0) life_stamp_after(p.trace_log, kLifeTailPromote, total[kRegs - 1]);
#endif
    issue_slab(acc0, sc0, 1);
    trace(s, 2);
    acquire(next);
    trace(s, 3);
    wgmma_wait<0>();
    trace(s, 4);
    release(sc0);
    promote<C>(acc0, total1, sc0, 1);
    trace(s, 6);
    // fp8 output: the tile is stored before the next issue (its quantization needs the registers of the partial set
    // that would be in flight: ptxas spilled otherwise); the other warpgroup's wgmmas still run meanwhile.
    if constexpr (C::kFp8Out) {
      if (sc0.fixup) store_tile(sc0);
    }
    issue_slab(acc0, next, 0);
    trace(s + 1, 0);
    if (sc0.fixup) {
      if constexpr (!C::kFp8Out) store_tile(sc0);
      start_sums(total, next, 0);
      start_sums(total1, next, 1);
    }
    sc0 = next;
  }
  wgmma_wait<0>();
  promote<C>(acc0, total, sc0, 0);
  issue_slab(acc0, sc0, 1);
  wgmma_wait<0>();
  release(sc0);
  promote<C>(acc0, total1, sc0, 1);
  store_slabs<true>(total, total1, sc0);  // the last step ends the last tile
}

// The 256-K recipe, 256-row tiles: per pair of K blocks, each slab's two blocks summed into the one partial set
// before one promotion (two promotions per pair of stages instead of four); the math warpgroup holds both stages of
// a pair. The next pair's slab 0 is issued before a finished tile's stores, as in run_two_slabs.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run_two_slabs_pairs(uint32_t steps) {
  float total[kRegs], total1[kRegs], acc0[kRegs];
  auto store_tile = [&](const StepScales& sc) { store_slabs(total, total1, sc); };
  StepScales sa, sb;  // the pair's first and second block (sb's scales promote the pair: equal by assumption)
  acquire(sa);
  issue_slab(acc0, sa, 0);
  acquire(sb);
  issue_slab<true>(acc0, sb, 0);
  start_sums(total, sa, 0);
  start_sums(total1, sa, 1);
  for (uint32_t s = 0; s + 2 < steps; s += 2) {  // entry: slab 0 of pair (sa, sb) in flight
    wgmma_wait<0>();
    promote<C>(acc0, total, sb, 0);
    issue_slab(acc0, sa, 1);
    issue_slab<true>(acc0, sb, 1);
    wgmma_wait<1>();  // sa's last wgmmas are done: its stage refills while sb's run (the ring is two stages short)
    release(sa);
    StepScales na;
    acquire(na);
    wgmma_wait<0>();
    release(sb);
    promote<C>(acc0, total1, sb, 1);
    issue_slab(acc0, na, 0);
    const StepScales done = sb;
    acquire(sb);
    issue_slab<true>(acc0, sb, 0);
    if (done.fixup) {
      store_tile(done);
      start_sums(total, na, 0);
      start_sums(total1, na, 1);
    }
    sa = na;
  }
  wgmma_wait<0>();
  promote<C>(acc0, total, sb, 0);
  issue_slab(acc0, sa, 1);
  issue_slab<true>(acc0, sb, 1);
  wgmma_wait<0>();
  release(sa);
  release(sb);
  promote<C>(acc0, total1, sb, 1);
  store_slabs<true>(total, total1, sb);  // the last pair ends the last tile
}

// One partial set: the next step is acquired right after the wait and the stage's release, before the promotion
// (earlier, a late stage would hold back the release), and issued before a finished tile's stores, so they overlap
// its wgmmas.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run_single(uint32_t steps) {
  float total[kRegs], acc0[kRegs];
  StepScales sc0, next;
  acquire(sc0);
  issue_slab(acc0, sc0, 0);
  start_sums(total, sc0, 0);
  for (uint32_t s = 0; s + 1 < steps; ++s) {  // entry: step sc0 in flight
    wgmma_wait<0>();
    release(sc0);
    acquire(next);
    promote<C>(acc0, total, sc0, 0);
    issue_slab(acc0, next, 0);
    finish_if_last(total, sc0, next);
    sc0 = next;
  }
  wgmma_wait<0>();
  release(sc0);
  promote_step<true>(acc0, total, sc0);
}

// The 256-K recipe, one-slab tiles: K blocks in pairs (sa, sb), sb's wgmmas summing onto sa's in the one partial set,
// one promotion per pair (by the pair's scales: both blocks carry the same). Like run_single otherwise: the next
// pair is acquired after the wait and issued before a finished tile's stores. Every tile's K blocks pair up (the
// host runs these variants for K a multiple of 256, without split-K; a stream-K range starts and ends on a pair).
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run_single_pairs(uint32_t steps) {
  float total[kRegs], acc0[kRegs];
  StepScales sa, sb;
  acquire(sa);
  issue_slab(acc0, sa, 0);
  acquire(sb);
  issue_slab<true>(acc0, sb, 0);
  start_sums(total, sa, 0);
  for (uint32_t s = 0; s + 2 < steps; s += 2) {  // entry: pair (sa, sb) in flight
    wgmma_wait<1>();  // sa's wgmmas are done: its stage refills while sb's run
    release(sa);
    wgmma_wait<0>();
    release(sb);
    StepScales na, nb;
    acquire(na);
    promote<C>(acc0, total, sb, 0);
    issue_slab(acc0, na, 0);
    acquire(nb);
    issue_slab<true>(acc0, nb, 0);
    finish_if_last(total, sb, na);
    sa = na;
    sb = nb;
  }
  wgmma_wait<0>();
  release(sa);
  release(sb);
  promote_step<true>(acc0, total, sb);
}

// Two partial sets, waiting for step s before issuing s+1: free its stage at once, issue step s+1 into the other
// set, then promote step s while s+1 runs on the tensor cores. The next step is acquired before the wait.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run_dual_wait(uint32_t steps) {
  float total[kRegs], acc0[kRegs], acc1[kRegs];
#pragma unroll
  for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
  StepScales sc0, sc1;
  issue(acc0, sc0);
  uint32_t s = 0;
  for (; s + 2 < steps; s += 2) {
    acquire(sc1);
    wgmma_wait<0>();
    release(sc0);
    issue_slab(acc1, sc1, 0);
    promote_step(acc0, total, sc0);
    acquire(sc0);
    wgmma_wait<0>();
    release(sc1);
    issue_slab(acc0, sc0, 0);
    promote_step(acc1, total, sc1);
  }
  if (s + 1 < steps) {
    acquire(sc1);
    wgmma_wait<0>();
    release(sc0);
    issue_slab(acc1, sc1, 0);
    promote_step(acc0, total, sc0);
    wgmma_wait<0>();
    release(sc1);
    promote_step(acc1, total, sc1);
  } else {
    wgmma_wait<0>();
    release(sc0);
    promote_step(acc0, total, sc0);
  }
}

// Two partial sets, two steps in flight: step s+1 is issued before waiting for step s, so the tensor cores always
// find this warpgroup's next step queued; step s is promoted (and, at a tile's end, stored) while s+1 runs.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::run_dual_ahead(uint32_t steps) {
  float total[kRegs], acc0[kRegs], acc1[kRegs];
#pragma unroll
  for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
  StepScales sc0, sc1;
  issue(acc0, sc0);
  uint32_t s = 0;
  for (; s + 2 < steps; s += 2) {  // entry: step s in flight in acc0
    issue(acc1, sc1);
    wgmma_wait<1>();
    release(sc0);
    promote_step(acc0, total, sc0);
    issue(acc0, sc0);
    wgmma_wait<1>();
    release(sc1);
    promote_step(acc1, total, sc1);
  }
  if (s + 1 < steps) {
    issue(acc1, sc1);
    wgmma_wait<1>();
    release(sc0);
    promote_step(acc0, total, sc0);
    wgmma_wait<0>();
    release(sc1);
    promote_step(acc1, total, sc1);
  } else {
    wgmma_wait<0>();
    release(sc0);
    promote_step(acc0, total, sc0);
  }
}

}  // namespace dg
