// A finished tile's stores (MathWarpgroup members; mainloop.cuh declares them): bias added in fp32, then one rounding
// to the output's type. Accumulator element (j, e) of a thread: row warp * 16 + lane / 4 (+8 for e >= 2), column
// 8j + 2 * (lane % 4) + (e & 1) of the warpgroup's part of the tile. Rows [row_begin, row_end) of the tile are
// stored: row_begin is row0, but for a last tile moved up to end at the last row (producer.cuh kMovesLastTile) the
// first row the tile before does not store, so that each row has one writer (stream-K cuts the two tiles' K at
// different points: their shared rows' bits may differ, and both stores made the output depend on which landed last).
// A moved tile starts on a multiple of 16 rows, so row_begin falls between two warps' rows.
//   bf16            stmatrix into a swizzled staging buffer, then TMA stores (the default)
//   grouped bf16    a warp whose rows straddle its group's end stores from registers (a box would write past it)
//   fp32            from registers
//   transposed      swapped tiles: from registers, element (r, c) of the kernel's tile to out[c][r]
//   fp8             fp8-output units: rounded to bf16, quantized per 1x128 group of a row, from registers
//   SwiGLU          the up warpgroup hands its bf16 tile to the gate warpgroup, which stores fp8 SwiGLU(gate, up)
#pragma once

#include <cstdint>

#include "mainloop.cuh"

namespace dg {

// Whether row r is one of the tile's stored rows (row_begin matters only where last tiles move).
template <class C>
__device__ __forceinline__ bool stored_row(int r, int row_begin, int row_end) {
  return (!kMovesLastTile<C> || r >= row_begin) && r < row_end;
}

template <class C>
__device__ __forceinline__ float MathWarpgroup<C>::bias_at(int col) const {
  if (p.bias_kind == kBiasF32) return static_cast<const float*>(p.bias)[col];
  const uint16_t bits = static_cast<const uint16_t*>(p.bias)[col];
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::epilogue(float (&total)[kRegs], int row0, int n_block, int slab,
                                                           int row_end) {
#ifdef DG_ABLATE_EPILOGUE  // developers' switch: times the kernel without its stores (wrong results)
  float sum = 0.f;         // one use of every total (never stored), so the promotion stays
#pragma unroll
  for (int i = 0; i < kRegs; ++i) sum += total[i];
  if (__float_as_uint(sum) == 0x7fc00001u) static_cast<float*>(p.out)[0] = 0.f;
  return;
#endif
  const int m0 = row0 + row_base + 128 * slab;
  const int n0 = n_block * C::kBlockN + col_base;
  const int row_begin = kMovesLastTile<C> ? (row0 + C::kBlockM - 1) / C::kBlockM * C::kBlockM : row0;
  const int quad_col = 2 * (lane % 4);
  if constexpr (C::kSwapped) {
    epilogue_transposed(total, m0, n0 + quad_col);
    return;
  }
  if (p.bias_kind != kBiasNone) {
#pragma unroll
    for (int j = 0; j < C::kGroups8; ++j) {
      const int col = n0 + 8 * j + quad_col;
      if (col < p.n) {  // N % 8 == 0: both columns of the pair are in or out together
        const float b0 = bias_at(col), b1 = bias_at(col + 1);
        total[4 * j + 0] += b0;
        total[4 * j + 1] += b1;
        total[4 * j + 2] += b0;
        total[4 * j + 3] += b1;
      }
    }
  }
  if constexpr (C::kSwiglu) {
    epilogue_swiglu(total, m0, n_block, row_begin, row_end);
    return;
  }
  if constexpr (C::kFp8Out) {
    epilogue_fp8(total, m0, n0, row_begin, row_end);
    return;
  }
  if (p.out_fp32) {
    epilogue_fp32(total, m0, n0, row_begin, row_end);
    return;
  }
  // bf16, warp by warp (no warpgroup barrier): each warp owns 16 rows of the warpgroup's 64. Per band of up to
  // kBandN columns it stmatrix-es its rows into its own slice of the staging buffer (one TMA box of 16 x kEpiN after
  // another, each swizzled like the output tensor map: conflict-free), and its lane 0 hands the boxes to TMA stores
  // (one bulk group), which clip the tails of M and N and run on while the warp goes back to its wgmmas. The only
  // wait is for the previous band's stores to have read the slice (a few hundred bytes' worth of TMA work).
  constexpr int kSliceBytes = 16 * L::kEpiPitch;
  constexpr int kBoxPitch = C::kEpiN * 2, kBoxBytes = 16 * kBoxPitch;
  uint8_t* slice = smem + L::kEpi + wg * L::kEpiBytesPerWG + warp * kSliceBytes;
  const int row = (lane % 8) + 8 * ((lane / 8) % 2);  // the row this lane addresses in stmatrix
  const uint32_t row_offset = row * kBoxPitch;
  const uint32_t swizzle = ((row_offset >> 7) & (C::kEpiN * 2 / 16 - 1)) << 4;  // TMA's 32B/64B/128B swizzle
  const int warp_m = m0 + warp * 16;
  // A grouped warp whose 16 rows straddle its group's end (a TMA box would also write the rows after it: the next
  // group's, or padding the caller keeps) stores from registers. The test is the same in every lane; through a
  // shuffle ptxas knows it, so the branch is no divergence. (As a per-lane test it made the whole math loop
  // divergent: ring position and wgmma descriptors in vector registers, an R2UR per descriptor, 14% slower than the
  // same tile dense.)
  if constexpr (C::kGrouped) {
    const bool straddles = warp_m < row_end && warp_m + 16 > row_end;
    if (__shfl_sync(0xffffffffu, straddles, 0)) {
      epilogue_rows_from_registers(total, warp_m, n0, row_end);
      return;
    }
  }
#pragma unroll
  for (int band = 0; band < C::kBands; ++band) {
    constexpr int kLastBandN = C::kWgN - (C::kBands - 1) * C::kBandN;
    const int band_cols = band + 1 < C::kBands ? C::kBandN : kLastBandN;
    if (lane == 0) bulk_wait_group_read<0>();  // the previous band's (or tile's) stores have read the slice
    __syncwarp();
#pragma unroll
    for (int jj = 0; jj < band_cols / 16; ++jj) {  // 16 columns: one stmatrix.x4 (two 8-column groups)
      const int j = band * (C::kBandN / 8) + 2 * jj;
      const int box = jj * 16 / C::kEpiN;
      const uint32_t chunk = 2 * (jj % (C::kEpiN / 16)) + lane / 16;  // 16-byte chunk in the box row
      stmatrix_x4(smem_addr(slice) + box * kBoxBytes + row_offset + ((chunk * 16) ^ swizzle),
                  pack_bf16x2(total[4 * j + 0], total[4 * j + 1]), pack_bf16x2(total[4 * j + 2], total[4 * j + 3]),
                  pack_bf16x2(total[4 * j + 4], total[4 * j + 5]), pack_bf16x2(total[4 * j + 6], total[4 * j + 7]));
    }
    fence_proxy_async_shared();  // each lane's stmatrix writes, before the TMA engine reads them
    const int band_n = n0 + band * C::kBandN;
    __syncwarp();
    // skip slices wholly outside (e.g. a padding tile, or rows the tile before a moved tile stores). stored_row's
    // test, written out: through the helper ptxas schedules the units differently from the build the GPU ran.
    if (lane == 0 && (!kMovesLastTile<C> || warp_m >= row_begin) && warp_m < row_end && band_n < p.n) {
#pragma unroll
      for (int box = 0; box < band_cols / C::kEpiN; ++box) {
        const int box_n = band_n + box * C::kEpiN;
        if (box > 0 && box_n >= p.n) break;  // boxes past N (the TMA store would clip them whole)
        tma_store_2d(map_out, slice + box * kBoxBytes, box_n, warp_m);
      }
      bulk_commit_group();
    }
  }
}

// fp32 output, from registers: two scalar stores per pair of columns. (A v2 store would tie the pair to an aligned
// register pair, and so every total to the register bank of its wgmma partial: each promotion FFMA would then read
// two operands from one bank.)
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::epilogue_fp32(float (&total)[kRegs], int m0, int n0, int row_begin,
                                                                int row_end) {
  float* out = static_cast<float*>(p.out);
  const int r = m0 + warp * 16 + lane / 4;
#pragma unroll
  for (int j = 0; j < C::kGroups8; ++j) {
    const int col = n0 + 8 * j + 2 * (lane % 4);
    if (col < p.n) {
      if (stored_row<C>(r, row_begin, row_end)) {
        st_global_f32(out + static_cast<int64_t>(r) * p.n + col, total[4 * j]);
        st_global_f32(out + static_cast<int64_t>(r) * p.n + col + 1, total[4 * j + 1]);
      }
      if (stored_row<C>(r + 8, row_begin, row_end)) {
        st_global_f32(out + static_cast<int64_t>(r + 8) * p.n + col, total[4 * j + 2]);
        st_global_f32(out + static_cast<int64_t>(r + 8) * p.n + col + 1, total[4 * j + 3]);
      }
    }
  }
}

// The two correctly rounded divisions of quantize_act's rules, for a >= 1e-4 (the clamped amax), Inf or NaN, without
// div.rn.f32: its slow path is a subroutine call, around which ptxas spilled the 256-row tiles' registers.
// a / 448: a * (1/448) in fp64 lies within 2^-52 (relative) of a / 448, which is never within 2^-27 of a midpoint
// between two floats (448 = 7 * 2^6: the distance is a nonzero multiple of 2^-6 / 7 of the midpoint's last place), so
// rounding it to fp32 rounds a / 448 correctly.
__device__ __forceinline__ float div_by_448_rn(float a) { return __double2float_rn(__dmul_rn(a, 1.0 / 448.0)); }
// 1 / a: two Newton steps in fp64 (fused multiply-adds) from the approximate reciprocal of a * 2^-64 (within fp32's
// normal range for every such a), within 2^-52 of 1 / a' (the second step's rounding); 1 / a is never within 2^-49
// of a midpoint between two floats (a * midpoint = 1 would need a power of two with an odd 25-bit factor), so
// rounding it to fp32 rounds 1 / a correctly. 1 / Inf = 0. (tests/test_fp8_out.py checks both bounds on every float.)
__device__ __forceinline__ float rcp_rn(float a) {
  const float scaled = a * 0x1p-64f;  // (exact)
  const double x = scaled;
  double y = rcp_approx_ftz_f32(scaled);
  y = __fma_rn(y, __fma_rn(-x, y, 1.0), y);
  y = __fma_rn(y, __fma_rn(-x, y, 1.0), y);
  return isinf(a) ? 0.f : __double2float_rn(y * 0x1p-64);
}

// quantize_act's scale and multiplier of a group with this amax (triton_kernels/quantize.py's rules, operation by
// operation): the clamp keeps NaN; scale = amax / 448 correctly rounded; the multiplier is (1 / amax) * 448, two
// roundings, or with ue8m0 the scale rounded up to a power of two on its bits and its exact reciprocal.
__device__ __forceinline__ void fp8_group_scale(float amax, bool ue8m0, float& scale, float& multiplier) {
  constexpr float kFp8Max = 448.f, kAmaxEps = 1e-4f;
  amax = max_nan_f32(amax, kAmaxEps);
  scale = div_by_448_rn(amax);
  if (ue8m0) {
    const uint32_t bits = __float_as_uint(scale), exponent = (bits >> 23) & 0xFF;
    if (exponent != 0xFF) scale = __uint_as_float((exponent + ((bits & 0x7FFFFF) != 0 ? 1u : 0u)) << 23);
    multiplier = rcp_rn(scale);
  } else {
    multiplier = mul_rn_f32(rcp_rn(amax), kFp8Max);
  }
}

// fp8 output: each total (bias added) is first rounded to bf16, the bf16 GEMM's output, then quantized as
// quantize_act quantizes that output. A thread's pairs of columns 8j + 2 * (lane % 4) + {0, 1} of rows r and r + 8
// are spread over the 4 lanes of a quad, which together hold a row's whole 128-column group: its amax is a local max
// and two shuffles. The amax is an integer max over |x|'s bits (NaN-propagating). A row's q pairs are 2-byte stores,
// its scale one store by one lane of the quad (M-major scales: the warp's 16 rows are contiguous). Groups wholly
// past N (padding tiles) and rows past row_end are not stored; N is a multiple of 128. (SwiGLU: the output has
// N / 2 columns, h's.)
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::epilogue_fp8(float (&total)[kRegs], int m0, int n0, int row_begin,
                                                               int row_end) {
  const int quad_col = 2 * (lane % 4);
  constexpr int kJ = kBlockK / 8;  // 8-column groups per 128-column group
#pragma unroll
  for (int g = 0; g < C::kWgN / kBlockK; ++g) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // rows r (elements 0, 1 of each 4) and r + 8 (elements 2, 3)
      uint32_t amax = 0;
#pragma unroll
      for (int jj = 0; jj < kJ; ++jj) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = total[4 * (kJ * g + jj) + 2 * half + e];
          x = __uint_as_float(static_cast<uint32_t>(bf16_bits(x)) << 16);
          amax = max(amax, __float_as_uint(x) & 0x7FFFFFFFu);
        }
      }
      amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
      amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
      float scale, multiplier;
      fp8_group_scale(__uint_as_float(amax), p.out_ue8m0 != 0, scale, multiplier);
      const int r = m0 + warp * 16 + lane / 4 + 8 * half, col0 = n0 + g * kBlockK;
      uint8_t* row;
      if constexpr (C::kSwiglu) {  // h: N / 2 columns
        if (!stored_row<C>(r, row_begin, row_end) || col0 >= p.n / 2) continue;
        row = static_cast<uint8_t*>(p.out) + static_cast<int64_t>(r) * (p.n / 2) + col0 + quad_col;
      } else {
        if (!stored_row<C>(r, row_begin, row_end) || col0 >= p.n) continue;
        row = static_cast<uint8_t*>(p.out) + static_cast<int64_t>(r) * p.n + col0 + quad_col;
      }
#pragma unroll
      for (int jj = 0; jj < kJ; ++jj) {
        const int i = 4 * (kJ * g + jj) + 2 * half;
        st_global_b16(reinterpret_cast<uint16_t*>(row + 8 * jj),
                      e4m3x2_bits(mul_rn_f32(total[i], multiplier), mul_rn_f32(total[i + 1], multiplier)));
      }
      if (lane % 4 == half)
        st_global_f32(p.out_scales + static_cast<int64_t>(col0 / kBlockK) * p.out_scale_stride + r, scale);
    }
  }
}

// SwiGLU (64 x 256 tiles of B's rows interleaved per 128: gate group g, then up group g; grouped, the gate group's
// rows and the up group's N/2 further, loaded into the same two halves of the tile): warpgroup 0 holds tile
// n_block's 128 gate columns, warpgroup 1 the up columns, and thread t of each holds the same rows and columns of
// its half. Grouped tiles store their group's real rows only (row_end), from registers as always. The up warpgroup
// rounds its totals to bf16 (the bf16 GEMM's output) and stores them in the staging buffer, 16 bytes per thread and
// row of it (thread-major: conflict-free), then arrives on kSwigluFull; before each hand-off it waits on kSwigluFree
// for the gate warpgroup's read of the previous one (run() balances the count: the gate warpgroup arrives once before
// its first tile, the up warpgroup waits once after its last). The gate warpgroup rounds its own totals to bf16
// likewise, takes SwiGLU (swiglu_f32, in fp32) of each pair, and quantizes the result as the fp8 output does
// (epilogue_fp8 rounds it to bf16 first): h group n_block of the tile's rows.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::epilogue_swiglu(float (&total)[kRegs], int m0, int n_block,
                                                                  int row_begin, int row_end) {
  static_assert(kRegs == 64 && L::kEpiBytesPerWG * C::kMathWGs >= kRegs * 2 * 128, "the up tile fits the buffer");
  const uint32_t stash = smem_addr(smem + L::kEpi) + tid * 16;
  if (wg == 1) {
    named_barrier_sync(kSwigluFree, 256);  // the gate warpgroup has read the previous tile (or none came before)
#pragma unroll
    for (int q = 0; q < kRegs / 8; ++q) {
      const float* x = total + 8 * q;
      st_shared_v4_b32(stash + q * 128 * 16, make_uint4(pack_bf16x2(x[0], x[1]), pack_bf16x2(x[2], x[3]),
                                                         pack_bf16x2(x[4], x[5]), pack_bf16x2(x[6], x[7])));
    }
    named_barrier_arrive(kSwigluFull, 256);
    return;
  }
  named_barrier_sync(kSwigluFull, 256);
#pragma unroll
  for (int q = 0; q < kRegs / 8; ++q) {
    const uint4 up = ld_shared_v4(stash + q * 128 * 16);
    const uint32_t words[4] = {up.x, up.y, up.z, up.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      float& g0 = total[8 * q + 2 * w];
      float& g1 = total[8 * q + 2 * w + 1];
      const uint32_t gate = pack_bf16x2(g0, g1);
      g0 = swiglu_f32(__uint_as_float(gate << 16), __uint_as_float(words[w] << 16));
      g1 = swiglu_f32(__uint_as_float(gate & 0xFFFF0000u), __uint_as_float(words[w] & 0xFFFF0000u));
    }
  }
  named_barrier_arrive(kSwigluFree, 256);
  epilogue_fp8(total, m0, n_block * kBlockK, row_begin, row_end);
}

// bf16 from registers, rows before row_end of a warp's 16: a grouped warp that straddles its group's end.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::epilogue_rows_from_registers(float (&total)[kRegs], int warp_m,
                                                                               int n0, int row_end) {
  uint16_t* out = static_cast<uint16_t*>(p.out);  // bf16
  const int r = warp_m + lane / 4;
#pragma unroll
  for (int j = 0; j < C::kGroups8; ++j) {
    const int col = n0 + 8 * j + 2 * (lane % 4);
    if (col < p.n) {
      if (r < row_end)
        st_global_b32(out + static_cast<int64_t>(r) * p.n + col, pack_bf16x2(total[4 * j], total[4 * j + 1]));
      if (r + 8 < row_end)
        st_global_b32(out + static_cast<int64_t>(r + 8) * p.n + col, pack_bf16x2(total[4 * j + 2], total[4 * j + 3]));
    }
  }
}

// Swapped tiles: the tile is out^T, rows of B (the output's columns) by tokens (the output's rows), so element
// (j, e) of this thread, row r = m0 + warp * 16 + lane / 4 (+8 for e >= 2) and column c = col0 + 8j + (e & 1), goes
// to out[c][r] (out is M x N: p.m tokens, p.n columns). The 8 lanes of a quad column write 8 consecutive bf16 of
// one output row (16 bytes), which L2 merges with the other 8 rows' half of each 32-byte sector; decode outputs
// are small next to B. Bias is per row of B here.
template <class C>
__device__ __forceinline__ void MathWarpgroup<C>::epilogue_transposed(float (&total)[kRegs], int m0, int col0) {
  const int r = m0 + warp * 16 + lane / 4;
  const float bias_lo = p.bias_kind != kBiasNone && r < p.n ? bias_at(r) : 0.f;
  const float bias_hi = p.bias_kind != kBiasNone && r + 8 < p.n ? bias_at(r + 8) : 0.f;
#pragma unroll
  for (int j = 0; j < C::kGroups8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int c = col0 + 8 * j + (e & 1), row = e < 2 ? r : r + 8;
      if (c >= p.m || row >= p.n) continue;
      const float v = total[4 * j + e] + (e < 2 ? bias_lo : bias_hi);
      const int64_t at = static_cast<int64_t>(c) * p.n + row;
      if (p.out_fp32) st_global_f32(static_cast<float*>(p.out) + at, v);
      else st_global_b16(static_cast<uint16_t*>(p.out) + at, bf16_bits(v));
    }
  }
}

}  // namespace dg
