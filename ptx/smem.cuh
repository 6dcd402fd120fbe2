// Shared-memory layout of the GEMM (SmemLayout<C>) and the wgmma matrix descriptors that point into it.
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

// Byte offsets of every region of the kernel's dynamic shared memory (from a 1024-aligned base), one layout for
// every role (C: config.cuh's KernelConfig). Split-K clusters: room for the other splits' fp32 partial tiles, and two
// more barriers. Grouped GEMMs: the table of groups. Last, the L2-side slot (16 bytes).
template <class C>
struct SmemLayout {
  static constexpr int kABytes = C::kBlockM * kBlockK;            // fp8 A tile of one stage
  static constexpr int kBBytes = C::kBlockN * kBlockK;            // fp8 B tile of one stage
  static constexpr int kSABytes = C::kBlockM * 4;                 // fp32 A scales of one stage
  static constexpr int kSASlot = round_up_c(kSABytes, 128);
  // Epilogue staging: per math warpgroup 64 rows x one band (C::kBandN columns) of bf16, each warp's 16 rows
  // stored as whole TMA boxes side by side, each dense and swizzled like the output tensor map (box rows of 32,
  // 64 or 128 bytes), which the TMA stores read.
  static constexpr int kEpiRows = 64;
  static constexpr int kEpiPitch = C::kBandN * 2;
  static constexpr int kEpiBytesPerWG = kEpiRows * kEpiPitch;
  static constexpr int kA = 0;
  static constexpr int kB = kA + C::kStages * kABytes;
  static constexpr int kSA = kB + C::kStages * kBBytes;
  static constexpr int kMeta = kSA + C::kStages * kSASlot;      // per stage: StepMeta (32 bytes)
  static constexpr int kMetaSlot = 32;
  static constexpr int kEpi = round_up_c(kMeta + C::kStages * kMetaSlot, kSwizzleAtomBytes);
  static constexpr int kRed = kEpi + C::kMathWGs * kEpiBytesPerWG;  // split-K partial tiles (rank 0 reads)
  static constexpr int kRedSlotBytes = C::kBlockM * C::kBlockN * 4;
  static constexpr int kBarriers = round_up_c(kRed + (C::kSplitK - 1) * kRedSlotBytes, 8);
  static constexpr int kRedBarriers = kBarriers + 2 * C::kStages * 8;  // [0] slots full (rank 0), [1] slot free
  static constexpr int kGroupTable = kRedBarriers + (C::kSplitK > 1 ? 2 : 0) * 8;
  static constexpr int kSideSlot = round_up_c(kGroupTable + C::kGroupTableInts * 4, 16);  // L2 sides: the claimed slot
  static constexpr int kEnd = kSideSlot + 16;
  static constexpr int kDynamicBytes = kEnd + kSwizzleAtomBytes;  // slack to align the base

  static_assert(kEpiBytesPerWG % kSwizzleAtomBytes == 0, "each staging buffer must start on a swizzle atom");
  static_assert(kABytes % kSwizzleAtomBytes == 0 && kBBytes % kSwizzleAtomBytes == 0,
                "tiles must keep 1024-byte alignment for the 128B swizzle");
  static_assert(C::kScaleLoadBytes <= kSASlot, "a stage's scale load fits its slot");
  static_assert((C::kBlockM / C::kClusterN) * kSwizzleBytes % kSwizzleAtomBytes == 0 &&
                    (C::kBlockN / C::kClusterM) * kSwizzleBytes % kSwizzleAtomBytes == 0,
                "a CTA's multicast slice of a tile must keep the swizzle alignment");
  static_assert(kDynamicBytes <= 232448, "more dynamic shared memory than an sm_90 CTA may have");
};

}  // namespace dg
