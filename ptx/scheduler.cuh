// Persistent tile scheduler: CTA b takes tiles b, b + grid, b + 2*grid, ... and walks each tile's K
// blocks; the producer and the math warpgroups walk the same flat sequence of (tile, k-block) steps,
// so the producer runs ahead across tile boundaries without a bubble.
#pragma once

#include <cstdint>

namespace dg {

struct Step {
  int m_block;   // tile row index (units of BLOCK_M)
  int n_block;   // tile column index (units of BLOCK_N)
  int k_block;   // 128-wide K block
  bool last_k;   // the tile's last K block: its promotion is followed by the epilogue
};

struct TileScheduler {
  int m_tiles, n_tiles, k_blocks;
  int group_n;   // grouped rasterization: bands of group_n N-tiles, M walked inside a band

  __device__ __forceinline__ int num_tiles() const { return m_tiles * n_tiles; }

  // Steps this CTA runs (all its tiles times the K blocks of each).
  __device__ __forceinline__ uint32_t num_steps() const {
    const int tiles = num_tiles();
    const int mine = tiles > static_cast<int>(blockIdx.x)
                         ? (tiles - static_cast<int>(blockIdx.x) + gridDim.x - 1) / gridDim.x
                         : 0;
    return static_cast<uint32_t>(mine) * k_blocks;
  }

  // Tile t -> (m, n): consecutive tiles sweep a band of group_n N-tiles row by row, so the CTAs of one
  // wave share A rows and B columns in L2.
  __device__ __forceinline__ void tile_coords(int tile, int& m_block, int& n_block) const {
    const int band_tiles = group_n * m_tiles;
    const int band = tile / band_tiles;
    const int in_band = tile - band * band_tiles;
    const int first_n = band * group_n;
    const int width = min(group_n, n_tiles - first_n);
    m_block = in_band / width;
    n_block = first_n + (in_band - m_block * width);
  }

  __device__ __forceinline__ Step step(uint32_t s) const {
    const int tile_iter = static_cast<int>(s / k_blocks);
    Step st;
    st.k_block = static_cast<int>(s - static_cast<uint32_t>(tile_iter) * k_blocks);
    st.last_k = st.k_block == k_blocks - 1;
    tile_coords(static_cast<int>(blockIdx.x) + tile_iter * static_cast<int>(gridDim.x), st.m_block, st.n_block);
    return st;
  }
};

}  // namespace dg
