// Persistent tile scheduler. The grid is made of clusters of CM x CN CTAs; a cluster works on one "unit"
// at a time: CM tiles along M times CN tiles along N, so the CTAs of a cluster can multicast what they
// share: the CM CTAs of one N-block the B tile, the CN CTAs of one M-block the A tile. Cluster u takes
// units u, u + clusters, ...; CTA rank r = rank_m + CM * rank_n of the cluster takes tile
// (CM * m_unit + rank_m, CN * n_unit + rank_n) of each. With KS > 1 (split-K clusters, CM = CN = 1) the
// KS CTAs of a cluster take the same tile, rank_k over K blocks [k_begin, k_begin + k_blocks). The
// producer and the math warpgroups walk the same flat sequence of (unit, k-block) steps, so the producer
// runs ahead across tile boundaries.
#pragma once

#include <cstdint>

namespace dg {

struct Step {
  int m_block;   // tile row index (units of BLOCK_M); may be >= m_tiles (a padding tile of a cluster)
  int n_block;   // tile column index (units of BLOCK_N); may be >= n_tiles likewise
  int k_block;   // 128-wide K block (of the whole K)
  bool last_k;   // this CTA's last K block of the tile: its promotion is followed by the epilogue
};

template <int CM, int CN, int KS = 1>
struct TileScheduler {
  static_assert(KS == 1 || CM * CN == 1, "split-K clusters do not multicast");
  static constexpr int kCtas = CM * CN * KS;
  int m_tiles, n_tiles;
  int k_begin, k_blocks;  // this CTA's K blocks of every tile (all of K unless split)
  int group_n;   // grouped rasterization: bands of group_n N-units, M walked inside a band
  int m_units;   // ceil(m_tiles / CM)
  int n_units;   // ceil(n_tiles / CN)
  int unit0;     // this cluster's first unit
  int units;     // clusters in the grid: the stride between this cluster's units
  int rank_m;    // this CTA's position in its cluster along M (which A tile)...
  int rank_n;    // ...and along N (which B tile)
  int rank_k;    // split-K: which range of K (0 adds the others' partial sums and stores the tile)

  // total_k_blocks >= KS (the host checks): every split gets at least one K block.
  __device__ __forceinline__ TileScheduler(int m_tiles_, int n_tiles_, int total_k_blocks, int group_n_, int rank)
      : m_tiles(m_tiles_), n_tiles(n_tiles_), group_n(group_n_),
        m_units((m_tiles_ + CM - 1) / CM), n_units((n_tiles_ + CN - 1) / CN),
        unit0(static_cast<int>(blockIdx.x) / kCtas), units(static_cast<int>(gridDim.x) / kCtas),
        rank_m(rank % CM), rank_n((rank / CM) % CN), rank_k(rank / (CM * CN)) {
    k_begin = rank_k * total_k_blocks / KS;
    k_blocks = (rank_k + 1) * total_k_blocks / KS - k_begin;
  }

  // Steps this CTA runs (all its cluster's units times the K blocks of each); equal in every CTA of a
  // cluster, which the multicast handshakes rely on.
  __device__ __forceinline__ uint32_t num_steps() const {
    const int total = m_units * n_units;
    const int mine = total > unit0 ? (total - unit0 + units - 1) / units : 0;
    return static_cast<uint32_t>(mine) * k_blocks;
  }

  // The i-th unit of this cluster -> this CTA's tile (m, n). Consecutive units sweep a band of group_n
  // N-units row by row, so the clusters of one wave share A rows and B columns in L2.
  __device__ __forceinline__ void tile_coords(int i, int& m_block, int& n_block) const {
    const int unit = unit0 + i * units;
    const int band_units = group_n * m_units;
    const int band = unit / band_units;
    const int in_band = unit - band * band_units;
    const int first_n = band * group_n;
    const int width = min(group_n, n_units - first_n);
    const int m_unit = in_band / width;
    n_block = (first_n + (in_band - m_unit * width)) * CN + rank_n;
    m_block = m_unit * CM + rank_m;
  }

  __device__ __forceinline__ Step step(uint32_t s) const {
    const int i = static_cast<int>(s / k_blocks);
    Step st;
    const int local_k = static_cast<int>(s - static_cast<uint32_t>(i) * k_blocks);
    st.k_block = k_begin + local_k;
    st.last_k = local_k == k_blocks - 1;
    tile_coords(i, st.m_block, st.n_block);
    return st;
  }
};

}  // namespace dg
