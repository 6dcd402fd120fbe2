"""Placing a weight matrix B in memory by L2 side, so that each SM reads its rows of B from its own L2 half.

Why
---
The H100's L2 is two partitions (``deepergemm/l2_sides.py`` finds which SMs sit next to which, and the
latencies near and far). A GEMM's B tile read by an SM whose memory lives in the other partition crosses
between them: longer hits and crossbar traffic. If rows [0, split_rows) of B live in side-0 memory and the
other rows in side-1 memory, a kernel that gives the first rows' tiles to side-0 SMs and the others to side-1
SMs reads B from its own side only. Which side a byte lives on is a function of its physical address, so B is
copied into a buffer (the *pool*) whose pieces were measured, slab by slab.

Storage format (the kernel relies on it exactly)
------------------------------------------------
* ``slab_rows`` is a power of two from 8 (1 KiB slots) to 256 (32 KiB): the largest the measured sides allow
  (``choose_slab_rows``), dividing split_rows. Slab (kb, j) is
  ``B[j*slab_rows:(j+1)*slab_rows, kb*128:(kb+1)*128]`` (rows past N are zero): slab_rows x 128 bytes, one TMA
  box of the kernel's B loads.
* The pool is uint8 (pool_rows, 128), contiguous, pool_rows = total_slots * slab_rows; slot s is pool rows
  [s*slab_rows, (s+1)*slab_rows), so slots are consecutive slot_bytes = slab_rows * 128 apart.
* The slot table is int32 (k_blocks, table_slabs), contiguous, table_slabs = (round_up(N, 256) + 512) //
  slab_rows (a tile that runs past N still finds entries); table[kb, j] = the slot holding slab (kb, j).
* Real slabs (j * slab_rows < N) with j * slab_rows < split_rows use side-0 slots, the other real slabs side-1
  slots; every padding slab (j * slab_rows >= N) points at one all-zero slot, taken from side 1 (side 0 when
  side 1 has no spare slot).
* split_rows is a multiple of 128 with 0 < split_rows < N (``split_rows_for``: side 0's share of the SMs).
* Slots are handed out deterministically: each side's usable slots in increasing order, in (j, kb) order
  (all K blocks of slab 0, then slab 1, ...).

How the pool is made (``prepare_weight``)
-----------------------------------------
An ordinary ``torch.empty`` uint8 buffer on the weight's device, sized for the larger side's slabs twice over
plus ~10% and 8 slots. Every 512-byte piece is timed from a few SMs (``measure_pieces``: the probe kernel of
ptx/l2_probe.cuh in its one-CTA-per-chunk mode, three rounds with the pieces handed to different SMs), each
round's latency against the midpoint of the detected near and far latencies says the piece's side, and a
majority vote decides (``classify_pieces``). A slot is usable when all its pieces agree (``choose_slab_rows``:
the largest slots, 32 KiB down to 1 KiB (two pieces: a slot size is used only where its pieces are checked), of
which 99% are whole, else no placement). When a side has too few usable slots
the pool is measured again 50% larger (at most 4 times). Then B is copied in (``pack``).

Cost: the pool is 2.2x the larger side's share of B plus 8 slots (about 1.1x B with evenly split SMs), the
table 4 bytes per slab; the PreparedWeight does not keep the original weight, so the caller may drop it
(while preparing, both are held). Measuring takes milliseconds per weight (one dependent-load
chain per 512 bytes of pool, spread over all SMs).

The pool is a plain PyTorch allocation owned by the PreparedWeight: the global allocator is untouched, and
the physical pages behind a live tensor do not move, so the measured sides stay true for its lifetime.
Prepare weights before capturing a CUDA graph (the pool is then just another tensor the graph reads).

When placement does not apply (``DEEPERGEMM_L2_SIDES=0``, a tensor not on a CUDA GPU, undecided detection,
N < 256, sides that alternate finer than 2 KiB (1 KiB slots only with ``DEEPERGEMM_L2_SIDES=1k``: on the H100 the
sides alternate every few hundred bytes, and 8-row slabs measured 14-37% slower than the plain weight on every shape,
bench/RESULTS.md), or a pool that never has enough slots of one side) the
PreparedWeight keeps the original weight, ``placed`` is False and ``reason`` says why; nothing is printed.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from . import l2_sides
from .l2_sides import L2Sides
from .layouts import (_require_dtype, _require_same_device, _require_tensor, ceil_div, check_rank,
                      check_weight_layout, round_up)
from .reference import FP8_DTYPE, GROUP_K

ENV_SWITCH = "DEEPERGEMM_L2_SIDES"
SLAB_BYTES_WIDE = GROUP_K       # one K block of fp8 bytes: a slab's width and a pool row
SLAB_ROW_CHOICES = (256, 128, 64, 32, 16, 8)  # 32 KiB slots down to 1 KiB: the largest the sides' granularity allows
                                          # (fewer, larger TMA boxes per stage in the kernel)
DEFAULT_MIN_SLAB_ROWS = 16      # 2 KiB slots; 1 KiB ones (16 TMA boxes per 128-row stage) only with...
SMALL_SLOTS_VALUE = "1k"        # ...DEEPERGEMM_L2_SIDES=1k (an experiment: 14-37% slower on the H100)
SPLIT_ALIGN = 128               # split_rows: whole 128-row blocks of B (its scale blocks) on one side
TABLE_ROUND_ROWS = 256          # the table covers N rounded up to this...
TABLE_PAD_ROWS = 512            # ...plus this many rows of padding slabs (tiles past N)
PIECE_BYTES = 512               # measured unit of the pool: a 1 KiB slot (the H100's sides alternate at ~1 KiB) is two
PIECE_REPS = 8                  # dependent L2 hits per piece and round
PIECE_ROUNDS = 3                # rounds, each with the pieces on other SMs; a majority vote decides
UNIFORM_SHARE = 0.99            # slots that must lie wholly on one side for a slot size to be used
POOL_SPARE = 1.1                # pool slots per slot needed (the sides' usable slots are not exactly half)
POOL_EXTRA_SLOTS = 8
POOL_GROWTH = 1.5               # when a side is short, measure a pool this much larger...
POOL_MAX_GROWTHS = 4            # ...at most this many times
SIZING_SLAB_ROWS = 32
SIZING_SLOT_BYTES = SIZING_SLAB_ROWS * SLAB_BYTES_WIDE  # the pool is sized in 4 KiB slots (a short side: grown)


def table_slabs(n: int, slab_rows: int) -> int:
    """Slabs (columns) of the slot table for N rows: N rounded up to 256, plus 512 rows of padding."""
    _check_slab_rows(slab_rows)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return (round_up(n, TABLE_ROUND_ROWS) + TABLE_PAD_ROWS) // slab_rows


def split_rows_for(n: int, sms_per_side: tuple[int, int]) -> int:
    """Rows of B on side 0: side 0's share of the SMs, in whole 128-row blocks, at least one block per side."""
    if n < 2 * SPLIT_ALIGN:
        raise ValueError(f"n must be at least {2 * SPLIT_ALIGN} to give each L2 side {SPLIT_ALIGN} rows, got n={n}")
    side0, side1 = sms_per_side
    if side0 < 0 or side1 < 0 or side0 + side1 == 0:
        raise ValueError(f"sms_per_side must be two SM counts >= 0, not both 0, got {sms_per_side}")
    total = side0 + side1
    blocks = (2 * n * side0 + SPLIT_ALIGN * total) // (2 * SPLIT_ALIGN * total)  # n * share / 128, rounded half up
    highest = (n - SPLIT_ALIGN) // SPLIT_ALIGN * SPLIT_ALIGN
    return min(max(blocks * SPLIT_ALIGN, SPLIT_ALIGN), highest)


class NotEnoughSlots(RuntimeError):
    """A side of the pool has fewer usable slots than its slabs (and the zero slot) need."""

    def __init__(self, side: int, needed: int, available: int):
        super().__init__(f"L2 side {side} has {available} usable slots in the pool, {needed} needed")
        self.side, self.needed, self.available = side, needed, available


# ----------------------------------------------------------------------------------------------
# the slot table, packing and unpacking (pure torch, any device)
# ----------------------------------------------------------------------------------------------
def _check_slab_rows(slab_rows: int) -> None:
    if slab_rows not in SLAB_ROW_CHOICES:
        raise ValueError(f"slab_rows must be one of {SLAB_ROW_CHOICES}, got {slab_rows}")


def _slabs_per_side(n: int, slab_rows: int, split_rows: int) -> tuple[int, int]:
    """Real slabs of side 0 (rows below split_rows) and of side 1 (the rest, the last one maybe partial)."""
    side0 = split_rows // slab_rows
    return side0, ceil_div(n, slab_rows) - side0


def _check_plan(n: int, k_blocks: int, slab_rows: int, split_rows: int) -> None:
    _check_slab_rows(slab_rows)
    if k_blocks < 1:
        raise ValueError(f"k_blocks must be >= 1, got {k_blocks}")
    if not 0 < split_rows < n or split_rows % SPLIT_ALIGN != 0 or split_rows % slab_rows != 0:
        raise ValueError(f"split_rows must be a multiple of {SPLIT_ALIGN} and of slab_rows ({slab_rows}) with 0 < "
                         f"split_rows < n (rows on both sides), got split_rows={split_rows} for n={n}")


def _check_slot_side(slot_side: torch.Tensor) -> torch.Tensor:
    _require_tensor("slot_side", slot_side)
    if slot_side.dtype.is_floating_point or slot_side.dtype.is_complex or slot_side.dtype == torch.bool:
        raise TypeError(f"slot_side must have an integer dtype (0, 1, or -1 for unusable), got {slot_side.dtype}")
    check_rank("slot_side", slot_side, 1, "(total_slots,)")
    sides = slot_side.cpu()
    if bool(((sides < -1) | (sides > 1)).any()):
        raise ValueError("slot_side values must be 0, 1 or -1 (unusable)")
    return sides


def plan_table(slot_side: torch.Tensor, n: int, k_blocks: int, slab_rows: int,
               split_rows: int) -> tuple[torch.Tensor, int]:
    """(slot table int32 (k_blocks, table_slabs) on the CPU, zero slot) for the module's storage format.
    slot_side (total_slots,): each slot's L2 side, -1 where unusable. Raises NotEnoughSlots."""
    _check_plan(n, k_blocks, slab_rows, split_rows)
    sides = _check_slot_side(slot_side)
    slabs = _slabs_per_side(n, slab_rows, split_rows)
    usable = [torch.nonzero(sides == side).flatten() for side in (0, 1)]  # increasing slot ids
    for side in (0, 1):
        if len(usable[side]) < slabs[side] * k_blocks:
            raise NotEnoughSlots(side, slabs[side] * k_blocks, len(usable[side]))
    table = torch.empty(k_blocks, table_slabs(n, slab_rows), dtype=torch.int32)
    first = 0
    for side in (0, 1):
        handed = usable[side][:slabs[side] * k_blocks].view(slabs[side], k_blocks)  # (j, kb) order
        table[:, first:first + slabs[side]] = handed.T.to(torch.int32)
        first += slabs[side]
    spare = [usable[side][slabs[side] * k_blocks:] for side in (0, 1)]
    if len(spare[1]) == 0 and len(spare[0]) == 0:
        raise NotEnoughSlots(1, slabs[1] * k_blocks + 1, len(usable[1]))
    zero_slot = int(spare[1][0] if len(spare[1]) else spare[0][0])
    table[:, first:] = zero_slot
    return table, zero_slot


def _check_pool(name: str, pool: torch.Tensor, total_slots: int, slab_rows: int, device: torch.device) -> None:
    _require_tensor(name, pool)
    _require_dtype(name, pool, (torch.uint8,))
    want = (total_slots * slab_rows, SLAB_BYTES_WIDE)
    if tuple(pool.shape) != want:
        raise ValueError(f"{name} must have shape (total_slots * slab_rows, {SLAB_BYTES_WIDE}) = {want}, "
                         f"got {tuple(pool.shape)}")
    if not pool.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {pool.stride()}")
    if pool.device != device:
        raise ValueError(f"{name} must be on the weight's device {device}, got {pool.device}")


def _check_table(table: torch.Tensor, n: int, k_blocks: int, slab_rows: int) -> None:
    _require_tensor("table", table)
    _require_dtype("table", table, (torch.int32,))
    want = (k_blocks, table_slabs(n, slab_rows))
    if tuple(table.shape) != want:
        raise ValueError(f"table must have shape (K/128, table_slabs(N, slab_rows)) = {want}, got {tuple(table.shape)}")


def pack(w: torch.Tensor, table: torch.Tensor, zero_slot: int, total_slots: int, slab_rows: int,
         out: torch.Tensor | None = None) -> torch.Tensor:
    """The pool (total_slots * slab_rows, 128) uint8 on w's device holding w (N, K) fp8 slab by slab as the
    table says, and zeros in the zero slot. A fresh pool is zeroed everywhere; `out` keeps its unused slots."""
    _require_tensor("w", w)
    _require_dtype("w", w, (FP8_DTYPE,))
    check_rank("w", w, 2, "(N, K)")
    if not w.is_contiguous():
        raise ValueError(f"w must be contiguous (N, K), got strides {w.stride()}")
    n, k = w.shape
    k_blocks = k // GROUP_K
    _check_table(table, n, k_blocks, slab_rows)
    if not 0 <= zero_slot < total_slots:
        raise ValueError(f"zero_slot must be a slot of the pool (0..{total_slots - 1}), got {zero_slot}")
    index = table.to(device=w.device, dtype=torch.long)
    used = index[:, :ceil_div(n, slab_rows)]
    if bool(((used < 0) | (used >= total_slots)).any()):
        raise ValueError(f"table holds slots outside the pool's 0..{total_slots - 1}")
    if out is None:
        pool = torch.zeros(total_slots * slab_rows, SLAB_BYTES_WIDE, dtype=torch.uint8, device=w.device)
    else:
        _check_pool("out", out, total_slots, slab_rows, w.device)
        pool = out
    slots = pool.view(total_slots, slab_rows, SLAB_BYTES_WIDE)
    raw = w.view(torch.uint8)
    full = n // slab_rows
    if full:
        # (slab j, row, kb, byte) -> (j, kb, row, byte): a view; the indexed store reads it in place
        slabs = raw[:full * slab_rows].view(full, slab_rows, k_blocks, SLAB_BYTES_WIDE).transpose(1, 2)
        slots[used[:, :full].T] = slabs
    rest = n - full * slab_rows
    if rest:  # the last slab is partial: its rows past N are zeros
        tail = torch.zeros(k_blocks, slab_rows, SLAB_BYTES_WIDE, dtype=torch.uint8, device=w.device)
        tail[:, :rest] = raw[full * slab_rows:].view(rest, k_blocks, SLAB_BYTES_WIDE).transpose(0, 1)
        slots[used[:, full]] = tail
    slots[zero_slot] = 0
    return pool


def unpack(pool: torch.Tensor, table: torch.Tensor, n: int, k: int, slab_rows: int) -> torch.Tensor:
    """B (n, k) float8_e4m3fn gathered back from the pool through the table (the pure-torch reference)."""
    _check_slab_rows(slab_rows)
    if k <= 0 or k % GROUP_K != 0:
        raise ValueError(f"k must be a positive multiple of {GROUP_K}, got k={k}")
    _require_tensor("pool", pool)
    _require_dtype("pool", pool, (torch.uint8,))
    check_rank("pool", pool, 2, f"(pool_rows, {SLAB_BYTES_WIDE})")
    if pool.shape[1] != SLAB_BYTES_WIDE or pool.shape[0] % slab_rows != 0 or not pool.is_contiguous():
        raise ValueError(f"pool must be contiguous (total_slots * slab_rows, {SLAB_BYTES_WIDE}), got shape "
                         f"{tuple(pool.shape)} for slab_rows={slab_rows}")
    k_blocks = k // GROUP_K
    _check_table(table, n, k_blocks, slab_rows)
    slabs = ceil_div(n, slab_rows)
    slots = pool.view(-1, slab_rows, SLAB_BYTES_WIDE)
    index = table[:, :slabs].to(device=pool.device, dtype=torch.long).T  # (j, kb)
    gathered = slots[index]                                               # (j, kb, row, byte)
    rows = gathered.transpose(1, 2).reshape(slabs * slab_rows, k)
    return rows[:n].contiguous().view(FP8_DTYPE)


# ----------------------------------------------------------------------------------------------
# the prepared weight
# ----------------------------------------------------------------------------------------------
@dataclass(repr=False)
class PreparedWeight:
    """A weight for the GEMM: placed (pool + slot table, see the module's docstring) or the original tensor."""
    n: int
    k: int
    scales: torch.Tensor                # fp32 (ceil(N/128), K/128), contiguous
    placed: bool
    reason: str                         # why not placed, or a summary of the placement
    weight: torch.Tensor | None = None  # the original (N, K) fp8 when not placed
    pool: torch.Tensor | None = None    # uint8 (total_slots * slab_rows, 128)
    slots: torch.Tensor | None = None   # the slot table, int32 (K/128, table_slabs), on the pool's device
    zero_slot: int = -1
    slab_rows: int = 0
    split_rows: int = 0
    sides: L2Sides | None = None
    sm_side: torch.Tensor | None = None  # (256,) uint8 on the device: the side of each SM id (from `sides`)

    @property
    def device(self) -> torch.device:
        return self.scales.device

    @property
    def total_slots(self) -> int:
        return 0 if self.pool is None else self.pool.shape[0] // self.slab_rows

    def unplaced(self) -> torch.Tensor:
        """B as a plain (N, K) fp8 tensor: the original weight, or gathered from the pool."""
        if not self.placed:
            return self.weight
        return unpack(self.pool, self.slots, self.n, self.k, self.slab_rows)

    def __repr__(self) -> str:
        where = f"placed, slab_rows={self.slab_rows}, split_rows={self.split_rows}" if self.placed else "not placed"
        return f"PreparedWeight(N={self.n}, K={self.k}, {self.device}, {where}: {self.reason})"


def _check_weight(w: torch.Tensor, w_scales: torch.Tensor) -> tuple[int, int]:
    """Rules for a weight and its scales (as fp8_gemm's b and b_scales, and contiguous); returns (N, K)."""
    _require_tensor("w", w)
    _require_tensor("w_scales", w_scales)
    _require_dtype("w", w, (FP8_DTYPE,))
    check_rank("w", w, 2, "(N, K)")
    n, k = w.shape
    if k == 0 or k % GROUP_K != 0:
        raise ValueError(f"w.shape[1] (K) must be a positive multiple of {GROUP_K}, got K={k}")
    check_weight_layout("w", w, "w_scales", w_scales, "w.shape[0] (N)")
    _require_same_device({"w": w, "w_scales": w_scales})
    return n, k


def _placed(w: torch.Tensor, w_scales: torch.Tensor, table: torch.Tensor, zero_slot: int, total_slots: int,
            slab_rows: int, split_rows: int, pool: torch.Tensor | None, sides: L2Sides | None) -> PreparedWeight:
    n, k = w.shape
    pool = pack(w, table, zero_slot, total_slots, slab_rows, out=pool)
    mib = pool.numel() / 2**20
    reason = (f"rows [0, {split_rows}) on L2 side 0, [{split_rows}, {n}) on side 1; {total_slots} slots of "
              f"{slab_rows * SLAB_BYTES_WIDE // 1024} KiB ({mib:.1f} MiB, B is {n * k / 2**20:.1f} MiB)")
    return PreparedWeight(n, k, w_scales.contiguous(), True, reason, None, pool,
                          table.to(w.device).contiguous(), zero_slot, slab_rows, split_rows, sides,
                          sm_side_table(sides, w.device) if sides is not None and sides.decided else None)


def sm_side_table(sides: L2Sides, device: torch.device) -> torch.Tensor:
    """(256,) uint8 on `device`: the L2 side of each SM id (the kernel indexes it by %smid; unknown ids: 0)."""
    table = torch.zeros(256, dtype=torch.uint8)
    for sm, side in sides.sm_side.items():
        table[int(sm) & 255] = int(side)
    return table.to(device)


def place(w: torch.Tensor, w_scales: torch.Tensor, slot_side: torch.Tensor, slab_rows: int, split_rows: int,
          pool: torch.Tensor | None = None, sides: L2Sides | None = None) -> PreparedWeight:
    """w placed into a pool whose slots lie on the sides slot_side gives (pure torch, any device). A given pool
    (total_slots * slab_rows, 128) uint8 on w's device, total_slots = len(slot_side), is filled in place."""
    n, k = _check_weight(w, w_scales)
    table, zero_slot = plan_table(slot_side, n, k // GROUP_K, slab_rows, split_rows)
    if pool is not None:
        _check_pool("pool", pool, len(slot_side), slab_rows, w.device)
    return _placed(w, w_scales, table, zero_slot, len(slot_side), slab_rows, split_rows, pool, sides)


# ----------------------------------------------------------------------------------------------
# classifying a buffer's memory by side
# ----------------------------------------------------------------------------------------------
def measure_pieces(buf: torch.Tensor, piece_bytes: int = PIECE_BYTES, reps: int = PIECE_REPS,
                   rounds: int = PIECE_ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """(cycles, smid), both (rounds, pieces) int32 on the CPU: per round, the L2 hit latency of a dependent-load
    chain at the start of every piece_bytes piece of buf, and the SM that timed it. Round r hands piece c to
    the probe's CTA (c + r * CTAs // rounds) % CTAs (one CTA per SM), so the rounds time a piece from other SMs.
    Whatever buf holds is left unchanged."""
    _require_tensor("buf", buf)
    if buf.device.type != "cuda":
        raise ValueError(f"buf must be on a CUDA GPU (its L2 hits are timed), got {buf.device}")
    if not buf.is_contiguous() or buf.data_ptr() % 4 != 0:
        raise ValueError("buf must be contiguous with a 4-byte aligned address")
    if piece_bytes <= 0 or piece_bytes % 4 != 0:
        raise ValueError(f"piece_bytes must be a positive multiple of 4, got {piece_bytes}")
    if reps < 1 or rounds < 1:
        raise ValueError(f"reps and rounds must be >= 1, got reps={reps}, rounds={rounds}")
    pieces = buf.numel() * buf.element_size() // piece_bytes
    if pieces == 0:
        raise ValueError(f"buf must hold at least one piece of {piece_bytes} bytes")
    module = l2_sides._load()
    device = buf.device
    words = buf.view(-1).view(torch.uint8)[:pieces * piece_bytes].view(torch.int32)
    offsets = torch.arange(pieces, dtype=torch.int64, device=device) * (piece_bytes // 4)
    props = torch.cuda.get_device_properties(device)
    ctas = props.multi_processor_count
    cycles = torch.empty(rounds, pieces, dtype=torch.int32, device=device)
    cta_smid = torch.empty(rounds, ctas, dtype=torch.int32, device=device)
    timer = torch.empty(rounds, pieces, dtype=torch.long, device=device)
    for r in range(rounds):
        rotate = r * ctas // rounds
        with torch.cuda.device(device):
            module.l2_probe(words, offsets, reps, cycles[r], cta_smid[r], l2_sides.one_cta_per_sm_smem(props), rotate)
        timer[r] = (torch.arange(pieces, device=device) + rotate) % ctas  # the CTA that probed each piece
    smid = torch.gather(cta_smid, 1, timer)
    return cycles.cpu(), smid.cpu()


def _near_far_threshold(cycles: torch.Tensor, start: float, iterations: int = 20) -> torch.Tensor:
    """(rounds, 1): per round, the midpoint between the means of its near and far latencies (two-means in one
    dimension, from the detection's midpoint). The detection timed every SM on the same lines at once, the
    pool's probe one SM per piece: its latencies may sit lower, so its own two clusters set the cut."""
    threshold = torch.full((cycles.shape[0], 1), float(start), dtype=torch.double)
    below = (cycles < threshold).sum(1, keepdim=True)
    lopsided = (below == 0) | (below == cycles.shape[1])  # all on one side of the midpoint: start from the mean
    threshold = torch.where(lopsided, cycles.mean(1, keepdim=True), threshold)
    for _ in range(iterations):
        below = cycles < threshold
        n_below, n_above = below.sum(1, keepdim=True), (~below).sum(1, keepdim=True)
        near = torch.where(below, cycles, 0.0).sum(1, keepdim=True) / n_below.clamp(min=1)
        far = torch.where(below, 0.0, cycles).sum(1, keepdim=True) / n_above.clamp(min=1)
        threshold = torch.where((n_below > 0) & (n_above > 0), (near + far) / 2, threshold)
    return threshold


def classify_pieces(cycles: torch.Tensor, smid: torch.Tensor, sides: L2Sides) -> torch.Tensor:
    """(pieces,) int8: each piece's L2 side by majority over the rounds, -1 on a tie or without votes. In a
    round a piece is on the timing SM's side when its latency is below the cut between the round's near and
    far latencies (_near_far_threshold, starting from the detection's midpoint)."""
    _require_tensor("cycles", cycles)
    _require_tensor("smid", smid)
    check_rank("cycles", cycles, 2, "(rounds, pieces)")
    if tuple(smid.shape) != tuple(cycles.shape):
        raise ValueError(f"smid must have the shape of cycles {tuple(cycles.shape)}, got {tuple(smid.shape)}")
    if not sides.decided or not sides.sm_side:
        raise ValueError(f"sides must be a decided L2Sides (its SM sides and latencies are the yardstick), got "
                         f"one undecided: {sides.reason}")
    threshold = _near_far_threshold(cycles.cpu().double(), (sides.near_cycles + sides.far_cycles) / 2)
    ids = smid.cpu().long()
    known = torch.tensor(list(sides.sm_side.keys()), dtype=torch.long)
    highest = max(int(known.max()), int(ids.max()) if ids.numel() else 0, 0)
    lookup = torch.full((highest + 1,), -1, dtype=torch.long)
    lookup[known] = torch.tensor(list(sides.sm_side.values()), dtype=torch.long)
    timer_side = torch.where(ids >= 0, lookup[ids.clamp(min=0)], -1)
    near = cycles.cpu().double() < threshold
    says = torch.where(near, timer_side, 1 - timer_side)          # the side this round votes for
    votes = timer_side >= 0                                       # (an SM the detection never saw: no vote)
    ones = ((says == 1) & votes).sum(0)
    zeros = ((says == 0) & votes).sum(0)
    side = torch.full(ones.shape, -1, dtype=torch.int8)
    side[ones > zeros] = 1
    side[zeros > ones] = 0
    return side


def choose_slab_rows(piece_sides: torch.Tensor, piece_bytes: int = PIECE_BYTES,
                     max_rows: int = SLAB_ROW_CHOICES[0],
                     min_rows: int = DEFAULT_MIN_SLAB_ROWS) -> tuple[int | None, torch.Tensor, str]:
    """(slab_rows, slot_side (total_slots,) int8, reason): the largest slots (256 rows = 32 KiB down to min_rows,
    at most max_rows) of which at least 99% lie wholly on one side, else (None, an empty tensor, why not).
    Only slot sizes of two pieces or more are considered (a one-piece slot's sides were never compared). Slots whose
    pieces disagree (or are undecided) get side -1: unusable. 1 KiB slots (min_rows = 8) are opt-in
    (DEEPERGEMM_L2_SIDES=1k; measured slower on the H100): the reason says when they would have been used."""
    _require_tensor("piece_sides", piece_sides)
    check_rank("piece_sides", piece_sides, 1, "(pieces,)")
    if piece_bytes <= 0 or (SLAB_ROW_CHOICES[-1] * SLAB_BYTES_WIDE) % piece_bytes != 0:
        raise ValueError(f"piece_bytes must divide {SLAB_ROW_CHOICES[-1] * SLAB_BYTES_WIDE} (the smallest slot), "
                         f"got {piece_bytes}")
    sides = piece_sides.cpu().to(torch.int8)
    shares = {}
    for slab_rows in (rows for rows in SLAB_ROW_CHOICES if rows <= max_rows):
        allowed = slab_rows >= min_rows
        slot_bytes = slab_rows * SLAB_BYTES_WIDE
        per_slot = slot_bytes // piece_bytes
        if per_slot < 2:
            continue
        count = len(sides) // per_slot
        if count == 0:
            shares[slot_bytes] = 0.0
            continue
        grid = sides[:count * per_slot].view(count, per_slot)
        first = grid[:, 0]
        whole = (grid == first.unsqueeze(1)).all(1) & (first >= 0)
        share = float(whole.double().mean())
        shares[slot_bytes] = share
        if share >= UNIFORM_SHARE and not allowed:
            return None, torch.empty(0, dtype=torch.int8), (
                f"{slot_bytes / 1024:g} KiB slots would do ({share:.1%} lie on one L2 side) but are opt-in, "
                f"measured slower than plain weights on the H100 ({ENV_SWITCH}={SMALL_SLOTS_VALUE}): placement off")
        if share >= UNIFORM_SHARE:
            slot_side = torch.where(whole, first, torch.full_like(first, -1))
            return slab_rows, slot_side, (f"{slot_bytes / 1024:g} KiB slots: {share:.1%} of {count} lie on one "
                                          f"L2 side")
    smallest = min(shares) if shares else piece_bytes * 2
    listed = ", ".join(f"{share:.1%} of the {size / 1024:g} KiB" for size, share in sorted(shares.items(), reverse=True)
                       if size <= 4096)
    return None, torch.empty(0, dtype=torch.int8), (
        f"only {listed} slots lie on one L2 side (need {UNIFORM_SHARE:.0%}): sides alternate finer than "
        f"{smallest / 1024:g} KiB: placement off")


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------
def _switch() -> str:
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value not in ("", "0", "1", SMALL_SLOTS_VALUE):
        raise ValueError(f"environment variable {ENV_SWITCH} must be 0, 1 or {SMALL_SLOTS_VALUE} (1 and 1 KiB "
                         f"slots), got {value!r}")
    return value


def _switched_off() -> bool:
    return _switch() == "0"


def _unplaced(w: torch.Tensor, scales: torch.Tensor, reason: str, sides: L2Sides | None) -> PreparedWeight:
    return PreparedWeight(w.shape[0], w.shape[1], scales, False, reason, weight=w, sides=sides)


def _place_in_measured_pool(w: torch.Tensor, scales: torch.Tensor, sides: L2Sides, split_rows: int,
                            measure=measure_pieces) -> PreparedWeight:
    """Measure a fresh pool, plan, pack; a larger pool when a side is short (`measure`: replaceable in tests)."""
    n, k = w.shape
    k_blocks = k // GROUP_K
    slabs = _slabs_per_side(n, SIZING_SLAB_ROWS, split_rows)
    need = max(slabs[0] * k_blocks, slabs[1] * k_blocks + 1)  # (+1: the zero slot, side 1's by preference)
    largest = SLAB_ROW_CHOICES[0] * SLAB_BYTES_WIDE
    pool_bytes = round_up((math.ceil(2 * need * POOL_SPARE) + POOL_EXTRA_SLOTS) * SIZING_SLOT_BYTES, largest)
    shortage = None
    for _ in range(1 + POOL_MAX_GROWTHS):
        buf = torch.empty(pool_bytes, dtype=torch.uint8, device=w.device)
        # (slabs must not straddle the split: at most its largest power-of-two divisor)
        slab_rows, slot_side, why = choose_slab_rows(
            classify_pieces(*measure(buf), sides), max_rows=split_rows & -split_rows,
            min_rows=SLAB_ROW_CHOICES[-1] if _switch() == SMALL_SLOTS_VALUE else DEFAULT_MIN_SLAB_ROWS)
        if slab_rows is None:
            return _unplaced(w, scales, why, sides)
        try:
            table, zero_slot = plan_table(slot_side, n, k_blocks, slab_rows, split_rows)
        except NotEnoughSlots as short:
            shortage = f"{short} (pool of {pool_bytes / 2**20:.1f} MiB)"
            del buf  # (measure a larger one: other memory)
            pool_bytes = round_up(math.ceil(pool_bytes * POOL_GROWTH), largest)
            continue
        pool = buf.view(-1, SLAB_BYTES_WIDE)[:len(slot_side) * slab_rows]  # (whole slots: a prefix)
        return _placed(w, scales, table, zero_slot, len(slot_side), slab_rows, split_rows, pool, sides)
    return _unplaced(w, scales, f"{shortage}, after growing the pool {POOL_MAX_GROWTHS} times", sides)


def prepare_weight(w: torch.Tensor, w_scales: torch.Tensor, *, sides: L2Sides | None = None) -> PreparedWeight:
    """A weight w (N, K) fp8 with its scales (ceil(N/128), K/128) fp32, placed by L2 side where that applies
    (see the module's docstring), else kept as it is with the reason. `sides`: a detection to use instead of
    l2_sides.detect(w.device)."""
    n, k = _check_weight(w, w_scales)
    scales = w_scales.contiguous()
    if _switched_off():
        return _unplaced(w, scales, f"turned off by {ENV_SWITCH}=0", sides)
    if w.device.type != "cuda":
        return _unplaced(w, scales, f"w is on {w.device}: placement needs a CUDA GPU's L2 sides", sides)
    if n < 2 * SPLIT_ALIGN:
        return _unplaced(w, scales, f"N={n} is below {2 * SPLIT_ALIGN}: too few rows to split between the L2 sides",
                         sides)
    try:
        if sides is None:
            sides = l2_sides.detect(w.device)
        l2_sides._load()  # (the probe, built by detect or cached; measuring the pool needs it too)
    except (RuntimeError, OSError, ImportError) as error:
        return _unplaced(w, scales, f"L2 side detection failed: {type(error).__name__}: {error}", sides)
    if not sides.decided:
        return _unplaced(w, scales, f"L2 sides undecided: {sides.reason}", sides)
    return _place_in_measured_pool(w, scales, sides, split_rows_for(n, sides.sms_per_side))
