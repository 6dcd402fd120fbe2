// Promotion: every 128 of K, a step's fp32 partial sums (the wgmma accumulators) are added into the tile's totals
// with the step's scales, total += partial * sa[row] * sb[n-block], on the CUDA cores (one FFMA per element), so
// every 1x128 x 128x128 block product is scaled exactly once, as the recipe defines it.
#pragma once

#include <cstdint>

#include "config.cuh"
#include "params.h"
#include "ptx.cuh"

namespace dg {

constexpr int kMaxSlabs = 2;
constexpr int kMaxSwapCols = 64;  // swapped tiles: at most 64 tokens (columns) per tile

// What a step's promotion (and, at a tile's end, its epilogue) needs, read from the stage when the step is acquired.
struct StepScales {
  float f_lo[kMaxSlabs], f_hi[kMaxSlabs];  // per slab: A scales of the thread's rows r, r + 8 times the B scale
  float g_lo[kMaxSlabs], g_hi[kMaxSlabs];  // of the warpgroup's first 128-column block (f) and of the next (g)
  float h_lo[kMaxSlabs], h_hi[kMaxSlabs];  // ...and of the one after (KernelConfig::kThreeScaleBlocks only)
  int sb_switch;        // first warpgroup column that uses g (>= kWgN: none); h from sb_switch + 128
  float cs[kMaxSwapCols / 4];  // swapped: the scale of each of the thread's columns (its tokens) times B's
  int row0, n_block;    // the tile (StepMeta)
  int row_end;          // grouped: the tile's group ends at this row (MathWarpgroup::row_end_of)
  int fixup;            // 0, or 1 + TileFixup (scheduler.cuh) on the tile's last K block
  bool first_of_tail;   // a stream-K tail starts: its sums start from the previous cluster's head
  uint32_t stage;       // the stage the step's operands sit in (freed when it retires)
};

// Columns [0, SWITCH) of the warpgroup take the first B-scale block's factors (f), the next 128 the next block's
// (g), any after those the third block's (h); 8-column groups never straddle a block. SWITCH is a compile-time
// constant: a runtime select per group would cost almost as many instructions as the FFMAs it feeds.
template <class C, int SWITCH>
__device__ __forceinline__ void promote_split(float (&acc)[C::kRegs], float (&total)[C::kRegs], float f_lo, float f_hi,
                                              float g_lo, float g_hi, float h_lo, float h_hi) {
#pragma unroll
  for (int j = 0; j < C::kGroups8; ++j) {
    const float s_lo = 8 * j >= SWITCH + kBlockK ? h_lo : 8 * j >= SWITCH ? g_lo : f_lo;
    const float s_hi = 8 * j >= SWITCH + kBlockK ? h_hi : 8 * j >= SWITCH ? g_hi : f_hi;
    total[4 * j + 0] = fmaf(acc[4 * j + 0], s_lo, total[4 * j + 0]);
    total[4 * j + 1] = fmaf(acc[4 * j + 1], s_lo, total[4 * j + 1]);
    total[4 * j + 2] = fmaf(acc[4 * j + 2], s_hi, total[4 * j + 2]);
    total[4 * j + 3] = fmaf(acc[4 * j + 3], s_hi, total[4 * j + 3]);
  }
}

// The step's switch column (a multiple of kScaleAlign in [kScaleAlign, 128]) picks one promote_split; from kWgN
// on, all columns are in the first block.
template <class C, int SWITCH>
__device__ __forceinline__ void promote_dispatch(int sb_switch, float (&acc)[C::kRegs], float (&total)[C::kRegs],
                                                 float f_lo, float f_hi, float g_lo, float g_hi, float h_lo,
                                                 float h_hi) {
  if constexpr (SWITCH >= C::kWgN) {
    promote_split<C, C::kWgN>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
  } else if constexpr (SWITCH >= kBlockK) {  // the last possible value
    promote_split<C, kBlockK>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
  } else {
    if (sb_switch == SWITCH) {
      promote_split<C, SWITCH>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
    } else {
      promote_dispatch<C, SWITCH + C::kScaleAlign>(sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
    }
  }
}

// total += acc * scales for slab `slab` of a completed step.
template <class C>
__device__ __forceinline__ void promote(float (&acc)[C::kRegs], float (&total)[C::kRegs], const StepScales& sc,
                                        int slab) {
#pragma unroll
  for (int i = 0; i < C::kRegs; ++i) fence_operand(acc[i]);
#ifdef DG_ABLATE_PROMOTION  // developers' switch: times the main loop without the promotion (wrong results)
  total[0] += acc[0];       // one use keeps the wgmmas (their asm has outputs only the promotion reads)
#ifdef DG_DUMMY_FFMA        // ...with as many FFMAs as the promotion, on registers the wgmmas do not touch
#pragma unroll
  for (int j = 0; j < C::kRegs; ++j) total[1 + j % 8] = fmaf(total[1 + j % 8], sc.f_lo[slab], sc.g_lo[slab]);
#endif
  return;
#endif
  if constexpr (C::kSwapped) {  // a scale per column (token), the same for both rows of the thread
#pragma unroll
    for (int j = 0; j < C::kGroups8; ++j) {
      total[4 * j + 0] = fmaf(acc[4 * j + 0], sc.cs[2 * j], total[4 * j + 0]);
      total[4 * j + 1] = fmaf(acc[4 * j + 1], sc.cs[2 * j + 1], total[4 * j + 1]);
      total[4 * j + 2] = fmaf(acc[4 * j + 2], sc.cs[2 * j], total[4 * j + 2]);
      total[4 * j + 3] = fmaf(acc[4 * j + 3], sc.cs[2 * j + 1], total[4 * j + 3]);
    }
    return;
  }
  const float f_lo = sc.f_lo[slab], f_hi = sc.f_hi[slab], g_lo = sc.g_lo[slab], g_hi = sc.g_hi[slab];
  const float h_lo = C::kThreeScaleBlocks ? sc.h_lo[slab] : 0.f, h_hi = C::kThreeScaleBlocks ? sc.h_hi[slab] : 0.f;
  if constexpr (C::kOneScaleBlock) {
    promote_split<C, C::kWgN>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
  } else {
    promote_dispatch<C, C::kScaleAlign>(sc.sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
  }
}

}  // namespace dg
