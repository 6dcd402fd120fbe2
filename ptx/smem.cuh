// Shared-memory layout of the GEMM and the wgmma matrix descriptors that point into it.
#pragma once

#include <cstdint>

#include "params.h"
#include "ptx.cuh"

namespace dg {

constexpr int kSwizzleBytes = 128;     // TMA 128B swizzle: one 128-byte fp8 row per M/N index
constexpr int kSwizzleAtomBytes = 1024;  // 8 rows x 128 B: the unit tiles must be aligned to

constexpr int round_up_c(int x, int to) { return (x + to - 1) / to * to; }

// K-major fp8 tile with 128B swizzle: rows of 128 bytes, 8-row atoms 1024 bytes apart (SBO), no LBO
// (the whole K extent of a wgmma, 32 bytes, lies inside one swizzled row). Bits: [0,14) address >> 4,
// [32,46) SBO >> 4, [62,64) swizzle mode (1 = 128B).
__device__ __forceinline__ uint64_t smem_desc_kmajor_sw128(uint32_t smem_address) {
  return static_cast<uint64_t>((smem_address & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(kSwizzleAtomBytes >> 4) << 32) | (1ull << 62);
}
// Moving along K inside the swizzle atom is a plain address offset: 32 bytes (one k32 step) = 2 units.
constexpr uint64_t kDescK32Step = 32 >> 4;

// Byte offsets of every region of the kernel's dynamic shared memory (from a 1024-aligned base).
// KS > 1 (split-K clusters): room for the other KS - 1 splits' fp32 partial tiles, and two more barriers.
// GROUP_TABLE_INTS: grouped GEMMs' table of groups (scheduler.cuh's GroupTable), then the L2-side slot (16 bytes).
template <int BM, int BN, int STAGES, int EPI_ROWS, int EPI_N, int KS = 1, int MATH_WGS = 2, int GROUP_TABLE_INTS = 0>
struct SmemLayout {
  static constexpr int kABytes = BM * kBlockK;                    // fp8 A tile of one stage
  static constexpr int kBBytes = BN * kBlockK;                    // fp8 B tile of one stage
  static constexpr int kSABytes = BM * 4;                         // fp32 A scales of one stage
  static constexpr int kSASlot = round_up_c(kSABytes, 128);
  // Epilogue staging: per math warpgroup (MATH_WGS) EPI_ROWS x EPI_N bf16 (EPI_N: one band, GemmTraits::kBandN),
  // each warp's 16 rows stored as whole TMA boxes side by side, each dense and swizzled like the output tensor
  // map (box rows of 32, 64 or 128 bytes), which the TMA stores read.
  static constexpr int kEpiPitch = EPI_N * 2;
  static constexpr int kEpiBytesPerWG = EPI_ROWS * kEpiPitch;
  static constexpr int kA = 0;
  static constexpr int kB = kA + STAGES * kABytes;
  static constexpr int kSA = kB + STAGES * kBBytes;
  static constexpr int kMeta = kSA + STAGES * kSASlot;          // per stage: StepMeta (32 bytes)
  static constexpr int kMetaSlot = 32;
  static constexpr int kEpi = round_up_c(kMeta + STAGES * kMetaSlot, kSwizzleAtomBytes);
  static constexpr int kRed = kEpi + MATH_WGS * kEpiBytesPerWG;  // split-K partial tiles (rank 0 reads)
  static constexpr int kRedSlotBytes = BM * BN * 4;
  static constexpr int kBarriers = round_up_c(kRed + (KS - 1) * kRedSlotBytes, 8);
  static constexpr int kRedBarriers = kBarriers + 2 * STAGES * 8;  // [0] slots full (rank 0), [1] slot free
  static constexpr int kGroupTable = kRedBarriers + (KS > 1 ? 2 : 0) * 8;
  static constexpr int kSideSlot = round_up_c(kGroupTable + GROUP_TABLE_INTS * 4, 16);  // L2 sides: the claimed slot
  static constexpr int kEnd = kSideSlot + 16;
  static constexpr int kDynamicBytes = kEnd + kSwizzleAtomBytes;  // slack to align the base

  static_assert(kEpiBytesPerWG % kSwizzleAtomBytes == 0, "each staging buffer must start on a swizzle atom");
  static_assert(kABytes % kSwizzleAtomBytes == 0 && kBBytes % kSwizzleAtomBytes == 0,
                "tiles must keep 1024-byte alignment for the 128B swizzle");
};

}  // namespace dg
