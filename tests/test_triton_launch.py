"""triton_kernels.launch.FastLaunch: Triton's compiled kernels launched past JITFunction.run.

CPU: the key tells apart everything Triton specializes on, the cached kernel receives every parameter in the
kernel's order, the switch (off by default) and the interpreter take Triton's own path (a stand-in JIT function
records the calls).
GPU: the quantizer's output through the cached kernel is bit-identical to Triton's path and to the reference, on
aligned and misaligned inputs alike, and the second call of a key does not go through Triton's path.
"""
import pytest
import torch

from deepergemm import reference as ref

pytest.importorskip("triton")
from deepergemm.triton_kernels import launch  # noqa: E402
from deepergemm.triton_kernels import quantize as tq  # noqa: E402


# ----------------------------------------------------------------------------------------------
# CPU: the key and the calls, with a stand-in for Triton's JIT function
# ----------------------------------------------------------------------------------------------
class _Compiled:
    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *params: self.log.append(("compiled", grid, params))


class _Jit:
    """Records kernel[grid](*args, **kwargs) and returns one compiled stand-in per call, as Triton does."""
    arg_names = ["x_ptr", "n", "stride", "FLAG", "BLOCK"]

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("jit", grid, args, kwargs))
            return _Compiled(self.log)
        return run


@pytest.fixture
def on_device_zero(monkeypatch):
    """The fast launch switched on, a CUDA device 0, no interpreter."""
    monkeypatch.setattr(launch.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch, "_INTERPRETING", False)
    monkeypatch.setenv("DEEPERGEMM_TRITON_FAST_LAUNCH", "1")


def test_arg_key_separates_what_triton_specializes_on():
    buf = torch.empty(64, dtype=torch.bfloat16)
    aligned, misaligned = buf[:32], buf[1:33]
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    key = launch.arg_key
    assert key(aligned) != key(misaligned)
    assert key(aligned) != key(buf.float()[:32])  # dtype
    ints = [1, 2, 15, 16, 17, 32, 2 ** 31 - 16, 2 ** 31, 2 ** 33]
    classes = {v: key(v) for v in ints}
    assert classes[1] != classes[2] != classes[16]  # equal to 1; a multiple of 16
    assert classes[2] == classes[15] == classes[17]
    assert classes[16] == classes[32] == classes[2 ** 31 - 16]
    assert classes[2 ** 31] != classes[32] and classes[2 ** 33] == classes[2 ** 31]  # needs 64 bits
    assert key(True) != key(False) and key(True) != key(1)  # constexprs by value, bools apart from ints
    assert key(64) == key(128) and key("a") != key("b")


def test_fast_launch_caches_and_passes_every_parameter_in_order(on_device_zero):
    jit = _Jit()
    fast = launch.FastLaunch(jit)
    x = torch.empty(64, dtype=torch.bfloat16)
    fast((3,), x, 7, 32, FLAG=True, BLOCK=16, num_warps=4)
    assert [entry[0] for entry in jit.log] == ["jit"]
    fast((5,), x, 9, 48, FLAG=True, BLOCK=16, num_warps=4)  # same key: 7 ~ 9, 32 ~ 48
    assert jit.log[-1] == ("compiled", (5,), (x, 9, 48, True, 16))
    fast((5,), x, 16, 48, FLAG=True, BLOCK=16, num_warps=4)  # n now a multiple of 16: Triton's path
    fast((5,), x, 9, 48, FLAG=False, BLOCK=16, num_warps=4)  # another constexpr value
    fast((5,), x, 9, 48, FLAG=True, BLOCK=16, num_warps=8)  # another launch option
    fast((5,), x[1:], 9, 48, FLAG=True, BLOCK=16, num_warps=4)  # a misaligned pointer
    assert [entry[0] for entry in jit.log] == ["jit", "compiled", "jit", "jit", "jit", "jit"]
    assert len(fast.compiled) == 5


def test_switch_off_and_interpreter_take_tritons_path(on_device_zero, monkeypatch):
    x = torch.empty(64, dtype=torch.bfloat16)
    for case in ("default", "off", "interpreter"):
        jit = _Jit()
        fast = launch.FastLaunch(jit)
        if case == "default":
            monkeypatch.delenv("DEEPERGEMM_TRITON_FAST_LAUNCH")
        elif case == "off":
            monkeypatch.setenv("DEEPERGEMM_TRITON_FAST_LAUNCH", "0")
        else:  # Triton's interpreter (TRITON_INTERPRET=1 when Triton was imported), the switch on
            monkeypatch.setenv("DEEPERGEMM_TRITON_FAST_LAUNCH", "1")
            monkeypatch.setattr(launch, "_INTERPRETING", True)
        for _ in range(3):
            fast((1,), x, 7, 32, FLAG=True, BLOCK=16, num_warps=4)
        assert [entry[0] for entry in jit.log] == ["jit"] * 3 and not fast.compiled, case


def test_switch_rejects_other_values(monkeypatch):
    from deepergemm import configs

    monkeypatch.setenv("DEEPERGEMM_TRITON_FAST_LAUNCH", "off")
    with pytest.raises(ValueError, match="DEEPERGEMM_TRITON_FAST_LAUNCH must be 0 or 1"):
        configs.triton_fast_launch_enabled()


# ----------------------------------------------------------------------------------------------
# GPU: the quantizer through the cached kernel
# ----------------------------------------------------------------------------------------------
def _quantize_both_ways(monkeypatch, x):
    monkeypatch.setenv("DEEPERGEMM_TRITON_FAST_LAUNCH", "0")
    slow = tq.quantize_act(x)
    monkeypatch.setenv("DEEPERGEMM_TRITON_FAST_LAUNCH", "1")
    tq.quantize_act(x)  # a key's first call goes through Triton's path...
    calls = []
    jit = tq._launch_act.fn

    class Counting:  # ...the second must not
        arg_names = jit.arg_names

        def __getitem__(self, grid):
            calls.append(grid)
            return jit[grid]

    monkeypatch.setattr(tq._launch_act, "fn", Counting())
    fast = tq.quantize_act(x)
    monkeypatch.setattr(tq._launch_act, "fn", jit)
    assert calls == [], "the second launch of a key went through JITFunction.run"
    return slow, fast


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("m,k", [(1, 128), (7, 7168), (65, 384), (1000, 2048)])
def test_cached_launch_is_bit_identical(monkeypatch, m, k, dtype):
    for offset in (0, 1):  # 16-byte aligned, then an address Triton must not treat as aligned
        buf = (torch.randn(m * k + offset, device="cuda") * 10).to(dtype)
        x = buf[offset:].view(m, k)
        (slow_q, slow_s), (fast_q, fast_s) = _quantize_both_ways(monkeypatch, x)
        want_q, want_s = ref.quantize_act(x.cpu())
        for got, want in ((slow_q, want_q), (fast_q, want_q), (slow_s, want_s), (fast_s, want_s)):
            assert torch.equal(got.cpu().view(torch.uint8) if got.dtype == ref.FP8_DTYPE else got.cpu(),
                               want.view(torch.uint8) if want.dtype == ref.FP8_DTYPE else want), (m, k, dtype, offset)
