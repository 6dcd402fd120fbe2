// Grouped GEMMs (MoE): how the M-tiles of every group's rows map to rows and groups (GroupTable, host and device),
// and the warp that fills the table in shared memory from the row counts on the device.
#pragma once

#include <cstdint>

#include "params.h"
#include "ptx.cuh"

namespace dg {

// Grouped GEMMs (MoE; KernelConfig::kGrouping): the rows of A and of the output are cut into
// groups (experts), group g owning rows [start[g], end[g]) and B's rows [g * N, (g + 1) * N). Its M-tiles
// are BM-row tiles from start[g] (the last one clipped at end[g]: rows past it are never stored; with B
// multicast pairs, CM > 1, a count rounded up to whole pairs: group_tiles), numbered after the tiles of the
// groups before it. The scheduler walks these numbers as if they were the tiles of
// one M dimension; GroupTable turns one back into rows and a group.
//   contiguous: group g's segment starts where the one before ends, rounded up to the alignment (a multiple
//               of BM, so no tile holds rows of two groups); rows[g] real rows (the rest of the segment is
//               padding: never computed, never stored).
//   masked:     group g owns rows [g * max_m, g * max_m + rows[g]) (rows[g] = masked_m[g], at most max_m).

struct TileRows {
  int group;    // whose B rows (and B scales) the tile multiplies
  int row0;     // the tile's first row of A and of the output
  int row_end;  // its group's end: rows from here on belong to another group (or to none)
};

// One group's rows from its requested row count, clamped so that a bad count never reaches past the tensors
// (negative counts read as 0). `offset`: contiguous, the sum of the earlier groups' group_span; masked, unused.
struct GroupExtent {
  int start, rows;  // first row, real rows
};
// Contiguous: the rows group g's segment takes (its real rows rounded up to the alignment), summed over the
// groups before g for its `offset` (saturating at M is harmless: such a segment starts at M, empty).
DG_HD int group_span(int requested, int align, int m) {
  requested = requested < 0 ? 0 : requested < m ? requested : m;
  return (requested + align - 1) / align * align;
}
DG_HD GroupExtent group_extent(int mode, int g, int requested, int offset, int stride, int m) {
  GroupExtent e;
  requested = requested < 0 ? 0 : requested;
  if (mode == kGroupMasked) {  // stride: max_m (and m = groups * max_m: the binding checks; clamped anyway)
    e.start = g * stride < m ? g * stride : m;
    e.rows = requested < stride ? requested : stride;
    e.rows = e.rows < m - e.start ? e.rows : m - e.start;
  } else {  // contiguous, stride: the alignment; a segment past the end of A holds no rows
    e.start = offset < m ? offset : m;
    e.rows = requested < m - e.start ? requested : m - e.start;
  }
  return e;
}

struct GroupTable {
  const int* tiles_before;  // groups + 1 entries: M-tiles of the groups before g (the last: all of them)
  const int* start;         // first row of each group
  const int* end;           // start + real rows
  int groups;

  DG_HD int m_tiles() const { return tiles_before[groups]; }

  // M-tile t (0 <= t < m_tiles()) of the grouped problem. Binary search for the last group whose first tile
  // is <= t: that group has a tile t (empty groups share their first tile number with the next group).
  DG_HD TileRows rows(int t, int bm) const {
    int lo = 0, hi = groups - 1;
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (tiles_before[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    TileRows r;
    r.group = lo;
    r.row0 = start[lo] + (t - tiles_before[lo]) * bm;
    r.row_end = end[lo];
    return r;
  }
};

// One warp fills the shared-memory group table from the row counts on the device, 32 groups at a time (two prefix
// sums over the warp: segment rows and M-tiles), before the kernel's first barrier. Reading the counts here, not on
// the host, keeps the launch free of host synchronization (CUDA graphs replay it with new counts).
// table: tiles_before (kMaxGroups + 1), start (kMaxGroups), end (kMaxGroups).
template <class C>
__device__ __forceinline__ void build_group_table(const GemmParams& p, int* table, int lane) {
  int* tiles_before = table;
  int* start = table + kMaxGroups + 1;
  int* end = start + kMaxGroups;
  constexpr int kRounds = kMaxGroups / 32;
  int counts[kRounds];  // every count loaded first: one load latency, not one per round
#pragma unroll
  for (int r = 0; r < kRounds; ++r) counts[r] = r * 32 + lane < p.groups ? ld_global_nc_s32(p.group_rows + r * 32 + lane) : 0;
  int tiles_done = 0, rows_done = 0;  // over the groups of earlier rounds (rows: saturated at M)
#pragma unroll
  for (int r = 0; r < kRounds; ++r) {
    if (r * 32 >= p.groups) break;
    const int g = r * 32 + lane;
    const int requested = counts[r];
    const int span = C::kGrouping == kGroupContiguous && g < p.groups ? group_span(requested, p.group_stride, p.m) : 0;
    const int span_incl = warp_inclusive_sum(span);
    const GroupExtent e = group_extent(C::kGrouping, g, requested, rows_done + span_incl - span, p.group_stride, p.m);
    const int tiles = g < p.groups ? group_tiles(e.rows, C::kBlockM, C::kClusterM) : 0;
    const int tiles_incl = warp_inclusive_sum(tiles);
    if (g < p.groups) {
      tiles_before[g] = tiles_done + tiles_incl - tiles;
      start[g] = e.start;
      end[g] = e.start + e.rows;
    }
    tiles_done += __shfl_sync(0xffffffffu, tiles_incl, 31);
    rows_done = min(rows_done + __shfl_sync(0xffffffffu, span_incl, 31), p.m);
  }
  if (lane == 0) tiles_before[p.groups] = tiles_done;
}

// The table as the scheduler and the producers read it.
__device__ __forceinline__ GroupTable group_table_at(int* table, int groups) {
  return GroupTable{table, table + kMaxGroups + 1, table + 2 * kMaxGroups + 1, groups};
}

}  // namespace dg
