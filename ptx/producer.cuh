// The producer warpgroup (warpgroup 0): lane 0 of warps 0, 2 and 3 stream A, B and the A scales with TMA into the
// ring of stages, one operand each (one thread issuing every load became the bottleneck once stages are small:
// ~75 instructions per stage at small M); warp 1 publishes each step's tile and B scales into the stage (StepMeta),
// so the math warpgroups find everything a step needs in shared memory. In a cluster the CM CTAs of one N-block
// each load 1/CM of the B tile and multicast it to the others, and the CN CTAs of one M-block likewise share the
// A tile; a stage is refilled only when the math warps of every CTA sharing it have released it. Loads carry the
// L2 eviction priority chosen per problem (configs.py). With L2-side placement warp 2 loads B instead (sides.cuh).
#pragma once

#include <cstdint>

#include "config.cuh"
#include "grouped.cuh"
#include "params.h"
#include "ptx.cuh"
#include "scheduler.cuh"
#include "smem.cuh"
#include "trace.cuh"

namespace dg {

// Position in the ring of stages: stage index and the parity of the pass over the ring (the mbarrier phase to
// wait for). Advanced step by step: no division by the stage count (often 5) on the hot path.
template <int STAGES>
struct RingPos {
  uint32_t stage = 0, phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
};

// Scale column of K block kb: kb >> scale_shift. 1 where the scales are per 256 of K (the 256-K recipe): always for
// the pairs variants, and for any other variant the binding runs on such scales (each K block takes its pair's
// scale: the product of the scales repeated per 128, without the two copies).
template <class C>
__device__ __forceinline__ int scale_shift(const GemmParams& p) {
  return C::kPairs ? 1 : p.scale_shift;
}

constexpr int kMaxScaleBlocks = 4;  // 128-wide B scale blocks a tile of up to 256 columns can touch (3) + pad

// What the math warpgroups read of a step, one per stage (SmemLayout::kMetaSlot: 32 bytes). The tile's rows
// [row0, row_end) are stored when it ends.
struct StepMeta {
  float sb[kMaxScaleBlocks];  // B scales of blocks n_block * BN / 128 + j (clamped to the last block; grouped SwiGLU:
                              // the gate block, then the up block)
  int row0;                   // the tile's first row (of A and of the output)
  int n_block;                // the tile's N index (BN columns)
  int row_end;                // the problem's rows end here, or (grouped) the tile's group's rows
  int flags;                  // kMetaFixupMask: 0, or 1 + TileFixup on the tile's last K block; kMetaFirstOfTail
};
constexpr int kMetaFixupMask = 3;    // StepMeta::flags bits 0-1: Step::last_k
constexpr int kMetaFirstOfTail = 4;  // StepMeta::flags bit 2: Step::first_of_tail
static_assert(sizeof(StepMeta) == 32, "StepMeta must fill its 32-byte slot");

// The kernel's view of the problem: swapped, its rows (the wgmma M side) are B's rows (the output's N) and its
// columns the tokens (the output's M); GemmParams keeps the output's M and N either way.
template <class C>
__device__ __forceinline__ int kernel_rows(const GemmParams& p) { return C::kSwapped ? p.n : p.m; }
template <class C>
__device__ __forceinline__ int kernel_cols(const GemmParams& p) { return C::kSwapped ? p.m : p.n; }

// The CTAs of the cluster that receive a multicast from this one: those of its N-block (B) or M-block (A).
template <int CM, int CN, int KS, int KG>
__device__ __forceinline__ uint16_t same_n_block_mask(const TileScheduler<CM, CN, KS, KG>& sched) {
  return static_cast<uint16_t>(((1u << CM) - 1) << (CM * sched.rank_n));
}
template <int CM, int CN, int KS, int KG>
__device__ __forceinline__ uint16_t same_m_block_mask(const TileScheduler<CM, CN, KS, KG>& sched) {
  uint32_t mask = 0;
#pragma unroll
  for (int j = 0; j < CN; ++j) mask |= 1u << (sched.rank_m + CM * j);
  return static_cast<uint16_t>(mask);
}

// Which operands producer thread i (warp 0, 2, 3) loads; each arrives on a stage's full barrier with their bytes,
// and so does the meta writer.
enum Operand : int { kLoadA = 1, kLoadB = 2, kLoadSA = 4 };
constexpr int kProducers = 3;
constexpr int kFullArrivals = kProducers + 1;

// One operand of one stage: a TMA load, multicast to the cluster CTAs in `mask` when they share it, with an
// L2 eviction hint unless the priority is normal.
template <bool kShared>
__device__ __forceinline__ void load_operand(void* dst, const CUtensorMap* map, uint64_t* bar, int x, int y,
                                             uint16_t mask, bool hinted, uint64_t policy) {
  if constexpr (kShared) {
    if (hinted) {
      tma_load_2d_multicast(dst, map, bar, x, y, mask, policy);
    } else {
      tma_load_2d_multicast(dst, map, bar, x, y, mask);
    }
  } else if (hinted) {
    tma_load_2d(dst, map, bar, x, y, policy);
  } else {
    tma_load_2d(dst, map, bar, x, y);
  }
}

template <class C>
using SchedulerOf = TileScheduler<C::kClusterM, C::kClusterN, C::kSplitK, stream_k_granule(C::kPairs)>;

// Whether a part-filled last plain M-tile moves up to end at the last row (the developers' define DG_NO_TILE_SHIFT
// keeps it in place, to time the difference: ptx/NOTES.md). Every row a TMA box reaches past the last costs the TMA
// unit: 128x128 tiles at M = 160 ran 1.40x as long as at M = 256, and as long as M = 256 when moved; 160x7168x18432
// 0.70 -> 1.00x cuBLAS, 300x2112x7168 0.96 -> 1.22x; shapes whose tiles are full: within 1%.
template <class C>
inline constexpr bool kMovesLastTile =
#ifdef DG_NO_TILE_SHIFT
    false;
#else
    !C::kSwapped && !C::kGrouped;  // (swapped tiles keep their rows: B's scale blocks follow them)
#endif

// The first row of plain M-tile m_block (of m_tiles; rows: the kernel's rows). A moved last tile (kMovesLastTile,
// when there are BM rows) starts at the last row - BM + 1 rounded up to 16 rows, so its A box lies inside A but for
// at most 15 rows. 16, because a box's innermost coordinate must fall on 16 bytes (the A-scale box is M-major fp32;
// start row 1 at M = 65 was an illegal instruction), and because then the rows it shares with the tile before,
// which it computes again but does not store (epilogue.cuh row_begin), end on a warp's 16-row boundary: no warp
// straddles them. A cluster's padding tile (m_block >= m_tiles) loads the last tile's rows and keeps a row0 past
// the end, so it stores nothing.
template <class C>
__device__ __forceinline__ int plain_tile_row0(int m_block, int m_tiles, int rows) {
  constexpr int BM = C::kBlockM;
  const int row0 = min(m_block, m_tiles - 1) * BM;
  if constexpr (kMovesLastTile<C>) return rows >= BM ? min(row0, (rows - BM + 15) & ~15) : row0;
  return row0;
}

// Grouped SwiGLU (KernelConfig::kSwigluHalves): the first row, in the (groups * N, K) B, of half `half` (0 gate,
// 1 up) of N-tile n_block of `group`. N-tile j makes h group j from gate rows [128j, 128j + 128) of the group and
// the up rows N/2 after them; divided by 128 it is the row of their B scales too (N is a multiple of 256).
__device__ __forceinline__ int swiglu_half_row(const GemmParams& p, int group, int n_block, int half) {
  return group * p.n + half * (p.n / 2) + n_block * kBlockK;
}

// A producer thread: the operand OPERAND of every step this CTA runs (its K blocks, work by work).
template <class C, int OPERAND>
__device__ __forceinline__ void produce_operand(const SchedulerOf<C>& sched, const GemmParams& p,
                                                const GroupTable& groups, uint8_t* smem, uint64_t* full,
                                                uint64_t* empty, const CUtensorMap* map) {
  using L = SmemLayout<C>;
  constexpr int BM = C::kBlockM, BN = C::kBlockN;
  // In a cluster, A is shared by the CN CTAs of an M-block and B by the CM CTAs of an N-block: each loads its
  // slice and multicasts it. Whole tiles land in every CTA (its slice and the partners'); out-of-bounds boxes
  // count in full.
  constexpr int kASlice = BM / C::kClusterN, kBSlice = BN / C::kClusterM;
  constexpr uint32_t kBytes = OPERAND == kLoadA ? L::kABytes : OPERAND == kLoadB ? L::kBBytes : C::kScaleLoadBytes;
  // (swapped: the scale box holds the tile's BN token scales, on the N' side: B's priority)
  const int priority = OPERAND == kLoadB || (OPERAND == kLoadSA && C::kSwapped) ? p.l2_b : p.l2_a;
  const bool hinted = priority != kL2Normal;
  const uint64_t policy = l2_policy(priority);
  const uint16_t mask = OPERAND == kLoadA ? same_m_block_mask(sched) : same_n_block_mask(sched);
  const uint32_t steps = sched.num_steps();
  if constexpr (C::kGrouped) {
    if (steps == 0) return;  // (grouped problems may have no M-tile at all: no work to look up)
  }
  int j = 0;
  Work w = sched.work(0);
  int k_block = w.k_begin;
  TileRows tile{};  // grouped: the work's rows of A and its group's rows of B, looked up once per work
  if constexpr (C::kGrouped) tile = groups.rows(w.m_block, BM);
  RingPos<C::kStages> pos;
  for (uint32_t s = 0; s < steps; ++s, pos.advance()) {
    const uint32_t stage = pos.stage;
    mbar_wait(&empty[stage], pos.phase ^ 1);  // the first pass finds every stage free
#ifdef DG_TRACE
    if (OPERAND == kLoadA && blockIdx.x == 0 && s < kTraceSteps) trace_clock(p.trace_log, kTraceSteps * 2 * kTraceEvents + s);
#endif
    mbar_arrive_expect_tx(&full[stage], kBytes);
    // A padding tile of a cluster loads real rows (its results are never stored); B rows past N read as 0
    // (grouped: the next group's rows, whose products land in columns that are never stored).
    const int m_load = C::kGrouped ? tile.row0 : plain_tile_row0<C>(w.m_block, sched.m_tiles, kernel_rows<C>(p));
    const int n_load = (C::kGrouped ? tile.group * p.n : 0) + w.n_block * BN;
    if constexpr (OPERAND == kLoadA) {
      load_operand<(C::kClusterN > 1)>(smem + L::kA + stage * L::kABytes + sched.rank_n * kASlice * kSwizzleBytes, map,
                                       &full[stage], k_block * kBlockK, m_load + sched.rank_n * kASlice, mask, hinted,
                                       policy);
    } else if constexpr (OPERAND == kLoadB && C::kSwigluHalves) {
      // the CTA's slice of the tile (all of it, or one half in a 2x1 pair) as 128-row loads: gate rows, up rows
      static_assert(kBSlice % kBlockK == 0, "grouped SwiGLU loads B in 128-row halves");
      constexpr int kHalves = kBSlice / kBlockK;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        const int half = sched.rank_m * kHalves + h;
        load_operand<(C::kClusterM > 1)>(smem + L::kB + stage * L::kBBytes + half * kBlockK * kSwizzleBytes, map,
                                         &full[stage], k_block * kBlockK,
                                         swiglu_half_row(p, tile.group, w.n_block, half), mask, hinted, policy);
      }
    } else if constexpr (OPERAND == kLoadB) {
      load_operand<(C::kClusterM > 1)>(smem + L::kB + stage * L::kBBytes + sched.rank_m * kBSlice * kSwizzleBytes, map,
                                       &full[stage], k_block * kBlockK, n_load + sched.rank_m * kBSlice, mask, hinted,
                                       policy);
    } else {  // (swapped: the scales of the tile's tokens, the N' side)
      load_operand<false>(smem + L::kSA + stage * L::kSASlot, map, &full[stage], C::kSwapped ? n_load : m_load,
                          k_block >> scale_shift<C>(p), 0, hinted, policy);
    }
    if (++k_block == w.k_end && s + 1 < steps) {  // incremental: no division per step
      w = sched.work(++j);
      k_block = w.k_begin;
      if constexpr (C::kGrouped) tile = groups.rows(w.m_block, BM);
    }
  }
}

// Lane i prepares step base + i (its B scales are global loads: 32 steps share one latency), then the warp hands
// the steps to the stages in order, lane j writing step base + j and arriving on full. The next batch's loads are
// issued before this batch is handed out, so their latency hides behind it. Grouped GEMMs take the B scales and
// rows of the tile's group.
template <class C>
__device__ __forceinline__ StepMeta prepare_step_meta(const SchedulerOf<C>& sched, const GemmParams& p,
                                                      const GroupTable& groups, uint32_t step, uint32_t steps) {
  constexpr int BM = C::kBlockM, BN = C::kBlockN;
  StepMeta meta;
  if (step < steps) {
    const Step st = sched.step(step);
    // (swapped: B's rows are the tile's M' rows; a 64-row tile lies in one 128-row scale block)
    const int nb0 = C::kSwapped ? st.m_block * BM / kBlockK : st.n_block * BN / kBlockK;
    const int nb_last = (p.n - 1) / kBlockK;  // B's last scale block (p.n: the output's N, B's rows)
    TileRows tile{};
    if constexpr (C::kGrouped) tile = groups.rows(st.m_block, BM);
    const int scale_cols = p.k_blocks >> scale_shift<C>(p);  // (the 256-K recipe: one column per pair of K blocks)
    if constexpr (C::kSwigluHalves) {  // the gate block (warpgroup 0's), then the up block (warpgroup 1's)
      const float* gate = p.b_scales + static_cast<int64_t>(swiglu_half_row(p, tile.group, st.n_block, 0) / kBlockK) *
                                           scale_cols + (st.k_block >> scale_shift<C>(p));
      meta.sb[0] = ld_global_nc_f32(gate);
      meta.sb[1] = ld_global_nc_f32(gate + static_cast<int64_t>(p.n / 2 / kBlockK) * scale_cols);
      meta.sb[2] = meta.sb[3] = meta.sb[1];
    } else {
      const float* col = p.b_scales + (static_cast<int64_t>(tile.group) * (nb_last + 1) + nb0) * scale_cols +
                         (st.k_block >> scale_shift<C>(p));
#pragma unroll
      for (int j = 0; j < kMaxScaleBlocks; ++j) meta.sb[j] = ld_global_nc_f32(col + min(j, nb_last - nb0) * scale_cols);
    }
    meta.row0 = C::kGrouped                  ? tile.row0
                : st.m_block >= sched.m_tiles ? st.m_block * BM  // a cluster's padding tile: nothing stored
                                              : plain_tile_row0<C>(st.m_block, sched.m_tiles, kernel_rows<C>(p));
    meta.n_block = st.n_block;
    meta.row_end = C::kGrouped ? tile.row_end : kernel_rows<C>(p);
    meta.flags = st.last_k | (st.first_of_tail ? kMetaFirstOfTail : 0);
  }
  return meta;
}

template <class C>
__device__ __forceinline__ void publish_step_meta(const SchedulerOf<C>& sched, const GemmParams& p,
                                                  const GroupTable& groups, uint8_t* smem, uint64_t* full,
                                                  uint64_t* empty, int lane) {
  using L = SmemLayout<C>;
  const uint32_t steps = sched.num_steps();
  RingPos<C::kStages> pos;
  StepMeta meta = prepare_step_meta<C>(sched, p, groups, lane, steps);
  for (uint32_t base = 0; base < steps; base += 32) {
    const StepMeta next = prepare_step_meta<C>(sched, p, groups, base + 32 + lane, steps);
    const uint32_t count = min(32u, steps - base);
    for (uint32_t j = 0; j < count; ++j, pos.advance()) {
      mbar_wait(&empty[pos.stage], pos.phase ^ 1);
      if (lane == static_cast<int>(j)) {
        *reinterpret_cast<StepMeta*>(smem + L::kMeta + pos.stage * L::kMetaSlot) = meta;
        mbar_arrive(&full[pos.stage]);  // release: the meta store is visible to whoever sees the phase flip
      }
      __syncwarp();
    }
    meta = next;
  }
}

}  // namespace dg
