// Persistent tile scheduler. The grid is made of clusters of CM x CN CTAs; a cluster works on one "unit"
// at a time: CM tiles along M times CN tiles along N, so the CTAs of a cluster can multicast what they
// share: the CM CTAs of one N-block the B tile, the CN CTAs of one M-block the A tile. CTA rank
// r = rank_m + CM * rank_n of the cluster takes tile (CM * m_unit + rank_m, CN * n_unit + rank_n) of a
// unit. With KS > 1 (split-K clusters, CM = CN = 1) the KS CTAs of a cluster take the same tile, rank_k
// over K blocks [k_begin, k_begin + k_blocks). The producers, the step-meta writer and the math
// warpgroups walk the same sequence of works (a unit and a range of its K blocks), so the producer runs
// ahead across tile boundaries.
//
// Stream-K tail (sk_units > 0, only without split-K): when the units do not fill the last wave of the G
// clusters, the first S = units % G + G units (in raster order) are shared out by K blocks instead: their
// S * KB steps are cut into G equal ranges, one per cluster, so every cluster does the same work and no
// SM idles in a last, partial wave. As each range is >= KB long, a tile is cut at most once: its head
// (K blocks [0, x)) ends cluster c's range and its tail ([x, KB)) starts cluster c + 1's. A cluster
// walks its range backwards by tile: the head first, whose partial sums it writes to its workspace slot
// (kFixContribute), the tail last, whose sums start from cluster c - 1's slot (kFixOwn; loaded straight
// into the sums when the tail starts, so the loads' latency hides behind its first wgmmas). So a tile's
// owner waits only on a lower-numbered cluster (launched no later), for work that cluster did first, and
// (the range being >= KB) it reaches the tail no earlier than that cluster finishes the head. The order of the
// two additions is fixed: results are bitwise reproducible. The remaining units follow, one per cluster and wave
// as before.
//
// Stream-K fill (sk_units = units < G: the host grew the grid past the units, ptx/binding.cpp): every unit is
// shared out the same way, but a range is now shorter than a tile, so a tile is cut into two or more pieces of
// consecutive clusters, all running at once. The piece ending at K block KB owns the tile (kFixOwn); the others
// (its head, and a middle piece that is a whole cluster's range) write their slots (kFixContribute) as before. A
// middle piece is its cluster's whole range, so an owner starting from the previous slot would wait for all of it:
// in the fill the owner's sums start at zero instead, and after its last K block it adds the slots of clusters
// join_first() .. c - 1 (in that order: reproducible) before storing. Contributors never wait, so nothing deadlocks.
#pragma once

#include <cstdint>

// Host and device (DG_HD, params.h): tests/scheduler_check.cu runs this scheduler on the CPU (every CTA of a grid)
// and checks the partition (tests/test_scheduler.py).
#include "params.h"

namespace dg {

// What a step's promotion is followed by, when it is the last step of a tile (or of this CTA's part of it).
enum TileFixup : int {
  kFixStore = 0,       // the tile is complete: store it (split-K clusters: join the ranks first)
  kFixContribute = 1,  // stream-K head (or a fill's middle piece): write the partial sums to this cluster's slot
  kFixOwn = 2,         // stream-K tail: add the previous cluster's slot (a fill: the slots of join_first() ..
                       // this cluster - 1), then store the tile
};

// A stretch of one unit's K blocks that this CTA runs back to back.
struct Work {
  int m_block, n_block;  // this CTA's tile (may be >= m_tiles / n_tiles: a padding tile of a cluster)
  int k_begin, k_end;    // absolute K blocks [k_begin, k_end)
  int fixup;             // TileFixup after the last of them
};

struct Step {
  int m_block;   // tile row index (units of BLOCK_M); may be >= m_tiles (a padding tile of a cluster)
  int n_block;   // tile column index (units of BLOCK_N); may be >= n_tiles likewise
  int k_block;   // 128-wide K block (of the whole K)
  int last_k;    // 0, or 1 + TileFixup on this CTA's last K block of the tile (its promotion is followed by it)
  bool first_of_tail;  // the first K block of a stream-K tail: its sums start from the previous cluster's head
                       // (not in a fill, whose owners join the pieces at the end)
};

// KG: the K blocks a stream-K range is cut in multiples of (2 for the 256-K recipe's pairs, whose loops take a tile's K
// blocks two at a time: every range, and so every piece of a tile, then starts and ends on a pair).
template <int CM, int CN, int KS = 1, int KG = 1>
struct TileScheduler {
  static_assert(KS == 1 || CM * CN == 1, "split-K clusters do not multicast");
  static_assert(KG == 1 || (KG == 2 && KS == 1), "stream-K ranges in single K blocks, or in pairs without split-K");
  static constexpr int kCtas = CM * CN * KS;
  int m_tiles, n_tiles;
  int k_begin, k_blocks;  // this CTA's K blocks of every data-parallel tile (all of K unless split)
  int group_n;   // grouped rasterization: bands of group_n N-units, M walked inside a band
  int m_units;   // ceil(m_tiles / CM)
  int n_units;   // ceil(n_tiles / CN)
  int cluster;   // this cluster's index (its first data-parallel unit without stream-K)
  int clusters;  // clusters in the grid (G): the stride between this cluster's data-parallel units
  int rank_m;    // this CTA's position in its cluster along M (which A tile)...
  int rank_n;    // ...and along N (which B tile)
  int rank_k;    // split-K: which range of K (0 adds the others' partial sums and stores the tile)
  int sk_units;  // stream-K: the first sk_units units are shared out by K blocks (0: none)
  bool sk_fill;  // stream-K fill (sk_units < clusters): owners join their tiles' pieces after their last K block
  int sk_begin, sk_end;    // this cluster's range of the stream-K steps (unit u's K block k is u * KB + k)
  int sk_first, sk_works;  // the last unit its range touches, and how many units it touches
  int dp_works;            // data-parallel units of this cluster
  int n_first;   // first N-tile of the problem this scheduler walks (L2 sides: its side's; else 0)
  int slot_base; // this side's first stream-K workspace slot, in clusters (0 without L2 sides)

  // total_k_blocks >= KS (the host checks): every split gets at least one K block. sk_units is 0, >= the number
  // of clusters (a tail: every stream-K range is at least one tile long), or all the units when they are fewer
  // than the clusters (a fill: sk_units * total_k_blocks >= clusters, so no range is empty). cluster_ / clusters_:
  // blockIdx.x / kCtas and gridDim.x / kCtas, or with L2 sides those of the side (SideProblem below).
  DG_HD TileScheduler(int m_tiles_, int n_tiles_, int total_k_blocks, int group_n_, int rank, int cluster_,
                      int clusters_, int sk_units_ = 0, int n_first_ = 0, int slot_base_ = 0)
      : m_tiles(m_tiles_), n_tiles(n_tiles_), group_n(group_n_),
        m_units((m_tiles_ + CM - 1) / CM), n_units((n_tiles_ + CN - 1) / CN),
        cluster(cluster_), clusters(clusters_),
        rank_m(rank % CM), rank_n((rank / CM) % CN), rank_k(rank / (CM * CN)), sk_units(KS == 1 ? sk_units_ : 0),
        n_first(n_first_), slot_base(slot_base_) {
    k_begin = rank_k * total_k_blocks / KS;
    k_blocks = (rank_k + 1) * total_k_blocks / KS - k_begin;
    sk_begin = sk_end = sk_first = sk_works = 0;
    sk_fill = sk_units > 0 && sk_units < clusters;
    if (sk_units > 0) {  // (k_blocks is a multiple of KG: the host checks)
      const int64_t granules = static_cast<int64_t>(sk_units) * (k_blocks / KG);
      sk_begin = KG * static_cast<int>(granules * cluster / clusters);
      sk_end = KG * static_cast<int>(granules * (cluster + 1) / clusters);
      sk_first = (sk_end - 1) / k_blocks;
      sk_works = sk_first - sk_begin / k_blocks + 1;
    }
    const int dp_total = m_units * n_units - sk_units;
    dp_works = dp_total > cluster ? (dp_total - cluster + clusters - 1) / clusters : 0;
  }

  DG_HD int num_works() const { return sk_works + dp_works; }

  // Stream-K fill: the first cluster whose range holds a piece of the tile this cluster owns (the tile its range
  // starts in; only meaningful for a cluster that owns one). Cluster c's range starts at granule
  // floor(total * c / G) (total: the granules of all the stream-K units): the last c with that <= the tile's first
  // granule s is ceil((s + 1) * G / total) - 1.
  DG_HD int join_first() const {
    const int64_t total = static_cast<int64_t>(sk_units) * (k_blocks / KG);
    const int64_t s = static_cast<int64_t>(sk_begin / k_blocks) * (k_blocks / KG);
    return static_cast<int>(((s + 1) * clusters + total - 1) / total - 1);
  }

  // Steps this CTA runs; equal in every CTA of a cluster, which the multicast handshakes rely on.
  DG_HD uint32_t num_steps() const {
    return static_cast<uint32_t>(sk_end - sk_begin) + static_cast<uint32_t>(dp_works) * k_blocks;
  }

  // Unit -> this CTA's tile (m, n) (n from n_first on). Consecutive units sweep a band of group_n N-units row by row, so the
  // clusters of one wave share A rows and B columns in L2.
  DG_HD void unit_coords(int unit, int& m_block, int& n_block) const {
    const int band_units = group_n * m_units;
    const int band = unit / band_units;
    const int in_band = unit - band * band_units;
    const int first_n = band * group_n;
    const int width = min(group_n, n_units - first_n);
    const int m_unit = in_band / width;
    n_block = n_first + (first_n + (in_band - m_unit * width)) * CN + rank_n;
    m_block = m_unit * CM + rank_m;
  }

  // This CTA's j-th work: its stream-K units from the last one back, then its data-parallel units.
  DG_HD Work work(int j) const {
    Work w;
    int unit;
    if (j < sk_works) {
      unit = sk_first - j;
      const int base = unit * k_blocks;
      w.k_begin = max(sk_begin, base) - base;
      w.k_end = min(sk_end, base + k_blocks) - base;
      w.fixup = w.k_end < k_blocks ? kFixContribute : w.k_begin > 0 ? kFixOwn : kFixStore;
    } else {
      unit = sk_units + cluster + (j - sk_works) * clusters;
      w.k_begin = k_begin;
      w.k_end = k_begin + k_blocks;
      w.fixup = kFixStore;
    }
    unit_coords(unit, w.m_block, w.n_block);
    return w;
  }

  // Step s of this CTA (random access, for the step-meta writer; the producers walk work by work).
  DG_HD Step step(uint32_t s) const {
    int j = 0;
    int left = static_cast<int>(s);
    const int sk_steps = sk_end - sk_begin;
    if (left >= sk_steps) {  // data-parallel: whole tiles
      left -= sk_steps;
      j = sk_works + left / k_blocks;
      left -= (j - sk_works) * k_blocks;
    }
    Work w = work(j);
    while (left >= w.k_end - w.k_begin) {  // stream-K: at most three works
      left -= w.k_end - w.k_begin;
      w = work(++j);
    }
    Step st;
    st.m_block = w.m_block;
    st.n_block = w.n_block;
    st.k_block = w.k_begin + left;
    st.last_k = st.k_block == w.k_end - 1 ? 1 + w.fixup : 0;
    st.first_of_tail = w.fixup == kFixOwn && st.k_block == w.k_begin && !sk_fill;
    return st;
  }
};

// L2-side-aware scheduling (deepergemm/l2_placement.py places B): the N-tiles [0, side0_n_tiles) have
// their B rows in memory next to L2 side 0, the others next to side 1. The grid's clusters are cut into
// side0_clusters slots for side 0 and the rest for side 1; each cluster claims one slot when it starts
// (claim_side_slot in sides.cuh): one of its own SM's side while any is left, else one of the other side,
// so every slot is taken exactly once wherever the clusters land (only the speed depends on it). Each side is
// then a problem of its own: its N-tiles, its clusters, its stream-K tail (whose workspace slots follow the
// other side's).
struct SideSlot {
  int side, rank;  // the side whose tiles this cluster works on, and its index among that side's slots
};
struct SideProblem {
  int n_first, n_tiles;     // the side's N-tiles
  int cluster, clusters;    // this cluster's index among the side's, and their number
  int sk_units;             // the side's stream-K units (0: none)
  int slot_base;            // first stream-K workspace slot of the side (in clusters)
};
DG_HD SideProblem side_problem(SideSlot slot, int n_tiles, int side0_n_tiles, int clusters, int side0_clusters,
                               int side0_sk_units, int side1_sk_units) {
  SideProblem sp;
  const bool first = slot.side == 0;
  sp.n_first = first ? 0 : side0_n_tiles;
  sp.n_tiles = first ? side0_n_tiles : n_tiles - side0_n_tiles;
  sp.cluster = slot.rank;
  sp.clusters = first ? side0_clusters : clusters - side0_clusters;
  sp.sk_units = first ? side0_sk_units : side1_sk_units;
  sp.slot_base = first ? 0 : side0_clusters;
  return sp;
}

}  // namespace dg
