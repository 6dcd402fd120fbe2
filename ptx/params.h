// What the host binding (binding.cpp, a plain C++ unit built once per torch build) and the kernel units (one
// nvcc unit per variant, no torch) share: the launch parameter struct, the constants both sides size things
// by, and the few launch-geometry rules both must compute alike. Plain C++: no CUDA-only syntax outside DG_HD.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DG_HD __host__ __device__ __forceinline__
#else
#define DG_HD inline
#endif

namespace dg {

constexpr int kBlockK = 128;         // K per stage = the scale group: one promotion per stage
constexpr int kMaxGroups = 256;      // groups the kernel's shared-memory table holds (Python checks)
constexpr int kSmSideEntries = 256;  // entries of the SM -> L2 side table (indexed by %smid)
constexpr int kEpiStoreRows = 16;    // rows of one bf16 TMA store (one warp's; the output map's box)

enum BiasKind : int { kBiasNone = 0, kBiasF32 = 1, kBiasBF16 = 2 };

// How the math warpgroups accumulate (template parameter ACC):
enum AccMode : int {
  kAccSingle = 0,     // one partial set: issue step s, wait for it, promote it
  kAccDualWait = 1,   // two partial sets: wait for step s, issue s+1, promote s while s+1 runs
  kAccDualAhead = 2,  // two partial sets, two steps in flight: issue s+1, wait for s, promote s
  kAccPairs = 3,      // the 256-K recipe (scales per 256 of K): one partial set sums a pair of K blocks, one promotion
};

// Grouped GEMMs (template parameter GM; scheduler.cuh's GroupTable says how rows map to groups).
enum GroupMode : int { kGroupNone = 0, kGroupContiguous = 1, kGroupMasked = 2 };

// L2 eviction priority of a load's lines: normal, first (streamed data read once) or last (data every CTA re-reads).
enum L2Priority : int { kL2Normal = 0, kL2EvictFirst = 1, kL2EvictLast = 2 };

struct GemmParams {
  int m, n, k_blocks;        // k_blocks: 128-wide K blocks (stages); scales have k_blocks >> scale_shift columns
  int scale_shift;           // 1: scales per 256 of K (the 256-K recipe), K block kb takes scale column kb >> 1
  void* out;                 // (M, N) contiguous, bf16 or fp32
  int out_fp32;
  const float* b_scales;     // (ceil(N/128), K/128) row-major
  const void* bias;          // (N,) or null
  int bias_kind;
  int group_n;               // rasterization band width in N-tiles
  int l2_a, l2_b;            // L2Priority of the A (and A-scale) loads and of the B loads
  int sk_units;              // stream-K tail units (scheduler.cuh; 0: none)
  float* sk_partials;        // stream-K workspace: one slot of BM x BN fp32 partial sums per CTA of the grid...
  int* sk_flags;             // ...and one flag per slot and math warpgroup (0 between launches)
  // Grouped GEMMs (GM != kGroupNone, scheduler.cuh): B is (groups * N, K), its scales (groups * ceil(N/128), K/128).
  const int* group_rows;     // (groups,) int32 on the device: real rows per group (contiguous) or masked_m
  int groups;                // 1..kMaxGroups
  int group_stride;          // masked: max_m (rows of A per group); contiguous: the segments' alignment
  int pdl;                   // launched with programmatic dependent launch: release the next kernel early
  // L2-side placement (deepergemm/l2_placement.py): B lives in a pool of slots, each holding one slab (2^slab_shift
  // rows x one 128-wide K block); map_b then describes the pool as rows of 128 bytes, read in boxes of
  // b_box_rows rows (produce_placed_b). Null b_slots: B is the plain (N, K) tensor of map_b.
  const int* b_slots;        // (k_blocks, b_slot_stride) int32: the slot of slab (k block, rows j << slab_shift ..)
  int b_slot_stride;         // slabs per K block in the table (rows of B, padded past N, >> slab_shift)
  int b_slab_shift;          // log2 of the rows per slab: 4 (2 KiB slots) .. 8 (32 KiB)
  int b_box_rows;            // rows per B load: divides the CTA's B slice and the slab
  // L2-side-aware scheduling (scheduler.cuh's SideProblem). Null side_claims: off.
  const uint8_t* sm_side;    // (kSmSideEntries,) the L2 side of each SM id
  int* side_claims;          // 3 ints, 0 between launches: slots claimed on side 0, on side 1, clusters claimed
  int side0_clusters;        // slots of side 0; side 1 has the grid's other clusters
  int side0_n_tiles;         // N-tiles [0, side0_n_tiles) are side 0's (a multiple of CN)
  int side1_sk_units;        // side 1's stream-K units (side 0's: sk_units)
  void* trace_log;           // DG_TRACE / DG_LIFETRACE builds only: the event log (bench/trace_case.py); else null
  // fp8 output (KernelConfig::kFp8Out units only): out is (M, N) fp8 e4m3, and out_scales its (M, N/128) fp32 scales,
  // M-major: element (m, g) at g * out_scale_stride + m (layouts.empty_act_scales).
  float* out_scales;
  int out_scale_stride;      // round_up(M, 4)
  int out_ue8m0;             // scales rounded up to powers of two (quantize_act's ue8m0)
};

// M-tiles of a group with `rows` real rows, rounded up to whole pairs when CM M-tiles share (multicast) their
// B tile: a pair then never holds two groups. The rounding's extra tile lies past the group's end, so nothing
// of it is stored (rows past the end read the next group's rows, or zeros past A's end).
DG_HD int group_tiles(int rows, int bm, int cm) { return ((rows + bm - 1) / bm + cm - 1) / cm * cm; }

// The K blocks a stream-K range is cut in multiples of (scheduler.cuh's KG): the 256-K recipe's pairs loops take a
// tile's K blocks two at a time, every other loop one.
DG_HD constexpr int stream_k_granule(bool pairs) { return pairs ? 2 : 1; }

// A stream-K fill fits: fewer units of k_blocks K blocks than clusters, with a granule (stream_k_granule) at least
// for each cluster.
DG_HD bool stream_k_fill_fits(int64_t units, int64_t clusters, int64_t k_blocks, int64_t granule = 1) {
  return units < clusters && units * (k_blocks / granule) >= clusters;
}

// The stream-K units of a problem of `units` units of k_blocks K blocks on `clusters` clusters (as the host chooses
// them), or 0. A tail (units > clusters, the last wave part-filled): that wave's units and one full wave more, so
// every cluster's range is at least one tile. A fill (the host grew the grid past the units where it fits): every
// unit, each cluster's range a part of a tile, never empty.
DG_HD int stream_k_units(int64_t units, int64_t clusters, int64_t k_blocks, int64_t granule = 1) {
  if (units > clusters) return units % clusters != 0 ? static_cast<int>(units % clusters + clusters) : 0;
  return stream_k_fill_fits(units, clusters, k_blocks, granule) ? static_cast<int>(units) : 0;
}

// L2-side-aware scheduling: side 0's clusters, in proportion to its units, at least one and one fewer than all.
DG_HD int64_t side0_clusters_for(int64_t clusters, int64_t side0_units, int64_t units) {
  const int64_t share = (clusters * side0_units + units / 2) / units;
  return share < 1 ? 1 : share > clusters - 1 ? clusters - 1 : share;
}

}  // namespace dg
