// The FP8 block-scaled GEMM: out (M, N) = (A * sa) @ (B * sb)^T, A (M, K) and B (N, K) fp8 e4m3 K-major,
// sa per 1x128 (M-major fp32), sb per 128x128 block, fp32 accumulation, bf16 or fp32 out (+ bias).
//
// One persistent CTA per SM, 384 threads (256 with one math warpgroup), in clusters of CM x CN CTAs (1x1, 2x1,
// 1x2 or 2x2):
//   warpgroup 0  producer: three threads (one per operand) issue the TMA loads of A, B and the A scales
//                into a ring of STAGES shared-memory stages (full/empty mbarriers), running ahead across
//                tiles, and a fourth warp publishes each step's tile and B scales. In a cluster the CM CTAs
//                of one N-block each load 1/CM of the B tile and multicast it to the others, and the CN CTAs
//                of one M-block likewise share the A tile (scheduler.cuh), so each operand crosses L2 -> SM
//                once per cluster; a stage is refilled only when the math warps of every CTA of the cluster
//                have released it. Loads carry an L2 eviction priority chosen per problem (configs.py).
//   warpgroups 1, 2  math (WGS of them: 2, or 1 on 64-row tiles): per stage (128 of K) four wgmma m64nNk32
//                into a partial accumulator, then promotion total += partial * sa[row] * sb[n-block] on
//                the CUDA cores. With two sets (ACC) the next stage's wgmmas are issued into a second
//                partial before promoting the previous one, so the tensor cores never wait on the
//                promotion (nor on the epilogue).
// Tile split between the math warpgroups: BM = 256: two 64-row slabs each (rows 64w.. and 128 + 64w..),
//                                              all BN columns, one after the other per stage (each
//                                              promotion overlaps the other warpgroup's wgmmas);
//                                         BM = 128: 64 rows each, all BN columns;
//                                         BM = 64: all 64 rows, BN/WGS columns each.
// With KS > 1 (split-K clusters, small M, no multicast) the KS CTAs of a cluster share one tile, each over
// its own range of K; rank 0 adds the others' partial sums from its shared memory and stores the tile.
#pragma once

#include <cstdint>

#include "params.h"
#include "ptx.cuh"
#include "scheduler.cuh"
#include "smem.cuh"

namespace dg {

constexpr int kProducerRegs = 40;
constexpr int kMathRegs = 232;

// Developers' switches (DEEPERGEMM_NVCC_DEFINES, part of the build's cache key), for measurements only:
//   DG_ABLATE_PROMOTION  skip all but one promotion FFMA (wrong results: times the loop without them)
//   DG_DUMMY_FFMA        with DG_ABLATE_PROMOTION: as many FFMAs on registers the wgmmas do not use
//   DG_ABLATE_EPILOGUE   skip the output stores (wrong results: times the loop without them)
//   DG_TRACE             256-row tiles: CTA 0 logs the SM clock (32 bits) at each step's events into the
//                        trace log (GemmParams::trace_log; bench/trace_case.py reads it): where the tensor cores idle
//   DG_LIFETRACE         every CTA logs 16 stamps of its life (entry, setup, first data, loop end, drain,
//                        exit, stream-K hand-offs) into the trace log (bench/lifetrace_case.py)
//   DG_SK_V4=0           the stream-K hand-off with 4-byte loads and stores (see kStreamKVectors)
//   DG_SPLIT_K_SWAP=0    the split-K hand-off's quads in register order (see kSplitKSwap)
//   DG_PAIRED_F32_STORES  fp32 epilogue with v2 stores, which puts each promotion FFMA's two accumulator
//                        operands in one register bank (the layout before the seventh session)
//   DG_INIT_RELEASE_ARRIVE  the cluster sync after the barrier inits with a release arrive (before the eighth
//                        session; the fence.mbarrier_init makes it unneeded: 3-5% slower on small shapes)
//   DG_PRODUCERS=1|2|3   how many producer threads share the loads (default 3, one per operand)
//   DG_PROMOTE_SEARCH=1|2  the promotion's switch column by binary search or a jump table (see kPromoteSearch)
//   DG_STORE_HINT=1|2    the bf16 output stores evict-first (1) or evict-last (2) in L2 (see kStoreHint)
//   DG_RELEASE_MODE=0    clustered stages freed with the partner's barrier address mapped per arrive (before the
//                        tenth session: 128x192 5-10% slower, see kReleaseMode)
//   DG_PINGPONG=1        the math warpgroups issue their wgmmas in strict turns (named barriers; default 0).
//                        It gained 5-7% on 256-row tiles while each promotion FFMA read two operands from
//                        one register bank, and costs 1-3% since that is gone (ptx/NOTES.md, seventh
//                        session). Two other orders measured slower (handing over on completion, a one-time
//                        stagger) are in the history (commits a237fe0, 3058150; fourth session).
#ifndef DG_PINGPONG
#define DG_PINGPONG 0
#endif
constexpr int kPingPongOverride = DG_PINGPONG;
constexpr uint32_t kTurnBarrier = 1;  // named barriers 1 and 2: warpgroup w waits on 1 + w for its turn
constexpr uint32_t kSkBarrier = 3;    // named barriers 3 and 4: warpgroup w's stream-K handshake
// Developers' switch DG_SK_V4=0|1 (default 1): the stream-K hand-off moves 16 bytes per thread and
// instruction (each quad's register pairs swapped, so a total still sits in the other register bank than
// its partial) or 4. The tail's loads took 7300-9100 clocks to land with 4 bytes, 4000-5200 with 16
// (median, 256x128, H100, ninth session).
#ifndef DG_SK_V4
#define DG_SK_V4 1
#endif
constexpr bool kStreamKVectors = DG_SK_V4 != 0;
// Developers' switch DG_SPLIT_K_SWAP=0|1 (default 1): split-K ranks hand their totals to rank 0 in 16-byte
// quads with each pair swapped, so no total is tied to its partial's register bank (0 same-bank promotion
// FFMAs on 64x32s16dk2 and 128x32s9dk2, against all of them with 0; ninth session).
#ifndef DG_SPLIT_K_SWAP
#define DG_SPLIT_K_SWAP 1
#endif
constexpr bool kSplitKSwap = DG_SPLIT_K_SWAP != 0;

#ifdef DG_TRACE
constexpr uint32_t kTraceSteps = 320, kTraceEvents = 8;
#endif

// DG_LIFETRACE (developers' switch, any variant): every CTA logs 16 64-bit stamps of its life into the trace
// log (GemmParams::trace_log; bench/lifetrace_case.py reads them): [cta * 16 + e], e =
//   0 globaltimer at entry, 1 clock at entry, 2 clock after the barrier-init sync (thread 0);
//   3 clock when math warpgroup 0 found its first stage full, 4 after its last step's promotion and stores,
//   5 after its stores drained, 6 after the exit sync, 7 globaltimer then (math warpgroup 0, thread 0);
//   stream-K (math warpgroup 0, thread 0): 8 the head's flag raised, 9 the tail's wait begins, 10 it ends,
//   11 the tail's first promotion begins (its loads of the head's sums have landed).
enum LifeEvent {
  kLifeEntryNs, kLifeEntry, kLifeInit, kLifeFirstData, kLifeLoopEnd, kLifeDrained, kLifeExit, kLifeExitNs,
  kLifeHeadPublished, kLifeTailWait, kLifeTailGo, kLifeTailPromote, kLifeEvents = 16
};
__device__ __forceinline__ void life_stamp(const void* log, int e, bool ns = false) {
#ifdef DG_LIFETRACE
  uint64_t t;
  if (ns) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  else asm volatile("mov.u64 %0, %%clock64;" : "=l"(t));
  static_cast<uint64_t*>(const_cast<void*>(log))[blockIdx.x * kLifeEvents + e] = t;
#endif
}
// ...read once `after` is computed (an input of the clock read: no earlier).
__device__ __forceinline__ void life_stamp_after(const void* log, int e, float after) {
#ifdef DG_LIFETRACE
  uint64_t t;
  asm volatile("mov.u64 %0, %%clock64;" : "=l"(t) : "f"(after));
  static_cast<uint64_t*>(const_cast<void*>(log))[blockIdx.x * kLifeEvents + e] = t;
#endif
}

constexpr int gcd_c(int a, int b) { return b == 0 ? a : gcd_c(b, a % b); }

template <int BM, int BN, int STAGES, int KS = 1, int WGS = 2, int GM = kGroupNone>
struct GemmTraits {
  static_assert(BM == 64 || BM == 128 || BM == 256, "BLOCK_M is 64, 128 or 256");
  // Math warpgroups: two, or one on 64-row tiles (it then takes all BN columns: wider wgmmas, one wait
  // and one promotion per step instead of two, as DeepGEMM runs its 64-row tiles).
  static_assert(WGS == 2 || (WGS == 1 && BM == 64), "two math warpgroups, or one on 64-row tiles");
  static constexpr int kMathWGs = WGS;
  static constexpr int kThreads = 128 * (1 + WGS);
  static constexpr int kMathWarps = 4 * WGS;
  static constexpr int kSlabs = BM == 256 ? 2 : 1;       // 64-row slabs per math warpgroup, 128 rows apart
  static constexpr int kWgN = BM >= 128 ? BN : BN / WGS; // columns per math warpgroup
  static constexpr int kRegs = kWgN / 2;                 // fp32 accumulators per thread per set (and slab)
  static constexpr int kGroups8 = kWgN / 8;              // 8-column groups per warpgroup
  static_assert(kWgN % 16 == 0 && kWgN <= 256, "warpgroup N must be a multiple of 16 (stmatrix.x4), <= 256");
  // bf16 epilogue: a TMA store writes a box of 16 rows x kEpiN columns (rows of kEpiN * 2 = 128, 64 or
  // 32 bytes, swizzled the way the output tensor map reads them). A band is up to 64 columns: kEpiBoxes
  // boxes staged side by side and stored after one wait (BN = 176: bands of 64, 64 and 48 columns, not
  // eleven bands of 16). The staging buffer holds 64 rows x one band per warpgroup.
  static constexpr int kEpiN = kWgN % 64 == 0 ? 64 : kWgN % 32 == 0 ? 32 : 16;
  static constexpr int kEpiBoxes = kWgN >= 64 ? 64 / kEpiN : 1;
  static constexpr int kBandN = kEpiN * kEpiBoxes;
  static constexpr int kBands = (kWgN + kBandN - 1) / kBandN;
  // grouped GEMMs: the group table (tiles before, start and end of every group) after everything else
  static constexpr int kGroupTableInts = GM != kGroupNone ? 3 * kMaxGroups + 1 : 0;
  using Layout = SmemLayout<BM, BN, STAGES, 64, kBandN, KS, WGS, kGroupTableInts>;
  // A warpgroup's columns start at multiples of gcd(kWgN, 128) inside a 128-wide B-scale block, so
  // they touch at most two blocks iff 128 - gcd + kWgN <= 256, else three (BN = 176: a tile starting 96
  // or 112 columns into a block ends in the block after next).
  static constexpr int kScaleAlign = gcd_c(kWgN, 128);
  static constexpr bool kThreeScaleBlocks = 128 - kScaleAlign + kWgN > 256;
  static_assert(128 - kScaleAlign + kWgN <= 384, "a warpgroup's columns may span at most three B-scale blocks");
  // ...and exactly one when they never cross a block boundary (BN dividing 128, or 128-aligned halves).
  static constexpr bool kOneScaleBlock = (128 % BN == 0) || (BN % 128 == 0 && kWgN % 128 == 0 && kWgN <= 128);
};

// ---------------------------------------------------------------------------------------------
// producer warpgroup: warp 0 streams A, B and the A scales with TMA; warp 1 publishes each step's
// tile coordinates and B scales into the stage, so the math warpgroups find everything a step needs
// in shared memory (no global-load latency and no index arithmetic between their wgmmas)
// ---------------------------------------------------------------------------------------------
// Position in the ring of stages: stage index and the parity of the pass over the ring (the mbarrier
// phase to wait for). Advanced step by step: no division by STAGES (often 5) on the hot path.
template <int STAGES>
struct RingPos {
  uint32_t stage = 0, phase = 0;
  __device__ __forceinline__ void advance() {
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1;
    }
  }
};

constexpr int kMaxScaleBlocks = 4;  // 128-wide B scale blocks a tile of up to 256 columns can touch (3) + pad

struct StepMeta {                   // one per stage, 32 bytes (SmemLayout::kMetaSlot)
  float sb[kMaxScaleBlocks];        // B scales of blocks n_block*BN/128 + j (clamped to the last block)
  int m_block, n_block, k_block, last_k;  // last_k: Step::last_k, plus kFirstOfTail
};
constexpr int kFirstOfTail = 4;     // StepMeta::last_k bit: Step::first_of_tail
static_assert(sizeof(StepMeta) == 32, "StepMeta must fill its 32-byte slot");

// The CTAs of the cluster that receive a multicast from this one: those of its N-block (B) or M-block (A).
template <int CM, int CN, int KS>
__device__ __forceinline__ uint16_t same_n_block_mask(const TileScheduler<CM, CN, KS>& sched) {
  return static_cast<uint16_t>(((1u << CM) - 1) << (CM * sched.rank_n));
}
template <int CM, int CN, int KS>
__device__ __forceinline__ uint16_t same_m_block_mask(const TileScheduler<CM, CN, KS>& sched) {
  uint32_t mask = 0;
#pragma unroll
  for (int j = 0; j < CN; ++j) mask |= 1u << (sched.rank_m + CM * j);
  return static_cast<uint16_t>(mask);
}

// The producer threads: lane 0 of warps 0, 2 and 3 (warp 1 publishes the step metadata), each streaming
// the operands in its mask. One thread issuing every load became the bottleneck once stages are small
// (small-M tiles: ~75 instructions per stage, ptx/NOTES.md). Each producer arrives on a stage's full barrier
// with the bytes of its operands, and so does the meta writer.
enum OperandBits : int { kLoadA = 1, kLoadB = 2, kLoadSA = 4 };
#ifndef DG_PRODUCERS
#define DG_PRODUCERS 3
#endif
// DG_PRODUCERS (a developers' switch, see above): 1 = one thread loads everything, 2 = A and its scales / B,
// 3 = A / B / A scales.
constexpr int kProducers = DG_PRODUCERS;
static_assert(kProducers >= 1 && kProducers <= 3, "DG_PRODUCERS is 1, 2 or 3");
__host__ __device__ constexpr int producer_operands(int producer) {
  return kProducers == 1 ? kLoadA | kLoadB | kLoadSA
         : kProducers == 2 ? (producer == 0 ? kLoadA | kLoadSA : kLoadB)
                           : (producer == 0 ? kLoadA : producer == 1 ? kLoadB : kLoadSA);
}
constexpr int kFullArrivals = kProducers + 1;  // each producer's arrive.expect_tx + the meta writer's arrive

// One operand of one stage: a TMA load, multicast to the cluster CTAs in `mask` when they share it, with an
// L2 eviction hint unless the priority is normal.
template <bool kShared>
__device__ __forceinline__ void load_operand(void* dst, const CUtensorMap* map, uint64_t* bar, int x, int y,
                                             uint16_t mask, bool hinted, uint64_t policy) {
  if constexpr (kShared) {
    if (hinted) {
      tma_load_2d_multicast(dst, map, bar, x, y, mask, policy);
    } else {
      tma_load_2d_multicast(dst, map, bar, x, y, mask);
    }
  } else if (hinted) {
    tma_load_2d(dst, map, bar, x, y, policy);
  } else {
    tma_load_2d(dst, map, bar, x, y);
  }
}

template <int OPERANDS, int BM, int BN, int STAGES, int GM, int SW, int CM, int CN, int KS>
__device__ __forceinline__ void produce_operands(const TileScheduler<CM, CN, KS>& sched, const GemmParams& p,
                                                 const GroupTable& groups, uint8_t* smem, uint64_t* full,
                                                 uint64_t* empty, const CUtensorMap* map_a, const CUtensorMap* map_b,
                                                 const CUtensorMap* map_sa) {
  using L = SmemLayout<BM, BN, STAGES, 64, 16>;  // the epilogue size does not move the tile offsets
  // In a cluster, A is shared by the CN CTAs of an M-block and B by the CM CTAs of an N-block: each loads
  // its slice and multicasts it. Whole tiles land in every CTA (its slice and the partners'); out-of-bounds
  // boxes count in full.
  constexpr int kASlice = BM / CN, kBSlice = BN / CM;
  static_assert(kASlice * kSwizzleBytes % kSwizzleAtomBytes == 0 && kBSlice * kSwizzleBytes % kSwizzleAtomBytes == 0,
                "operand slices must keep the swizzle alignment");
  // (swapped: the A-scale box holds the tile's BN token scales, not BM row scales)
  constexpr uint32_t kSABytes = SW ? BN * 4 : L::kSABytes;
  constexpr uint32_t kBytes = ((OPERANDS & kLoadA) ? L::kABytes : 0) + ((OPERANDS & kLoadB) ? L::kBBytes : 0) +
                              ((OPERANDS & kLoadSA) ? kSABytes : 0);
  const uint16_t a_mask = same_m_block_mask(sched), b_mask = same_n_block_mask(sched);
  const bool a_hinted = p.l2_a != kL2Normal, b_hinted = p.l2_b != kL2Normal;
  const uint64_t a_policy = l2_policy(p.l2_a), b_policy = l2_policy(p.l2_b);
  const uint32_t steps = sched.num_steps();
  if constexpr (GM != kGroupNone) {
    if (steps == 0) return;  // (grouped problems may have no M-tile at all: no work to look up)
  }
  int j = 0;
  Work w = sched.work(0);
  int k_block = w.k_begin;
  TileRows tile{};  // grouped: the work's rows of A and its group's rows of B, looked up once per work
  if constexpr (GM != kGroupNone) tile = groups.rows(w.m_block, BM);
  RingPos<STAGES> pos;
  for (uint32_t s = 0; s < steps; ++s, pos.advance()) {
    const uint32_t stage = pos.stage;
    mbar_wait(&empty[stage], pos.phase ^ 1);  // the first pass finds every stage free
#ifdef DG_TRACE
    if ((OPERANDS & kLoadA) != 0 && blockIdx.x == 0 && s < kTraceSteps) {  // after the math warpgroups' events
      uint32_t t;
      asm volatile("mov.u32 %0, %%clock;" : "=r"(t));
      static_cast<uint32_t*>(const_cast<void*>(p.trace_log))[kTraceSteps * 2 * kTraceEvents + s] = t;
    }
#endif
    mbar_arrive_expect_tx(&full[stage], kBytes);
    // A padding tile of a cluster loads real rows (its results are never stored); B rows past N read as 0
    // (grouped: the next group's rows, whose products land in columns that are never stored).
    const int m_load = GM != kGroupNone ? tile.row0 : min(w.m_block, sched.m_tiles - 1) * BM;
    const int n_load = (GM != kGroupNone ? tile.group * p.n : 0) + w.n_block * BN;
    if constexpr ((OPERANDS & kLoadA) != 0) {
      load_operand<(CN > 1)>(smem + L::kA + stage * L::kABytes + sched.rank_n * kASlice * kSwizzleBytes, map_a,
                             &full[stage], k_block * kBlockK, m_load + sched.rank_n * kASlice, a_mask, a_hinted,
                             a_policy);
    }
    if constexpr ((OPERANDS & kLoadB) != 0) {
      load_operand<(CM > 1)>(smem + L::kB + stage * L::kBBytes + sched.rank_m * kBSlice * kSwizzleBytes, map_b,
                             &full[stage], k_block * kBlockK, n_load + sched.rank_m * kBSlice, b_mask,
                             b_hinted, b_policy);
    }
    if constexpr ((OPERANDS & kLoadSA) != 0) {  // (swapped: the scales of the tile's tokens, the N' side)
      load_operand<false>(smem + L::kSA + stage * L::kSASlot, map_sa, &full[stage], SW ? n_load : m_load, k_block, 0,
                          SW ? b_hinted : a_hinted, SW ? b_policy : a_policy);
    }
    if (++k_block == w.k_end && s + 1 < steps) {  // incremental: no division per step
      w = sched.work(++j);
      k_block = w.k_begin;
      if constexpr (GM != kGroupNone) tile = groups.rows(w.m_block, BM);
    }
  }
}

// The B producer with L2-side placement (GemmParams::b_slots): a whole warp. A step's B slice is `boxes` loads of
// b_box_rows rows from pool slots found in the slot table; lane l looks up box l % boxes of step base + l / boxes
// (32 / boxes steps per batch: one table latency per batch, the next batch's looked up before this one is
// issued) and issues that load itself when the step comes. Lane 0 arms the stage's barrier first.
template <int BM, int BN, int STAGES, int CM, int CN, int KS>
__device__ __forceinline__ void produce_placed_b(const TileScheduler<CM, CN, KS>& sched, const GemmParams& p,
                                                 uint8_t* smem, uint64_t* full, uint64_t* empty,
                                                 const CUtensorMap* map_b, int lane) {
  using L = SmemLayout<BM, BN, STAGES, 64, 16>;
  constexpr int kBSlice = BN / CM;  // this CTA's rows of the B tile (multicast to the pair)
  const int boxes = kBSlice / p.b_box_rows;  // <= 32: boxes are >= 8 rows
  const uint32_t per_batch = static_cast<uint32_t>(32 / boxes);
  const int my_step = lane / boxes, my_box = lane - my_step * boxes;
  const uint32_t steps = sched.num_steps();
  const uint16_t mask = same_n_block_mask(sched);
  const bool hinted = p.l2_b != kL2Normal;
  const uint64_t policy = l2_policy(p.l2_b);
  const int slab_mask = (1 << p.b_slab_shift) - 1;
  // the pool row of this lane's box in step base + my_step (-1: none)
  auto locate = [&](uint32_t base) {
    const uint32_t s = base + static_cast<uint32_t>(my_step);
    if (static_cast<uint32_t>(my_step) >= per_batch || s >= steps) return -1;
    const Step st = sched.step(s);
    const int row = st.n_block * BN + sched.rank_m * kBSlice + my_box * p.b_box_rows;
    const int slot = ld_global_nc_s32(p.b_slots + st.k_block * p.b_slot_stride + (row >> p.b_slab_shift));
    return (slot << p.b_slab_shift) + (row & slab_mask);
  };
  uint8_t* dst = smem + L::kB + (sched.rank_m * kBSlice + my_box * p.b_box_rows) * kSwizzleBytes;
  RingPos<STAGES> pos;
  int y = locate(0);
  for (uint32_t base = 0; base < steps; base += per_batch) {
    const int y_next = locate(base + per_batch);
    const uint32_t count = min(per_batch, steps - base);
    for (uint32_t j = 0; j < count; ++j, pos.advance()) {
      mbar_wait(&empty[pos.stage], pos.phase ^ 1);
      if (lane == 0) mbar_arrive_expect_tx(&full[pos.stage], L::kBBytes);
      __syncwarp();
      if (static_cast<uint32_t>(my_step) == j) {
        load_operand<(CM > 1)>(dst + pos.stage * L::kBBytes, map_b, &full[pos.stage], 0, y, mask, hinted, policy);
      }
    }
    y = y_next;
  }
}

// Lane i prepares step base + i (its B scales are global loads: 32 steps share one latency), then the
// warp hands the steps to the stages in order, lane j writing step base + j and arriving on full. The
// next batch's loads are issued before this batch is handed out, so their latency hides behind it.
// Grouped GEMMs publish the tile's first row in m_block and its group's end row in k_block (which the math
// warpgroups do not read otherwise), and take the B scales of the tile's group.
template <int BM, int BN, int GM, int SW, int CM, int CN, int KS>
__device__ __forceinline__ StepMeta prepare_step_meta(const TileScheduler<CM, CN, KS>& sched, const GemmParams& p,
                                                      const GroupTable& groups, uint32_t step, uint32_t steps) {
  StepMeta meta;
  if (step < steps) {
    const Step st = sched.step(step);
    // (swapped: B's rows are the tile's M' rows; a 64-row tile lies in one 128-row scale block)
    const int nb0 = SW ? st.m_block * BM / kBlockK : st.n_block * BN / kBlockK;
    const int nb_last = ((SW ? p.m : p.n) - 1) / kBlockK;
    TileRows tile{};
    if constexpr (GM != kGroupNone) tile = groups.rows(st.m_block, BM);
    const float* col = p.b_scales + (static_cast<int64_t>(tile.group) * (nb_last + 1) + nb0) * p.k_blocks + st.k_block;
#pragma unroll
    for (int j = 0; j < kMaxScaleBlocks; ++j) meta.sb[j] = ld_global_nc_f32(col + min(j, nb_last - nb0) * p.k_blocks);
    meta.m_block = GM != kGroupNone ? tile.row0 : st.m_block;
    meta.n_block = st.n_block;
    meta.k_block = GM != kGroupNone ? tile.row_end : st.k_block;
    meta.last_k = st.last_k | (st.first_of_tail ? kFirstOfTail : 0);
  }
  return meta;
}

template <int BM, int BN, int STAGES, int GM, int SW, int CM, int CN, int KS>
__device__ __forceinline__ void publish_step_meta(const TileScheduler<CM, CN, KS>& sched, const GemmParams& p,
                                                  const GroupTable& groups, uint8_t* smem, uint64_t* full,
                                                  uint64_t* empty, int lane) {
  using L = SmemLayout<BM, BN, STAGES, 64, 16>;
  const uint32_t steps = sched.num_steps();
  RingPos<STAGES> pos;
  StepMeta meta = prepare_step_meta<BM, BN, GM, SW>(sched, p, groups, lane, steps);
  for (uint32_t base = 0; base < steps; base += 32) {
    const StepMeta next = prepare_step_meta<BM, BN, GM, SW>(sched, p, groups, base + 32 + lane, steps);
    const uint32_t count = min(32u, steps - base);
    for (uint32_t j = 0; j < count; ++j, pos.advance()) {
      mbar_wait(&empty[pos.stage], pos.phase ^ 1);
      if (lane == static_cast<int>(j)) {
        *reinterpret_cast<StepMeta*>(smem + L::kMeta + pos.stage * L::kMetaSlot) = meta;
        mbar_arrive(&full[pos.stage]);  // release: the meta store is visible to whoever sees the phase flip
      }
      __syncwarp();
    }
    meta = next;
  }
}

// Grouped GEMMs: one warp fills the shared-memory group table (scheduler.cuh) from the row counts on the
// device, 32 groups at a time (two prefix sums over the warp: segment rows and M-tiles), before the
// kernel's first barrier. Reading the counts here, not on the host, keeps the launch free of host
// synchronization (CUDA graphs replay it with new counts).
template <int BM, int GM, int CM>
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
    const int span = GM == kGroupContiguous && g < p.groups ? group_span(requested, p.group_stride, p.m) : 0;
    const int span_incl = warp_inclusive_sum(span);
    const GroupExtent e = group_extent(GM, g, requested, rows_done + span_incl - span, p.group_stride, p.m);
    const int tiles = g < p.groups ? group_tiles(e.rows, BM, CM) : 0;
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

// ---------------------------------------------------------------------------------------------
// math warpgroups
// ---------------------------------------------------------------------------------------------
// What a step's promotion needs, read from the stage when the step is acquired.
constexpr int kMaxSlabs = 2;
constexpr int kMaxSwapCols = 64;  // swapped tiles: at most 64 tokens (columns) per tile
struct StepScales {
  float f_lo[kMaxSlabs], f_hi[kMaxSlabs];  // per slab: A scales of the thread's rows r, r + 8 times the B scale
  float g_lo[kMaxSlabs], g_hi[kMaxSlabs];  // of the warpgroup's first 128-column block (f) and of the next (g)
  float h_lo[kMaxSlabs], h_hi[kMaxSlabs];  // ...and of the one after (GemmTraits::kThreeScaleBlocks only)
  int sb_switch;        // first warpgroup column that uses g (>= kWgN: none); h from sb_switch + 128
  float cs[kMaxSwapCols / 4];  // swapped (SW): the scale of each of the thread's columns (its tokens) times B's
  int m_block, n_block, last_k;  // last_k: 0, or 1 + TileFixup (scheduler.cuh); grouped: m_block is a row
  int row_end;          // grouped: the tile's group ends at this row (rows from here on are not stored)
  bool first_of_tail;   // a stream-K tail starts: its sums start from the previous cluster's head
  uint32_t stage;       // the stage the step's operands sit in (freed when it retires)
};

// Developers' switch DG_EARLY_ACQUIRE=0|1 (default 1): when a warpgroup waits for the next step's stage
// and reads its scales (acquire). 1 = off the path from one of its wgmma groups completing to its next
// issue, where only the promotion should be (the other warpgroup's wgmmas are all the tensor cores have
// meanwhile): with two partial sets or two slabs before the wait for the wgmmas in flight; with one
// partial set right after that wait and the stage's release, before the promotion (earlier, a late
// stage would hold back the release). 0 = after the promotion (the order before, for measurements).
// Measured 2026-11-25, H100 (ptx/NOTES.md): +9% on 256x128, +4% on 128x128 "w", +6..12% on 128x192.
#ifndef DG_EARLY_ACQUIRE
#define DG_EARLY_ACQUIRE 1
#endif
constexpr bool kEarlyAcquire = DG_EARLY_ACQUIRE != 0;

// Developers' switch DG_STORE_HINT=0|1|2 (default 0): the bf16 output's TMA stores carry no L2 hint (0),
// evict-first (1: the output is written once and never read here, so its lines should not push the operands
// that later tiles re-read out of L2) or evict-last (2). Measured 2026-11-25, H100 (ptx/NOTES.md, eleventh
// session): 1 within +-1% of 0 on the short-K shapes (as many losses as gains), 2 up to 5% slower.
#ifndef DG_STORE_HINT
#define DG_STORE_HINT 0
#endif
constexpr int kStoreHint = DG_STORE_HINT;

// Developers' switch DG_PROMOTE_SEARCH=0|1|2 (default 0; 1 and 2 are compile-checked, not yet run on a GPU):
// where a warpgroup's columns may cross a B-scale block boundary at several places (BN = 176: eight), the
// promotion's compile-time variant is found by a chain of comparisons (0), by binary search (1: three
// branches for 176) or through a switch statement (2: ptxas emits a jump table, one BRX). Why try:
// with its promotion ablated 128x176 runs per column as fast as 128x192 (0.98), with it 0.89 (eleventh
// session, ptx/NOTES.md); the chain puts up to seven branches between the wgmma wait and the next issue.
#ifndef DG_PROMOTE_SEARCH
#define DG_PROMOTE_SEARCH 0
#endif
constexpr int kPromoteSearch = DG_PROMOTE_SEARCH;

// How a clustered stage is freed in every CTA of the cluster (DG_RELEASE_MODE, developers' switch): 1 (the
// default) = lane 0 arrives on each CTA's barrier at an address mapped (mapa) once, before the loop; 0 = mapped
// per arrive (before the tenth session). Measured 2026-11-25, H100, one call (ptx/NOTES.md): 1 against 0,
// 128x192s5pc2 5-10% faster on seven large shapes, 256x128s4pc1x2 0.3-2%. Not kept (slower): lane r
// arriving on CTA r's barrier (equal to 1), the own CTA's arrive in the local form (-3..-6%), both arrives
// placed right after the wait through a __syncwarp each (-10%).
#ifndef DG_RELEASE_MODE
#define DG_RELEASE_MODE 1
#endif
constexpr int kReleaseMode = DG_RELEASE_MODE;

template <int BM, int BN, int STAGES, int ACC, int CM, int CN, int KS, int WGS, int GM, int SW>
struct MathWarpgroup {
  static constexpr int kCluster = CM * CN;  // the multicast group: CTAs that share (and release) stages
  using T = GemmTraits<BM, BN, STAGES, KS, WGS, GM>;
  using L = typename T::Layout;
  static_assert(KS == 1 || T::kSlabs == 1, "split-K clusters are built for one-slab tiles");
  static_assert(!SW || (BM == 64 && WGS == 1 && CM * CN == 1 && GM == kGroupNone && BN <= kMaxSwapCols),
                "swapped tiles: 64 rows of B, one math warpgroup, at most 64 tokens, no multicast, not grouped");
  static constexpr int kRegs = T::kRegs;
  // Turn-taking (DG_PINGPONG above, off by default): the two warpgroups issue in strict alternation.
  static constexpr bool kTurns = WGS > 1 && kPingPongOverride == 1;

  const GemmParams& p;
  const TileScheduler<CM, CN, KS>& sched;
  const CUtensorMap* map_out;  // bf16 output, box 16 rows (one warp's) x kEpiN columns
  uint8_t* smem;
  uint64_t* full;
  uint64_t* empty;
  uint32_t empty_remote[kCluster];  // the empty barriers' base in cluster CTA r's window (mapped once)
  int wg;          // 0 or 1
  int tid;         // thread in the warpgroup
  int warp, lane;
  uint64_t* red;   // split-K: [0] the slots in rank 0 are full, [1] this rank's slot in rank 0 is free
  uint32_t red_phase = 0;  // parity of the tiles finished so far (split-K hand-offs)
  int row_base;    // first tile row of this warpgroup (A rows, epilogue rows)
  int col_base;    // first tile column of this warpgroup
  RingPos<STAGES> pos;  // where the next issued step's operands are

  __device__ __forceinline__ MathWarpgroup(const GemmParams& params, const TileScheduler<CM, CN, KS>& s,
                                           const CUtensorMap* out_map, uint8_t* sm, uint64_t* f, uint64_t* e,
                                           uint64_t* reduction, int math_wg)
      : p(params), sched(s), map_out(out_map), smem(sm), full(f), empty(e), red(reduction), wg(math_wg) {
    tid = threadIdx.x % 128;
    warp = tid / 32;
    lane = tid % 32;
    if constexpr (kCluster > 1 && kReleaseMode == 1) {
#pragma unroll
      for (uint32_t r = 0; r < kCluster; ++r) empty_remote[r] = map_shared_to_cta(smem_addr(empty), r);
    }
    row_base = BM >= 128 ? 64 * wg : 0;
    col_base = BM >= 128 ? 0 : T::kWgN * wg;
  }

#ifdef DG_TRACE
  // Event e of step s of this warpgroup (CTA 0, one thread): [(s * 2 + wg) * kTraceEvents + e]. A
  // predicated clock read and store each (no memory clobber: the wgmma and barrier asm around them
  // are volatile too, so the events stay in program order with them).
  __device__ __forceinline__ void trace(uint32_t s, int e) const {
    uint32_t* log = static_cast<uint32_t*>(const_cast<void*>(p.trace_log));
    if (blockIdx.x == 0 && tid == 0 && s < kTraceSteps) {
      uint32_t t;
      asm volatile("mov.u32 %0, %%clock;" : "=r"(t));
      log[(s * 2 + wg) * kTraceEvents + e] = t;
    }
  }
#else
  __device__ __forceinline__ void trace(uint32_t, int) const {}
#endif
#ifdef DG_LIFETRACE
  bool first_data_logged = false;
#endif

  // Wait for the next step's data, note its scales and tile, issue its four k32 wgmmas into acc (one
  // commit group).
  __device__ __forceinline__ void issue(float (&acc)[kRegs], StepScales& sc) {
    acquire(sc);
    issue_slab(acc, sc, 0);
  }

  // Wait for the next step's stage; note its tile and, per slab, the products of the A and B scales that
  // its promotion multiplies by.
  __device__ __forceinline__ void acquire(StepScales& sc) {
    const uint32_t stage = pos.stage;
    mbar_wait(&full[stage], pos.phase);
#ifdef DG_LIFETRACE
    if (wg == 0 && tid == 0 && !first_data_logged) life_stamp(p.trace_log, kLifeFirstData), first_data_logged = true;
#endif
    pos.advance();
    sc.stage = stage;
    const uint32_t meta = smem_addr(smem + L::kMeta + stage * L::kMetaSlot);
    const uint4 coords = ld_shared_v4(meta + 4 * kMaxScaleBlocks);
    sc.m_block = static_cast<int>(coords.x);
    sc.n_block = static_cast<int>(coords.y);
    if constexpr (GM != kGroupNone) sc.row_end = static_cast<int>(coords.z);
    sc.last_k = static_cast<int>(coords.w & (kFirstOfTail - 1));
    sc.first_of_tail = (coords.w & kFirstOfTail) != 0;
    if constexpr (SW) {  // swapped: one B scale for the tile's rows, one token scale per column
      const float sb = ld_shared_f32(meta);
      const uint32_t sa_addr = smem_addr(smem + L::kSA + stage * L::kSASlot) + (col_base + 2 * (lane % 4)) * 4;
#pragma unroll
      for (int j = 0; j < T::kGroups8; ++j) {  // (the pair's two token scales are adjacent: one 8-byte load)
        float lo, hi;
        ld_shared_v2_f32(sa_addr + 8 * j * 4, lo, hi);
        sc.cs[2 * j] = sb * lo;
        sc.cs[2 * j + 1] = sb * hi;
      }
      return;
    }
    const int n_tile = sc.n_block * BN, n0 = n_tile + col_base;
    const int j = n0 / kBlockK - n_tile / kBlockK;  // which of the tile's scale blocks this warpgroup starts in
    const float sb_lo = ld_shared_f32(meta + 4 * j);
    const float sb_hi = ld_shared_f32(meta + 4 * (j + 1));
    const float sb_h = T::kThreeScaleBlocks ? ld_shared_f32(meta + 4 * (j + 2)) : 0.f;
    sc.sb_switch = (n0 / kBlockK + 1) * kBlockK - n0;
#pragma unroll
    for (int slab = 0; slab < T::kSlabs; ++slab) {
      const uint32_t sa_addr =
          smem_addr(smem + L::kSA + stage * L::kSASlot) + (row_base + 128 * slab + warp * 16 + lane / 4) * 4;
      const float sa_lo = ld_shared_f32(sa_addr), sa_hi = ld_shared_f32(sa_addr + 8 * 4);
      sc.f_lo[slab] = sa_lo * sb_lo;
      sc.f_hi[slab] = sa_hi * sb_lo;
      sc.g_lo[slab] = sa_lo * sb_hi;
      sc.g_hi[slab] = sa_hi * sb_hi;
      if constexpr (T::kThreeScaleBlocks) {
        sc.h_lo[slab] = sa_lo * sb_h;
        sc.h_hi[slab] = sa_hi * sb_h;
      }
    }
  }

  // Issue slab `slab`'s four k32 wgmmas (stage sc.stage) into acc, one commit group.
  __device__ __forceinline__ void issue_slab(float (&acc)[kRegs], const StepScales& sc, int slab) {
    const uint32_t stage = sc.stage;
    const int rows = row_base + 128 * slab;
    const uint64_t desc_a =
        smem_desc_kmajor_sw128(smem_addr(smem + L::kA + stage * L::kABytes + rows * kSwizzleBytes));
    const uint64_t desc_b =
        smem_desc_kmajor_sw128(smem_addr(smem + L::kB + stage * L::kBBytes + col_base * kSwizzleBytes));
#pragma unroll
    for (int i = 0; i < kRegs; ++i) fence_operand(acc[i]);
    if constexpr (kTurns) named_barrier_sync(kTurnBarrier + wg, 256);  // this warpgroup's turn
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < kBlockK / 32; ++k) {
      Wgmma<T::kWgN>::mma(acc, desc_a + k * kDescK32Step, desc_b + k * kDescK32Step, k);
    }
    wgmma_commit();  // no operand fence here: touching acc before the wait would make ptxas serialize
    if constexpr (kTurns) named_barrier_arrive(kTurnBarrier + (wg ^ 1), 256);  // the other's turn
  }

  // The step's wgmmas have completed: free its stage in every CTA of the cluster (each one's producer
  // multicasts into it). Done as soon as possible: the producer refills the stage only after this.
  __device__ __forceinline__ void release(const StepScales& sc) {
    __syncwarp();
    if (lane == 0) {
      if constexpr (kCluster == 1) {
        mbar_arrive(&empty[sc.stage]);
      } else if constexpr (kReleaseMode == 1) {
#pragma unroll
        for (uint32_t r = 0; r < kCluster; ++r) mbar_arrive_remote(empty_remote[r] + sc.stage * 8);
      } else {
#pragma unroll
        for (uint32_t r = 0; r < kCluster; ++r) mbar_arrive_cluster(&empty[sc.stage], r);
      }
    }
  }

  // Where a tile's stored rows end: the problem's last row, or (grouped) the end of the tile's group.
  __device__ __forceinline__ int row_end_of(const StepScales& sc) const { return GM != kGroupNone ? sc.row_end : p.m; }

  // Promote a completed step's partial sums into total, and finish the tile if it was the tile's last
  // K block (one-slab tiles; 256-row tiles finish both slabs in run()).
  // (Also the last step of the one-set loop: no tile follows.)
  __device__ __forceinline__ void promote(float (&acc)[kRegs], float (&total)[kRegs], const StepScales& sc) {
    promote_only(acc, total, sc, 0);
    if (sc.last_k) {
      finish_tile(total, stream_k_head_done(total, sc), sc.n_block, row_end_of(sc));
#pragma unroll
      for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
    }
  }

  // After a step's promotion: if it was its tile's last K block (of this CTA's part), finish the tile
  // (store it, or hand its partial sums on) and start the sums of the tile whose first step is `next`.
  __device__ __forceinline__ void finish_if_last(float (&total)[kRegs], const StepScales& sc, const StepScales& next) {
    if (sc.last_k) {
      finish_tile(total, stream_k_head_done(total, sc), sc.n_block, row_end_of(sc));
      start_sums(total, next, 0);
    }
  }

  // A tile's sums start at zero, or for a stream-K tail from the previous cluster's head (loaded straight
  // into them: the loads' latency hides behind the step's wgmmas until its promotion needs them).
  __device__ __forceinline__ void start_sums(float (&total)[kRegs], const StepScales& first, int slab) {
    if (KS == 1 && ACC == kAccSingle && GM == kGroupNone && first.first_of_tail) {
      if (slab == 0) stream_k_wait();
      const float* slot = stream_k_slot(sched.cluster - 1) + slab * kRegs * (128 * WGS);
      if constexpr (kStreamKVectors) {
#pragma unroll
        for (int i = 0; i < kRegs; i += 4) {
          ld_global_cg_v4_f32(slot + i * (128 * WGS), total[i + 1], total[i], total[i + 3], total[i + 2]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < kRegs; ++i) total[i] = ld_global_cg_f32(slot + i * (128 * WGS));
      }
    } else {
#pragma unroll
      for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
    }
  }

  // Before a tile's store (sc: its last step): a stream-K head writes its (slab 0) partial sums to the
  // workspace and is not stored: it returns an M-block past the end, whose stores the epilogue skips (the
  // same code path either way: a path that skipped the epilogue made ptxas spill the totals). Returns
  // the M-block to store.
  __device__ __forceinline__ int stream_k_head_done(const float (&total)[kRegs], const StepScales& sc) {
    if (KS == 1 && ACC == kAccSingle && GM == kGroupNone && sc.last_k - 1 == kFixContribute) {
      stream_k_write(total, 0);
      if constexpr (T::kSlabs == 1) stream_k_publish();
      return (p.m + BM - 1) / BM;
    }
    return sc.m_block;
  }
  // ...and slab 1 of 256-row tiles (after slab 0): the flag covers both.
  __device__ __forceinline__ void stream_k_head_done_slab1(const float (&total1)[kRegs], const StepScales& sc) {
    if (GM == kGroupNone && sc.last_k - 1 == kFixContribute) {
      stream_k_write(total1, 1);
      stream_k_publish();
    }
  }

  // Stream-K (scheduler.cuh): a cluster's slot holds the partial sums of the tile head it did, one BM x BN
  // fp32 block per CTA. Each thread moves its own accumulators (coalesced), so the owner's thread t adds the
  // same output elements.
  // 16-byte vectors (kStreamKVectors): thread t's elements 4q..4q+3 are contiguous, at (slab * kRegs + 4q) *
  // threads + 4t, moved with each pair swapped ({1, 0, 3, 2}) so the quad's aligned registers do not tie a
  // total to its partial's register bank (the promotion's bank conflicts). Scalar (DG_SK_V4=0): element
  // (slab, i) of thread t at (slab * kRegs + i) * threads + t.
  __device__ __forceinline__ int stream_k_slot_index(int cluster) const {  // this CTA's slot (and flags)
    return (sched.slot_base + cluster) * (CM * CN) + sched.rank_m + CM * sched.rank_n;
  }
  __device__ __forceinline__ float* stream_k_slot(int cluster) const {
    const int slot = stream_k_slot_index(cluster);
    if constexpr (kStreamKVectors) {
      return opaque_ptr(p.sk_partials + static_cast<int64_t>(slot) * (BM * BN) + (wg * 128 + tid) * 4);
    } else {
      return opaque_ptr(p.sk_partials + static_cast<int64_t>(slot) * (BM * BN) + wg * 128 + tid);
    }
  }
  __device__ __forceinline__ int* stream_k_flag(int cluster) const {
    return p.sk_flags + stream_k_slot_index(cluster) * WGS + wg;
  }
  __device__ __forceinline__ void stream_k_write(const float (&total)[kRegs], int slab) {
    float* slot = stream_k_slot(sched.cluster) + slab * kRegs * (128 * WGS);
    if constexpr (kStreamKVectors) {
#pragma unroll
      for (int i = 0; i < kRegs; i += 4) {
        st_global_v4_f32(slot + i * (128 * WGS), total[i + 1], total[i], total[i + 3], total[i + 2]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kRegs; ++i) st_global_f32(slot + i * (128 * WGS), total[i]);
    }
  }
  // Every thread of this warpgroup has written its part: raise the warpgroup's flag.
  __device__ __forceinline__ void stream_k_publish() {
    named_barrier_sync(kSkBarrier + wg, 128);
    if (tid == 0) flag_release_gpu(stream_k_flag(sched.cluster), 1);
    if (wg == 0 && tid == 0) life_stamp(p.trace_log, kLifeHeadPublished);
  }
  // Wait for the previous cluster's warpgroup to have published its head (its first work), and lower
  // its flag for the next launch.
  __device__ __forceinline__ void stream_k_wait() {
    if (tid == 0) {
      if (wg == 0) life_stamp(p.trace_log, kLifeTailWait);
      int* flag = stream_k_flag(sched.cluster - 1);
      while (flag_acquire_gpu(flag) == 0) {
      }
      flag_store_relaxed_gpu(flag, 0);
      if (wg == 0) life_stamp(p.trace_log, kLifeTailGo);
    }
    named_barrier_sync(kSkBarrier + wg, 128);
  }

  // A finished tile: stored, or with split-K joined first. The other ranks' partial sums go to slots in
  // rank 0's shared memory (st.shared::cluster), rank 0 adds them to its own in rank order (a fixed
  // order: deterministic) and stores the tile. Each thread moves its own accumulators, so slot element
  // (i, thread) is the same output element in every rank. Once per tile.
  __device__ __forceinline__ void finish_tile(float (&total)[kRegs], int m_block, int n_block, int row_end) {
    if constexpr (KS > 1) {
      constexpr uint32_t kMathThreads = 128 * WGS;
      const uint32_t thread = wg * 128 + tid;  // of the kMathThreads math threads
      const uint32_t slots = smem_addr(smem + L::kRed);
      if (sched.rank_k != 0) {
        mbar_wait<true>(&red[1], red_phase ^ 1);  // rank 0 has read this slot's previous tile
        const uint32_t mine = map_shared_to_cta(slots + (sched.rank_k - 1) * L::kRedSlotBytes, 0);
#pragma unroll
        for (int i = 0; i < kRegs; i += 4) {
          // pairs swapped (kSplitKSwap): the quad's aligned registers then keep each total out of its
          // partial's register bank
          const int a = kSplitKSwap ? 1 : 0;
          st_shared_cluster_v4_f32(mine + ((i / 4) * kMathThreads + thread) * 16, total[i + a], total[i + 1 - a],
                                   total[i + 2 + a], total[i + 3 - a]);
        }
        mbar_arrive_cluster<true>(&red[0], 0);
      } else {
        mbar_wait<true>(&red[0], red_phase);
#pragma unroll
        for (int r = 1; r < KS; ++r) {
#pragma unroll
          for (int i = 0; i < kRegs; i += 4) {
            const uint4 v = ld_shared_v4(slots + (r - 1) * L::kRedSlotBytes + ((i / 4) * kMathThreads + thread) * 16);
            total[i] += __uint_as_float(kSplitKSwap ? v.y : v.x);
            total[i + 1] += __uint_as_float(kSplitKSwap ? v.x : v.y);
            total[i + 2] += __uint_as_float(kSplitKSwap ? v.w : v.z);
            total[i + 3] += __uint_as_float(kSplitKSwap ? v.z : v.w);
          }
        }
#pragma unroll
        for (int r = 1; r < KS; ++r) mbar_arrive_cluster<true>(&red[1], r);
        epilogue(total, m_block, n_block, 0, row_end);
      }
      red_phase ^= 1;
    } else {
      epilogue(total, m_block, n_block, 0, row_end);
    }
  }

  __device__ __forceinline__ void promote_only(float (&acc)[kRegs], float (&total)[kRegs], const StepScales& sc,
                                               int slab) {
#pragma unroll
    for (int i = 0; i < kRegs; ++i) fence_operand(acc[i]);
#ifdef DG_ABLATE_PROMOTION
    total[0] += acc[0];  // one use keeps the wgmmas (their asm has outputs only the promotion reads)
#ifdef DG_DUMMY_FFMA  // as many FFMAs as the promotion, on registers the wgmmas do not touch
#pragma unroll
    for (int j = 0; j < kRegs; ++j) total[1 + j % 8] = fmaf(total[1 + j % 8], sc.f_lo[slab], sc.g_lo[slab]);
#endif
    return;
#endif
    if constexpr (SW) {  // swapped: a scale per column (token), the same for both rows of the thread
#pragma unroll
      for (int j = 0; j < T::kGroups8; ++j) {
        total[4 * j + 0] = fmaf(acc[4 * j + 0], sc.cs[2 * j], total[4 * j + 0]);
        total[4 * j + 1] = fmaf(acc[4 * j + 1], sc.cs[2 * j + 1], total[4 * j + 1]);
        total[4 * j + 2] = fmaf(acc[4 * j + 2], sc.cs[2 * j], total[4 * j + 2]);
        total[4 * j + 3] = fmaf(acc[4 * j + 3], sc.cs[2 * j + 1], total[4 * j + 3]);
      }
      return;
    }
    const float f_lo = sc.f_lo[slab], f_hi = sc.f_hi[slab], g_lo = sc.g_lo[slab], g_hi = sc.g_hi[slab];
    const float h_lo = T::kThreeScaleBlocks ? sc.h_lo[slab] : 0.f, h_hi = T::kThreeScaleBlocks ? sc.h_hi[slab] : 0.f;
    if constexpr (T::kOneScaleBlock) {
      promote_split<T::kWgN>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
    } else {
      if constexpr (kPromoteSearch == 2) {
        promote_table(sc.sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
      } else if constexpr (kPromoteSearch) {
        promote_search<T::kScaleAlign, (T::kWgN < kBlockK ? T::kWgN : kBlockK)>(sc.sb_switch, acc, total, f_lo, f_hi,
                                                                              g_lo, g_hi, h_lo, h_hi);
      } else {
        promote_dispatch<T::kScaleAlign>(sc.sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
      }
    }
  }

  // Columns [0, SWITCH) of the warpgroup take the first B-scale block's factors (f), the next 128 the
  // next block's (g), any after those the third block's (h); 8-column groups never straddle a block.
  // SWITCH is a compile-time constant: a runtime select per group would cost almost as many instructions
  // as the FFMAs it feeds.
  template <int SWITCH>
  __device__ __forceinline__ void promote_split(float (&acc)[kRegs], float (&total)[kRegs], float f_lo, float f_hi,
                                                float g_lo, float g_hi, float h_lo, float h_hi) {
#pragma unroll
    for (int j = 0; j < T::kGroups8; ++j) {
      const float s_lo = 8 * j >= SWITCH + kBlockK ? h_lo : 8 * j >= SWITCH ? g_lo : f_lo;
      const float s_hi = 8 * j >= SWITCH + kBlockK ? h_hi : 8 * j >= SWITCH ? g_hi : f_hi;
      total[4 * j + 0] = fmaf(acc[4 * j + 0], s_lo, total[4 * j + 0]);
      total[4 * j + 1] = fmaf(acc[4 * j + 1], s_lo, total[4 * j + 1]);
      total[4 * j + 2] = fmaf(acc[4 * j + 2], s_hi, total[4 * j + 2]);
      total[4 * j + 3] = fmaf(acc[4 * j + 3], s_hi, total[4 * j + 3]);
    }
  }
  // The same choice by binary search (kPromoteSearch): the switch column lies in [LO, HI] (multiples of
  // kScaleAlign; HI = min(kWgN, 128), and any switch >= kWgN means all columns in the first block), so
  // BN = 176's eight positions take three branches on the way from the wgmma wait to the next issue,
  // not up to seven.
  template <int LO, int HI>
  __device__ __forceinline__ void promote_search(int sb_switch, float (&acc)[kRegs], float (&total)[kRegs],
                                                 float f_lo, float f_hi, float g_lo, float g_hi, float h_lo,
                                                 float h_hi) {
    if constexpr (LO >= HI) {
      promote_split<HI>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
    } else {
      constexpr int kMid = LO + (HI - LO) / T::kScaleAlign / 2 * T::kScaleAlign;  // last of the lower half
      if (sb_switch <= kMid) {
        promote_search<LO, kMid>(sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
      } else {
        promote_search<kMid + T::kScaleAlign, HI>(sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
      }
    }
  }
  // The same choice through a switch statement over the eight possible columns (kPromoteSearch == 2), which
  // the compiler may turn into one indirect branch (a jump table).
  template <int C>
  __device__ __forceinline__ void promote_case(float (&acc)[kRegs], float (&total)[kRegs], float f_lo, float f_hi,
                                               float g_lo, float g_hi, float h_lo, float h_hi) {
    promote_split<(C < T::kWgN ? C : T::kWgN)>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
  }
  __device__ __forceinline__ void promote_table(int sb_switch, float (&acc)[kRegs], float (&total)[kRegs],
                                                float f_lo, float f_hi, float g_lo, float g_hi, float h_lo,
                                                float h_hi) {
    switch (sb_switch >> 4) {  // kScaleAlign is a multiple of 16
      case 1: promote_case<16>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      case 2: promote_case<32>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      case 3: promote_case<48>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      case 4: promote_case<64>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      case 5: promote_case<80>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      case 6: promote_case<96>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      case 7: promote_case<112>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
      default: promote_case<128>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi); break;
    }
  }
  // The step's switch column (a multiple of kScaleAlign in [kScaleAlign, 128]) picks one promote_split;
  // from kWgN on, all columns are in the first block. (A linear chain: DG_PROMOTE_SEARCH=0.)
  template <int SWITCH>
  __device__ __forceinline__ void promote_dispatch(int sb_switch, float (&acc)[kRegs], float (&total)[kRegs],
                                                   float f_lo, float f_hi, float g_lo, float g_hi, float h_lo,
                                                   float h_hi) {
    if constexpr (SWITCH >= T::kWgN) {
      promote_split<T::kWgN>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
    } else if constexpr (SWITCH >= kBlockK) {  // the last possible value
      promote_split<kBlockK>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
    } else {
      if (sb_switch == SWITCH) {
        promote_split<SWITCH>(acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
      } else {
        promote_dispatch<SWITCH + T::kScaleAlign>(sb_switch, acc, total, f_lo, f_hi, g_lo, g_hi, h_lo, h_hi);
      }
    }
  }

  // Two adjacent fp32 outputs. A v2 store would tie the pair to an aligned register pair, which ties every
  // total to the register bank of its wgmma partial (whose registers are aligned the same way): then each
  // promotion FFMA reads two operands from one bank (ptx/NOTES.md, seventh session). Two scalar stores
  // leave ptxas free to put the totals in the other bank; the fp32 output path pays a few stores per tile.
  __device__ __forceinline__ static void store_f32_pair(float* dst, float x, float y) {
#ifdef DG_PAIRED_F32_STORES
    st_global_v2_f32(dst, x, y);
#else
    st_global_f32(dst, x);
    st_global_f32(dst + 1, y);
#endif
  }

  __device__ __forceinline__ float bias_at(int col) const {
    if (p.bias_kind == kBiasF32) return static_cast<const float*>(p.bias)[col];
    const uint16_t bits = static_cast<const uint16_t*>(p.bias)[col];
    return __uint_as_float(static_cast<uint32_t>(bits) << 16);
  }

  // Swapped tiles (SW): the tile is out^T, rows of B (the output's columns) by tokens (the output's rows), so
  // element (j, e) of this thread, row r = m0 + warp*16 + lane/4 (+8 for e >= 2) and column c = col0 + 8j +
  // (e & 1), goes to out[c][r] (out is tokens x N, N = p.m here). Stored from registers: the 8 lanes of a
  // quad column write 8 consecutive bf16 of one output row (16 bytes), which L2 merges with the other 8 rows'
  // half of each 32-byte sector; decode outputs are small next to B. Bias is per row of B here.
  __device__ __forceinline__ void epilogue_transposed(float (&total)[kRegs], int m0, int col0) {
    const int r = m0 + warp * 16 + lane / 4;
    const float bias_lo = p.bias_kind != kBiasNone && r < p.m ? bias_at(r) : 0.f;
    const float bias_hi = p.bias_kind != kBiasNone && r + 8 < p.m ? bias_at(r + 8) : 0.f;
#pragma unroll
    for (int j = 0; j < T::kGroups8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = col0 + 8 * j + (e & 1), row = e < 2 ? r : r + 8;
        if (c >= p.n || row >= p.m) continue;
        const float v = total[4 * j + e] + (e < 2 ? bias_lo : bias_hi);
        const int64_t at = static_cast<int64_t>(c) * p.m + row;
        if (p.out_fp32) st_global_f32(static_cast<float*>(p.out) + at, v);
        else st_global_b16(static_cast<uint16_t*>(p.out) + at, bf16_bits(v));
      }
    }
  }

  // Accumulator element (j, e) of this thread: row warp*16 + lane/4 (+8 for e >= 2),
  // column 8j + 2*(lane%4) + (e & 1). Rows from row_end on are not stored (p.m; grouped: the group's end).
  // m_block: the tile's M index, or (grouped) its first row.
  __device__ __forceinline__ void epilogue(float (&total)[kRegs], int m_block, int n_block, int slab, int row_end) {
#ifdef DG_ABLATE_EPILOGUE
    float sum = 0.f;  // one use of every total (never stored), so the promotion stays
#pragma unroll
    for (int i = 0; i < kRegs; ++i) sum += total[i];
    if (__float_as_uint(sum) == 0x7fc00001u) static_cast<float*>(p.out)[0] = 0.f;
    return;
#endif
    const int m0 = (GM != kGroupNone ? m_block : m_block * BM) + row_base + 128 * slab;
    const int n0 = n_block * BN + col_base;
    const int quad_col = 2 * (lane % 4);
    if constexpr (SW) {
      epilogue_transposed(total, m0, n0 + quad_col);
      return;
    }
    if (p.bias_kind != kBiasNone) {
#pragma unroll
      for (int j = 0; j < T::kGroups8; ++j) {
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
    if (p.out_fp32) {
      float* out = static_cast<float*>(p.out);
      const int r = m0 + warp * 16 + lane / 4;
#pragma unroll
      for (int j = 0; j < T::kGroups8; ++j) {
        const int col = n0 + 8 * j + quad_col;
        if (col < p.n) {
          if (r < row_end) store_f32_pair(out + static_cast<int64_t>(r) * p.n + col, total[4 * j], total[4 * j + 1]);
          if (r + 8 < row_end)
            store_f32_pair(out + static_cast<int64_t>(r + 8) * p.n + col, total[4 * j + 2], total[4 * j + 3]);
        }
      }
      return;
    }
    // bf16, warp by warp (no warpgroup barrier): each warp owns 16 rows of the warpgroup's 64. Per band
    // of up to kBandN columns it stmatrix-es its rows into its own slice of the staging buffer (one TMA
    // box of 16 x kEpiN after another, each swizzled like the output tensor map: conflict-free), and its
    // lane 0 hands the boxes to TMA stores (one bulk group), which clip the tails of M and N and run on
    // while the warp goes back to its wgmmas. The only wait is for the previous band's stores to have
    // read the slice (a few hundred bytes' worth of TMA work).
    constexpr int kSliceBytes = 16 * L::kEpiPitch;
    constexpr int kBoxPitch = T::kEpiN * 2, kBoxBytes = 16 * kBoxPitch;
    uint8_t* slice = smem + L::kEpi + wg * L::kEpiBytesPerWG + warp * kSliceBytes;
    const int row = (lane % 8) + 8 * ((lane / 8) % 2);  // the row this lane addresses in stmatrix
    const uint32_t row_offset = row * kBoxPitch;
    const uint32_t swizzle = ((row_offset >> 7) & (T::kEpiN * 2 / 16 - 1)) << 4;  // TMA's 32B/64B/128B swizzle
    const int warp_m = m0 + warp * 16;
    if constexpr (GM != kGroupNone) {
      // A warp whose 16 rows straddle its group's end stores from registers: a TMA box would also write
      // the rows after it (the next group's, or padding the caller keeps).
      if (warp_m < row_end && warp_m + 16 > row_end) {
        uint16_t* out = static_cast<uint16_t*>(p.out);  // bf16
        const int r = warp_m + lane / 4;
#pragma unroll
        for (int j = 0; j < T::kGroups8; ++j) {
          const int col = n0 + 8 * j + quad_col;
          if (col < p.n) {
            if (r < row_end) st_global_b32(out + static_cast<int64_t>(r) * p.n + col,
                                           pack_bf16x2(total[4 * j], total[4 * j + 1]));
            if (r + 8 < row_end) st_global_b32(out + static_cast<int64_t>(r + 8) * p.n + col,
                                               pack_bf16x2(total[4 * j + 2], total[4 * j + 3]));
          }
        }
        return;
      }
    }
#pragma unroll
    for (int band = 0; band < T::kBands; ++band) {
      constexpr int kLastBandN = T::kWgN - (T::kBands - 1) * T::kBandN;
      const int band_cols = band + 1 < T::kBands ? T::kBandN : kLastBandN;
      if (lane == 0) bulk_wait_group_read<0>();  // the previous band's (or tile's) stores have read the slice
      __syncwarp();
#pragma unroll
      for (int jj = 0; jj < band_cols / 16; ++jj) {  // 16 columns: one stmatrix.x4 (two 8-column groups)
        const int j = band * (T::kBandN / 8) + 2 * jj;
        const int box = jj * 16 / T::kEpiN;
        const uint32_t chunk = 2 * (jj % (T::kEpiN / 16)) + lane / 16;  // 16-byte chunk in the box row
        stmatrix_x4(smem_addr(slice) + box * kBoxBytes + row_offset + ((chunk * 16) ^ swizzle),
                    pack_bf16x2(total[4 * j + 0], total[4 * j + 1]), pack_bf16x2(total[4 * j + 2], total[4 * j + 3]),
                    pack_bf16x2(total[4 * j + 4], total[4 * j + 5]), pack_bf16x2(total[4 * j + 6], total[4 * j + 7]));
      }
      fence_proxy_async_shared();  // each lane's stmatrix writes, before the TMA engine reads them
      const int band_n = n0 + band * T::kBandN;
      __syncwarp();
      if (lane == 0 && warp_m < row_end && band_n < p.n) {  // skip slices wholly outside (e.g. a padding tile)
#pragma unroll
        for (int box = 0; box < band_cols / T::kEpiN; ++box) {
          const int box_n = band_n + box * T::kEpiN;
          if (box > 0 && box_n >= p.n) break;  // boxes past N (the TMA store would clip them whole)
          if constexpr (kStoreHint == 0) tma_store_2d(map_out, slice + box * kBoxBytes, box_n, warp_m);
          else tma_store_2d(map_out, slice + box * kBoxBytes, box_n, warp_m, l2_policy(kStoreHint));
        }
        bulk_commit_group();
      }
    }
  }

  __device__ __forceinline__ void run() {
    const uint32_t steps = sched.num_steps();
    if (steps == 0) return;
    // Turns: warpgroup 0 issues first; warpgroup 1's extra arrive is taken back after the loop.
    if (kTurns && wg == 1) named_barrier_arrive(kTurnBarrier, 256);
    float total[kRegs];
#pragma unroll
    for (int i = 0; i < kRegs; ++i) total[i] = 0.f;
    float acc0[kRegs];
    StepScales sc0;
    if constexpr (T::kSlabs > 1) {
      // 256-row tiles: per stage, slab 0 then slab 1 through the one partial set (the registers hold two
      // totals, no second partial); the other math warpgroup's wgmmas fill the tensor cores meanwhile.
      static_assert(ACC == kAccSingle, "256-row tiles have registers for one partial set only");
      float total1[kRegs];
#pragma unroll
      for (int i = 0; i < kRegs; ++i) total1[i] = 0.f;
      // The next step's slab 0 is issued before a finished tile's stores, so they overlap its wgmmas.
      // Straight-line steady state (no path merge with a group in flight), the last step after it.
      auto store_tile = [&](const StepScales& sc) {
        const int m_block = stream_k_head_done(total, sc);
        stream_k_head_done_slab1(total1, sc);
        epilogue(total, m_block, sc.n_block, 0, row_end_of(sc));
        epilogue(total1, m_block, sc.n_block, 1, row_end_of(sc));
      };
      StepScales next;
      acquire(sc0);
      issue_slab(acc0, sc0, 0);
      start_sums(total, sc0, 0);
      start_sums(total1, sc0, 1);
      for (uint32_t s = 0; s + 1 < steps; ++s) {  // entry: slab 0 of step sc0 in flight
        wgmma_wait<0>();
        trace(s, 1);
        promote_only(acc0, total, sc0, 0);
        trace(s, 5);
#ifdef DG_LIFETRACE
        if (sc0.first_of_tail && wg == 0 && tid == 0) life_stamp_after(p.trace_log, kLifeTailPromote, total[kRegs - 1]);
#endif
        issue_slab(acc0, sc0, 1);
        trace(s, 2);
        if constexpr (kEarlyAcquire) acquire(next);
        trace(s, 3);
        wgmma_wait<0>();
        trace(s, 4);
        release(sc0);
        promote_only(acc0, total1, sc0, 1);
        if constexpr (!kEarlyAcquire) acquire(next);
        trace(s, 6);
        issue_slab(acc0, next, 0);
        trace(s + 1, 0);
        if (sc0.last_k) {
          store_tile(sc0);
          start_sums(total, next, 0);
          start_sums(total1, next, 1);
        }
        sc0 = next;
      }
      wgmma_wait<0>();
      promote_only(acc0, total, sc0, 0);
      issue_slab(acc0, sc0, 1);
      wgmma_wait<0>();
      release(sc0);
      promote_only(acc0, total1, sc0, 1);
      store_tile(sc0);  // the last step ends the last tile
    } else if constexpr (ACC == kAccSingle) {
      StepScales next;
      acquire(sc0);
      issue_slab(acc0, sc0, 0);
      start_sums(total, sc0, 0);
      for (uint32_t s = 0; s + 1 < steps; ++s) {  // entry: step sc0 in flight
        wgmma_wait<0>();
        release(sc0);
        if constexpr (kEarlyAcquire) acquire(next);
        promote_only(acc0, total, sc0, 0);
        if constexpr (!kEarlyAcquire) acquire(next);
        // The next step is issued before a finished tile's stores, so they overlap its wgmmas.
        issue_slab(acc0, next, 0);
        finish_if_last(total, sc0, next);
        sc0 = next;
      }
      wgmma_wait<0>();
      release(sc0);
      promote(acc0, total, sc0);
    } else if constexpr (ACC == kAccDualWait) {
      // Per step: wait for step s (the only one in flight), free its stage at once, issue step s+1 into
      // the other set, then promote step s while s+1 runs on the tensor cores.
      float acc1[kRegs];
      StepScales sc1;
      issue(acc0, sc0);
      uint32_t s = 0;
      for (; s + 2 < steps; s += 2) {
        if constexpr (kEarlyAcquire) acquire(sc1);
        wgmma_wait<0>();
        release(sc0);
        if constexpr (!kEarlyAcquire) acquire(sc1);
        issue_slab(acc1, sc1, 0);
        promote(acc0, total, sc0);
        if constexpr (kEarlyAcquire) acquire(sc0);
        wgmma_wait<0>();
        release(sc1);
        if constexpr (!kEarlyAcquire) acquire(sc0);
        issue_slab(acc0, sc0, 0);
        promote(acc1, total, sc1);
      }
      if (s + 1 < steps) {
        if constexpr (kEarlyAcquire) acquire(sc1);
        wgmma_wait<0>();
        release(sc0);
        if constexpr (!kEarlyAcquire) acquire(sc1);
        issue_slab(acc1, sc1, 0);
        promote(acc0, total, sc0);
        wgmma_wait<0>();
        release(sc1);
        promote(acc1, total, sc1);
      } else {
        wgmma_wait<0>();
        release(sc0);
        promote(acc0, total, sc0);
      }
    } else {
      static_assert(ACC == kAccDualAhead, "unknown accumulation mode");
      // Two partial sets, two steps in flight: step s+1 is issued before waiting for step s, so the
      // tensor cores always find this warpgroup's next step queued; step s is promoted (and, at a
      // tile's end, stored) while s+1 runs. Both dual loops are straight-line in the steady state (a
      // merge of paths with a set in flight makes ptxas insert a wait, C7517); the tails finish the rest.
      float acc1[kRegs];
      StepScales sc1;
      issue(acc0, sc0);
      uint32_t s = 0;
      for (; s + 2 < steps; s += 2) {  // entry: step s in flight in acc0
        issue(acc1, sc1);
        wgmma_wait<1>();
        release(sc0);
        promote(acc0, total, sc0);
        issue(acc0, sc0);
        wgmma_wait<1>();
        release(sc1);
        promote(acc1, total, sc1);
      }
      if (s + 1 < steps) {
        issue(acc1, sc1);
        wgmma_wait<1>();
        release(sc0);
        promote(acc0, total, sc0);
        wgmma_wait<0>();
        release(sc1);
        promote(acc1, total, sc1);
      } else {
        wgmma_wait<0>();
        release(sc0);
        promote(acc0, total, sc0);
      }
    }
    if (kTurns && wg == 0) named_barrier_sync(kTurnBarrier, 256);
    if (wg == 0 && tid == 0) life_stamp(p.trace_log, kLifeLoopEnd);
    if (lane == 0) bulk_wait_group<0>();  // this warp's last TMA stores have finished before the CTA exits
    if (wg == 0 && tid == 0) life_stamp(p.trace_log, kLifeDrained);
  }
};

// ---------------------------------------------------------------------------------------------
// the kernel
// ---------------------------------------------------------------------------------------------
// L2-side-aware scheduling (GemmParams::side_claims; scheduler.cuh's SideProblem). Thread 32 (warp 1) of the
// cluster's first CTA claims a slot before the cluster barrier: one of its own SM's side while that side has any left, else one
// of the other side (the counts of slots add up to the grid's clusters, so the second claim always succeeds),
// kept in its own shared memory; the barrier (a release arrive on this path) publishes it and every thread of
// the cluster reads it after (side_slot_of). Nothing is written into another CTA before the barrier: only then
// are they known to run.
__device__ __forceinline__ void claim_side_slot(const GemmParams& p, int clusters, int* slot_smem) {
  int side = p.sm_side[sm_id() & 255] & 1;
  int rank = atomic_add_relaxed_gpu(&p.side_claims[side], 1);
  if (rank >= (side == 0 ? p.side0_clusters : clusters - p.side0_clusters)) {
    side ^= 1;
    rank = atomic_add_relaxed_gpu(&p.side_claims[side], 1);
  }
  slot_smem[0] = side;
  slot_smem[1] = rank;
}
// The other CTAs of a cluster copy the leader's slot into their own shared memory (one thread, then a CTA barrier),
// so every thread reads it locally (read straight from the leader into registers, the schedulers' values stayed
// live through the producer code: ptxas spilled in the split-K variants).
template <int CLUSTER>
__device__ __forceinline__ SideSlot side_slot_of(int* slot_smem) {
  if constexpr (CLUSTER > 1) {
    if (threadIdx.x == 0 && cluster_cta_rank() != 0) {
      ld_shared_cluster_v2_s32(map_shared_to_cta(smem_addr(slot_smem), 0), slot_smem[0], slot_smem[1]);
    }
    __syncthreads();
  }
  return SideSlot{slot_smem[0], slot_smem[1]};
}
// ...and after the barrier, off the claiming thread's path: count the cluster done claiming (release: its claim
// came first, through the barrier); the last one puts the counters back to zero for the next launch on the stream.
__device__ __forceinline__ void count_side_claim(const GemmParams& p, int clusters) {
  if (atomic_add_acq_rel_gpu(&p.side_claims[2], 1) == clusters - 1) {
    p.side_claims[0] = 0;
    p.side_claims[1] = 0;
    p.side_claims[2] = 0;
  }
}

template <int BM, int BN, int STAGES, int ACC, int CM, int CN, int KS, int WGS, int GM = kGroupNone, int SW = 0>
__global__ void __launch_bounds__(GemmTraits<BM, BN, STAGES, KS, WGS, GM>::kThreads, 1)
    fp8_gemm_kernel(const __grid_constant__ CUtensorMap map_a, const __grid_constant__ CUtensorMap map_b,
                    const __grid_constant__ CUtensorMap map_sa, const __grid_constant__ CUtensorMap map_out,
                    const GemmParams p) {
  // Grouped GEMMs: split-K / stream-K need the tile count on the host. (B multicast pairs stay in one group:
  // group_tiles rounds each group's tiles to whole pairs.)
  static_assert(GM == kGroupNone || KS == 1, "grouped GEMMs run without split-K");
  using Traits = GemmTraits<BM, BN, STAGES, KS, WGS, GM>;
  using L = typename Traits::Layout;
  constexpr int MCAST = CM * CN;         // CTAs that share stages by multicast
  constexpr int CLUSTER = CM * CN * KS;  // ...times the K splits of one tile
  extern __shared__ uint8_t smem_raw[];
  // 128B-swizzled tiles need 1024-byte alignment; the dynamic allocation only promises 16.
  uint8_t* smem = smem_raw + ((kSwizzleAtomBytes - (smem_addr(smem_raw) % kSwizzleAtomBytes)) % kSwizzleAtomBytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + L::kBarriers);
  uint64_t* empty = full + STAGES;

  const int wg = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    // (the log is zeroed before the launch: absent events read 0; DG_LIFETRACE builds are timed without PDL,
    // since these two stamps come before griddepcontrol.wait)
    life_stamp(p.trace_log, kLifeEntryNs, true);
    life_stamp(p.trace_log, kLifeEntry);
    prefetch_tensor_map(&map_a);
    prefetch_tensor_map(&map_b);
    prefetch_tensor_map(&map_sa);
    if (!p.out_fp32) prefetch_tensor_map(&map_out);
#pragma unroll
    for (int i = 0; i < STAGES; ++i) {
      mbar_init(&full[i], kFullArrivals);
      mbar_init(&empty[i], Traits::kMathWarps * MCAST);  // one arrive per math warp of every CTA sharing the stage
    }
    if constexpr (KS > 1) {
      uint64_t* red = reinterpret_cast<uint64_t*>(smem + L::kRedBarriers);
      mbar_init(&red[0], (KS - 1) * WGS * 128);  // every math thread of the other ranks, per tile
      mbar_init(&red[1], WGS * 128);             // every math thread of rank 0, per tile
    }
    fence_barrier_init();
  }
  // Programmatic dependent launch (a launch attribute the host sets on request; without it the wait returns at
  // once): everything above overlaps the previous kernel's tail; nothing below touches global memory before
  // that kernel is done (it may write our inputs, or still read memory our output reuses). With p.pdl the next
  // kernel, if launched with PDL too, may be scheduled from here on (it waits for this one in its own
  // griddepcontrol.wait); without it, not before this kernel ends, whoever launches it.
  griddepcontrol_wait();
  if (p.pdl) griddepcontrol_launch_dependents();
  // (placed B and L2 sides exist for plain variants with three producer threads only: the host checks)
  constexpr bool kSidesBuilt = GM == kGroupNone && kProducers == 3;
  int* side_slot = reinterpret_cast<int*>(smem + L::kSideSlot);
  const int clusters = static_cast<int>(gridDim.x) / CLUSTER;
  const bool by_side = kSidesBuilt && p.side_claims != nullptr;
  const bool side_leader = CLUSTER == 1 || cluster_cta_rank() == 0;
  // (warp 1 claims: warp 0 may still be initialising the barriers, which overlaps the atomics)
  if (by_side && threadIdx.x == 32 && side_leader) claim_side_slot(p, clusters, side_slot);
  int* group_table = reinterpret_cast<int*>(smem + L::kGroupTable);
  if constexpr (GM != kGroupNone) {
    if (threadIdx.x / 32 == 1) build_group_table<BM, GM, CM>(p, group_table, threadIdx.x % 32);
    if constexpr (CLUSTER > 1) __syncthreads();  // the cluster barrier below arrives relaxed: no release
  }
  // The partner's barriers must be initialised before its first multicast or remote arrive.
#ifdef DG_INIT_RELEASE_ARRIVE  // developers' switch: the full release-acquire sync used before
  if constexpr (CLUSTER == 1) __syncthreads(); else cluster_sync();
#else
  if constexpr (CLUSTER == 1) {
    __syncthreads();
  } else if (by_side) {
    cluster_sync();  // (releases the claimed slot too)
  } else {
    cluster_sync_after_barrier_init();
  }
#endif
  if (threadIdx.x == 0) life_stamp(p.trace_log, kLifeInit);

  const GroupTable groups{group_table, group_table + kMaxGroups + 1, group_table + 2 * kMaxGroups + 1, p.groups};
  const int n_tiles = (p.n + BN - 1) / BN;
  SideProblem sp{0, n_tiles, static_cast<int>(blockIdx.x) / CLUSTER, clusters, p.sk_units, 0};
  if (by_side) {
    sp = side_problem(side_slot_of<CLUSTER>(side_slot), n_tiles, p.side0_n_tiles, clusters, p.side0_clusters,
                      p.sk_units, p.side1_sk_units);
    if (threadIdx.x == 97 && side_leader) count_side_claim(p, clusters);  // (warp 3, lane 1: otherwise idle)
  }
  const TileScheduler<CM, CN, KS> sched(GM != kGroupNone ? groups.m_tiles() : (p.m + BM - 1) / BM, sp.n_tiles,
                                     p.k_blocks, p.group_n, CLUSTER == 1 ? 0 : static_cast<int>(cluster_cta_rank()),
                                     sp.cluster, sp.clusters, sp.sk_units, sp.n_first, sp.slot_base);
  if (wg == 0) {
    if constexpr (WGS > 1) setmaxnreg_dec<kProducerRegs>();  // (256 threads: registers enough for all)
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 1) {
      publish_step_meta<BM, BN, STAGES, GM, SW>(sched, p, groups, smem, full, empty, lane);
    } else if (kSidesBuilt && warp == 2 && p.b_slots != nullptr) {  // placed B
      produce_placed_b<BM, BN, STAGES>(sched, p, smem, full, empty, &map_b, lane);
    } else if (lane == 0) {  // producer (warp + 1) / 2: warps 0, 2, 3
      if (warp == 0) produce_operands<producer_operands(0), BM, BN, STAGES, GM, SW>(sched, p, groups, smem, full, empty, &map_a, &map_b, &map_sa);
      if (kProducers > 1 && warp == 2)
        produce_operands<producer_operands(1), BM, BN, STAGES, GM, SW>(sched, p, groups, smem, full, empty, &map_a, &map_b,
                                                                 &map_sa);
      if (kProducers > 2 && warp == 3)
        produce_operands<producer_operands(2), BM, BN, STAGES, GM, SW>(sched, p, groups, smem, full, empty, &map_a, &map_b,
                                                                 &map_sa);
    }
  } else {
    if constexpr (WGS > 1) setmaxnreg_inc<kMathRegs>();
    // The warpgroup index through a shuffle: ptxas then treats it (and the A descriptors built from it)
    // as warp-uniform and keeps them in uniform registers (no R2UR between the wgmmas).
    MathWarpgroup<BM, BN, STAGES, ACC, CM, CN, KS, WGS, GM, SW> math(p, sched, &map_out, smem, full, empty,
                                                        reinterpret_cast<uint64_t*>(smem + L::kRedBarriers),
                                                        __shfl_sync(0xffffffffu, wg - 1, 0));
    math.run();
  }
  // No CTA leaves while its partner may still multicast into it or arrive on its barriers.
  if constexpr (CLUSTER > 1) cluster_sync();
  if (threadIdx.x == 128) {
    life_stamp(p.trace_log, kLifeExit);
    life_stamp(p.trace_log, kLifeExitNs, true);
  }
}

}  // namespace dg
