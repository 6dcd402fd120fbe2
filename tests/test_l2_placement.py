"""L2-side placement of B (deepergemm/l2_placement.py): the slot table, packing and unpacking on synthetic slot
sides, the piece classifier and slot-size choice on synthetic latencies, prepare_weight's fallbacks and input
rules (CPU); on the GPU (marked) a real placement, measured again."""
import pytest
import torch

from deepergemm import l2_placement as lp
from deepergemm.l2_sides import L2Sides

NEAR, FAR = 260.0, 380.0


def _weight(n, k, device="cpu"):
    w = (torch.randn(n, k, device=device) * 4).to(torch.float8_e4m3fn)
    scales = torch.rand(-(-n // 128), k // 128, device=device) + 0.5
    return w, scales


def _bytes(t):
    return t.view(torch.uint8)


def _needs(n, k_blocks, slab_rows, split_rows):
    side0 = split_rows // slab_rows
    return side0 * k_blocks, (-(-n // slab_rows) - side0) * k_blocks


def _slot_sides(pattern, need0, need1):
    """Synthetic slot sides with room for need0 / need1 slots (+ the zero slot) in the given pattern."""
    if pattern == "random":  # 0/1 at random, ~10% unusable
        total = 3 * max(need0, need1) + 60
        sides = torch.randint(0, 2, (total,))
        sides[torch.rand(total) < 0.1] = -1
    elif pattern == "clustered":  # runs of one side, 1..64 slots long
        runs, side, counts = [], 0, [0, 0]
        while counts[0] < 1.5 * need0 + 8 or counts[1] < 1.5 * need1 + 8:
            length = int(torch.randint(1, 65, ()))
            runs.append(torch.full((length,), side))
            counts[side] += length
            side = 1 - side
        sides = torch.cat(runs)
    else:  # "imbalanced": a quarter of the slots on side 1
        total = 4 * need1 + 2 * need0 + 40
        sides = (torch.rand(total) < 0.25).long()
    counts = [(sides == s).sum().item() for s in (0, 1)]
    assert counts[0] >= need0 and counts[1] >= need1 + 1, "the synthetic pool is too small: widen the pattern"
    return sides.to(torch.int8)


def _check_placement(pw, w, slot_side):
    n, k = w.shape
    sr, split = pw.slab_rows, pw.split_rows
    k_blocks, real = k // 128, -(-n // sr)
    table = pw.slots
    assert pw.placed and pw.weight is None
    assert table.dtype == torch.int32 and table.is_contiguous()
    assert tuple(table.shape) == (k_blocks, lp.table_slabs(n, sr))
    assert tuple(pw.pool.shape) == (len(slot_side) * sr, 128) and pw.pool.dtype == torch.uint8
    assert torch.equal(_bytes(pw.unplaced()), _bytes(w)), "unpack(pack(w)) must give w back bitwise"
    sides = slot_side.long()
    used = table[:, :real].long()
    expect = (torch.arange(real) * sr >= split).long()          # side of each real slab
    assert torch.equal(sides[used], expect.expand(k_blocks, real)), "a slab sits on the wrong side"
    assert used.unique().numel() == used.numel(), "a slot is used twice"
    assert bool((table[:, real:] == pw.zero_slot).all()), "padding slabs must point at the zero slot"
    assert pw.zero_slot not in used.flatten().tolist()
    assert not pw.pool.view(-1, sr, 128)[pw.zero_slot].any(), "the zero slot must hold zeros"
    # deterministic hand-out: each side's usable slots in increasing order, slab-major
    for side in (0, 1):
        slabs = (expect == side).nonzero().flatten()
        handed = used[:, slabs].T.flatten()
        usable = (sides == side).nonzero().flatten()
        assert torch.equal(handed, usable[:len(handed)])
    spare1 = (sides == 1).sum().item() > (expect == 1).sum().item() * k_blocks
    assert sides[pw.zero_slot].item() == (1 if spare1 else 0)


# ----------------------------------------------------------------------------------------------
# sizes and splits
# ----------------------------------------------------------------------------------------------
def test_table_slabs():
    assert lp.table_slabs(7168, 32) == (7168 + 512) // 32
    assert lp.table_slabs(264, 16) == (512 + 512) // 16
    assert lp.table_slabs(2112, 32) == (2304 + 512) // 32
    assert lp.table_slabs(256, 32) == 24
    assert lp.table_slabs(2112, 256) == (2304 + 512) // 256
    with pytest.raises(ValueError, match="slab_rows"):
        lp.table_slabs(256, 48)
    with pytest.raises(ValueError, match="slab_rows"):
        lp.table_slabs(256, 512)


@pytest.mark.parametrize("n,sms,want", [
    (7168, (66, 66), 3584), (264, (66, 66), 128), (256, (1, 1), 128), (2112, (66, 66), 1024),
    (1024, (100, 32), 768), (1024, (132, 0), 896), (1024, (0, 132), 128), (4096, (60, 72), 1920),
    (4096, (72, 60), 2176), (384, (66, 66), 256),
])
def test_split_rows_for(n, sms, want):
    got = lp.split_rows_for(n, sms)
    assert got == want and got % 128 == 0 and 0 < got < n


def test_split_rows_for_rejects():
    with pytest.raises(ValueError, match="at least 256"):
        lp.split_rows_for(248, (66, 66))
    with pytest.raises(ValueError, match="sms_per_side"):
        lp.split_rows_for(1024, (0, 0))


# ----------------------------------------------------------------------------------------------
# plan, pack, unpack
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["random", "clustered", "imbalanced"])
@pytest.mark.parametrize("n,k,slab_rows,split_rows", [
    (264, 128, 32, 128), (264, 384, 16, 128), (2112, 256, 32, 1024), (2112, 128, 16, 1920), (7168, 512, 32, 3584),
    (256, 128, 16, 128), (1544, 1024, 32, 640),
])
def test_place_round_trips_and_puts_each_slab_on_its_side(pattern, n, k, slab_rows, split_rows):
    w, scales = _weight(n, k)
    slot_side = _slot_sides(pattern, *_needs(n, k // 128, slab_rows, split_rows))
    pw = lp.place(w, scales, slot_side, slab_rows, split_rows)
    _check_placement(pw, w, slot_side)
    assert torch.equal(pw.scales, scales) and pw.device == w.device
    assert not pw.pool.view(-1, slab_rows, 128)[(slot_side < 0).nonzero().flatten()].any(), \
        "a fresh pool's unused slots are zeros"


def test_pack_into_a_given_pool_keeps_its_unused_slots():
    n, k, sr, split = 520, 256, 16, 256
    w, scales = _weight(n, k)
    slot_side = _slot_sides("random", *_needs(n, 2, sr, split))
    pool = torch.full((len(slot_side) * sr, 128), 0xAB, dtype=torch.uint8)
    pw = lp.place(w, scales, slot_side, sr, split, pool=pool)
    assert pw.pool is pool
    _check_placement(pw, w, slot_side)
    used = set(pw.slots.flatten().tolist())
    unused = [s for s in range(len(slot_side)) if s not in used]
    assert bool((pool.view(-1, sr, 128)[unused] == 0xAB).all())


def test_given_pool_must_match():
    w, scales = _weight(264, 128)
    slot_side = _slot_sides("random", *_needs(264, 1, 32, 128))
    with pytest.raises(ValueError, match="pool must have shape"):
        lp.place(w, scales, slot_side, 32, 128, pool=torch.zeros(len(slot_side) * 16, 128, dtype=torch.uint8))
    with pytest.raises(TypeError, match="pool must have dtype"):
        lp.place(w, scales, slot_side, 32, 128, pool=torch.zeros(len(slot_side) * 32, 128, dtype=torch.int8))


def test_partial_last_slab_is_zero_padded_in_its_slot():
    n, k, sr = 264, 256, 32  # the last slab holds rows 256..263, its other 24 rows are zero
    w, scales = _weight(n, k)
    slot_side = _slot_sides("clustered", *_needs(n, 2, sr, 128))
    pw = lp.place(w, scales, slot_side, sr, 128)
    slots = pw.pool.view(-1, sr, 128)
    for kb in range(2):
        slab = slots[pw.slots[kb, n // sr].item()]
        assert torch.equal(slab[:8], _bytes(w)[256:, kb * 128:(kb + 1) * 128])
        assert not slab[8:].any()


def test_unpack_follows_the_table():
    """unpack reads wherever the table points: swapping two slots' contents and entries gives w back."""
    w, scales = _weight(512, 256)
    slot_side = _slot_sides("random", *_needs(512, 2, 16, 256))
    pw = lp.place(w, scales, slot_side, 16, 256)
    slots = pw.pool.view(-1, 16, 128)
    a, b = pw.slots[0, 0].item(), pw.slots[1, 20].item()
    slots[[a, b]] = slots[[b, a]].clone()
    pw.slots[0, 0], pw.slots[1, 20] = b, a
    assert torch.equal(_bytes(lp.unpack(pw.pool, pw.slots, 512, 256, 16)), _bytes(w))


def test_not_enough_slots_names_the_side():
    n, k_blocks, sr, split = 512, 2, 32, 256
    need0, need1 = _needs(n, k_blocks, sr, split)  # 16 and 16
    short0 = torch.tensor([0] * (need0 - 1) + [1] * (need1 + 5), dtype=torch.int8)
    with pytest.raises(lp.NotEnoughSlots) as info:
        lp.plan_table(short0, n, k_blocks, sr, split)
    assert (info.value.side, info.value.needed, info.value.available) == (0, need0, need0 - 1)
    short1 = torch.tensor([1, -1] * (need1 - 3) + [0] * 40, dtype=torch.int8)
    with pytest.raises(lp.NotEnoughSlots) as info:
        lp.plan_table(short1, n, k_blocks, sr, split)
    assert (info.value.side, info.value.needed, info.value.available) == (1, need1, need1 - 3)
    exact = torch.tensor([0] * need0 + [1] * need1, dtype=torch.int8)  # no room for the zero slot
    with pytest.raises(lp.NotEnoughSlots) as info:
        lp.plan_table(exact, n, k_blocks, sr, split)
    assert (info.value.side, info.value.needed) == (1, need1 + 1)
    assert isinstance(info.value, RuntimeError) and "side 1" in str(info.value)


def test_zero_slot_from_side_0_when_side_1_is_full():
    n, k_blocks, sr, split = 512, 1, 32, 256
    need0, need1 = _needs(n, k_blocks, sr, split)
    sides = torch.tensor([1] * need1 + [-1, 0] + [0] * need0, dtype=torch.int8)
    table, zero = lp.plan_table(sides, n, k_blocks, sr, split)
    assert zero == need1 + 1 + need0  # side 0's first slot after those handed out
    assert sides[zero] == 0 and bool((table[:, -1] == zero).all())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(split_rows=192), ValueError, "multiple of 128"),
    (dict(split_rows=512), ValueError, "split_rows < n"),
    (dict(split_rows=0), ValueError, "0 < split_rows"),
    (dict(slab_rows=12), ValueError, "slab_rows"),
    (dict(k_blocks=0), ValueError, "k_blocks"),
    (dict(slot_side=torch.tensor([0, 1, 2] * 40)), ValueError, "0, 1 or -1"),
    (dict(slot_side=torch.zeros(64)), TypeError, "integer dtype"),
    (dict(slot_side=torch.zeros(8, 8, dtype=torch.int8)), ValueError, "1-D"),
])
def test_plan_table_rejects(kwargs, error, match):
    args = dict(slot_side=torch.randint(0, 2, (200,), dtype=torch.int8), n=512, k_blocks=1, slab_rows=32,
                split_rows=256)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        lp.plan_table(**args)


# ----------------------------------------------------------------------------------------------
# classifying pieces and choosing the slot size
# ----------------------------------------------------------------------------------------------
def _sides(sm_side, near=NEAR, far=FAR):
    return L2Sides(True, "synthetic", dict(sm_side), near_cycles=near, far_cycles=far, granularity_bytes=4096)


def _piece_latencies(piece_side, sm_side, rounds=3, noise=8.0):
    """cycles, smid (rounds, pieces): each piece timed by a random SM per round, near when their sides match."""
    ids = torch.tensor(list(sm_side.keys()))
    sides_of = torch.tensor(list(sm_side.values()))
    pick = torch.randint(0, len(ids), (rounds, len(piece_side)))
    same = sides_of[pick] == piece_side.long().unsqueeze(0)
    cycles = torch.where(same, NEAR, FAR) + torch.randn(same.shape) * noise
    return cycles.round().int(), ids[pick].int()


def _sm_sides(count=132):
    return {3 + i: int(s) for i, s in enumerate(torch.randint(0, 2, (count,)).tolist())}


def test_classify_pieces_recovers_sides_despite_noise_and_a_wrong_round():
    sm_side = _sm_sides()
    truth = torch.randint(0, 2, (4000,), dtype=torch.int8)
    cycles, smid = _piece_latencies(truth, sm_side)
    assert torch.equal(lp.classify_pieces(cycles, smid, _sides(sm_side)), truth)
    wrong = cycles.clone()
    wrong[1] = torch.where(cycles[1] < (NEAR + FAR) / 2, FAR, NEAR).int()  # one round says the opposite
    assert torch.equal(lp.classify_pieces(wrong, smid, _sides(sm_side)), truth)


def test_classify_pieces_finds_its_own_cut_when_the_pool_is_faster_than_the_detection():
    """The detection (every SM on one line at once) may see higher latencies than the pool's probe (one SM per
    piece): with the pool's near and far both below the detection's midpoint, a fixed cut would call every
    piece near; the per-round two-means cut does not."""
    sm_side = _sm_sides()
    truth = torch.randint(0, 2, (3000,), dtype=torch.int8)
    cycles, smid = _piece_latencies(truth, sm_side, noise=5.0)
    shifted = cycles - int(FAR - NEAR) - 10  # far now sits below the detection's midpoint
    assert float(shifted.double().max()) < (NEAR + FAR) / 2
    assert torch.equal(lp.classify_pieces(shifted, smid, _sides(sm_side)), truth)


def test_classify_pieces_ties_and_unknown_sms_give_minus_one():
    sm_side = {0: 0, 1: 1}
    cycles = torch.tensor([[250, 250, 390], [250, 390, 390]], dtype=torch.int32)
    smid = torch.tensor([[0, 0, 0], [0, 0, 99]], dtype=torch.int32)  # SM 99 was never seen by the detection
    got = lp.classify_pieces(cycles, smid, _sides(sm_side))
    assert got.dtype == torch.int8 and got.tolist() == [0, -1, 1]


def test_classify_pieces_needs_a_decided_detection():
    undecided = L2Sides(False, "the sides are 1.0 noise units apart")
    with pytest.raises(ValueError, match="decided"):
        lp.classify_pieces(torch.zeros(3, 8, dtype=torch.int32), torch.zeros(3, 8, dtype=torch.int32), undecided)
    with pytest.raises(ValueError, match="shape of cycles"):
        lp.classify_pieces(torch.zeros(3, 8, dtype=torch.int32), torch.zeros(2, 8, dtype=torch.int32),
                           _sides({0: 0, 1: 1}))


def _pattern(pieces, block_pieces, shift=0):
    """Piece sides that change every block_pieces pieces (a hash of the block, not periodic)."""
    index = torch.arange(pieces) + shift
    return (((index // block_pieces) * 2654435761 >> 7) & 1).to(torch.int8)


def test_choose_4k_slots_when_sides_change_every_4k():
    sides = _pattern(4096, 4)  # (1 KiB pieces in these tests, as the pool measured them before)
    slab_rows, slot_side, reason = lp.choose_slab_rows(sides, piece_bytes=1024)
    assert slab_rows == 32 and "4 KiB" in reason
    assert torch.equal(slot_side, sides[::4])


def test_choose_4k_slots_tolerates_a_few_mixed_ones():
    sides = _pattern(4096, 4)
    sides[torch.randperm(1024)[:8] * 4 + 1] = -1  # 8 of 1024 slots (0.8%) have an undecided piece
    slab_rows, slot_side, _ = lp.choose_slab_rows(sides, piece_bytes=1024)
    assert slab_rows == 32 and (slot_side == -1).sum() == 8


def test_choose_2k_slots_when_sides_change_every_2k():
    for sides in (_pattern(4096, 2), _pattern(4096, 4, shift=2)):  # (4 KiB blocks but the buffer starts mid-block)
        slab_rows, slot_side, reason = lp.choose_slab_rows(sides, piece_bytes=1024)
        assert slab_rows == 16 and "2 KiB" in reason
        assert torch.equal(slot_side, sides[::2])


def test_one_piece_slots_are_never_chosen_unchecked():
    # 1 KiB pieces that alternate: a 1 KiB slot would be one piece, whose halves were never compared
    slab_rows, slot_side, reason = lp.choose_slab_rows(_pattern(4096, 1), piece_bytes=1024)
    assert slab_rows is None and slot_side.numel() == 0
    assert "finer than 2 KiB" in reason and "placement off" in reason


def test_choose_1k_slots_when_sides_change_every_1k():
    # the default 512-byte pieces: sides that hold for 1 KiB (the H100's interleave) give 8-row slabs
    sides = _pattern(8192, 2)
    slab_rows, slot_side, reason = lp.choose_slab_rows(sides, min_rows=8)
    assert slab_rows == 8 and "1 KiB slots" in reason
    assert torch.equal(slot_side, sides[::2])
    # ...opt-in (measured slower on the H100): by default placement is off, and the reason names the switch
    slab_rows, _, reason = lp.choose_slab_rows(sides)
    assert slab_rows is None and "1 KiB slots would do" in reason and "DEEPERGEMM_L2_SIDES=1k" in reason
    # a buffer starting mid-KiB: no 1 KiB slot is whole, nothing smaller exists
    slab_rows, _, reason = lp.choose_slab_rows(_pattern(8192, 2, shift=1), min_rows=8)
    assert slab_rows is None and "finer than 1 KiB" in reason


def test_no_slots_when_sides_change_every_512_bytes():
    slab_rows, slot_side, reason = lp.choose_slab_rows(_pattern(8192, 1))
    assert slab_rows is None and slot_side.numel() == 0
    assert "finer than 1 KiB" in reason and "placement off" in reason
    assert "of the 4 KiB" in reason and "of the 1 KiB" in reason


def test_choose_slab_rows_rejects_pieces_that_do_not_divide_a_slot():
    with pytest.raises(ValueError, match="piece_bytes"):
        lp.choose_slab_rows(_pattern(64, 1), piece_bytes=3000)


# ----------------------------------------------------------------------------------------------
# the measured-pool loop with a synthetic measurement (CPU)
# ----------------------------------------------------------------------------------------------
class _FakeProbe:
    """Stands in for measure_pieces: each piece's (PIECE_BYTES) side from a pattern over its index in the buffer."""

    def __init__(self, sm_side, block_pieces, side1_share=None):
        self.sm_side, self.block_pieces, self.side1_share, self.sizes = sm_side, block_pieces, side1_share, []

    def __call__(self, buf):
        pieces = buf.numel() // lp.PIECE_BYTES
        self.sizes.append(buf.numel())
        truth = _pattern(pieces, self.block_pieces)
        if self.side1_share is not None:  # a pool where side 1 holds only a share of the blocks
            blocks = torch.arange(pieces) // self.block_pieces
            truth = ((blocks * 37 % 100) < self.side1_share * 100).to(torch.int8)
        self.truth = truth
        return _piece_latencies(truth, self.sm_side)


@pytest.mark.parametrize("block_pieces,slab_rows", [(4, 16), (8, 32), (2, 8), (32, 128), (64, 256)])
def test_measured_pool_places_on_the_measured_sides(block_pieces, slab_rows, monkeypatch):
    monkeypatch.setenv("DEEPERGEMM_L2_SIDES", "1k")  # (1 KiB slots allowed)
    sm_side = _sm_sides()
    n, k = 2112, 512
    w, scales = _weight(n, k)
    probe = _FakeProbe(sm_side, block_pieces)
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 1024, measure=probe)
    assert pw.placed, pw.reason
    assert pw.slab_rows == slab_rows and pw.split_rows == 1024
    slot_side = probe.truth.view(-1, slab_rows * 128 // lp.PIECE_BYTES)[:, 0]
    _check_placement(pw, w, slot_side)


def test_measured_pool_grows_then_gives_up_with_the_reason():
    sm_side = _sm_sides()
    w, scales = _weight(1024, 256)
    probe = _FakeProbe(sm_side, 4, side1_share=0.05)  # side 1: 5% of the pool, never enough
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 512, measure=probe)
    assert not pw.placed and pw.weight is w
    assert "L2 side 1" in pw.reason and "growing the pool 4 times" in pw.reason
    assert len(probe.sizes) == 5
    # each 50% larger, rounded up to whole 32 KiB (the largest slots)
    assert all(1.5 * a <= b < 1.5 * a + 32768 for a, b in zip(probe.sizes, probe.sizes[1:]))


def test_measured_pool_grows_until_a_side_has_room():
    sm_side = _sm_sides()
    w, scales = _weight(1024, 256)
    probe = _FakeProbe(sm_side, 4, side1_share=0.3)  # side 1 short at first, enough after growing
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 512, measure=probe)
    assert pw.placed, pw.reason
    assert len(probe.sizes) >= 2
    _check_placement(pw, w, probe.truth.view(-1, 4)[:, 0])


def test_measured_pool_leaves_1k_slots_to_the_switch(monkeypatch):
    sm_side = _sm_sides()
    w, scales = _weight(1024, 256)
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 512, measure=_FakeProbe(sm_side, 2))
    assert not pw.placed and "opt-in" in pw.reason
    monkeypatch.setenv("DEEPERGEMM_L2_SIDES", "1K")
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 512, measure=_FakeProbe(sm_side, 2))
    assert pw.placed and pw.slab_rows == 8, pw.reason
    monkeypatch.setenv("DEEPERGEMM_L2_SIDES", "2k")
    with pytest.raises(ValueError, match="DEEPERGEMM_L2_SIDES must be 0, 1 or 1k"):
        lp._place_in_measured_pool(w, scales, _sides(sm_side), 512, measure=_FakeProbe(sm_side, 2))


def test_measured_pool_off_when_sides_change_every_512_bytes():
    sm_side = _sm_sides()
    w, scales = _weight(1024, 256)
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 512, measure=_FakeProbe(sm_side, 1))
    assert not pw.placed and "finer than 1 KiB" in pw.reason


# ----------------------------------------------------------------------------------------------
# prepare_weight: fallbacks and input rules
# ----------------------------------------------------------------------------------------------
def test_prepare_weight_on_cpu_is_unplaced_with_the_reason():
    w, scales = _weight(1024, 256)
    pw = lp.prepare_weight(w, scales.t().contiguous().t())  # (scales in another layout: made contiguous)
    assert not pw.placed and pw.weight is w and pw.unplaced() is w and pw.pool is None
    assert "CUDA GPU" in pw.reason and "cpu" in pw.reason
    assert pw.scales.is_contiguous() and torch.equal(pw.scales, scales)
    assert (pw.n, pw.k, pw.device) == (1024, 256, torch.device("cpu"))
    assert "not placed" in repr(pw)


def test_prepare_weight_turned_off_by_the_environment(monkeypatch):
    w, scales = _weight(512, 128)
    monkeypatch.setenv("DEEPERGEMM_L2_SIDES", "0")
    pw = lp.prepare_weight(w, scales)
    assert not pw.placed and pw.reason == "turned off by DEEPERGEMM_L2_SIDES=0"
    monkeypatch.setenv("DEEPERGEMM_L2_SIDES", "yes")
    with pytest.raises(ValueError, match="DEEPERGEMM_L2_SIDES must be 0, 1 or 1k"):
        lp.prepare_weight(w, scales)


@pytest.mark.parametrize("case,error,match", [
    ("dtype", TypeError, "w must have dtype torch.float8_e4m3fn"),
    ("1d", ValueError, "w must be 2-D"),
    ("k", ValueError, r"w.shape\[1\] \(K\) must be a positive multiple of 128"),
    ("n", ValueError, r"w.shape\[0\] \(N\) must be a positive multiple of 8"),
    ("strided", ValueError, "w must be contiguous"),
    ("scale_shape", ValueError, r"w_scales must have shape \(ceil\(N/128\), K/128\) = \(3, 2\)"),
    ("scale_dtype", TypeError, "w_scales must have dtype torch.float32"),
    ("not_tensor", TypeError, "w must be a torch.Tensor"),
])
def test_prepare_weight_rejects_bad_inputs(case, error, match):
    w, scales = _weight(264, 256)
    if case == "dtype":
        w = w.to(torch.bfloat16)
    elif case == "1d":
        w = w.flatten()
    elif case == "k":
        w = w[:, :200].contiguous()
    elif case == "n":
        w = w[:260].contiguous()
    elif case == "strided":
        w = _weight(256, 256)[0].t()
        scales = torch.ones(2, 2)
    elif case == "scale_shape":
        scales = scales[:2]
    elif case == "scale_dtype":
        scales = scales.double()
    else:
        w = w.tolist()
    with pytest.raises(error, match=match):
        lp.prepare_weight(w, scales)


# ----------------------------------------------------------------------------------------------
# on the GPU
# ----------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(7168, 2048), (2112, 7168), (264, 512)])
def test_gpu_prepare_weight_places_where_measured(n, k):
    w, scales = _weight(n, k, device="cuda")
    pw = lp.prepare_weight(w, scales)
    print(pw)
    assert pw.reason
    assert torch.equal(_bytes(pw.unplaced()), _bytes(w))
    if not pw.placed:
        return
    assert pw.slots.is_cuda and pw.slots.dtype == torch.int32 and pw.slots.is_contiguous()
    assert pw.pool.is_cuda and pw.pool.is_contiguous()
    # measured again (now full of weights): the slots of each side are on that side
    cycles, smid = lp.measure_pieces(pw.pool)
    assert tuple(cycles.shape) == (3, pw.pool.numel() // 1024)
    assert bool((smid[0] != smid[1]).float().mean() > 0.9), "the rounds time each piece from other SMs"
    pieces = lp.classify_pieces(cycles, smid, pw.sides)
    quantiles = torch.quantile(cycles.flatten().double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]).double())
    print(f"detection near {pw.sides.near_cycles:.0f} / far {pw.sides.far_cycles:.0f}; pool pieces' cycles at "
          f"5/25/50/75/95%: {[round(q) for q in quantiles.tolist()]}")
    per_slot = pw.slab_rows * 128 // 1024
    real = -(-n // pw.slab_rows)
    slots = pw.slots[:, :real].cpu().long()
    expect = (torch.arange(real) * pw.slab_rows >= pw.split_rows).long().expand_as(slots)
    measured = pieces.view(-1, per_slot).long()[slots]  # (kb, slab, piece)
    agree = (measured == expect.unsqueeze(-1)).all(-1).double().mean().item()
    print(f"{agree:.2%} of the placed slots measure on their side again")
    assert agree >= 0.99
    zero = pw.pool.view(-1, pw.slab_rows, 128)[pw.zero_slot]
    assert not zero.any()


@pytest.mark.gpu
def test_gpu_measure_pieces_leaves_the_buffer_alone_and_rotates():
    buf = torch.randint(0, 256, (4 << 20,), dtype=torch.uint8, device="cuda")
    before = buf.clone()
    cycles, smid = lp.measure_pieces(buf, rounds=3)
    assert torch.equal(buf, before)
    assert tuple(cycles.shape) == tuple(smid.shape) == (3, buf.numel() // lp.PIECE_BYTES)
    assert bool((cycles > 0).all()) and bool((cycles < 5000).all())
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert len(set(smid.flatten().tolist())) == sms


def test_choose_slab_rows_takes_the_largest_uniform_slots_up_to_the_cap():
    sides = _pattern(8192, 16)  # 16 KiB blocks of 1 KiB pieces
    slab_rows, slot_side, reason = lp.choose_slab_rows(sides, piece_bytes=1024)
    assert slab_rows == 128 and "16 KiB" in reason and len(slot_side) == 8192 // 16
    slab_rows, _, reason = lp.choose_slab_rows(sides, piece_bytes=1024, max_rows=32)  # a split of 32-row multiples
    assert slab_rows == 32 and "4 KiB" in reason


def test_measured_pool_keeps_slabs_inside_the_split():
    """A split of 384 rows (3 x 128) allows 128-row slabs at most, even where the sides are coarser."""
    sm_side = _sm_sides()
    w, scales = _weight(1024, 256)
    pw = lp._place_in_measured_pool(w, scales, _sides(sm_side), 384, measure=_FakeProbe(sm_side, 64))
    assert pw.placed and pw.slab_rows == 128
    with pytest.raises(ValueError, match="multiple of 128 and of slab_rows"):
        lp.plan_table(torch.zeros(4096, dtype=torch.int8), 1024, 2, 256, 384)
