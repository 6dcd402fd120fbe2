"""Wrong calls of the public API that reach no input rule of an op: argument types the dispatcher would refuse
with its own message, gradients the ops cannot give, and the warmup command on a machine without a GPU."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import deepergemm as dg

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _gemm_inputs(m=8, n=16, k=256):
    a, a_s = dg.quantize_act(torch.randn(m, k, dtype=torch.bfloat16))
    b, b_s = dg.quantize_weight(torch.randn(n, k, dtype=torch.bfloat16))
    return a, a_s, b, b_s


def _grouped_inputs(groups=2, max_m=32, n=16, k=128):
    """Contiguous (a, a_s) and masked (a3, a3_s) views of the same rows, (groups, N, K) weights, row counts."""
    a, a_s = dg.quantize_act(torch.randn(groups * max_m, k))
    bs = [dg.quantize_weight(torch.randn(n, k)) for _ in range(groups)]
    b, b_s = torch.stack([q for q, _ in bs]), torch.stack([s for _, s in bs])
    counts = torch.randint(1, max_m + 1, (groups,), dtype=torch.int32)
    return a, a_s, a.view(groups, max_m, k), a_s.reshape(groups, max_m, k // 128), b, b_s, counts


# ----------------------------------------------------------------------------------------------
# argument types: a TypeError naming the argument and what it may be, before the dispatcher
# ----------------------------------------------------------------------------------------------
def _wrong_types() -> dict:
    """id -> (call, the TypeError's message)"""
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    a, a_s, b, b_s = _gemm_inputs()
    ga, ga_s, a3, a3_s, gb, gb_s, counts = _grouped_inputs()
    backends = r"one of \('auto', 'ptx', 'cublas', 'reference'\)"
    return {
        "quantize_act-ue8m0": (lambda: dg.quantize_act(x, ue8m0="yes"),
                               r"ue8m0 must be a bool \(True or False\), got 'yes' \(str\)"),
        "quantize_weight-ue8m0": (lambda: dg.quantize_weight(x, ue8m0=1),
                                  r"ue8m0 must be a bool \(True or False\), got 1 \(int\)"),
        "fp8_gemm-out_dtype": (lambda: dg.fp8_gemm(a, a_s, b, b_s, out_dtype="bfloat16"),
                               r"out_dtype must be torch.bfloat16, torch.float32 or torch.float8_e4m3fn, got 'bfloat16' "
                               r"\(str\)"),
        "fp8_gemm-backend": (lambda: dg.fp8_gemm(a, a_s, b, b_s, backend=None),
                             rf"backend must be a str, {backends}, got None"),
        "fp8_gemm-prepared-backend": (lambda: dg.fp8_gemm(a, a_s, dg.prepare_weight(b, b_s), backend=b"ptx"),
                                      rf"backend must be a str, {backends}, got b'ptx' \(bytes\)"),
        "linear-backend": (lambda: dg.linear(x, b, b_s, backend=None), rf"backend must be a str, {backends}, got None"),
        "contiguous-zero_padding": (lambda: dg.m_grouped_fp8_gemm_contiguous(ga, ga_s, gb, gb_s, counts,
                                                                             zero_padding="no"),
                                    r"zero_padding must be a bool \(True or False\), got 'no' \(str\)"),
        "contiguous-out_dtype": (lambda: dg.m_grouped_fp8_gemm_contiguous(ga, ga_s, gb, gb_s, counts,
                                                                          out_dtype="float32"),
                                 r"out_dtype must be torch.bfloat16 or torch.float32 \(or None\), got 'float32' "
                                 r"\(str\)"),
        "contiguous-backend": (lambda: dg.m_grouped_fp8_gemm_contiguous(ga, ga_s, gb, gb_s, counts, backend=0),
                               rf"backend must be a str, {backends}, got 0 \(int\)"),
        "masked-backend": (lambda: dg.m_grouped_fp8_gemm_masked(a3, a3_s, gb, gb_s, counts, 8, backend=None),
                           rf"backend must be a str, {backends}, got None"),
        "masked-out_dtype": (lambda: dg.m_grouped_fp8_gemm_masked(a3, a3_s, gb, gb_s, counts, 8, out_dtype=2),
                             r"out_dtype must be torch.bfloat16 or torch.float32 \(or None\), got 2 \(int\)"),
    }


@pytest.mark.parametrize("case", list(_wrong_types()))
def test_wrong_argument_types_are_named(case):
    call, match = _wrong_types()[case]
    with pytest.raises(TypeError, match=match):
        call()


# ----------------------------------------------------------------------------------------------
# gradients: forward only, said at the call
# ----------------------------------------------------------------------------------------------
def _requiring_grad() -> dict:
    """id -> (op, the argument that requires grad, call)"""
    x = torch.randn(4, 256)
    a, a_s, b, b_s = _gemm_inputs()
    bias = torch.randn(16)
    ga, ga_s, a3, a3_s, gb, gb_s, counts = _grouped_inputs()
    grad = torch.Tensor.requires_grad_
    return {
        "linear-x": ("linear", "x", lambda: dg.linear(grad(x.clone()), b, b_s)),
        "linear-bias": ("linear", "bias", lambda: dg.linear(x, b, b_s, grad(bias.clone()))),
        "linear-w_scales": ("linear", "w_scales", lambda: dg.linear(x, b, grad(b_s.clone()))),
        "linear-prepared-x": ("linear", "x", lambda: dg.linear(grad(x.clone()), dg.prepare_weight(b, b_s))),
        "fp8_gemm-bias": ("fp8_gemm", "bias", lambda: dg.fp8_gemm(a, a_s, b, b_s, bias=grad(bias.clone()))),
        "fp8_gemm-a_scales": ("fp8_gemm", "a_scales", lambda: dg.fp8_gemm(a, grad(a_s.clone()), b, b_s)),
        "contiguous-b_scales": ("m_grouped_fp8_gemm_contiguous", "b_scales",
                                lambda: dg.m_grouped_fp8_gemm_contiguous(ga, ga_s, gb, grad(gb_s.clone()), counts)),
        "masked-a_scales": ("m_grouped_fp8_gemm_masked", "a_scales",
                            lambda: dg.m_grouped_fp8_gemm_masked(a3, grad(a3_s.clone()), gb, gb_s, counts, 8)),
    }


@pytest.mark.parametrize("case", list(_requiring_grad()))
def test_inputs_that_require_grad_are_refused_at_the_call(case):
    op, name, call = _requiring_grad()[case]
    with pytest.raises(NotImplementedError) as info:
        call()
    message = str(info.value)
    for words in (f"deepergemm.{op} is forward only", f"{name} requires grad", "torch.no_grad()",
                  "torch.inference_mode()", f"{name}.detach()"):
        assert words in message, f"{words!r} missing from: {message}"
    assert isinstance(info.value, RuntimeError)  # (NotImplementedError is one)
    with torch.no_grad():
        call()
    with torch.inference_mode():
        call()


def test_linear_without_grad_mode_equals_detached():
    x = torch.randn(3, 256, requires_grad=True)
    _, _, w, w_s = _gemm_inputs()
    with torch.no_grad():
        y = dg.linear(x, w, w_s)
    assert not y.requires_grad and torch.equal(y, dg.linear(x.detach(), w, w_s))


# ----------------------------------------------------------------------------------------------
# python -m deepergemm warmup on a machine without a GPU or CUDA_HOME
# ----------------------------------------------------------------------------------------------
def test_warmup_without_a_gpu_says_so_in_one_line(tmp_path):
    cache = tmp_path / "cache"  # does not exist: warmup must not create it
    env = {name: value for name, value in os.environ.items() if name not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(DEEPERGEMM_CACHE_DIR=str(cache), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "deepergemm", "warmup"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepergemm warmup: needs an NVIDIA Hopper GPU"), run.stderr
    assert not cache.exists() and list(tmp_path.iterdir()) == []
