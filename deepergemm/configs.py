"""Which kernel variant runs a given GEMM: plain Python, CPU-testable.

A variant is one compiled instance of ptx/fp8_gemm.cuh (template parameters BLOCK_M, BLOCK_N, stages,
dual accumulators, cluster shape, K splits); ``VARIANTS`` lists every one ``select`` can return, and CI compiles all
of them.

Choice (``select``): BLOCK_M = 64 when M <= 128 (no tensor-core rows wasted on padding, and twice the tiles
to spread the memory-bound stream of B over more SMs), else 128 or 256. Among those variants, take the
one with the least modelled time, ``waves * BLOCK_M * BLOCK_N * cost`` (ties: the larger tile): a
persistent CTA takes one tile per wave, so a tile shape that leaves the last wave half empty pays for a
full one (wave quantization). With BLOCK_M = 128 and at least two M-tiles, CTAs run in clusters that
multicast the operands they share (CLUSTER_SHAPE: 2 M-tiles x 1 N-tile share B): a unit of work is then a
cluster's tiles, and a wave has num_sms / cluster units. Dual accumulators wait for each step before issuing
the next at BLOCK_M = 128 and keep two steps in flight at BLOCK_M = 64 (DUAL_ISSUE_AHEAD, measured).
At M > 128 the candidates include 256x128 tiles (A multicast in 1x2 clusters, CLUSTER_SHAPE_256). 64-row
tiles run one math warpgroup over all their columns from K = 1024 on (SMALL_M_MATH_WGS), two below.

Split-K (M <= 128): when the unsplit pick leaves at least half the SMs idle, a variant whose clusters of
SPLIT_K CTAs share each tile, one range of K apiece, takes its place (the partial sums are joined in shared
memory): the one that keeps the most SMs busy in one wave, then the fewest bytes per CTA. On the H100: +16%
at 64x2112x7168 (66 tiles); where the unsplit tiles already fill the SMs, splitting gives -20%..+9%
(ptx/NOTES.md, split-K).

Switches (measure a feature by turning it off in the same run):
  DEEPERGEMM_DUAL_ACC=0        single partial accumulator (promotion not overlapped within a warpgroup)
  DEEPERGEMM_VARIANT=BMxBN     force a tile shape, e.g. "128x128" (must be in TILE_SHAPES)
  DEEPERGEMM_GROUPED_VARIANT=BMxBN  the same for grouped (MoE) GEMMs (GROUPED_TILES)
  DEEPERGEMM_CLUSTER=1|2|1x2|2x2  force the cluster shape (CMxCN; "2" = 2x1; CN > 1 needs BLOCK_M >= 128)
  DEEPERGEMM_GROUP_N=g         rasterization band width in N-units (default: 16; 4 at short K, see SHORT_K_GROUP_N)
  DEEPERGEMM_SPLIT_K=0         never split K
  DEEPERGEMM_SMALL_M_WGS=1|2   math warpgroups of unsplit 64-row tiles (default: one, two below K = 1024)
  DEEPERGEMM_SMALL_M_CLUSTER=0  do not pair the two 64-row M-tiles at 64 < M <= 128 in B-multicast clusters
  DEEPERGEMM_STREAM_K=0        no stream-K, neither tail nor fill (stream_k_pays)
  DEEPERGEMM_STREAM_K_FILL=0   no stream-K fill of problems with fewer units than clusters (stream_k_fill_pays)
  DEEPERGEMM_PDL=0             no programmatic dependent launch (pdl_enabled; on by default, see ptx/NOTES.md)
  DEEPERGEMM_SWAP_AB=0|1       swapped tiles (out^T = B A^T; SWAPPED_VARIANTS): 0 never, 1 at every M <= 64
                               (default: at M <= 16, swap_max_m); DEEPERGEMM_SPLIT_K=0 and DEEPERGEMM_L2_HINTS apply
                               to them too
  DEEPERGEMM_L2_HINTS=h        L2 eviction priorities of the loads, h = A | B << 2 with 0 normal, 1 evict-first,
                               2 evict-last (default: l2_hints_for; 0 = no hints)
  DEEPERGEMM_BACKEND=ptx|cublas|reference  what backend='auto' means
  DEEPERGEMM_FUSED_EPILOGUE=0|1|auto  fp8 output and SwiGLU: 1 always in the GEMM's epilogue, 0 never (the bf16
                               GEMM, then the Triton steps: the same bits), auto (the default): where measured
                               faster (fused_epilogue_pays: fp8 output at small M and short K, SwiGLU never;
                               the grouped SwiGLU op, not yet measured, fused unless 0: grouped_swiglu_fused)
  DEEPERGEMM_PAIRS=0           the 256-K recipe without its pairs variants (select_recipe_256: the 128 recipe's
                               kernel instead, each K block reading its pair's scale)
  DEEPERGEMM_TRITON_FAST_LAUNCH=1  launch the Triton kernels (quantize_act, SwiGLU, MoE layout) through the cached
                               compiled kernel (triton_kernels/launch.py) instead of Triton's own per-call path;
                               opt-in until measured on a GPU (triton_fast_launch_enabled)

Small-M clusters: at 64 < M <= 128 the two 64-row M-tiles of an N-tile run as a 2x1 cluster that multicasts B
(SMALL_M_CLUSTER), for tiles at least SMALL_M_CLUSTER_MIN_N wide and K >= SMALL_M_CLUSTER_MIN_K. On the H100
(ptx/NOTES.md, small-M clusters): 128x7168x16384 1.01 -> 1.10-1.13x cuBLAS, 128x4096x7168 1.19-1.23 -> 1.37-1.38,
128x24576x1536 0.96-0.99 -> 1.04-1.07, 128x7168x2048 equal; slower with 64x32 tiles and at K = 512, hence the
bounds.

L2 hints (M <= 128): A is kept (evict-last: every CTA re-reads it), B streamed (evict-first) when one M-tile
(or one cluster's multicast) means no other load reads its tiles. On the H100: +4..+28% on the M = 64 anchors,
and evict-first B with two unpaired M-tiles -10..-20%, so B stays normal there (ptx/NOTES.md, L2 hints).
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, replace
from math import gcd

from .layouts import MAX_GROUPS, ceil_div, round_up

BLOCK_K = 128
SMEM_LIMIT = 232448        # bytes of dynamic shared memory per block on sm_90 (227 KiB)
SWIZZLE_ATOM = 1024        # the kernel aligns its shared memory base to this (slack is allocated)
MAX_MATH_REGS_DUAL = 128   # warpgroup N up to which three accumulator sets fit in 232 registers
DEFAULT_GROUP_N = 16
# Short K at large M (256-row tiles, K <= SHORT_K_GROUP_MAX_K), where the output's stores weigh most: bands of
# 4 N-units when one wave covers whole bands (all M-units of 4 N-units: its stores spread over every row of
# the output) run faster than 16 on the H100 (four calls; ptx/NOTES.md, short-K rasterization): 4096x32768x512
# 153.0-153.9 -> 148.0-149.8 us, 4096x24576x1536 250.8-251.0 -> 248.3-248.7. Where a band takes two waves it does
# not pay (8192x24576x1536 477 -> 482, 8192x32768x512 equal), so those keep 16.
SHORT_K_GROUP_N = 4
SHORT_K_GROUP_MAX_K = 1536
MAX_STAGES = 16          # deeper rings only help small tiles, whose stages are cheap (memory-bound shapes)
CLUSTER_SHAPES = ((1, 1), (2, 1), (1, 2), (2, 2))  # (CTAs along M, along N) the kernel supports
# Multicast of B between 2 M-tiles (128x128 tiles, H100 and H200): 10-15% faster than no cluster at K = 7168 and
# 16384, equal to 8% faster at K = 1536 and 2048, equal at K = 512 (wait-first dual accumulators, 1.15-1.17x
# cuBLAS either way); 2x2 and 1x2 are slower overall (ptx/NOTES.md, clusters).
CLUSTER_SHAPE = (2, 1)
# 256-row tiles pair CTAs along N instead (A multicast, as DeepGEMM and cuBLAS do): 1-3% faster on the H100 than
# B multicast and than no cluster (ptx/NOTES.md, 256-row tiles).
CLUSTER_SHAPE_256 = (1, 2)
# Dual-accumulator step ordering per BLOCK_M (H100, one sweep, ptx/NOTES.md): with two steps in flight 128-row
# tiles run 2-7% slower than waiting for each step first (0.94 vs 1.01x cuBLAS at 4096x4096x7168); 64-row tiles
# run 0-3% faster.
DUAL_ISSUE_AHEAD = {64: True, 128: False}
# 64-row tiles at 64 < M <= 128 (two M-tiles, each B tile read by both): pair the two in a 2x1 cluster that
# multicasts B, so B crosses L2 -> SM once per N-tile and can be loaded evict-first. On the H100 (one sweep,
# ptx/NOTES.md, small-M clusters): 128x7168x16384 1.01 -> 1.13x cuBLAS, 128x4096x7168 1.19 -> 1.37,
# 128x24576x1536 0.96 -> 1.04, 128x7168x2048 equal; slower with 64x32 tiles (128x2112x7168 1.48 -> 1.37) and at
# K = 512 (128x32768x512 0.97 -> 0.94), hence the tile width and K bounds.
SMALL_M_CLUSTER = (2, 1)
SMALL_M_CLUSTER_MIN_N = 64     # BLOCK_N
SMALL_M_CLUSTER_MIN_K = 1536
# Middle M (128 < M < 4096; H100 sweep of nine tiles over M = 256-2048 and the six anchor (N, K) pairs, bench/RESULTS.md
# "middle M"): with few M-tiles the clusters' multicast saves little L2 traffic and their pairing costs more.
# 128-row tiles (128x128, 128x192) run unclustered up to 4 M-tiles: at M = 256 and 512 unclustered was ahead on
# 10 of 12 (N, K) cases, by up to 5%, behind by 6% once (512x7168x16384). 256-row tiles run unclustered up to 4
# M-tiles below K = 8192: ahead by 0-5% on 8 of 9 such cases; at K = 16384 the A multicast keeps paying
# (1024x7168x16384 0.97 vs 1.01x cuBLAS). One 256-row M-tile (M <= 256) ran 26-37% behind 128-row tiles on five of
# the six pairs, so M <= 256 never takes 256-row tiles. And at 128 < M <= 256, 64x128 tiles (two math
# warpgroups, 2x1 B-multicast pairs) fill the SMs where 128-row tiles leave them idle: 256x2112x7168 1.15 against
# 1.03x cuBLAS, 256x4096x7168 1.05 against 0.98; the wave model (_TILE_COST) picks them there and nowhere else of
# the six pairs. 64x64 tiles (one math warpgroup, unclustered, as at small M) are the other candidate there: where
# four M-tiles of them fill one wave exactly (256x2112x7168: 132 tiles) they ran 1.39x cuBLAS against 1.14 for
# the paired 64x128 (68 tiles; H100 middle-M sweep with 2x2 clusters and 64x64 tiles, bench/RESULTS.md and
# bench/data/sweep_mid2_h100.json); where the model ties
# them (256x4096x7168: two waves of 64x64 against one of 64x128) the larger tile wins it (1.04 against 0.96-0.97).
# Only where all of them run in one wave: they fill idle SMs, and their cost over several waves at middle M is
# unmeasured.
MID_M_UNCLUSTERED_TILES = {128: 4, 256: 4}
MID_M_CLUSTER_256_MIN_K = 8192
MID_M_SMALL_TILES = {(64, 128): (True, 2), (64, 64): (False, 1)}  # tile: (in B-multicast pairs, math warpgroups)
MID_M_SMALL_TILE_MAX_M = 256
# 64-row tiles run one math warpgroup that takes all BLOCK_N columns (one wgmma group, one wait and one
# promotion per step instead of two of half the width; DeepGEMM's layout). Against two warpgroups on the same tiles
# (H100, one sweep, ptx/NOTES.md, one warpgroup on 64-row tiles): equal or faster on 8 of the 10 unsplit small-M
# anchors (64x4096x7168 19.5 -> 18.6 us, 128x4096x7168 20.6 -> 19.6, 64x24576x1536 22.7 -> 22.1, 64x7168x16384
# 53.3 -> 52.2), 2-4% slower on the two K = 512 ones (four K blocks per tile, so the stores weigh most, and two
# warpgroups store a tile's halves in parallel), hence the K bound. Small-M bench geomean: 1.197 -> 1.206x cuBLAS
# with one warpgroup everywhere.
SMALL_M_MATH_WGS = 1
SMALL_M_ONE_WG_MIN_K = 1024
# Small M on wide weights: at M <= 128 these GEMMs are a stream of B's bytes (up to M = 256 B's traffic still
# decides, last point below), so a part-filled last wave costs little and the wave model's choice of the narrowest
# tile (more, finer waves) only adds tiles, and at 64 < M <= 128 it was also unpaired (64x32 has no B-multicast pair:
# each of the two M-tiles read B). Where 64x64 tiles make at least SMALL_M_STREAM_MIN_WAVES waves, M <=
# SMALL_M_STREAM_MAX_M runs 64x64 tiles and 64 < M <= 128 (at K >= SMALL_M_CLUSTER_MIN_K) 64x128 B-multicast pairs,
# each with one math warpgroup. Measured on the H100 (cuBLAS in the same process; bench/data/sweep_m32_h100.json,
# sweep_m128_h100.json, sweep_wide_mid_h100.json):
# - M = 24-48: 64x64s13dm1 the fastest unswapped tile on every such shape (24x36864x7168 0.79 -> 1.04x cuBLAS,
#   32x36864x7168 0.86 -> 1.04, 24x18432x7168 0.99 -> 1.21, 32x32768x512 1.02 -> 1.05); at M = 64 the model's 64x32
#   stayed 1-4% ahead (64x20480x7168 1.25 against 1.20), hence the M bound.
# - M = 96: 64x128s8dc2m1 the fastest timed on the five wide shapes at K >= 1536 (96x18432x7168 0.54 -> 1.09,
#   96x36864x7168 0.95 -> 1.00); M = 128: within 5% of the fastest (64x64 pairs, 1.14 at N = 18432 and 20480) and
#   128x18432x7168 0.78 -> 1.08. (64x64 pairs ran 14% slower at M = 96 than at M = 128 on the same weight.)
# - 128 < M <= 256 (bench/data/sweep_wide_mid_h100.json): the middle-M rules (unclustered 128-row tiles, 64x128
#   pairs; measured on the anchors' narrower weights) ran 0.78-0.87x cuBLAS at M = 160 and 256 on the 18432- and
#   36864-row weights; 128x192 tiles in 2x1 B-multicast pairs 0.99-1.05 (160x36864x7168 0.78 -> 1.00, 160x18432x7168
#   0.80 -> 0.99, 256x18432x7168 0.87 -> 1.00, 256x36864x7168 1.02 -> 1.05). They run there (WIDE_MID_M_TILE).
# 128x64 tiles (two math warpgroups of 64 x 64, unclustered; not in TILE_SHAPES: over several waves at large M they
# ran 0.68-0.71x cuBLAS at 4096x2112x7168 against 1.10 for the pick). Measured on the H100 (`device_run.sh narrow-n`,
# bench/data/narrow_n_h100.json, cuBLAS in the same process) where 128x128 tiles leave SMs idle:
# - 512x2112x7168: 132 tiles, one wave, 22.7 us (1.18x cuBLAS) against 27.1 (0.99) for 128x128 on 68 SMs: per
#   element and SM 1.63x the cost of 128x128 (NARROW_TILE_COST, in the wave model). At M <= 256 the 64x64 tiles
#   stay ahead (256x2112x7168 1.39 against 1.24), above 4 M-tiles 128-row tiles run in clusters, hence the M range.
# - 128x32768x512: 15.4 us (1.01) against 16.4 (0.95) for 64x128: at K < SMALL_M_CLUSTER_MIN_K there are no 64-row
#   B-multicast pairs, so two 64-row M-tiles read B twice; one 128-row M-tile reads it once. On a wide weight (the
#   stream regime below) the 128x64 tile runs there from M = NARROW_TILE_MIN_SMALL_M, above one 64-row tile: at
#   72x, 80x and 96x32768x512 1.02-1.03x cuBLAS against 0.93-0.94 for 64x128 (`device_run.sh narrowpicks`,
#   bench/data/narrowpicks_h100.json; the rows past M cost both tiles the same there).
NARROW_TILE = (128, 64)
NARROW_TILE_MIN_SMALL_M = 65
NARROW_TILE_COST = 1.6
# (exclusive, inclusive): middle M above the 64-row tiles' range, up to the unclustered 128-row M-tiles
NARROW_TILE_M = (MID_M_SMALL_TILE_MAX_M, MID_M_UNCLUSTERED_TILES[NARROW_TILE[0]] * NARROW_TILE[0])
SMALL_M_STREAM_MAX_M = 48
SMALL_M_STREAM_MIN_WAVES = 2
SMALL_M_STREAM_TILE = (64, 64)
SMALL_M_STREAM_PAIR_TILE = (64, 128)
WIDE_MID_M_TILE = (128, 192)  # in CLUSTER_SHAPE pairs
WIDE_MID_M_MAX_M = 256
WIDE_MID_M_MIN_K = 4096  # measured at K = 7168; at 1536 the pairs ran even with the pick (0.99 / 0.97 against 0.98)
SPLIT_KS = (1, 2, 4)     # K splits per tile a variant may be built with (split-K clusters)
SPLIT_K = 2              # the split the selectable split-K variants use
SPLIT_K_IDLE = 0.5       # split only when the unsplit tiles occupy at most this fraction of the SMs
STEP_META_BYTES = 32     # per stage: the step's tile coordinates and B scales (dg::StepMeta)
# Grouped (MoE) GEMMs (dg::GroupMode): the kernel's scheduler walks the M-tiles of every group's rows, read on the
# device from the row counts. A table of MAX_GROUPS (layouts.py, dg::kMaxGroups) groups sits in shared memory.
GROUP_NONE, GROUP_CONTIGUOUS, GROUP_MASKED = 0, 1, 2
GROUP_TABLE_BYTES = (3 * MAX_GROUPS + 1) * 4     # tiles before, start and end of each group, + the total
SIDE_SLOT_BYTES = 16     # the L2-side slot a cluster claimed (dg::SideSlot, scheduler.cuh), at the end


# The facts of a variant the host binding launches it by, in the order of ptx/binding.cpp's VariantInfo (a CI test
# compares the two).
BINDING_FIELDS = ("block_m", "block_n", "stages", "acc", "cluster_m", "cluster_n", "splits", "math_wgs", "grouping",
                  "smem_bytes", "swapped", "threads", "epi_n", "fp8_out")


# dg::KernelConfig's template parameters (ptx/config.cuh), in its order: the macros ptx/kernel_unit.cu instantiates it
# from (Variant.template_args gives the values in the same order).
KERNEL_CONFIG_MACROS = ("DG_BLOCK_M", "DG_BLOCK_N", "DG_STAGES", "DG_ACC", "DG_CLUSTER_M", "DG_CLUSTER_N", "DG_SPLIT_K",
                        "DG_MATH_WGS", "DG_GROUPING", "DG_SWAPPED", "DG_FP8_OUT")


@dataclass(frozen=True, order=True)
class Variant:
    block_m: int
    block_n: int
    stages: int
    dual_acc: bool
    cluster_m: int = 1  # CTAs of a cluster along M: they share (multicast) the B tile
    cluster_n: int = 1  # CTAs of a cluster along N: they share (multicast) the A tile
    # Dual only: issue step s+1 before waiting for step s (two steps in flight; key letter "d"), or wait
    # for s first (key letter "w"). DUAL_ISSUE_AHEAD picks one per BLOCK_M.
    issue_ahead: bool = True
    # Split-K clusters (key suffix "k2"): the `splits` CTAs of a cluster share one tile, each over its own
    # range of K, and the first adds the others' partial sums from their shared memory in a fixed order.
    splits: int = 1
    # Math warpgroups (key suffix "m1" for one): two, or one on 64-row tiles, which then takes all BLOCK_N
    # columns (wider wgmmas, one wait and promotion per step; DeepGEMM's 64-row layout). Selected for every
    # 64-row tile (SMALL_M_MATH_WGS, SPLIT_K_MATH_WGS).
    math_wgs: int = 2
    # Grouped GEMMs (key suffix "gc" contiguous, "gm" masked; GROUP_*): B holds one (N, K) matrix per group, and
    # the M-tiles come from the groups' row counts on the device. No split-K.
    grouping: int = GROUP_NONE
    # Swapped (key suffix "t", small M; SWAP_TILES): the kernel computes out^T = B A^T, block_m rows of B on the
    # wgmma M side and block_n tokens on its N side, so M <= 64 wastes no tensor-core rows on padding, A scales
    # apply per column and the epilogue stores transposed. 64-row tiles, one math warpgroup, no multicast.
    swapped: bool = False
    # fp8 output (key suffix "q"; FP8_OUT_VARIANTS): the epilogue rounds the output to bf16 and quantizes it per
    # 1x128 group as quantize_act does, writing fp8 and the M-major scales; only these units hold that code. Each
    # math warpgroup's columns must be whole 128-column groups (the amax is reduced within a warpgroup): unswapped,
    # not grouped, warpgroup N a multiple of 128.
    fp8_out: bool = False
    # SwiGLU fused into the fp8 output (key suffix "swiglu" in place of "q"; SWIGLU_VARIANTS): B is a gate/up weight
    # with its rows interleaved per 128 (layouts.interleave_gate_up), a 64 x 256 tile's first math warpgroup holds a
    # 128-column gate group and the second the matching up group, and the epilogue stores the fp8 quantization of
    # SwiGLU(gate, up) (N / 2 columns). Implies fp8_out; template parameter FP8_OUT = 2. Grouped
    # (GROUPED_SWIGLU_VARIANTS): each group's N rows of B are in halves, gate [0, N/2) then up [N/2, N), as stacked
    # experts are stored (no interleaving).
    swiglu: bool = False
    # The 256-K recipe (key letter "r" in place of "p"; RECIPE_256_VARIANTS): scales per 256 of K, a pair of 128-K
    # stages summed in one partial set before one promotion (dg::kAccPairs). One partial set (like "p"), plain tiles:
    # no split-K, not grouped, not swapped, bf16/fp32 output; stream-K ranges cut on pairs (every piece's K pairs up).
    pairs: bool = False

    def __post_init__(self):
        """The rules dg::GemmTraits enforces at compile time, as a Python error before any build."""
        problems = []
        if self.block_m not in (64, 128, 256):
            problems.append("BLOCK_M must be 64, 128 or 256")
        elif self.block_m == 256 and self.dual_acc:
            problems.append("256-row tiles hold two totals per thread: registers for one partial set only")
        if self.block_n % 16 or not 16 <= self.wg_n <= 256 or self.wg_n % 16:
            problems.append("each math warpgroup's N (BLOCK_N, or BLOCK_N / 2 at BLOCK_M = 64) must be a "
                            "multiple of 16 in 16..256")
        if (self.cluster_m, self.cluster_n) not in CLUSTER_SHAPES:
            problems.append(f"cluster shape must be one of {', '.join(f'{m}x{n}' for m, n in CLUSTER_SHAPES)}")
        elif self.cluster_n > 1 and self.block_m < 128:
            # a policy, not a kernel limit: 64-row tiles with A multicast (1x2) run correctly but slower than
            # unclustered on 10 of the 12 small-M anchors (H100, ptx/NOTES.md): not built
            problems.append("A multicast (CN > 1) needs BLOCK_M >= 128")
        elif self.block_n % (8 * self.cluster_m):
            problems.append("each CTA's slice of the B tile must be a multiple of 8 rows")
        if self.splits not in SPLIT_KS:
            problems.append(f"split-K must be one of {SPLIT_KS}")
        elif self.splits > 1 and (self.block_m > 128 or self.cluster_m * self.cluster_n > 1):
            problems.append("split-K clusters are built for 64- and 128-row tiles without multicast")
        if self.math_wgs not in (1, 2):
            problems.append("one or two math warpgroups")
        elif self.math_wgs == 1 and self.block_m != 64:
            problems.append("one math warpgroup covers 64 rows: BLOCK_M must be 64")
        if self.stages < 2:
            problems.append("at least 2 stages")
        if self.grouping not in (GROUP_NONE, GROUP_CONTIGUOUS, GROUP_MASKED):
            problems.append("grouping must be GROUP_NONE, GROUP_CONTIGUOUS or GROUP_MASKED")
        elif self.grouping != GROUP_NONE and self.splits > 1:
            problems.append("grouped GEMMs run without split-K")
        if self.swapped and (self.block_m != 64 or self.math_wgs != 1 or self.cluster_m * self.cluster_n != 1
                             or self.grouping != GROUP_NONE or self.block_n > SWAP_MAX_TOKENS):
            problems.append(f"swapped tiles are 64 rows of B by at most {SWAP_MAX_TOKENS} tokens, one math "
                            "warpgroup, no multicast, not grouped")
        if self.fp8_out and (self.swapped or (self.grouping != GROUP_NONE and not self.swiglu) or self.wg_n % BLOCK_K
                             or self.block_n % BLOCK_K):
            problems.append("fp8 output needs unswapped tiles, ungrouped but for SwiGLU, whose math warpgroups each "
                            "cover whole 128-column groups (warpgroup N a multiple of 128)")
        if self.swiglu and (not self.fp8_out or self.block_m != 64 or self.block_n != 256 or self.math_wgs != 2
                            or self.splits != 1 or self.swapped):
            problems.append("SwiGLU output needs fp8 output on 64x256 tiles with two math warpgroups (gate, up), "
                            "no split-K, not swapped")
        if self.pairs and (self.dual_acc or self.splits != 1 or self.grouping != GROUP_NONE or self.swapped
                           or self.fp8_out):
            problems.append("the 256-K recipe's pairs take one partial set on plain tiles: no dual accumulators, "
                            "no split-K, not grouped, not swapped, no fp8 output")
        if problems:
            raise ValueError(f"variant {self.block_m}x{self.block_n} stages={self.stages} "
                             f"cluster={self.cluster_m}x{self.cluster_n}: " + "; ".join(problems))

    def check_k(self, k: int) -> None:
        """Split-K variants need one K block per split: a clear error before any launch."""
        if k < BLOCK_K * self.splits:
            raise ValueError(f"variant {self.key} splits K in {self.splits} and needs K >= {BLOCK_K * self.splits}, "
                             f"got K = {k}")

    @property
    def acc_mode(self) -> int:
        """dg::AccMode: 0 one partial set, 1 dual waiting for step s first, 2 dual with two steps in flight, 3 pairs
        of K blocks in one partial set (the 256-K recipe)."""
        if self.pairs:
            return 3
        return 0 if not self.dual_acc else 2 if self.issue_ahead else 1

    @property
    def cluster(self) -> int:
        """CTAs per cluster (the multicast group times the K splits)."""
        return self.cluster_m * self.cluster_n * self.splits

    @property
    def wg_n(self) -> int:
        """Columns of one math warpgroup (BLOCK_M = 64 splits the tile's columns between the warpgroups)."""
        return self.block_n if self.block_m >= 128 else self.block_n // self.math_wgs

    @property
    def spans_three_scale_blocks(self) -> bool:
        """Whether some tile's warpgroup columns touch three 128-wide B-scale blocks (dg::GemmTraits::
        kThreeScaleBlocks; BLOCK_N = 176 at BLOCK_M = 128)."""
        return BLOCK_K - gcd(self.wg_n, BLOCK_K) + self.wg_n > 2 * BLOCK_K

    @property
    def epi_n(self) -> int:
        """Columns of one bf16 TMA store box (dg::GemmTraits::kEpiN)."""
        return 64 if self.wg_n % 64 == 0 else 32 if self.wg_n % 32 == 0 else 16

    @property
    def band_n(self) -> int:
        """Columns per band of the bf16 epilogue's staging buffer (dg::GemmTraits::kBandN): up to 64, whole
        boxes stored after one wait."""
        return self.epi_n * (64 // self.epi_n if self.wg_n >= 64 else 1)

    @property
    def key(self) -> str:
        cluster = ("" if self.cluster_m * self.cluster_n == 1 else f"c{self.cluster_m}" if self.cluster_n == 1
                   else f"c{self.cluster_m}x{self.cluster_n}")
        split = f"k{self.splits}" if self.splits > 1 else ""
        wgs = "m1" if self.math_wgs == 1 else ""
        grouped = ("", "gc", "gm")[self.grouping]
        swapped = "t" if self.swapped else ""
        fp8_out = "swiglu" if self.swiglu else "q" if self.fp8_out else ""
        return (f"{self.block_m}x{self.block_n}s{self.stages}{'pwdr'[self.acc_mode]}{cluster}{split}{wgs}{grouped}"
                f"{swapped}{fp8_out}")

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory the kernel asks for; mirrors dg::SmemLayout (the CI build checks they agree)."""
        stage = self.block_m * BLOCK_K + self.block_n * BLOCK_K + round_up(self.block_m * 4, 128) + STEP_META_BYTES
        epilogue_start = round_up(self.stages * stage, SWIZZLE_ATOM)  # the staging buffers are swizzled
        epilogue = self.math_wgs * 64 * self.band_n * 2
        reduction = (self.splits - 1) * self.block_m * self.block_n * 4  # the other splits' partial tiles
        barriers = (2 * self.stages + (2 if self.splits > 1 else 0)) * 8
        table = GROUP_TABLE_BYTES if self.grouping else 0
        side_slot = round_up(round_up(epilogue_start + epilogue + reduction, 8) + barriers + table, 16)
        return side_slot + SIDE_SLOT_BYTES + SWIZZLE_ATOM

    @property
    def fp8_out_mode(self) -> int:
        """dg::KernelConfig's FP8_OUT (and the binding's fp8_out): 0 bf16/fp32 output, 1 fp8, 2 fp8 of SwiGLU."""
        return 2 if self.swiglu else int(self.fp8_out)

    @property
    def threads(self) -> int:
        """Threads per CTA (dg::KernelConfig::kThreads): the producer warpgroup and the math warpgroups."""
        return 128 * (1 + self.math_wgs)

    def binding_info(self) -> list[int]:
        """What the host binding needs to launch this variant: BINDING_FIELDS (ptx/binding.cpp's VariantInfo, in
        its order)."""
        facts = {"acc": self.acc_mode, "swapped": int(self.swapped), "fp8_out": self.fp8_out_mode}
        return [int(facts[name] if name in facts else getattr(self, name)) for name in BINDING_FIELDS]

    @property
    def template_args(self) -> str:
        """dg::KernelConfig's template arguments for this variant (ptx/config.cuh; its parameters' order)."""
        return (f"{self.block_m}, {self.block_n}, {self.stages}, {self.acc_mode}, {self.cluster_m}, {self.cluster_n}, "
                f"{self.splits}, {self.math_wgs}, {self.grouping}, {int(self.swapped)}, {self.fp8_out_mode}")

    def compile_defines(self) -> dict[str, int]:
        """The -D macros of the variant's kernel unit (ptx/kernel_unit.cu): dg::KernelConfig's parameters by name,
        in its order, and what this file computed of them (the unit checks both agree at compile time)."""
        config = dict(zip(KERNEL_CONFIG_MACROS, (int(v) for v in self.template_args.split(","))))
        return {**config, "DG_EXPECT_SMEM_BYTES": self.smem_bytes, "DG_EXPECT_THREADS": self.threads,
                "DG_EXPECT_EPI_N": self.epi_n}


def parse_key(key: str) -> Variant:
    """The Variant a key such as "128x128s6dc2" names (also shapes not in VARIANTS: for experiments).

    The letter after the stage count: p = one partial accumulator set, d = two sets with two steps in
    flight, w = two sets waiting for each step before issuing the next, r = the 256-K recipe (one set summing a
    pair of K blocks per promotion). Suffixes: c = cluster shape, k = K
    splits, m1 = one math warpgroup, gc / gm = grouped contiguous / masked, t = swapped (out^T = B A^T), q = fp8
    output."""
    match = re.fullmatch(r"(\d+)x(\d+)s(\d+)([dpwr])(?:c(\d+)(?:x(\d+))?)?(?:k(\d+))?(?:m(\d))?(?:g([cm]))?(t)?(q|swiglu)?",
                         key)
    if match is None:
        raise ValueError(f"variant key {key!r} does not look like 128x128s6d, 128x128s6dc2, 128x128s6dc2x2 "
                         f", 64x64s12dk2, 64x32s16dm1 or 128x128s6wgc")
    bm, bn, stages, acc, cm, cn, ks, wgs, grouped, swapped, fp8_out = match.groups()
    return Variant(int(bm), int(bn), int(stages), acc in "dw", int(cm or 1), int(cn or 1), acc != "w", int(ks or 1),
                   int(wgs or 2), {None: GROUP_NONE, "c": GROUP_CONTIGUOUS, "m": GROUP_MASKED}[grouped],
                   swapped is not None, fp8_out is not None, fp8_out == "swiglu", acc == "r")


def _max_stages(block_m: int, block_n: int, cap: int = MAX_STAGES, splits: int = 1, math_wgs: int = 2,
                grouping: int = GROUP_NONE) -> int:
    for stages in range(cap, 1, -1):
        if Variant(block_m, block_n, stages, False, splits=splits, math_wgs=math_wgs,
                   grouping=grouping).smem_bytes <= SMEM_LIMIT:
            return stages
    raise ValueError(f"no stage count fits {block_m}x{block_n}")


def _variant(block_m: int, block_n: int, dual: bool, cluster: tuple[int, int] = (1, 1),
             issue_ahead: bool = True, splits: int = 1, math_wgs: int = 2, grouping: int = GROUP_NONE,
             swapped: bool = False) -> Variant:
    return Variant(block_m, block_n, _max_stages(block_m, block_n, splits=splits, math_wgs=math_wgs, grouping=grouping),
                   dual, *cluster, issue_ahead, splits, math_wgs, grouping, swapped)


# Tile shapes the heuristic may pick; each with dual accumulators where the registers allow, and a
# single-accumulator twin so DEEPERGEMM_DUAL_ACC=0 can measure what dual buys.
TILE_SHAPES: tuple[tuple[int, int], ...] = (
    (256, 128), (128, 128), (128, 192),
    (64, 32), (64, 64), (64, 128),
)
# Relative cost per output element (the wave model's weight; measured, ptx/NOTES.md): 64-row tiles re-read B
# from shared memory twice as often per flop; 256-row tiles (one partial set) run 3-8% faster than 128-row ones
# (dual partial sets) at equal waves on the H100. 128x192 tiles (one partial set; their warpgroup columns span
# two B-scale blocks) run slower per element than 128x128 at long K, but at N = 2112 they fill the waves
# (11 N-tiles): 4096x2112x7168 1.07-1.10 against 0.96-0.97x cuBLAS, and 8192x2112x7168 (5.3 waves, rounded up
# to 6) still 3-6% faster than 128x128 or 256x128 in three sweeps; the weight 0.98 picks it at both and nowhere
# else among the anchors. BLOCK_N 96/112/144/160 run 10-30% slower than 128 on every large shape tried, so they
# are not selectable.
_TILE_COST = {(256, 128): 0.93, (128, 128): 1.0, (128, 192): 0.98, (64, 32): 1.1, (64, 64): 1.1, (64, 128): 1.1,
              NARROW_TILE: NARROW_TILE_COST}


def _variants() -> tuple[Variant, ...]:
    out = []
    for bm, bn in TILE_SHAPES:
        wg_n = bn if bm == 128 else bn // 2
        for cluster in ((1, 1), _CLUSTER_FOR[bm]) if bm in _CLUSTER_FOR else ((1, 1),):  # BLOCK_M >= 128 only
            out.append(_variant(bm, bn, False, cluster))
            if wg_n <= MAX_MATH_REGS_DUAL and bm <= 128:  # 256 rows: registers for one partial set
                out.append(_variant(bm, bn, True, cluster, DUAL_ISSUE_AHEAD[bm]))
            if bm == 64:  # the default 64-row layout: one math warpgroup (SMALL_M_MATH_WGS)
                out.append(_variant(bm, bn, True, cluster, DUAL_ISSUE_AHEAD[bm], math_wgs=1))
    return tuple(out)


_CLUSTER_FOR = {128: CLUSTER_SHAPE, 256: CLUSTER_SHAPE_256}
# The 64-row tiles that may run in SMALL_M_CLUSTER pairs (dual, two steps in flight, as unclustered).
SMALL_M_CLUSTER_VARIANTS: tuple[Variant, ...] = tuple(
    _variant(bm, bn, True, SMALL_M_CLUSTER, DUAL_ISSUE_AHEAD[64], math_wgs=wgs) for bm, bn in TILE_SHAPES
    if bm == 64 and bn >= SMALL_M_CLUSTER_MIN_N for wgs in (1, 2))
# Split-K: select() only ever wants the narrowest tile (the most CTAs); a wider one is tested below. One
# math warpgroup takes all 32 columns (m64n32 wgmmas: half the wgmma and promotion instructions of two
# warpgroups of n16). On the H100 (ptx/NOTES.md, small M at N = 2112): 64x2112x7168 15.5 -> 14.6 us
# (1.65 -> 1.75x cuBLAS), 2-3% faster at K = 3584 and 14336; the two-warpgroup tile stays tested.
SPLIT_K_TILE = (64, 32)
SPLIT_K_MATH_WGS = 1
# At 64 < M <= 128, where one wave of unclustered 64-row tiles fills the SMs (N = 2112: 132 tiles of 64x32),
# one 128-row M-tile split over K in two fills them as well: each B tile crosses L2 -> SM once, each CTA
# reads half of K, and each step does twice the work (two m64n32 wgmma groups instead of two m64n16).
# On the H100 (ptx/NOTES.md, small M at N = 2112): 128x2112x7168 17.7 -> 15.7 us (1.43 -> 1.62x cuBLAS),
# 128x2112x14336 28.6 -> 22.6, equal at K = 3584 (hence the K bound: the join costs a fixed time). Two steps in
# flight ("d"), as measured. Against the one-warpgroup 64x32 tile (SMALL_M_MATH_WGS) the split pays from
# K ~ 6144 on: 128x2112x4096 13.1 against 11.8 us, 128x2112x7168 15.8 against 16.5 (the crossing of the two
# lines through these points).
SPLIT_K_TILE_128 = (128, 32)
SPLIT_K_128_MIN_K = 6144
VARIANTS: tuple[Variant, ...] = (_variants() + SMALL_M_CLUSTER_VARIANTS
                                 + (_variant(*SPLIT_K_TILE, True, (1, 1), DUAL_ISSUE_AHEAD[64], SPLIT_K,
                                             SPLIT_K_MATH_WGS),
                                    _variant(*SPLIT_K_TILE_128, True, (1, 1), True, SPLIT_K),
                                    _variant(*NARROW_TILE, True, (1, 1), DUAL_ISSUE_AHEAD[128]),  # (unclustered only)
                                    _variant(*NARROW_TILE, False)))
# 256-row tiles with the other cluster shape (B multicast): not selected (1-2% slower, ptx/NOTES.md), kept
# tested because the kernel supports it.
LARGE_TILE_VARIANTS: tuple[Variant, ...] = (_variant(256, 128, False, CLUSTER_SHAPE),)
# What the tests (GPU) and the CI compile gate cover: every selectable variant, plus each cluster shape the
# kernel supports and both dual-accumulator orderings on the 128x128 tile, and the 256-row tiles, so what
# select() does not pick today still builds and stays exact.
# The 64x16 tile with one math warpgroup (N = 2112 in one wave of 132 tiles at M = 64): not selected (slower
# than the split-K pick, ptx/NOTES.md), built and tested.
ONE_WARPGROUP_VARIANTS: tuple[Variant, ...] = (_variant(64, 16, True, (1, 1), DUAL_ISSUE_AHEAD[64], math_wgs=1),)
# 128x176 (2x1 clusters): warpgroup columns that span three B-scale blocks and epilogue bands of several
# 16-column boxes. Not selected: 10-11% slower per element than 128x192 on the large anchors (ptx/NOTES.md,
# three scale blocks), so at 4096x2112x7168 its fuller last wave does not pay; built and tested.
THREE_SCALE_BLOCK_VARIANTS: tuple[Variant, ...] = (_variant(128, 176, False, CLUSTER_SHAPE),)
TESTED_VARIANTS: tuple[Variant, ...] = VARIANTS + tuple(dict.fromkeys(
    v for v in (*(_variant(128, 128, True, shape, ahead) for shape in CLUSTER_SHAPES for ahead in (False, True)),
                *LARGE_TILE_VARIANTS, _variant(64, 128, True, (1, 1), DUAL_ISSUE_AHEAD[64], SPLIT_K),
                _variant(*SPLIT_K_TILE, True, (1, 1), DUAL_ISSUE_AHEAD[64], SPLIT_K),  # two math warpgroups
                *ONE_WARPGROUP_VARIANTS, *THREE_SCALE_BLOCK_VARIANTS)
    if v not in VARIANTS))


# Swapped small-M tiles (Variant.swapped, key suffix "t"): at M <= 64 the kernel computes out^T = B A^T,
# 64 rows of B on the wgmma M side and the tokens (16, 32 or 64 of them, the smallest that holds M) on its N side:
# no tensor-core rows spent on padding tokens, and a stage holds 8 KiB of B next to 2-8 KiB of A (not 8 KiB of
# mostly padded A next to B). SM fill: N/64 tiles, split over K in 2 or 4 (split-K clusters) while that stays
# within one wave. By default at M <= SWAP_DEFAULT_MAX_M, where they were measured ahead of the unswapped picks on
# every decode shape (H100, 18 of 18 at M = 1, 8, 16: 1.4-35% faster); at M = 32 they lost on three of six, at M = 64
# on all six (bench/RESULTS.md). DEEPERGEMM_SWAP_AB=1 takes them up to M = 64, =0 never.
SWAP_MAX_TOKENS = 64
SWAP_DEFAULT_MAX_M = 16
SWAP_TOKENS = (16, 32, 64)
SWAP_SPLITS = (1, 2, 4)
SWAP_MIN_K_BLOCKS_PER_SPLIT = 4  # each split keeps a few stages of work (the join costs a fixed time)
# 4-CTA clusters that fit at once: a cluster stays inside one GPC, and the H100's 132 SMs hold 32 of them, not 33
# (cudaOccupancyMaxActiveClusters; 33 run in two waves, ptx/NOTES.md). 2-CTA clusters fit 66.
CLUSTER4_SHORTFALL = 1


def resident_clusters(num_sms: int, size: int) -> int:
    """Clusters of `size` CTAs (1, 2 or 4) that run at once on num_sms SMs (the model select uses; the binding
    asks the driver)."""
    return num_sms // size - (CLUSTER4_SHORTFALL if size >= 4 else 0)
SWAPPED_VARIANTS: tuple[Variant, ...] = tuple(
    _variant(64, tokens, True, (1, 1), DUAL_ISSUE_AHEAD[64], splits, 1, swapped=True)
    for tokens in SWAP_TOKENS for splits in SWAP_SPLITS)
TESTED_VARIANTS = TESTED_VARIANTS + SWAPPED_VARIANTS


def swap_max_m(sw: Switches | None = None) -> int:
    """The largest M that select() gives swapped tiles: SWAP_DEFAULT_MAX_M, or per DEEPERGEMM_SWAP_AB (1: every M
    they hold, 0: none)."""
    sw = sw or switches()
    if sw.get("DEEPERGEMM_SWAP_AB") == "":
        return SWAP_DEFAULT_MAX_M
    return SWAP_MAX_TOKENS if sw.flag("DEEPERGEMM_SWAP_AB", False) else 0


def _select_swapped(m: int, n: int, k: int, num_sms: int, sw: Switches) -> Choice:
    """Swapped tiles for M <= SWAP_MAX_TOKENS: the smallest token tile that holds M, and the most K splits that
    keep the CTAs within one wave (and SWAP_MIN_K_BLOCKS_PER_SPLIT K blocks each)."""
    tokens = next(t for t in SWAP_TOKENS if t >= m)
    tiles = ceil_div(n, 64) * ceil_div(m, tokens)
    k_blocks = k // BLOCK_K
    may_split = sw.flag("DEEPERGEMM_SPLIT_K", True)
    splits = max(s for s in SWAP_SPLITS if s == 1 or (
        may_split and tiles <= resident_clusters(num_sms, s) and k_blocks >= s * SWAP_MIN_K_BLOCKS_PER_SPLIT))
    variant = next(v for v in SWAPPED_VARIANTS if v.block_n == tokens and v.splits == splits)
    units, waves = waves_for(n, m, 64, tokens, num_sms, (1, 1), splits)
    grid = min(units, resident_clusters(num_sms, variant.cluster)) * variant.cluster
    return Choice(variant, min(DEFAULT_GROUP_N, ceil_div(m, tokens)), units * variant.cluster, waves, grid,
                  variant_l2_hints(m, variant, sw), False)


def variant_l2_hints(m: int, variant: Variant, sw: Switches | None = None) -> int:
    """l2_hints_for a variant: swapped, the kernel's A (B's rows) is streamed (evict-first) and its B (the tokens)
    re-read by every CTA (evict-last); DEEPERGEMM_L2_HINTS overrides both."""
    sw = sw or switches()
    if variant.swapped and not sw.get("DEEPERGEMM_L2_HINTS"):
        return L2_EVICT_FIRST | L2_EVICT_LAST << 2
    return l2_hints_for(m, variant.block_m, variant.cluster_m, sw)


# L2 eviction priorities of the kernel's loads (dg::L2Priority): the kernel takes A's in bits 0-1, B's in
# bits 2-3 (l2_hints = a | b << 2).
L2_NORMAL, L2_EVICT_FIRST, L2_EVICT_LAST = 0, 1, 2


def l2_hints_for(m: int, block_m: int, cluster_m: int = 1, sw: Switches | None = None) -> int:
    """Small M: every CTA re-reads all of A (keep it: evict-last), and B is streamed; B goes evict-first
    only where no other load reads the same B tile (one M-tile, or the M-tiles of one cluster, which
    multicasts it). Large M: no hints."""
    value = (sw or switches()).get("DEEPERGEMM_L2_HINTS")
    if value:
        if not value.isdigit() or int(value) > 15:
            raise ValueError(f"DEEPERGEMM_L2_HINTS must be an integer 0..15 (A priority | B priority << 2), got {value!r}")
        return int(value)
    if m > 128:
        return L2_NORMAL | L2_NORMAL << 2
    return L2_EVICT_LAST | (L2_EVICT_FIRST if ceil_div(m, block_m) <= cluster_m else L2_NORMAL) << 2


@dataclass(frozen=True)
class Choice:
    variant: Variant
    group_n: int
    tiles: int
    waves: int
    grid: int
    l2_hints: int = 0
    stream_k: bool = False  # share the part-filled last wave (or, a fill, every unit) out by K blocks (stream_k_pays)


def _small_m_stream(m: int, n: int, k: int, num_sms: int) -> tuple[int, int] | None:
    """The tile a problem with M <= WIDE_MID_M_MAX_M on a wide weight takes (see SMALL_M_STREAM_MAX_M), or None."""
    if ceil_div(n, SMALL_M_STREAM_TILE[1]) < SMALL_M_STREAM_MIN_WAVES * num_sms:
        return None
    if m <= SMALL_M_STREAM_MAX_M:
        return SMALL_M_STREAM_TILE
    if k < SMALL_M_CLUSTER_MIN_K:
        return NARROW_TILE if NARROW_TILE_MIN_SMALL_M <= m <= 128 else None  # (no 64-row pairs: B read once)
    if ceil_div(m, 64) == SMALL_M_CLUSTER[0]:
        return SMALL_M_STREAM_PAIR_TILE
    if 128 < m <= WIDE_MID_M_MAX_M and k >= WIDE_MID_M_MIN_K:
        return WIDE_MID_M_TILE
    return None


def _small_m_math_wgs(k: int, sw: Switches) -> int:
    value = sw.get("DEEPERGEMM_SMALL_M_WGS")
    if value not in ("", "1", "2"):
        raise ValueError(f"DEEPERGEMM_SMALL_M_WGS must be 1 or 2 (math warpgroups of a 64-row tile), got {value!r}")
    if value:
        return int(value)
    return SMALL_M_MATH_WGS if k >= SMALL_M_ONE_WG_MIN_K else 2


def _forced_shape(sw: Switches) -> tuple[int, int] | None:
    value = sw.get("DEEPERGEMM_VARIANT")
    if not value:
        return None
    try:
        bm, bn = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise ValueError(f"DEEPERGEMM_VARIANT must look like 128x128, got {value!r}") from None
    if (bm, bn) not in TILE_SHAPES:
        raise ValueError(f"DEEPERGEMM_VARIANT={value!r} is not a compiled tile shape; choose from "
                         f"{', '.join(f'{m}x{n}' for m, n in TILE_SHAPES)}")
    return bm, bn


def find_variant(block_m: int, block_n: int, dual_acc: bool, cluster: tuple[int, int] = (1, 1),
                 splits: int = 1, math_wgs: int = 2) -> Variant:
    """The listed variant for a tile shape and cluster shape; the single-accumulator one when dual does not fit,
    the other number of math warpgroups when the one asked for is not built (single accumulators: two)."""
    matches = [v for v in VARIANTS if (v.block_m, v.block_n, (v.cluster_m, v.cluster_n), v.splits)
               == (block_m, block_n, cluster, splits)]
    if not matches:
        raise ValueError(f"no variant with tile {block_m}x{block_n} and cluster shape {cluster[0]}x{cluster[1]}")
    return min(matches, key=lambda v: (v.dual_acc != dual_acc, v.math_wgs != math_wgs))


def waves_for(m: int, n: int, block_m: int, block_n: int, num_sms: int,
              cluster: tuple[int, int] = (1, 1), splits: int = 1) -> tuple[int, int]:
    """(units of work, waves): a unit is a cluster's CM x CN tiles (or one tile for its K splits), and
    num_sms // (CM * CN * splits) run at once."""
    cm, cn = cluster
    units = ceil_div(ceil_div(m, block_m), cm) * ceil_div(ceil_div(n, block_n), cn)
    return units, ceil_div(units, max(1, num_sms // (cm * cn * splits)))


def stream_k_for(variant: Variant, sw: Switches | None = None) -> bool:
    """Whether this variant can run stream-K (ptx/scheduler.cuh): a tail, when the units leave the last wave
    part-filled (that wave's units and one full wave more are shared out among all clusters by K blocks, each
    cluster's heads and tails of tiles joined through a workspace in a fixed order), or a fill, when there are
    fewer units than clusters (every unit shared out among all the clusters, each tile's owner joining its
    pieces at the end). Large-M tiles with one partial set (BLOCK_M >= 128, key letters p and r; the two-set loops
    do not start or end a tile's sums from the workspace; the pairs' ranges are cut on pairs of K blocks), no
    split-K. DEEPERGEMM_STREAM_K=0 turns it off."""
    return (variant.splits == 1 and variant.block_m >= 128 and not variant.dual_acc
            and (sw or switches()).flag("DEEPERGEMM_STREAM_K", True))


# Stream-K pays where the last wave leaves at least this share of the SMs' time idle: on the H100 256x128 gains
# 17% at 4096x2112x7168 (2.2 waves) and 5% at 8192x2112x7168 (4.4 waves), and loses 1-8% at 3.9-31 waves (its
# hand-offs cost more than the 3% idle; ptx/NOTES.md, stream-K).
STREAM_K_MIN_IDLE = 0.10
STREAM_K_TILES = ((256, 128),)  # 128x192 gained less and nowhere where it would be picked
STREAM_K_COST = 1.03            # the hand-offs, on the fractional waves the wave model charges
# ...and only from K = 6144: below it the tail lost on every shape measured (H100, 256x128 against itself without
# it: 1024x7168x2048 -20%, 1024x7168x4096 -16%, 1536x7168x2048 -8..-12%), and where it gained (4096x2112x2048 / x4096,
# +4..+20%) the tile the wave model takes without it ran faster still (128x192: 37.7 us against 42.9, 64.6 against
# 66.5; 2048x7168x2048: 128x128 2x1 ~55 against 59.6). At K = 7168 the tail paid (4096x2112x7168 109.3 us against
# 128x192's 109.8, 8192x2112x7168 200.5 against 209.2); K = 4096-7168 is not measured. ptx/NOTES.md, stream-K fill.
STREAM_K_MIN_K = 6144

# Stream-K fill: with fewer units than clusters (middle M: 1024x2112x7168 is 44 pairs of 128x192 tiles on 66
# clusters) the grid takes every cluster and each cuts its part of the units' K blocks, so no SM idles. Measured on
# the H100 (ptx/NOTES.md, stream-K fill): each launch pays a fixed 5-20 us for its joins, and the middle-M shapes are
# bound by L2 -> SM traffic, which more SMs do not raise, so it paid only at K = 7168 and most on 128x192 tiles
# (+8..+27% on all 7 measured, 1024x2112x7168 1.26 -> 1.36x cuBLAS); 256x128 gained at K = 7168 but lost at 2048 and
# 16384, 128x128 lost nearly everywhere (-3..-27%). Only where the units leave at least STREAM_K_FILL_MIN_IDLE of the
# clusters idle and each cluster gets at least STREAM_K_FILL_MIN_BLOCKS K blocks.
STREAM_K_FILL_TILES = ((128, 192),)
STREAM_K_FILL_MIN_K = 7168
STREAM_K_FILL_MIN_IDLE = 0.10
STREAM_K_FILL_MIN_BLOCKS = 4


def stream_k_fill_pays(m: int, n: int, k: int, variant: Variant, num_sms: int, sw: Switches | None = None) -> bool:
    """stream_k_for(variant) on a fill tile at K >= STREAM_K_FILL_MIN_K (DEEPERGEMM_STREAM_K_FILL=0 turns it off),
    for a problem whose units leave at least STREAM_K_FILL_MIN_IDLE of the clusters idle and give each cluster at
    least STREAM_K_FILL_MIN_BLOCKS K blocks."""
    sw = sw or switches()
    if (not sw.flag("DEEPERGEMM_STREAM_K_FILL", True) or not stream_k_for(variant, sw) or k < STREAM_K_FILL_MIN_K
            or (variant.block_m, variant.block_n) not in STREAM_K_FILL_TILES):
        return False
    units, _ = waves_for(m, n, variant.block_m, variant.block_n, num_sms, (variant.cluster_m, variant.cluster_n))
    clusters = max(1, num_sms // variant.cluster)
    return (units <= clusters * (1 - STREAM_K_FILL_MIN_IDLE)
            and units * (k // BLOCK_K) >= clusters * STREAM_K_FILL_MIN_BLOCKS)


def stream_k_tail_pays(m: int, n: int, k: int, variant: Variant, num_sms: int, sw: Switches | None = None) -> bool:
    """stream_k_for(variant) on a tile shape where the tail was measured to pay, at K >= STREAM_K_MIN_K, for a
    problem whose last wave idles at least STREAM_K_MIN_IDLE of the time."""
    if (not stream_k_for(variant, sw) or (variant.block_m, variant.block_n) not in STREAM_K_TILES
            or k < STREAM_K_MIN_K):
        return False
    units, waves = waves_for(m, n, variant.block_m, variant.block_n, num_sms, (variant.cluster_m, variant.cluster_n))
    clusters = max(1, num_sms // variant.cluster)
    return units > clusters and (waves - units / clusters) / waves >= STREAM_K_MIN_IDLE


def stream_k_pays(m: int, n: int, k: int, variant: Variant, num_sms: int, sw: Switches | None = None) -> bool:
    """Whether the launch asks for stream-K: a tail (stream_k_tail_pays) or a fill (stream_k_fill_pays). The binding
    re-checks with the clusters that fit (a fill only with fewer units than they)."""
    return stream_k_tail_pays(m, n, k, variant, num_sms, sw) or stream_k_fill_pays(m, n, k, variant, num_sms, sw)


def _split_k_choice(m: int, n: int, k_blocks: int, num_sms: int, shape: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(splits, tile) for a small-M problem whose unsplit, unclustered pick is `shape`: split K when those
    tiles occupy at most SPLIT_K_IDLE of the SMs, into the 64-row split tile with the most CTAs in one wave
    (fewest bytes per CTA on ties); or, at 64 < M <= 128 and K >= SPLIT_K_128_MIN_K with those tiles in one
    wave, into 128-row tiles (SPLIT_K_TILE_128) when they keep at least as many CTAs busy."""
    if k_blocks < SPLIT_K:
        return 1, shape
    tiles = waves_for(m, n, *shape, num_sms)[0]
    if tiles <= SPLIT_K_IDLE * num_sms:
        fitting = [(v.block_m, v.block_n) for v in VARIANTS if v.splits == SPLIT_K and v.block_m == 64
                   and waves_for(m, n, v.block_m, v.block_n, num_sms)[0] * SPLIT_K <= num_sms]
        if fitting:
            return SPLIT_K, max(fitting, key=lambda s: (waves_for(m, n, *s, num_sms)[0], -(s[0] + s[1])))
        return 1, shape
    if 64 < m <= 128 and shape[0] == 64 and tiles <= num_sms and k_blocks * BLOCK_K >= SPLIT_K_128_MIN_K:
        split_ctas = waves_for(m, n, *SPLIT_K_TILE_128, num_sms)[0] * SPLIT_K
        if tiles <= split_ctas <= num_sms:
            return SPLIT_K, SPLIT_K_TILE_128
    return 1, shape


def _parse_cluster(value: str) -> tuple[int, int]:
    parts = value.lower().split("x")
    try:
        shape = (int(parts[0]), int(parts[1]) if len(parts) == 2 else 1)
    except (ValueError, IndexError):
        shape = (0, 0)
    if len(parts) > 2 or shape not in CLUSTER_SHAPES:
        raise ValueError(f"DEEPERGEMM_CLUSTER must be one of 1, 2, "
                         f"{', '.join(f'{m}x{n}' for m, n in CLUSTER_SHAPES)}; got {value!r}")
    return shape


def _cluster_shape(m: int, n: int, k: int, block_m: int, block_n: int, sw: Switches) -> tuple[int, int]:
    value = sw.get("DEEPERGEMM_CLUSTER")
    if value:
        shape = _parse_cluster(value)
        if shape[1] > 1 and block_m < 128:
            raise ValueError(f"DEEPERGEMM_CLUSTER={value}: A multicast needs BLOCK_M >= 128, this problem uses "
                             f"{block_m}")
        return shape
    if block_m == 64:
        if m > 128:  # the middle-M 64-row tiles, paired or alone as measured (MID_M_SMALL_TILES)
            paired = MID_M_SMALL_TILES.get((block_m, block_n), (True, 2))[0]
            return SMALL_M_CLUSTER if paired and sw.flag("DEEPERGEMM_SMALL_M_CLUSTER", True) else (1, 1)
        paired = (sw.flag("DEEPERGEMM_SMALL_M_CLUSTER", True) and ceil_div(m, block_m) == SMALL_M_CLUSTER[0]
                  and block_n >= SMALL_M_CLUSTER_MIN_N and k >= SMALL_M_CLUSTER_MIN_K)
        return SMALL_M_CLUSTER if paired else (1, 1)
    if ceil_div(m, block_m) <= MID_M_UNCLUSTERED_TILES.get(block_m, 0) and not (
            block_m == 256 and k >= MID_M_CLUSTER_256_MIN_K):
        return (1, 1)
    shape = _CLUSTER_FOR.get(block_m, (1, 1))
    # a pair needs two tiles along its direction
    return shape if ceil_div(m, block_m) >= shape[0] and ceil_div(n, block_n) >= shape[1] else (1, 1)


# The environment switches (module docstring), read once into a Switches snapshot: switches() returns it,
# reload_switches() reads the environment again (tests, benchmarks that flip a switch). Nothing reads the environment
# per call; select() and select_grouped() take the snapshot as part of their cache key.
SWITCHES = ("DEEPERGEMM_DUAL_ACC", "DEEPERGEMM_VARIANT", "DEEPERGEMM_CLUSTER", "DEEPERGEMM_GROUP_N",
            "DEEPERGEMM_SPLIT_K", "DEEPERGEMM_SMALL_M_CLUSTER", "DEEPERGEMM_SMALL_M_WGS", "DEEPERGEMM_STREAM_K",
            "DEEPERGEMM_STREAM_K_FILL",
            "DEEPERGEMM_L2_HINTS", "DEEPERGEMM_GROUPED_VARIANT", "DEEPERGEMM_PDL", "DEEPERGEMM_SWAP_AB",
            "DEEPERGEMM_BACKEND", "DEEPERGEMM_PAIRS", "DEEPERGEMM_FUSED_EPILOGUE", "DEEPERGEMM_TRITON_FAST_LAUNCH")


@dataclass(frozen=True)
class Switches:
    """The switches' values (stripped; "" when unset), as read at one moment."""
    values: tuple[tuple[str, str], ...]

    @classmethod
    def from_environ(cls, environ=None) -> "Switches":
        environ = os.environ if environ is None else environ
        return cls(tuple((name, (environ.get(name) or "").strip()) for name in SWITCHES))

    def get(self, name: str) -> str:
        for key, value in self.values:
            if key == name:
                return value
        raise KeyError(f"{name} is not one of configs.SWITCHES")

    def flag(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value == "":
            return default
        if value not in ("0", "1"):
            raise ValueError(f"environment variable {name} must be 0 or 1, got {value!r}")
        return value == "1"


_switches: Switches | None = None
_reload_hooks: list = []  # called with the new snapshot (extension.py pushes the binding's share of it)


def switches() -> Switches:
    """The switches as read at first use (or at the last reload_switches())."""
    global _switches
    if _switches is None:
        _switches = Switches.from_environ()
    return _switches


def reload_switches() -> Switches:
    """Read the environment switches again; the selections cached under the old values are dropped."""
    global _switches
    _switches = Switches.from_environ()
    _select_cached.cache_clear()
    _select_grouped_cached.cache_clear()
    _select_fp8_out_cached.cache_clear()
    for hook in _reload_hooks:
        hook(_switches)
    return _switches


# L2-side-aware scheduling: side 0 takes the N-tiles below the placement's split row (rounded to whole
# cluster N-units). Used only when that keeps the sides' shares of the tiles within SIDE_MAX_SKEW of their shares
# of B's rows (which follow their SM counts): the kernel gives each side clusters in proportion to its tiles, so
# a skew sends that share of clusters to work on the other side's memory.
SIDE_MAX_SKEW = 0.1


def side0_n_tiles(variant: Variant, n: int, split_rows: int) -> int | None:
    """N-tiles of side 0 for L2-side-aware scheduling of this variant, or None where it does not apply."""
    if variant.grouping != GROUP_NONE or variant.swapped or not 0 < split_rows < n:
        return None
    unit = variant.block_n * variant.cluster_n
    n_units = -(-n // unit)
    side0_units = round(split_rows / unit)
    if not 0 < side0_units < n_units:
        return None
    if abs(side0_units / n_units - split_rows / n) > SIDE_MAX_SKEW:
        return None
    return side0_units * variant.cluster_n


def pdl_enabled(sw: Switches | None = None) -> bool:
    """Launch the GEMMs with programmatic dependent launch, so a kernel's prologue (barrier setup, tensor-map
    prefetch, register reallocation) overlaps the previous kernel's tail in the stream; the kernel waits for that
    kernel (griddepcontrol.wait) before it touches global memory, so results are the same. On by default: on
    chains of quantize -> GEMM layers it saved 6-10% per layer at decode sizes (1.4% at M = 4096) and lost
    nowhere measured (ptx/NOTES.md); DEEPERGEMM_PDL=0 turns it off."""
    return (sw or switches()).flag("DEEPERGEMM_PDL", True)


def triton_fast_launch_enabled(sw: Switches | None = None) -> bool:
    """Launch the Triton kernels (quantization, SwiGLU, MoE layout) through triton_kernels.launch.FastLaunch: the
    compiled kernel cached under our own key, past Triton's per-call binding and cache lookup (the same kernel,
    launched the same way). Opt-in (DEEPERGEMM_TRITON_FAST_LAUNCH=1) until its GPU test and host-time bench have
    run (`bash bench/device_run.sh warmup fastlaunch`, ptx/NOTES.md); off, the kernels launch through Triton's own
    path."""
    return (sw or switches()).flag("DEEPERGEMM_TRITON_FAST_LAUNCH", False)


def select(m: int, n: int, k: int, num_sms: int, swap_ok: bool = True, sw: Switches | None = None) -> Choice:
    """The variant and rasterization for an (M, N, K) problem on a GPU with num_sms SMs. Cached per problem
    and switch settings: the model takes ~40 us of Python, more than a decode-size GEMM on the GPU.
    swap_ok=False: never a swapped variant (an L2-placed B, which swapped variants do not read).
    sw: the switches (default: the current snapshot, switches())."""
    return _select_cached(m, n, k, num_sms, swap_ok, sw or switches())


@functools.lru_cache(maxsize=4096)
def _select_cached(m: int, n: int, k: int, num_sms: int, swap_ok: bool, sw: Switches) -> Choice:
    return _select(m, n, k, num_sms, swap_ok, sw)


def _select(m: int, n: int, k: int, num_sms: int, swap_ok: bool, sw: Switches) -> Choice:
    if m < 1 or n < 1 or k < BLOCK_K or num_sms < 1:
        raise ValueError(f"select: need M, N >= 1, K >= {BLOCK_K}, num_sms >= 1; got {m}, {n}, {k}, {num_sms}")
    dual = sw.flag("DEEPERGEMM_DUAL_ACC", True)
    forced = _forced_shape(sw)
    if forced is None and swap_ok and m <= swap_max_m(sw):
        return _select_swapped(m, n, k, num_sms, sw)
    # (a forced tile or cluster shape leaves the wide-weight rule out)
    stream = None if forced is not None or sw.get("DEEPERGEMM_CLUSTER") else _small_m_stream(m, n, k, num_sms)
    if forced is not None:
        shape = forced
    else:
        block_ms = (64,) if m <= 128 else (128,) if m <= 256 else (128, 256)
        built = {(v.block_m, v.block_n, (v.cluster_m, v.cluster_n)) for v in VARIANTS}
        # (a forced DEEPERGEMM_CLUSTER leaves only the tiles built with that cluster shape)

        def offered(bm: int, bn: int) -> bool:
            if (bm, bn) == NARROW_TILE:
                return NARROW_TILE_M[0] < m <= NARROW_TILE_M[1]
            return bm in block_ms or (m > 128 and m <= MID_M_SMALL_TILE_MAX_M and (bm, bn) in MID_M_SMALL_TILES
                                      and (bn != 64 or ceil_div(m, bm) * ceil_div(n, bn) <= num_sms))

        shapes = [(bm, bn) for bm, bn in TILE_SHAPES + (NARROW_TILE,)
                  if offered(bm, bn) and (bm, bn, _cluster_shape(m, n, k, bm, bn, sw)) in built]
        if not shapes:
            raise ValueError(f"DEEPERGEMM_CLUSTER={sw.get('DEEPERGEMM_CLUSTER')}: no selectable tile for "
                             f"{'M <= 128' if m <= 128 else 'M > 128'} is built with that cluster shape")

        def modelled_time(shape: tuple[int, int]) -> tuple[float, int]:
            bm, bn = shape
            cluster = _cluster_shape(m, n, k, bm, bn, sw)
            units, waves = waves_for(m, n, bm, bn, num_sms, cluster)
            # a wave: every CTA of every cluster runs one tile; a stream-K tail evens the last one out (a fill is a
            # launch option of the pick, not weighed here: it is measured to pay on one tile, stream_k_fill_pays)
            if stream_k_tail_pays(m, n, k, find_variant(bm, bn, dual, cluster), num_sms, sw):
                waves = units / max(1, num_sms // (cluster[0] * cluster[1])) * STREAM_K_COST
            return waves * bm * bn * _TILE_COST[shape], -bm * bn  # ties: the larger tile

        shape = stream or min(shapes, key=modelled_time)
    cluster = CLUSTER_SHAPE if stream == WIDE_MID_M_TILE else _cluster_shape(m, n, k, *shape, sw)
    if forced is not None and (*shape, cluster) not in {(v.block_m, v.block_n, (v.cluster_m, v.cluster_n))
                                                         for v in VARIANTS}:
        cluster = (1, 1)  # a forced tile shape without a clustered build runs unclustered
    splits = 1
    if forced is None and m <= 128 and cluster == (1, 1) and sw.flag("DEEPERGEMM_SPLIT_K", True):
        splits, shape = _split_k_choice(m, n, k // BLOCK_K, num_sms, shape)
    math_wgs = 2
    if shape[0] == 64:
        math_wgs = _small_m_math_wgs(k, sw) if m <= 128 else MID_M_SMALL_TILES.get(shape, (True, 2))[1]
        if stream and not sw.get("DEEPERGEMM_SMALL_M_WGS"):
            math_wgs = 1
    variant = find_variant(*shape, dual, cluster, splits, math_wgs)
    return _choice(variant, m, n, k, num_sms, sw)


def _choice(variant: Variant, m: int, n: int, k: int, num_sms: int, sw: Switches) -> Choice:
    """A chosen variant's launch: rasterization band, grid, L2 hints, stream-K."""
    cluster, splits = (variant.cluster_m, variant.cluster_n), variant.splits
    units, waves = waves_for(m, n, variant.block_m, variant.block_n, num_sms, cluster, splits)
    n_units = ceil_div(ceil_div(n, variant.block_n), variant.cluster_n)
    m_units = ceil_div(ceil_div(m, variant.block_m), variant.cluster_m)
    short_k = (variant.block_m == 256 and k <= SHORT_K_GROUP_MAX_K
               and m_units * SHORT_K_GROUP_N <= num_sms // variant.cluster)  # a wave covers whole bands
    value = sw.get("DEEPERGEMM_GROUP_N")  # (empty: the default, like the other switches)
    group_n = SHORT_K_GROUP_N if short_k else DEFAULT_GROUP_N
    if value:
        try:
            group_n = int(value)
        except ValueError:
            group_n = 0
        if group_n < 1:
            raise ValueError(f"DEEPERGEMM_GROUP_N must be an integer >= 1, got {value!r}")
    stream_k = stream_k_pays(m, n, k, variant, num_sms, sw)
    clusters = num_sms // variant.cluster
    grid = (clusters if stream_k and units < clusters else min(units, clusters)) * variant.cluster  # (a fill: all)
    return Choice(variant, min(group_n, n_units), units * variant.cluster, waves, grid,
                  l2_hints_for(m, variant.block_m, variant.cluster_m, sw), stream_k)


def _twin_of(plain: Choice, variants: tuple[Variant, ...], flag: str) -> Choice | None:
    """plain's launch on the variant of `variants` that is plain's variant with `flag` set (the same tile, cluster
    and sums), or None when there is none."""
    twins = [v for v in variants if replace(v, **{flag: False}) == plain.variant]
    return replace(plain, variant=twins[0]) if twins else None


# ----------------------------------------------------------------------------------------------
# fp8 output (Variant.fp8_out): the GEMM's bf16-rounded output quantized per 1x128 group in the epilogue
# ----------------------------------------------------------------------------------------------
# The group's amax is reduced within one math warpgroup, so only tiles whose warpgroups cover whole 128-column
# groups can do it: 64x128 with one math warpgroup (M <= 128, alone or in a small-M B-multicast pair), 128x128
# (dual, waiting first, 2x1) and 256x128 (one partial set, 1x2). Each is the fp8-output twin of a selectable
# variant: where select() picks one of those, the fp8 output runs its twin (the same sums in the same order, so the
# same bits as quantizing the bf16 GEMM's output); elsewhere (narrower tiles, 128x192, split-K, two warpgroups on
# 64-row tiles, and the unclustered middle-M picks) the wave model picks among the twins. Measured: bit-identical to
# quantize_act of the bf16 output on the GPU (tests/test_fp8_out.py); speed in the fused-epilogue rule below.
FP8_OUT_VARIANTS: tuple[Variant, ...] = tuple(replace(v, fp8_out=True) for v in (
    _variant(64, 128, True, (1, 1), DUAL_ISSUE_AHEAD[64], math_wgs=SMALL_M_MATH_WGS),
    _variant(64, 128, True, SMALL_M_CLUSTER, DUAL_ISSUE_AHEAD[64], math_wgs=SMALL_M_MATH_WGS),
    _variant(128, 128, True, CLUSTER_SHAPE, DUAL_ISSUE_AHEAD[128]),
    _variant(256, 128, False, CLUSTER_SHAPE_256),
))


def select_fp8_out(m: int, n: int, k: int, num_sms: int, sw: Switches | None = None) -> Choice:
    """The fp8-output variant and launch for an (M, N, K) problem, N a multiple of 128: the twin of select()'s pick
    (never swapped) when it has one, else the wave model over FP8_OUT_VARIANTS. Cached like select()."""
    return _select_fp8_out_cached(m, n, k, num_sms, sw or switches())


@functools.lru_cache(maxsize=4096)
def _select_fp8_out_cached(m: int, n: int, k: int, num_sms: int, sw: Switches) -> Choice:
    if n % BLOCK_K:
        raise ValueError(f"select_fp8_out: N must be a multiple of {BLOCK_K}, got {n}")
    plain = _select(m, n, k, num_sms, False, sw)
    twin = _twin_of(plain, FP8_OUT_VARIANTS, "fp8_out")
    if twin is not None:
        return twin
    if m <= 128:
        paired = (sw.flag("DEEPERGEMM_SMALL_M_CLUSTER", True) and ceil_div(m, 64) == SMALL_M_CLUSTER[0]
                  and k >= SMALL_M_CLUSTER_MIN_K)
        cluster = SMALL_M_CLUSTER if paired else (1, 1)
        variant = next(v for v in FP8_OUT_VARIANTS if v.block_m == 64 and (v.cluster_m, v.cluster_n) == cluster)
        return _choice(variant, m, n, k, num_sms, sw)

    def modelled_time(v: Variant) -> tuple[float, int]:
        units, waves = waves_for(m, n, v.block_m, v.block_n, num_sms, (v.cluster_m, v.cluster_n))
        if stream_k_tail_pays(m, n, k, v, num_sms, sw):
            waves = units / max(1, num_sms // v.cluster) * STREAM_K_COST
        return waves * v.block_m * v.block_n * _TILE_COST[(v.block_m, v.block_n)], -v.block_m * v.block_n

    fitting = [v for v in FP8_OUT_VARIANTS if v.block_m >= 128 and ceil_div(m, v.block_m) >= v.cluster_m
               and ceil_div(n, v.block_n) >= v.cluster_n]
    return _choice(min(fitting, key=modelled_time), m, n, k, num_sms, sw)


# ----------------------------------------------------------------------------------------------
# Fused epilogues (fp8 output, SwiGLU) or the unfused steps: the same bits, whichever is faster
# ----------------------------------------------------------------------------------------------
# Measured on the H100 (bench/fp8_out_bench.py and bench/swiglu_bench.py --block with DEEPERGEMM_FUSED_EPILOGUE=1,
# `device_run.sh smallstream`, bench/RESULTS.md "fused epilogues against the new small-M picks"), each fused op
# against the unfused steps in the same process, with select()'s picks for the bf16 GEMM:
# - fp8 output pays at K <= 2048 (32768x512 and 7168x2048: 0.92-0.99x of unfused at M = 1-64, 0.95 and 1.02 at
#   M = 128; the quantize kernel's launch and its read of the bf16 output are a large share there) and loses at
#   K = 7168 (1.02-1.11x at M <= 64 on N = 4096-36864: the fp8-output tiles are 64x128, wider than the 64x16-64x64
#   the bf16 GEMM runs); at M = 4096 it lost 12-27% (H200: the fused 256-row tile does not overlap its epilogue).
# - SwiGLU never pays: its one unit is 64x256 (a 128-column output group needs 128 gate and 128 up columns), 144
#   tiles on 132 SMs at DeepSeek-V3's dense MLP and 16 at a routed expert's, so the MLP block ran 1.01-1.10x (dense)
#   and 1.24-1.41x (expert) of unfused at M = 1-128, and it lost at M = 4096. (Against the previous small-M picks,
#   64x32 tiles at M = 17-48 on the 36864-row gate/up weight, it ran 0.72x at M = 32 on the H200.)
# The unfused plans give the same bits (GPU: tests/test_swiglu.py, test_fp8_out.py), so the rule is the default and
# DEEPERGEMM_FUSED_EPILOGUE=1 keeps the fused kernels one switch away.
FUSED_EPILOGUE_MAX_M = 128
FUSED_FP8_OUT_MAX_K = 2048
FUSED_FP8_OUT_MIN_SM_SHARE = 0.4  # the fewest tiles measured paying: 56 on 132 SMs (7168x2048); fewer is unmeasured


FUSED_EPILOGUE_DEFAULT = "auto"


def fused_epilogue_pays(fused: Choice, m: int, k: int, num_sms: int, sw: Switches | None = None) -> bool:
    """Whether an fp8-output or SwiGLU GEMM runs fused (its plan `fused`) or as the bf16 GEMM then the Triton steps
    (bit-identical either way). DEEPERGEMM_FUSED_EPILOGUE=auto: the measured rule, fp8 output at M <=
    FUSED_EPILOGUE_MAX_M and K <= FUSED_FP8_OUT_MAX_K where the fused tiles fill FUSED_FP8_OUT_MIN_SM_SHARE of the
    SMs, SwiGLU never; 1 / 0: always / never; unset: FUSED_EPILOGUE_DEFAULT."""
    value = (sw or switches()).get("DEEPERGEMM_FUSED_EPILOGUE") or FUSED_EPILOGUE_DEFAULT
    if value not in ("0", "1", "auto"):
        raise ValueError(f"environment variable DEEPERGEMM_FUSED_EPILOGUE must be 0, 1 or auto, got {value!r}")
    if value != "auto":
        return value == "1"
    if fused.variant.swiglu:
        return False
    return (m <= FUSED_EPILOGUE_MAX_M and k <= FUSED_FP8_OUT_MAX_K
            and fused.tiles >= FUSED_FP8_OUT_MIN_SM_SHARE * num_sms)


# ----------------------------------------------------------------------------------------------
# The 256-K recipe (Variant.pairs): scales per 256 of K, one promotion per pair of 128-K stages
# ----------------------------------------------------------------------------------------------
# The pairs tiles: the 256 recipe runs the pairs twin of select()'s pick (the same tile and cluster, one partial
# set, the same stream-K tail or fill, its ranges cut on pairs of K blocks) where it has one; everywhere else it runs
# select()'s pick itself, each 128-K block taking its pair's scale (the product of the scales repeated per 128,
# exactly, without copying them: GemmParams::scale_shift).
# Measured: on the H200 (bench/recipe256_bench.py) pairs on 256x128 tiles ran 4-6% faster than 256x128s4p, their
# 1x2-cluster twin 1-4% faster than 256x128s4pc1x2, and pairs on 128x128 2x1 clusters 9-13% faster than
# 128x128s6pc2. On the H100, through the op (recipe256_bench.py --op, bench/RESULTS.md), an earlier rule that took
# the unclustered 256x128 pairs or the 128x128 pairs by a wave model ran 0.82-0.99x of the 128 plan wherever that
# plan had a cluster at K >= 7168 or a dual-accumulator 128x128 tile (which no pairs tile matches), and 1.02-1.24x
# at K <= 2048: the pairs pay against their own twin, not against a better tile.
# (No select() pick has the 128x128 2x1 pairs as its twin, select() taking the dual-accumulator 128x128 tile: that
# unit stays built and GPU-tested for a rule that measures it against that tile.)
RECIPE_256_VARIANTS: tuple[Variant, ...] = tuple(replace(v, pairs=True) for v in (
    _variant(256, 128, False),
    _variant(128, 128, False, CLUSTER_SHAPE),
    _variant(256, 128, False, CLUSTER_SHAPE_256),
))


def select_recipe_256(m: int, n: int, k: int, num_sms: int, sw: Switches | None = None) -> Choice:
    """The plan of a 256-K recipe problem (K a multiple of 256): the pairs twin of select()'s pick where it has one
    (with the pick's stream-K tail or fill, cut on pairs of K blocks), else select()'s pick itself (each K block
    reading its pair's scale). DEEPERGEMM_PAIRS=0: never the pairs."""
    sw = sw or switches()
    if k % (2 * BLOCK_K):
        raise ValueError(f"select_recipe_256: K must be a multiple of {2 * BLOCK_K}, got {k}")
    plain = select(m, n, k, num_sms, sw=sw)
    if not sw.flag("DEEPERGEMM_PAIRS", True):
        return plain
    return _twin_of(plain, RECIPE_256_VARIANTS, "pairs") or plain


# ----------------------------------------------------------------------------------------------
# SwiGLU fused into the gate/up GEMM's fp8 output (Variant.swiglu)
# ----------------------------------------------------------------------------------------------
# 64 x 256 tiles of the interleaved gate/up weight, two math warpgroups (128 gate and the matching 128 up columns:
# kWgN = 128, as registers allow; 256 would need 256 accumulators per thread), two steps in flight as the other
# 64-row tiles. One unit for every M, alone or, from two M-tiles on at K >= SMALL_M_CLUSTER_MIN_K, as 2x1 pairs
# that multicast B (the small-M clusters' rule). No stream-K, no split-K: the tiles sum every output in the order
# of an unsplit bf16 GEMM. Measured: bit-identical to the unfused steps on the GPU (tests/test_swiglu.py); speed in
# the fused-epilogue rule below.
SWIGLU_VARIANTS: tuple[Variant, ...] = tuple(
    replace(_variant(64, 256, True, cluster, DUAL_ISSUE_AHEAD[64], math_wgs=2), fp8_out=True, swiglu=True)
    for cluster in ((1, 1), SMALL_M_CLUSTER))


def select_swiglu(m: int, n: int, k: int, num_sms: int, sw: Switches | None = None) -> Choice:
    """The SwiGLU variant and launch for an (M, N, K) gate/up GEMM, N = 2 * intermediate a multiple of 256: the
    64x256 unit, paired as the small-M clusters are (DEEPERGEMM_SMALL_M_CLUSTER=0: never), never stream-K."""
    sw = sw or switches()
    if n % (2 * BLOCK_K) or n <= 0:
        raise ValueError(f"select_swiglu: N must be a positive multiple of {2 * BLOCK_K}, got {n}")
    paired = (sw.flag("DEEPERGEMM_SMALL_M_CLUSTER", True) and ceil_div(m, 64) >= SMALL_M_CLUSTER[0]
              and k >= SMALL_M_CLUSTER_MIN_K)
    cluster = SMALL_M_CLUSTER if paired else (1, 1)
    variant = next(v for v in SWIGLU_VARIANTS if (v.cluster_m, v.cluster_n) == cluster)
    return replace(_choice(variant, m, n, k, num_sms, sw), stream_k=False)


# ----------------------------------------------------------------------------------------------
# grouped (MoE) GEMMs
# ----------------------------------------------------------------------------------------------
# Tile shapes per grouping. The kernel is the plain GEMM's with a grouped scheduler (ptx/scheduler.cuh), so the
# plain tiles' measured costs (_TILE_COST), accumulator orderings and clusters carry over: 128-row tiles pair
# two M-tiles that multicast B (CLUSTER_SHAPE) where the groups are tall enough, 256-row (masked) tiles pair two
# N-tiles that multicast A (CLUSTER_SHAPE_256). A B-multicast pair never holds two groups: each group's M-tile
# count is rounded up to whole pairs, and the extra tile (past the group's end) is computed but never stored.
# A tile may be taller than the segment alignment (256 > 128): its rows past the group's end are computed (the
# next group's, or zeros) but never stored, half a tile per group on average. No grouped run has been timed on a
# GPU: these choices rest on the plain GEMM's measurements (ptx/NOTES.md, grouped GEMMs).
GROUPED_TILES: dict[int, tuple[tuple[int, int], ...]] = {
    GROUP_CONTIGUOUS: ((256, 128), (128, 128), (128, 192), (64, 128)),
    GROUP_MASKED: ((256, 128), (128, 128), (128, 192), (64, 128), (64, 64)),
}
GROUPING_NAMES = {GROUP_CONTIGUOUS: "contiguous", GROUP_MASKED: "masked"}
# 128-row grouped tiles run as B-multicast pairs when rounding each group's M-tiles to whole pairs adds at most
# this share of tiles (e.g. every group has at least 5 tiles, or an even count): the plain 2x1 pairs run 0-15%
# faster than unpaired tiles at long K (ptx/NOTES.md, clusters), a wasted tile per group costs 1/tiles.
GROUPED_PAIR_MAX_WASTE = 0.1


def _grouped_variant(grouping: int, block_m: int, block_n: int, paired: bool = False) -> Variant:
    if block_m == 64:  # the plain 64-row layout: one math warpgroup, two steps in flight
        return _variant(64, block_n, True, (1, 1), DUAL_ISSUE_AHEAD[64], math_wgs=SMALL_M_MATH_WGS, grouping=grouping)
    cluster = CLUSTER_SHAPE_256 if block_m == 256 else CLUSTER_SHAPE if paired else (1, 1)
    dual = block_m <= 128 and block_n <= MAX_MATH_REGS_DUAL
    return _variant(block_m, block_n, dual, cluster, DUAL_ISSUE_AHEAD[block_m] if dual else True, grouping=grouping)


GROUPED_VARIANTS: tuple[Variant, ...] = tuple(
    _grouped_variant(grouping, bm, bn, paired) for grouping, tiles in GROUPED_TILES.items() for bm, bn in tiles
    for paired in ((False, True) if bm == 128 else (False,)))


def _group_tiles(rows: int, block_m: int, cluster_m: int) -> int:
    """M-tiles of a group of `rows` rows (dg::group_tiles): rounded up to whole B-multicast pairs."""
    return round_up(ceil_div(rows, block_m), cluster_m)


def select_grouped(grouping: int, rows_per_group: int, groups: int, n: int, k: int, num_sms: int,
                   sw: Switches | None = None) -> Choice:
    """The grouped variant for `groups` GEMMs of about `rows_per_group` rows each (masked: expected_m;
    contiguous: the mean real rows per group) by N by K: the wave model of select() over GROUPED_TILES, with
    64-row tiles up to 64 rows per group, 128-row ones above, 256-row ones also above 128; 128-row
    tiles in B-multicast pairs where GROUPED_PAIR_MAX_WASTE allows.
    DEEPERGEMM_GROUPED_VARIANT=BMxBN forces one of GROUPED_TILES. Cached like select()."""
    return _select_grouped_cached(grouping, rows_per_group, groups, n, k, num_sms, sw or switches())


@functools.lru_cache(maxsize=4096)
def _select_grouped_cached(grouping: int, rows_per_group: int, groups: int, n: int, k: int, num_sms: int,
                           sw: Switches) -> Choice:
    if grouping not in GROUPED_TILES:
        raise ValueError(f"select_grouped: grouping must be GROUP_CONTIGUOUS or GROUP_MASKED, got {grouping!r}")
    if rows_per_group < 1 or groups < 1 or n < 1 or k < BLOCK_K or num_sms < 1:
        raise ValueError(f"select_grouped: need rows_per_group, groups, N >= 1, K >= {BLOCK_K}, num_sms >= 1; got "
                         f"{rows_per_group}, {groups}, {n}, {k}, {num_sms}")
    tiles = GROUPED_TILES[grouping]
    forced = sw.get("DEEPERGEMM_GROUPED_VARIANT")
    if forced:
        try:
            shape = tuple(int(v) for v in forced.lower().split("x"))
        except ValueError:
            shape = ()
        if shape not in tiles:
            raise ValueError(f"DEEPERGEMM_GROUPED_VARIANT={forced!r} is not a {GROUPING_NAMES[grouping]} grouped "
                             f"tile; choose from {', '.join(f'{m}x{n}' for m, n in tiles)}")
        candidates = [shape]
    else:
        block_ms = (64,) if rows_per_group <= 64 else (128,) if rows_per_group <= 128 else (128, 256)
        candidates = [s for s in tiles if s[0] in block_ms] or [min(tiles)]

    def variant_for(shape: tuple[int, int]) -> Variant:
        bm = shape[0]
        waste = _group_tiles(rows_per_group, bm, 2) / ceil_div(rows_per_group, bm) - 1
        return _grouped_variant(grouping, *shape, paired=bm == 128 and waste <= GROUPED_PAIR_MAX_WASTE)

    def modelled_time(shape: tuple[int, int]) -> tuple[float, int]:
        waves = _grouped_units_waves(variant_for(shape), rows_per_group, groups, n, num_sms)[1]
        return waves * shape[0] * shape[1] * _TILE_COST.get(shape, 1.1), -shape[0] * shape[1]

    return _grouped_choice(variant_for(min(candidates, key=modelled_time)), rows_per_group, groups, n, num_sms, sw)


def _grouped_units_waves(v: Variant, rows_per_group: int, groups: int, n: int, num_sms: int) -> tuple[int, int]:
    """Units (clusters' work) and waves of a grouped variant on `groups` groups of about rows_per_group rows."""
    units = (groups * _group_tiles(rows_per_group, v.block_m, v.cluster_m) // v.cluster_m
             * ceil_div(ceil_div(n, v.block_n), v.cluster_n))
    return units, ceil_div(units, max(1, num_sms // v.cluster))


def _grouped_choice(variant: Variant, rows_per_group: int, groups: int, n: int, num_sms: int,
                    sw: Switches) -> Choice:
    """A grouped variant's launch: every unit the groups may need (the kernel counts them on the device)."""
    units, waves = _grouped_units_waves(variant, rows_per_group, groups, n, num_sms)
    n_units = ceil_div(ceil_div(n, variant.block_n), variant.cluster_n)
    return Choice(variant, min(DEFAULT_GROUP_N, n_units), units * variant.cluster, waves,
                  min(units, num_sms // variant.cluster) * variant.cluster,
                  l2_hints_for(rows_per_group, variant.block_m, variant.cluster_m, sw), False)


# ----------------------------------------------------------------------------------------------
# grouped SwiGLU: the experts' gate/up GEMM, SwiGLU and the down projection's quantization in one kernel
# ----------------------------------------------------------------------------------------------
# The SwiGLU unit (64 x 256, warpgroup 0 the gate and warpgroup 1 the up columns) on the grouped schedulers
# (contiguous, masked), each expert's B rows in halves (gate, then up: no interleaved copy of the stacked weights).
# Alone, or as 2x1 B-multicast pairs where the dense SwiGLU pairs (K >= SMALL_M_CLUSTER_MIN_K) and rounding each
# group's M-tiles up to pairs adds at most GROUPED_PAIR_MAX_WASTE of them (the grouped 128-row pairs' rule). Not yet
# timed on a GPU: these rules carry the dense and grouped units' measurements over.
GROUPED_SWIGLU_VARIANTS: tuple[Variant, ...] = tuple(replace(v, grouping=grouping) for grouping in GROUPED_TILES
                                                     for v in SWIGLU_VARIANTS)
# What CI compiles (and `warmup --variants tested` builds): the tested plain variants (swapped ones included),
# the grouped ones, the fp8-output and SwiGLU ones and the 256-K recipe's.
BUILT_VARIANTS: tuple[Variant, ...] = (TESTED_VARIANTS + GROUPED_VARIANTS + FP8_OUT_VARIANTS + SWIGLU_VARIANTS
                                       + GROUPED_SWIGLU_VARIANTS + RECIPE_256_VARIANTS)


def select_grouped_swiglu(grouping: int, rows_per_group: int, groups: int, n: int, k: int, num_sms: int,
                          sw: Switches | None = None) -> Choice:
    """The grouped SwiGLU variant and launch for `groups` experts of about rows_per_group rows each (masked:
    expected_m), B (groups, N, K) with N = 2 * intermediate a multiple of 256 (DEEPERGEMM_SMALL_M_CLUSTER=0: never
    paired)."""
    sw = sw or switches()
    if grouping not in GROUPED_TILES:
        raise ValueError(f"select_grouped_swiglu: grouping must be GROUP_CONTIGUOUS or GROUP_MASKED, got {grouping!r}")
    if n % (2 * BLOCK_K) or n <= 0:
        raise ValueError(f"select_grouped_swiglu: N must be a positive multiple of {2 * BLOCK_K}, got {n}")
    if rows_per_group < 1 or groups < 1 or k < BLOCK_K or num_sms < 1:
        raise ValueError(f"select_grouped_swiglu: need rows_per_group, groups >= 1, K >= {BLOCK_K}, num_sms >= 1; "
                         f"got {rows_per_group}, {groups}, {k}, {num_sms}")
    cm = SMALL_M_CLUSTER[0]
    waste = _group_tiles(rows_per_group, 64, cm) / ceil_div(rows_per_group, 64) - 1
    paired = (sw.flag("DEEPERGEMM_SMALL_M_CLUSTER", True) and k >= SMALL_M_CLUSTER_MIN_K
              and waste <= GROUPED_PAIR_MAX_WASTE)
    cluster = SMALL_M_CLUSTER if paired else (1, 1)
    variant = next(v for v in GROUPED_SWIGLU_VARIANTS
                   if (v.cluster_m, v.cluster_n) == cluster and v.grouping == grouping)
    return _grouped_choice(variant, rows_per_group, groups, n, num_sms, sw)


def grouped_swiglu_fused(sw: Switches | None = None) -> bool:
    """Whether the grouped SwiGLU op runs its fused kernel or the grouped bf16 GEMM then the Triton steps (the same
    bits). DEEPERGEMM_FUSED_EPILOGUE=0: never fused; 1 or auto (the default): fused. The dense rule's measurements
    (fused_epilogue_pays) do not carry over: the unfused experts' path is several kernels more, and the grouped
    tiles fill the GPU where one routed expert's 16 tiles did not. To be decided by its first bench."""
    value = (sw or switches()).get("DEEPERGEMM_FUSED_EPILOGUE") or FUSED_EPILOGUE_DEFAULT
    if value not in ("0", "1", "auto"):
        raise ValueError(f"environment variable DEEPERGEMM_FUSED_EPILOGUE must be 0, 1 or auto, got {value!r}")
    return value != "0"
