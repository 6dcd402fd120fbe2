// The kernel's one configuration type: a variant's choices (configs.Variant's fields, in the order of
// Variant.template_args, which kernel_unit.cu instantiates) and everything derived from them. Every part of the
// kernel takes this type as its template parameter `C` and reads named fields from it; the shared-memory layout
// is SmemLayout<C> (smem.cuh), the same instantiation for every role.
#pragma once

#include "params.h"

namespace dg {

constexpr int gcd_c(int a, int b) { return b == 0 ? a : gcd_c(b, a % b); }

template <int BLOCK_M, int BLOCK_N, int STAGES, int ACC, int CLUSTER_M, int CLUSTER_N, int SPLIT_K, int MATH_WGS,
          int GROUPING, int SWAPPED, int FP8_OUT>
struct KernelConfig {
  // ---- the variant ----
  static constexpr int kBlockM = BLOCK_M;      // tile rows: 64, 128 or 256
  static constexpr int kBlockN = BLOCK_N;      // tile columns
  static constexpr int kStages = STAGES;       // shared-memory ring of K blocks
  static constexpr int kAcc = ACC;             // AccMode (params.h)
  static constexpr int kClusterM = CLUSTER_M;  // CTAs of a cluster along M: they share (multicast) the B tile
  static constexpr int kClusterN = CLUSTER_N;  // ...along N: they share the A tile
  static constexpr int kSplitK = SPLIT_K;      // CTAs of a cluster sharing one tile, each over its own range of K
  static constexpr int kMathWGs = MATH_WGS;    // math warpgroups: two, or one on 64-row tiles
  static constexpr int kGrouping = GROUPING;   // GroupMode (params.h)
  static constexpr bool kSwapped = SWAPPED != 0;  // out^T = B A^T: B's rows on the wgmma M side (small M)
  static constexpr bool kFp8Out = FP8_OUT != 0;   // output quantized in the epilogue: fp8 per 1x128 group + scales
  static constexpr bool kSwiglu = FP8_OUT == 2;   // ...of SwiGLU(gate, up): B's rows hold gate and up (below)

  // ---- derived ----
  static constexpr bool kGrouped = kGrouping != kGroupNone;
  // SwiGLU's B: plain, gate and up rows interleaved per 128 (layouts.interleave_gate_up: one weight made from the
  // two projections); grouped, each group's N rows in halves, gate [0, N/2) then up [N/2, N), as stacked experts
  // are stored (transformers' gate_up_proj): the tile's gate and up rows are two 128-row loads N/2 apart.
  static constexpr bool kSwigluHalves = kSwiglu && kGrouped;
  // The 256-K recipe: scales per 256 of K (a_scales (M, K/256), b_scales (N/128, K/256)); stages stay 128 deep, and a
  // pair of them is summed in the tensor cores before one promotion (producer.cuh's scale_shift: which scale column).
  static constexpr bool kPairs = kAcc == kAccPairs;
  static constexpr int kMulticast = kClusterM * kClusterN;  // CTAs that share stages by multicast
  static constexpr int kCluster = kMulticast * kSplitK;     // CTAs per cluster
  static constexpr int kThreads = 128 * (1 + kMathWGs);     // the producer warpgroup and the math warpgroups
  static constexpr int kMathWarps = 4 * kMathWGs;
  static constexpr int kSlabs = kBlockM == 256 ? 2 : 1;     // 64-row slabs per math warpgroup, 128 rows apart
  // Tile split between the math warpgroups: BM = 256: two 64-row slabs each (rows 64w.. and 128 + 64w..);
  // BM = 128: 64 rows each, all columns; BM = 64: all 64 rows, BN / WGS columns each.
  static constexpr int kWgN = kBlockM >= 128 ? kBlockN : kBlockN / kMathWGs;  // columns per math warpgroup
  static constexpr int kRegs = kWgN / 2;     // fp32 accumulators per thread per set (and slab)
  static constexpr int kGroups8 = kWgN / 8;  // 8-column groups per warpgroup
  // bf16 epilogue: a TMA store writes a box of 16 rows x kEpiN columns (rows of kEpiN * 2 = 128, 64 or 32 bytes,
  // swizzled the way the output tensor map reads them). A band is up to 64 columns: kEpiBoxes boxes staged side
  // by side and stored after one wait (BN = 176: bands of 64, 64 and 48 columns, not eleven bands of 16). The
  // staging buffer holds 64 rows x one band per warpgroup.
  static constexpr int kEpiN = kWgN % 64 == 0 ? 64 : kWgN % 32 == 0 ? 32 : 16;
  static constexpr int kEpiBoxes = kWgN >= 64 ? 64 / kEpiN : 1;
  static constexpr int kBandN = kEpiN * kEpiBoxes;
  static constexpr int kBands = (kWgN + kBandN - 1) / kBandN;
  // Grouped GEMMs: the group table (tiles before, start and end of every group) after everything else.
  static constexpr int kGroupTableInts = kGrouped ? 3 * kMaxGroups + 1 : 0;
  // A warpgroup's columns start at multiples of gcd(kWgN, 128) inside a 128-wide B-scale block, so they touch at
  // most two blocks iff 128 - gcd + kWgN <= 256, else three (BN = 176: a tile starting 96 or 112 columns into a
  // block ends in the block after next)...
  static constexpr int kScaleAlign = gcd_c(kWgN, kBlockK);
  static constexpr bool kThreeScaleBlocks = kBlockK - kScaleAlign + kWgN > 2 * kBlockK;
  // ...and exactly one when they never cross a block boundary (BN dividing 128, or 128-aligned halves).
  static constexpr bool kOneScaleBlock =
      (kBlockK % kBlockN == 0) || (kBlockN % kBlockK == 0 && kWgN % kBlockK == 0 && kWgN <= kBlockK);
  // The bytes of one stage's A-scale load: BM row scales, or (swapped) the tile's BN token scales.
  static constexpr int kScaleLoadBytes = kSwapped ? kBlockN * 4 : kBlockM * 4;

  static_assert(kBlockM == 64 || kBlockM == 128 || kBlockM == 256, "BLOCK_M is 64, 128 or 256");
  static_assert(kMathWGs == 2 || (kMathWGs == 1 && kBlockM == 64), "two math warpgroups, or one on 64-row tiles");
  static_assert(kWgN % 16 == 0 && kWgN <= 256, "warpgroup N must be a multiple of 16 (stmatrix.x4), <= 256");
  static_assert(kBlockK - kScaleAlign + kWgN <= 3 * kBlockK, "a warpgroup's columns span at most three scale blocks");
  static_assert(kAcc == kAccSingle || kAcc == kAccDualWait || kAcc == kAccDualAhead || kAcc == kAccPairs,
                "unknown accumulation mode");
  static_assert(kSlabs == 1 || kAcc == kAccSingle || kAcc == kAccPairs,
                "256-row tiles have registers for one partial set only");
  // Pairs: every tile's K blocks pair up (K a multiple of 256, no split-K; stream-K cuts a tile's K on pairs only).
  static_assert(!kPairs || (kSplitK == 1 && !kGrouped && !kSwapped && FP8_OUT == 0),
                "the 256-K recipe: plain tiles, no split-K, not grouped, not swapped, bf16/fp32 output");
  static_assert(kSplitK == 1 || kMulticast == 1, "split-K clusters do not multicast");
  static_assert(kSplitK == 1 || kSlabs == 1, "split-K clusters are built for one-slab tiles");
  static_assert(!kGrouped || kSplitK == 1, "grouped GEMMs run without split-K (their tile count is on the device)");
  static_assert(!kSwapped || (kBlockM == 64 && kMathWGs == 1 && kMulticast == 1 && !kGrouped && kBlockN <= 64),
                "swapped tiles: 64 rows of B, one math warpgroup, at most 64 tokens, no multicast, not grouped");
  // fp8 output: a 128-column group's amax is reduced inside one warpgroup (a quad's shuffles), so each warpgroup's
  // columns must be whole groups, aligned to 128 in the output (tiles start at multiples of BN, warpgroups at kWgN).
  static_assert(!kFp8Out || (!kSwapped && (!kGrouped || kSwiglu) && kWgN % kBlockK == 0 && kBlockN % kBlockK == 0),
                "fp8 output: unswapped tiles (grouped: SwiGLU only) whose warpgroups cover whole 128-column groups");
  // SwiGLU: a 64 x 256 tile's warpgroup 0 holds 128 gate columns and warpgroup 1 the matching 128 up columns,
  // which it hands over through the staging buffer: one 128-wide h group per tile row.
  static_assert(!kSwiglu || (kBlockM == 64 && kBlockN == 256 && kMathWGs == 2 && kSplitK == 1),
                "SwiGLU: 64 x 256 tiles, two math warpgroups (gate, up), no split-K");
  static_assert(FP8_OUT >= 0 && FP8_OUT <= 2, "FP8_OUT: 0 bf16/fp32 output, 1 fp8 output, 2 fp8 SwiGLU output");
  static_assert(kCluster <= 16, "at most 16 CTAs per cluster (the multicast masks are 16 bits)");
};

}  // namespace dg
